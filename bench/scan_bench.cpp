#include "bench/scan_bench.h"

#include <cstdio>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "bench/timing.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/random.h"
#include "cuda/device_query.h"
#include "cuda/selective_scan.h"

namespace scanline::bench {
namespace {

struct ScanCase {
  int64_t batch, d_inner, L, N;
  double mamba_fwd_ms, mamba_fwd_bwd_ms;  // official mamba_ssm kernel, H100 (issue 4; copy 2.94 TB/s)
};

Tensor gpu_rand(const Shape& shape, DType dtype, uint64_t seed, double low, double high) {
  Generator gen(seed);
  return contiguous_copy(rand(shape, gen, {.dtype = DType::f32}, low, high), dtype, Device::cuda(0));
}

double copy_gbps() {
  const size_t bytes = size_t(256) << 20;
  Tensor a = empty({int64_t(bytes)}, {.dtype = DType::b8, .device = Device::cuda(0)});
  Tensor b = empty({int64_t(bytes)}, {.dtype = DType::b8, .device = Device::cuda(0)});
  double ms = time_ms([&] {
    CUDA_CHECK(cudaMemcpyAsync(b.raw_data(), a.raw_data(), bytes, cudaMemcpyDeviceToDevice, cuda::current_stream()));
  });
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

}  // namespace

int run_scan_bench(bool quick) {
  SCANLINE_CHECK(cuda::device_count() > 0, "bench scan: no CUDA device found");
  NoGradGuard no_grad;
  std::printf("scanline bench scan on %s; bf16 u, delta, z, B, C; f32 A, D, delta_bias; softplus and gate on\n",
              cuda::device_name(0).c_str());
  const double copy = copy_gbps();
  std::printf("measured device copy bandwidth: %.0f GB/s\n\n", copy);
  std::vector<ScanCase> cases = {{8, 1536, 2048, 16, 0.484, 2.51}, {4, 2048, 8192, 16, 1.45, 6.89},
                                 {1, 4096, 65536, 16, 6.06, 28.6}};
  if (quick) cases.resize(1);
  std::printf("| (batch, d_inner, L, N) | pass | ms | min bytes | GB/s | of copy | mamba_ssm ms | speed-up |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
  bool all_faster = true;
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
    auto fwd = cuda::selective_scan_fwd(u, delta, A, B, C, D, z, bias, true, Tensor());
    std::array<bool, 9> needs{true, true, true, true, true, true, true, true, false};
    double fwd_ms = time_ms([&] { cuda::selective_scan_fwd(u, delta, A, B, C, D, z, bias, true, Tensor()); }, 5);
    double bwd_ms = time_ms([&] {
      cuda::selective_scan_bwd(u, delta, A, B, C, D, z, bias, true, Tensor(), fwd.chunk_states, dy, Tensor(), needs);
    }, 3);
    // Minimal traffic: forward reads u, delta, z, B, C and writes y; the backward also reads dy
    // and writes du, ddelta, dz, dB, dC (A, D, bias and states are negligible).
    const double seq = double(c.batch * c.d_inner * c.L) * 2, bc = double(c.batch * c.N * c.L) * 2;
    const double fwd_bytes = 4 * seq + 2 * bc;
    const double bwd_bytes = 4 * seq + 2 * bc + 3 * seq + 2 * bc;
    std::string shape = "(" + std::to_string(c.batch) + ", " + std::to_string(c.d_inner) + ", " +
                        std::to_string(c.L) + ", " + std::to_string(c.N) + ")";
    auto row = [&](const char* pass, double ms, double bytes, double ref) {
      double gbps = bytes / (ms * 1e-3) / 1e9;
      all_faster = all_faster && ms < ref;
      std::printf("| %s | %s | %.3f | %.0f MB | %.0f | %.1f%% | %.3f | %.2fx |\n", shape.c_str(), pass, ms,
                  bytes / 1e6, gbps, 100.0 * gbps / copy, ref, ref / ms);
    };
    row("fwd", fwd_ms, fwd_bytes, c.mamba_fwd_ms);
    row("fwd+bwd", fwd_ms + bwd_ms, fwd_bytes + bwd_bytes, c.mamba_fwd_bwd_ms);
    std::fflush(stdout);
  }
  std::printf("\nbench scan: %s\n", all_faster ? "faster than mamba_ssm on every case" : "slower than mamba_ssm on some cases");
  return all_faster ? 0 : 1;
}

}  // namespace scanline::bench
