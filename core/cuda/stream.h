#pragma once
// The current CUDA stream of each device, per thread. Every kernel and async copy goes on it.
// By default it is one non-blocking stream per device made by scanline (never the legacy
// default stream, which would serialize against everything).
#include <cuda_runtime.h>

namespace scanline::cuda {

int current_device();
void set_device(int device);
cudaStream_t current_stream(int device = -1);  // -1: the current device
void set_current_stream(cudaStream_t stream, int device = -1);
void synchronize(int device = -1);  // waits for the current stream

// Makes `device` current for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
};

// Makes `stream` the current stream of the current device for the guard's lifetime.
class StreamGuard {
 public:
  explicit StreamGuard(cudaStream_t stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  cudaStream_t previous_;
};

}  // namespace scanline::cuda
