#include "bench/ssd_bench.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "bench/matrix_rate.h"
#include "bench/timing.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/random.h"
#include "cuda/device_query.h"
#include "cuda/ssd.h"

namespace scanline::bench {
namespace {

constexpr int64_t kChunk = 256;

struct SsdCase {
  SsdShape shape;
  double triton_fwd_ms, triton_fwd_bwd_ms;  // mamba_chunk_scan_combined on an H100 of this kind (issue 6)
};

// One printed row: a pass of one case.
struct Result {
  std::string shape, pass;
  double ms;
  SsdWork work;
  double triton_ms;
};

std::string shape_of(const SsdShape& s) {
  std::string out = "(";
  for (int64_t v : {s.batch, s.L, s.heads, s.headdim, s.N}) out += std::to_string(v) + ", ";
  return out + std::to_string(s.ngroups) + ")";
}

Tensor to_gpu(const Tensor& cpu, DType dtype) { return contiguous_copy(cpu, dtype, Device::cuda(0)); }

std::vector<float> uniform(int64_t n, Generator& gen, double low, double high) {
  return rand({n}, gen, {.dtype = DType::f32}, low, high).to_vector<float>();
}

double softplus_inverse(double delta) { return std::log(std::expm1(delta)); }

// Inputs as the Mamba-2 mixer hands them to the SSD: x, B, C standard normal (bf16); the dt bias
// set as mamba_ssm initialises it, softplus^-1 of a Δ log-uniform in [1e-3, 0.1] per head; dt
// such that softplus(dt + dt_bias) lies in [1e-3, 0.1] for every element too (dt + dt_bias
// uniform in a range 0.02 inside [softplus^-1(1e-3), softplus^-1(0.1)], so that dt's rounding to
// bf16, at most 2^-6 for |dt| < 4.7, keeps it inside: Δ about log-uniform over the range);
// A = −exp(U[log 1, log 16]) (A_log's initialisation); D per head around its initial 1.
struct SsdInputs {
  Tensor x, dt, A, B, C, D, dt_bias, grad_y;
};

SsdInputs make_inputs(const SsdShape& s, uint64_t seed) {
  Generator gen(seed);
  const DType bf = DType::bf16;
  SsdInputs in;
  in.x = to_gpu(randn({s.batch, s.L, s.heads, s.headdim}, gen, {.dtype = DType::f32}), bf);
  in.B = to_gpu(randn({s.batch, s.L, s.ngroups, s.N}, gen, {.dtype = DType::f32}), bf);
  in.C = to_gpu(randn({s.batch, s.L, s.ngroups, s.N}, gen, {.dtype = DType::f32}), bf);
  in.grad_y = to_gpu(randn({s.batch, s.L, s.heads, s.headdim}, gen, {.dtype = DType::f32}), bf);

  const double low = softplus_inverse(1e-3) + 0.02, high = softplus_inverse(0.1) - 0.02;
  std::vector<float> bias(size_t(s.heads)), A(size_t(s.heads));
  const std::vector<float> delta0 = uniform(s.heads, gen, std::log(std::log1p(std::exp(low))),
                                            std::log(std::log1p(std::exp(high))));
  const std::vector<float> a_log = uniform(s.heads, gen, 0.0, std::log(16.0));
  for (int64_t h = 0; h < s.heads; ++h) {
    bias[size_t(h)] = float(softplus_inverse(std::exp(double(delta0[size_t(h)]))));
    A[size_t(h)] = -std::exp(a_log[size_t(h)]);
  }
  std::vector<float> dt = uniform(s.batch * s.L * s.heads, gen, low, high);
  for (size_t i = 0; i < dt.size(); ++i) dt[i] -= bias[i % size_t(s.heads)];
  in.dt = to_gpu(from_vector<float>(dt, {s.batch, s.L, s.heads}), bf);
  in.dt_bias = to_gpu(from_vector<float>(bias, {s.heads}), DType::f32);
  in.A = to_gpu(from_vector<float>(A, {s.heads}), DType::f32);
  in.D = to_gpu(rand({s.heads}, gen, {.dtype = DType::f32}, 0.5, 1.5), DType::f32);
  return in;
}

}  // namespace

SsdWork ssd_work(const SsdShape& s, int64_t chunk_size, int64_t elem_bytes, bool backward) {
  const double P = double(s.headdim), N = double(s.N);
  double per_bh = 0.0;  // FLOPs summed over the chunks of one (batch row, head)
  for (int64_t start = 0; start < s.L; start += chunk_size) {
    const double len = double(std::min(chunk_size, s.L - start)), pairs = len * (len + 1.0) / 2.0;
    per_bh += backward ? 8.0 * len * P * N + 2.0 * pairs * (3.0 * N + 2.0 * P)
                       : 4.0 * len * P * N + 2.0 * pairs * (N + P);
  }
  const double e = double(elem_bytes);
  const double x = double(s.batch * s.L * s.heads * s.headdim) * e;  // x, y, grad_y, dx
  const double dt = double(s.batch * s.L * s.heads) * e;              // dt, ddt
  const double bc = double(s.batch * s.L * s.ngroups * s.N) * e;      // each of B, C, dB, dC
  const double params = 3.0 * double(s.heads) * 4.0;                  // A, D, dt_bias (or their grads)
  const double state = double(s.batch * s.heads * s.headdim * s.N) * 4.0;
  const double reads = x + dt + 2.0 * bc + params;
  SsdWork w;
  w.flops = per_bh * double(s.batch * s.heads);
  w.bytes = backward ? reads + x + (x + dt + 2.0 * bc + params) : reads + x + state;
  return w;
}

int run_ssd_bench(bool quick) {
  SCANLINE_CHECK(cuda::device_count() > 0, "bench ssd: no CUDA device found");
  NoGradGuard no_grad;
  std::printf("scanline bench ssd on %s; bf16 x, dt, B, C; f32 A, D (per head), dt_bias; softplus on, no z gate; "
              "chunk %lld\n", cuda::device_name(0).c_str(), static_cast<long long>(kChunk));
  const double copy = device_copy_gbps();
  std::printf("measured device copy bandwidth: %.0f GB/s (256 MiB)\n", copy);
  const MatrixRate matrix = measure_bf16_matrix_rate(8192);
  std::printf("measured bf16 matrix rate: %.0f TFLOP/s (cuBLASLt %lld^3 GEMM, fp32 accumulation, %.3f ms)\n\n",
              matrix.tflops, static_cast<long long>(matrix.n), matrix.ms);
  std::fflush(stdout);

  std::vector<SsdCase> cases = {{{8, 2048, 24, 64, 128, 1}, 0.705, 5.06}, {{4, 8192, 32, 64, 128, 8}, 1.04, 6.13}};
  if (quick) cases.resize(1);

  std::vector<Result> results;
  std::vector<std::string> memory_notes;
  for (const SsdCase& c : cases) {
    const SsdShape& s = c.shape;
    const char* why = nullptr;
    SCANLINE_CHECK(cuda::ssd_supports(s.headdim, s.N, kChunk, &why), "bench ssd: the CUDA kernels do not take ",
                   shape_of(s), " with chunk ", kChunk, ": ", why ? why : "unsupported");
    const SsdInputs in = make_inputs(s, 1);
    // Every gradient but z's (no gate) and the initial state's (none given).
    const std::array<bool, 9> needs{true, true, true, true, true, true, false, true, false};
    auto forward = [&] {
      return cuda::ssd_fwd(in.x, in.dt, in.A, in.B, in.C, in.D, Tensor(), in.dt_bias, true, kChunk, Tensor());
    };
    auto forward_backward = [&] {
      cuda::SsdForwardResult f = forward();
      cuda::ssd_bwd(in.x, in.dt, in.A, in.B, in.C, in.D, Tensor(), in.dt_bias, true, kChunk, Tensor(),
                    f.chunk_states, f.y_ungated, in.grad_y, Tensor(), needs);
    };
    const double fwd_ms = time_ms([&] { forward(); }, 10, 7, 3);
    const double both_ms = time_ms(forward_backward, 5, 7, 3);

    // Device memory one forward+backward takes beyond its inputs (outputs, gradients, the saved
    // chunk states and workspaces), from the caching allocator's peak.
    cuda::synchronize();
    const size_t before = cuda::allocator_stats(0).allocated;
    cuda::reset_peak(0);
    forward_backward();
    cuda::synchronize();
    const size_t peak = cuda::allocator_stats(0).peak_allocated;
    memory_notes.push_back(shape_of(s) + ": " + std::to_string(int64_t((peak - std::min(peak, before)) >> 20)) +
                           " MiB beyond the inputs' " + std::to_string(int64_t(before >> 20)) + " MiB");

    const SsdWork fwd = ssd_work(s, kChunk, 2, false), bwd = ssd_work(s, kChunk, 2, true);
    results.push_back({shape_of(s), "fwd", fwd_ms, fwd, c.triton_fwd_ms});
    results.push_back({shape_of(s), "fwd+bwd", both_ms, {fwd.flops + bwd.flops, fwd.bytes + bwd.bytes},
                       c.triton_fwd_bwd_ms});
    std::fprintf(stderr, "bench ssd: %s done\n", shape_of(s).c_str());
    cuda::empty_cache();
  }

  bool all_faster = true;
  std::printf("### SSD: time, FLOPs, bytes and the Triton kernels (bf16, chunk %lld)\n\n", static_cast<long long>(kChunk));
  std::printf("| (batch, L, heads, headdim, N, ngroups) | pass | ms | GFLOP | TFLOP/s | of matrix | min MB | GB/s | "
              "of copy | Triton ms | speed-up |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  for (const Result& r : results) {
    const double tflops = r.work.flops / (r.ms * 1e-3) / 1e12, gbps = r.work.bytes / (r.ms * 1e-3) / 1e9;
    all_faster = all_faster && r.ms < r.triton_ms;
    std::printf("| %s | %s | %.3f | %.1f | %.1f | %.1f%% | %.0f | %.0f | %.1f%% | %.3f | %.2fx |\n", r.shape.c_str(),
                r.pass.c_str(), r.ms, r.work.flops / 1e9, tflops, 100.0 * tflops / matrix.tflops, r.work.bytes / 1e6,
                gbps, 100.0 * gbps / copy, r.triton_ms, r.triton_ms / r.ms);
  }
  std::printf("\nFLOPs: the chunked algorithm's matrix products, causal halves only (bench/ssd_bench.h, ssd_work): "
              "per (b, chunk, h) forward 4·Q·P·N + Q(Q+1)·(N + P), backward 8·Q·P·N + Q(Q+1)·(3N + 2P); "
              "of matrix: against the %.0f TFLOP/s measured above.\n", matrix.tflops);
  std::printf("Bytes: inputs read once and outputs written once per pass (forward x, dt, B, C, A, D, dt_bias -> y, "
              "final_state; backward the same and grad_y -> the 7 gradients); of copy: against the %.0f GB/s above.\n",
              copy);
  std::printf("Triton: mamba_ssm's mamba_chunk_scan_combined on an H100 of this kind (issue 6). The PyTorch peer "
              "(bench/peers/ssd_torch.py) prints its own table and the ratios to this one.\n");
  std::printf("Device memory of one forward+backward:\n");
  for (const std::string& note : memory_notes) std::printf("  %s\n", note.c_str());
  std::printf("\nbench ssd: %s\n", all_faster ? "faster than the Triton kernels on every case"
                                             : "slower than the Triton kernels on some cases");
  std::fflush(stdout);
  return all_faster ? 0 : 1;
}

}  // namespace scanline::bench
