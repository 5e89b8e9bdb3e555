#include "bench/timing.h"

#include <algorithm>
#include <cstdio>

#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/tensor.h"

namespace scanline::bench {

double time_ms(const std::function<void()>& fn, int inner, int repeats, int warmup) {
  cudaStream_t stream = cuda::current_stream();
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<double> samples;
  for (int r = 0; r < repeats; ++r) {
    CUDA_CHECK(cudaEventRecord(start, stream));
    for (int i = 0; i < inner; ++i) fn();
    CUDA_CHECK(cudaEventRecord(stop, stream));
    CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    samples.push_back(double(ms) / inner);
  }
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  std::sort(samples.begin(), samples.end());
  return samples[samples.size() / 2];
}

double device_copy_gbps(size_t bytes) {
  Tensor a = empty({int64_t(bytes)}, {.dtype = DType::b8, .device = Device::cuda(0)});
  Tensor b = empty({int64_t(bytes)}, {.dtype = DType::b8, .device = Device::cuda(0)});
  const double ms = time_ms([&] {
    CUDA_CHECK(cudaMemcpyAsync(b.raw_data(), a.raw_data(), bytes, cudaMemcpyDeviceToDevice, cuda::current_stream()));
  });
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

bool print_table(const std::string& title, const std::vector<Row>& rows, double copy_gbps, double peak_tflops) {
  bool all_met = true;
  std::printf("\n### %s\n\n", title.c_str());
  std::printf("| op | shape | ms | GB/s | TFLOP/s | of roofline | target | met |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |\n");
  for (const Row& r : rows) {
    double gbps = r.bytes > 0 ? r.bytes / (r.ms * 1e-3) / 1e9 : 0.0;
    double tflops = r.flops > 0 ? r.flops / (r.ms * 1e-3) / 1e12 : 0.0;
    double ratio = r.bytes > 0 ? gbps / copy_gbps : (peak_tflops > 0 ? tflops / peak_tflops : 0.0);
    bool met = r.target <= 0.0 || ratio >= r.target;
    all_met = all_met && met;
    std::printf("| %s | %s | %.4f | %s | %s | %.1f%% | %s | %s |\n", r.name.c_str(), r.shape.c_str(), r.ms,
                r.bytes > 0 ? std::to_string(int(gbps + 0.5)).c_str() : "-",
                r.flops > 0 ? (std::to_string(tflops).substr(0, 6)).c_str() : "-", 100.0 * ratio,
                r.target > 0 ? (std::to_string(int(r.target * 100)) + "%").c_str() : "-",
                r.target > 0 ? (met ? "yes" : "NO") : "-");
  }
  std::fflush(stdout);
  return all_met;
}

}  // namespace scanline::bench
