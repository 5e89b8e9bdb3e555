// Microbenchmarks of the chip's exp2 and FMA rates. Each thread runs kChains independent
// dependency chains (so the pipes, not the latencies, bound the rate), unrolled so that loop
// overhead takes a small share of the issue slots; one full wave of resident blocks on every SM.
// The chains' results are summed and written, so the compiler cannot drop the work, and they
// start from runtime values, so it cannot fold it either.
#include "bench/chip_rates.h"

#include <algorithm>
#include <cstdint>

#include "bench/timing.h"
#include "core/cuda/launch.h"

namespace scanline::bench {
namespace {

constexpr int kThreads = 256;
constexpr int kChains = 8;
constexpr int kUnroll = 32;  // steps of every chain per loop iteration
constexpr int64_t kOpsPerIteration = int64_t(kChains) * kUnroll;

// x <- 2^-x maps (0.5, 1) into itself: no overflow, no denormals, and every step one ex2
// (the negation is an operand modifier).
__global__ void __launch_bounds__(kThreads) exp_rate_kernel(float* out, int iterations, float seed) {
  float x[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) x[c] = seed + 0.03f * float(c) + 1e-6f * float(threadIdx.x);
  for (int i = 0; i < iterations; ++i) {
#pragma unroll
    for (int s = 0; s < kUnroll; ++s)
#pragma unroll
      for (int c = 0; c < kChains; ++c) x[c] = exp2f(-x[c]);
  }
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) sum += x[c];
  out[int64_t(blockIdx.x) * kThreads + threadIdx.x] = sum;
}

// x <- a·x + b with |a| < 1 stays bounded; one FFMA a step.
__global__ void __launch_bounds__(kThreads) fma_rate_kernel(float* out, int iterations, float a, float b) {
  float x[kChains];
#pragma unroll
  for (int c = 0; c < kChains; ++c) x[c] = b * float(c + 1) + 1e-6f * float(threadIdx.x);
  for (int i = 0; i < iterations; ++i) {
#pragma unroll
    for (int s = 0; s < kUnroll; ++s)
#pragma unroll
      for (int c = 0; c < kChains; ++c) x[c] = fmaf(x[c], a, b);
  }
  float sum = 0.0f;
#pragma unroll
  for (int c = 0; c < kChains; ++c) sum += x[c];
  out[int64_t(blockIdx.x) * kThreads + threadIdx.x] = sum;
}

// Blocks that fill every SM once (all resident together, so no tail wave).
template <typename Kernel>
int full_wave(Kernel kernel, int sms) {
  int per_sm = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, 0));
  return std::max(per_sm, 1) * sms;
}

// Iterations for about `ops` operations over the grid (at least one).
int iterations_for(double ops, int blocks) {
  const double per_iteration = double(blocks) * kThreads * double(kOpsPerIteration);
  return std::max(1, int(ops / per_iteration));
}

}  // namespace

ChipRates measure_chip_rates() {
  const int device = cuda::current_device();
  ChipRates r;
  int clock_khz = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&r.sms, cudaDevAttrMultiProcessorCount, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&clock_khz, cudaDevAttrClockRate, device));
  r.clock_hz = double(clock_khz) * 1e3;
  cudaStream_t stream = cuda::current_stream();

  // About 2 ms a launch on an H100 (~4e12 exp/s, ~3e13 FMA/s).
  const int exp_blocks = full_wave(exp_rate_kernel, r.sms);
  const int exp_iterations = iterations_for(8e9, exp_blocks);
  const int fma_blocks = full_wave(fma_rate_kernel, r.sms);
  const int fma_iterations = iterations_for(6e10, fma_blocks);
  Tensor out = empty({int64_t(std::max(exp_blocks, fma_blocks)) * kThreads}, {.dtype = DType::f32, .device = Device::cuda(device)});
  float* p = out.data_ptr<float>();

  const double exp_ms = time_ms([&] {
    exp_rate_kernel<<<exp_blocks, kThreads, 0, stream>>>(p, exp_iterations, 0.6f);
    CUDA_CHECK_LAUNCH("exp_rate_kernel");
  }, 5, 5, 2);
  const double fma_ms = time_ms([&] {
    fma_rate_kernel<<<fma_blocks, kThreads, 0, stream>>>(p, fma_iterations, 0.999f, 1e-3f);
    CUDA_CHECK_LAUNCH("fma_rate_kernel");
  }, 5, 5, 2);
  r.exp_per_s = double(exp_blocks) * kThreads * double(kOpsPerIteration) * exp_iterations / (exp_ms * 1e-3);
  r.fma_per_s = double(fma_blocks) * kThreads * double(kOpsPerIteration) * fma_iterations / (fma_ms * 1e-3);
  return r;
}

}  // namespace scanline::bench
