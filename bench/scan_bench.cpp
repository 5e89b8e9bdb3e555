#include "bench/scan_bench.h"

#include <cstdio>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "bench/chip_rates.h"
#include "bench/scan_unfused.h"
#include "bench/timing.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/random.h"
#include "cuda/device_query.h"
#include "cuda/selective_scan.h"

namespace scanline::bench {
namespace {

// The unfused baseline's f32 workspace is processed in channel slices within this budget.
constexpr double kUnfusedBudgetBytes = 24e9;

struct ScanCase {
  int64_t batch, d_inner, L, N;
  double mamba_fwd_ms, mamba_fwd_bwd_ms;  // official mamba_ssm kernel, H100 (issue 4; copy 2.94 TB/s)
};

// One printed row: a pass of one case.
struct Result {
  std::string shape, pass;
  double ms, bytes, mamba_ms;
  ScanWork work;
  double unfused_ms;
};

Tensor gpu_rand(const Shape& shape, DType dtype, uint64_t seed, double low, double high) {
  Generator gen(seed);
  return contiguous_copy(rand(shape, gen, {.dtype = DType::f32}, low, high), dtype, Device::cuda(0));
}

std::string shape_of(const ScanCase& c) {
  std::string s = "(";
  for (int64_t v : {c.batch, c.d_inner, c.L}) s += std::to_string(v) + ", ";
  return s + std::to_string(c.N) + ")";
}

}  // namespace

ScanWork fused_scan_work(int64_t batch, int64_t d_inner, int64_t L, int64_t N, bool backward) {
  const double steps = double(batch) * double(d_inner) * double(L);  // (b, d, t)
  const double states = steps * double(N);                           // (b, d, t, n)
  if (!backward) return {1.0 * states + 3.0 * steps, 5.0 * states};
  return {2.0 * states + 7.0 * steps, 20.0 * states};
}

int run_scan_bench(bool quick) {
  SCANLINE_CHECK(cuda::device_count() > 0, "bench scan: no CUDA device found");
  NoGradGuard no_grad;
  std::printf("scanline bench scan on %s; bf16 u, delta, z, B, C; f32 A, D, delta_bias; softplus and gate on\n",
              cuda::device_name(0).c_str());
  const double copy = device_copy_gbps();
  std::printf("measured device copy bandwidth: %.0f GB/s\n", copy);
  const ChipRates chip = measure_chip_rates();
  const double per_sm_clock = double(chip.sms) * chip.clock_hz;
  std::printf("measured chip rates: exp2 %.0f G/s (%.1f per SM per clock at the %.0f MHz peak clock), "
              "fp32 FMA %.0f G/s (%.1f per SM per clock)\n\n",
              chip.exp_per_s / 1e9, chip.exp_per_s / per_sm_clock, chip.clock_hz / 1e6, chip.fma_per_s / 1e9,
              chip.fma_per_s / per_sm_clock);
  std::fflush(stdout);
  std::vector<ScanCase> cases = {{8, 1536, 2048, 16, 0.484, 2.51}, {4, 2048, 8192, 16, 1.45, 6.89},
                                 {1, 4096, 65536, 16, 6.06, 28.6}};
  if (quick) cases.resize(1);

  std::vector<Result> results;
  std::vector<std::string> slice_notes;
  for (const ScanCase& c : cases) {
    const DType bf = DType::bf16;
    Tensor u = gpu_rand({c.batch, c.d_inner, c.L}, bf, 1, -1, 1);
    Tensor delta = gpu_rand({c.batch, c.d_inner, c.L}, bf, 2, -3, 0);
    Tensor z = gpu_rand({c.batch, c.d_inner, c.L}, bf, 3, -1, 1);
    Tensor B = gpu_rand({c.batch, 1, c.N, c.L}, bf, 4, -1, 1);
    Tensor C = gpu_rand({c.batch, 1, c.N, c.L}, bf, 5, -1, 1);
    Tensor A = gpu_rand({c.d_inner, c.N}, DType::f32, 6, -8, -0.5);
    Tensor D = gpu_rand({c.d_inner}, DType::f32, 7, 0.5, 1.5);
    Tensor bias = gpu_rand({c.d_inner}, DType::f32, 8, -4, -2);
    Tensor dy = gpu_rand({c.batch, c.d_inner, c.L}, bf, 9, -1, 1);
    double fwd_ms = 0.0, bwd_ms = 0.0;
    {
      auto fwd = cuda::selective_scan_fwd(u, delta, A, B, C, D, z, bias, true, Tensor());
      std::array<bool, 9> needs{true, true, true, true, true, true, true, true, false};
      fwd_ms = time_ms([&] { cuda::selective_scan_fwd(u, delta, A, B, C, D, z, bias, true, Tensor()); }, 5);
      bwd_ms = time_ms([&] {
        cuda::selective_scan_bwd(u, delta, A, B, C, D, z, bias, true, Tensor(), fwd.chunk_states, dy, Tensor(), needs);
      }, 3);
    }
    // The unfused baseline after the fused timings; its workspace goes back to the driver before
    // the next case so the fused kernels never run with it cached.
    const int64_t slice = unfused_slice_channels(c.batch, c.d_inner, c.L, c.N, kUnfusedBudgetBytes);
    const UnfusedScanInputs in{u, delta, A, B, C, D, z, bias, true, Tensor()};
    const double unfused_fwd_ms = time_ms([&] { unfused_selective_scan(in, Tensor(), Tensor(), slice); }, 1, 3, 1);
    const double unfused_both_ms = time_ms([&] { unfused_selective_scan(in, dy, Tensor(), slice); }, 1, 3, 1);
    cuda::synchronize();
    cuda::empty_cache();
    const int64_t slices = (c.d_inner + slice - 1) / slice;
    slice_notes.push_back(shape_of(c) + ": " + std::to_string(slices) + (slices == 1 ? " slice" : " slices") +
                          " of " + std::to_string(slice) + " channels, " +
                          std::to_string(int(unfused_workspace_bytes(c.batch, slice, c.L, c.N) / 1e9 + 0.5)) +
                          " GB of f32 workspace");

    // Minimal traffic: forward reads u, delta, z, B, C and writes y; the backward also reads dy
    // and writes du, ddelta, dz, dB, dC (A, D, bias and states are negligible).
    const double seq = double(c.batch * c.d_inner * c.L) * 2, bc = double(c.batch * c.N * c.L) * 2;
    const double fwd_bytes = 4 * seq + 2 * bc;
    const double bwd_bytes = 4 * seq + 2 * bc + 3 * seq + 2 * bc;
    const ScanWork fwd_work = fused_scan_work(c.batch, c.d_inner, c.L, c.N, false);
    const ScanWork bwd_work = fused_scan_work(c.batch, c.d_inner, c.L, c.N, true);
    results.push_back({shape_of(c), "fwd", fwd_ms, fwd_bytes, c.mamba_fwd_ms, fwd_work, unfused_fwd_ms});
    results.push_back({shape_of(c), "fwd+bwd", fwd_ms + bwd_ms, fwd_bytes + bwd_bytes, c.mamba_fwd_bwd_ms,
                       {fwd_work.exps + bwd_work.exps, fwd_work.fmas + bwd_work.fmas}, unfused_both_ms});
    std::fprintf(stderr, "bench scan: %s done\n", shape_of(c).c_str());
  }

  bool all_faster = true;
  std::printf("### time, memory traffic and peers\n\n");
  std::printf("| (batch, d_inner, L, N) | pass | ms | min bytes | GB/s | of copy | mamba_ssm ms | speed-up |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Result& r : results) {
    const double gbps = r.bytes / (r.ms * 1e-3) / 1e9;
    all_faster = all_faster && r.ms < r.mamba_ms;
    std::printf("| %s | %s | %.3f | %.0f MB | %.0f | %.1f%% | %.3f | %.2fx |\n", r.shape.c_str(), r.pass.c_str(),
                r.ms, r.bytes / 1e6, gbps, 100.0 * gbps / copy, r.mamba_ms, r.mamba_ms / r.ms);
  }
  std::printf("\n### exponentials, FMAs and the unfused version\n\n");
  std::printf("| (batch, d_inner, L, N) | pass | G exp | exp G/s | of chip | G FMA | FMA G/s | of chip | unfused ms | "
              "fused speed-up |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Result& r : results) {
    const double exp_rate = r.work.exps / (r.ms * 1e-3), fma_rate = r.work.fmas / (r.ms * 1e-3);
    std::printf("| %s | %s | %.2f | %.0f | %.1f%% | %.1f | %.0f | %.1f%% | %.3f | %.2fx |\n", r.shape.c_str(),
                r.pass.c_str(), r.work.exps / 1e9, exp_rate / 1e9, 100.0 * exp_rate / chip.exp_per_s, r.work.fmas / 1e9,
                fma_rate / 1e9, 100.0 * fma_rate / chip.fma_per_s, r.unfused_ms, r.unfused_ms / r.ms);
  }
  std::printf("\nCounts: our fused kernels' exponentials and FMAs (bench/scan_bench.h, fused_scan_work: forward 1 exp2 "
              "and 5 FMAs per (b, d, t, n) plus 3 exps per (b, d, t); backward 2 exps and 20 FMAs per (b, d, t, n) "
              "plus 7 exps per (b, d, t)); rates against the chip's measured above.\n");
  std::printf("Unfused: bench/scan_unfused.cu, separate kernels with Δ, exp(Δ·A), Δ·B·u, the states and the state "
              "gradient in global memory (f32); d_inner in slices of channels so the workspace stays within "
              "%.0f GB, times summed over the slices:\n", kUnfusedBudgetBytes / 1e9);
  for (const std::string& note : slice_notes) std::printf("  %s\n", note.c_str());
  std::printf("\nbench scan: %s\n", all_faster ? "faster than mamba_ssm on every case" : "slower than mamba_ssm on some cases");
  std::fflush(stdout);
  return all_faster ? 0 : 1;
}

}  // namespace scanline::bench
