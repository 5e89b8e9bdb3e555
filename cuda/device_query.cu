#include "core/cuda/cuda_check.h"
#include "cuda/device_query.h"

namespace scanline::cuda {

int device_count() {
  int count = 0;
  // No driver or no device is an answer (zero), not an error.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

std::string device_name(int device) {
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return prop.name;
}

int compute_capability(int device) {
  int major = 0, minor = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  return major * 10 + minor;
}

namespace {
__global__ void fill_iota_kernel(float* dst, int n, float value) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) dst[i] = value * float(i);
}
}  // namespace

void fill_iota_roundtrip(float* host_dst, int n, float value) {
  float* device_buffer = nullptr;
  CUDA_CHECK(cudaMalloc(&device_buffer, size_t(n) * sizeof(float)));
  fill_iota_kernel<<<(n + 255) / 256, 256>>>(device_buffer, n, value);
  CUDA_CHECK_LAUNCH("fill_iota_kernel");
  CUDA_CHECK(cudaMemcpy(host_dst, device_buffer, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaFree(device_buffer));
}

}  // namespace scanline::cuda
