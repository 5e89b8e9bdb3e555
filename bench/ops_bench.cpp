#include "bench/ops_bench.h"

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "bench/kernel_rows.h"
#include "bench/timing.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/random.h"
#include "cuda/device_query.h"
#include "ops/ops.h"

namespace scanline::bench {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Dense bf16 tensor-core peak of the card, for the matmul ratio (0: unknown, ratio not shown).
double peak_bf16_tflops(const std::string& name) {
  if (name.find("H100") != std::string::npos)
    return name.find("PCIe") != std::string::npos ? 756.0 : 989.0;
  if (name.find("H200") != std::string::npos) return 989.0;
  return 0.0;
}

Row copy_row(size_t bytes) {
  void* src = cuda::device_allocate(bytes, cuda::current_device(), cuda::current_stream());
  void* dst = cuda::device_allocate(bytes, cuda::current_device(), cuda::current_stream());
  CUDA_CHECK(cudaMemsetAsync(src, 1, bytes, cuda::current_stream()));
  double ms = time_ms([&] {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cuda::current_stream()));
  });
  cuda::synchronize();
  cuda::device_free(src);
  cuda::device_free(dst);
  return {"device copy (roofline)", std::to_string(int(bytes / kMiB)) + " MiB", ms, 2.0 * double(bytes), 0.0, 0.0};
}

// 10^5 alloc/free pairs of mixed sizes, 64 blocks live at a time (host time; no kernels).
Row allocator_row() {
  const size_t sizes[] = {512, 4096, 100000, 1 << 20, 3 << 20, 16 << 20, 777, 65536};
  std::vector<void*> live(64, nullptr);
  int device = cuda::current_device();
  cudaStream_t stream = cuda::current_stream();
  const int pairs = 100000;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < pairs; ++i) {
    void*& slot = live[size_t(i) % live.size()];
    if (slot) cuda::device_free(slot);
    slot = cuda::device_allocate(sizes[(size_t(i) * 7 + size_t(i) / 3) % 8], device, stream);
  }
  for (void* p : live) cuda::device_free(p);
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  std::printf("allocator: %d alloc/free pairs of mixed sizes (512 B .. 16 MiB, 64 live) in %.2f ms (target < 50 ms): %s\n",
              pairs, ms, ms < 50.0 ? "met" : "NOT MET");
  return {"allocator 1e5 alloc/free pairs", "mixed 512 B..16 MiB", ms, 0.0, 0.0, 0.0};
}

}  // namespace

int run_ops_bench(bool quick) {
  SCANLINE_CHECK(cuda::device_count() > 0, "bench ops: no CUDA device found");
  std::string name = cuda::device_name(0);
  std::printf("scanline bench ops on %s (sm_%d)\n", name.c_str(), cuda::compute_capability(0));
  NoGradGuard no_grad;
  const size_t bytes = quick ? size_t(32 * kMiB) : size_t(256 * kMiB);
  Row copy = copy_row(bytes);
  double copy_gbps = copy.bytes / (copy.ms * 1e-3) / 1e9;
  std::printf("measured device copy bandwidth: %.0f GB/s (%zu MiB)\n", copy_gbps, size_t(bytes / kMiB));

  std::vector<Row> bandwidth{copy};
  append_elementwise_rows(bandwidth, bytes);
  append_norm_rows(bandwidth, bytes);
  append_cross_entropy_rows(bandwidth, quick);
  bool ok = print_table("bandwidth-bound ops (ratio to the measured copy)", bandwidth, copy_gbps, 0.0);

  std::vector<Row> compute;
  append_matmul_rows(compute, quick);
  ok = print_table("matrix products (ratio to the dense bf16 peak)", compute, copy_gbps, peak_bf16_tflops(name)) && ok;

  Row alloc = allocator_row();
  ok = ok && alloc.ms < 50.0;
  std::printf("\nbench ops: %s\n", ok ? "all targets met" : "some targets NOT met");
  return ok ? 0 : 1;
}

}  // namespace scanline::bench
