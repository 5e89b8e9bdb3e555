#include "core/cuda/stream.h"

#include <cstdlib>
#include <mutex>
#include <vector>

#include "core/cuda/cuda_check.h"

namespace scanline::cuda {
namespace {

constexpr int kMaxDevices = 64;
thread_local cudaStream_t thread_streams[kMaxDevices] = {};

// One scanline stream per device, shared by every thread that did not set its own.
cudaStream_t default_stream(int device) {
  static std::mutex mutex;
  static cudaStream_t streams[kMaxDevices] = {};
  std::lock_guard<std::mutex> lock(mutex);
  if (!streams[device]) {
    DeviceGuard guard(device);
    CUDA_CHECK(cudaStreamCreateWithFlags(&streams[device], cudaStreamNonBlocking));
  }
  return streams[device];
}

int resolve(int device) {
  int d = device < 0 ? current_device() : device;
  SCANLINE_CHECK(d < kMaxDevices, "cuda: device index ", d, " is beyond the supported ", kMaxDevices);
  return d;
}

}  // namespace

bool sync_after_launch() {
  static const bool enabled = [] {
    const char* v = std::getenv("SCANLINE_CUDA_SYNC_CHECK");
    return v && v[0] == '1';
  }();
  return enabled;
}

int current_device() {
  int device = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void set_device(int device) { CUDA_CHECK(cudaSetDevice(device)); }

cudaStream_t current_stream(int device) {
  int d = resolve(device);
  return thread_streams[d] ? thread_streams[d] : default_stream(d);
}

void set_current_stream(cudaStream_t stream, int device) { thread_streams[resolve(device)] = stream; }

void synchronize(int device) { CUDA_CHECK(cudaStreamSynchronize(current_stream(device))); }

DeviceGuard::DeviceGuard(int device) : previous_(current_device()) {
  if (device != previous_) set_device(device);
}
DeviceGuard::~DeviceGuard() {
  if (cudaSetDevice(previous_) != cudaSuccess) (void)cudaGetLastError();  // destructors never throw
}

StreamGuard::StreamGuard(cudaStream_t stream) : device_(current_device()), previous_(thread_streams[device_]) {
  thread_streams[device_] = stream;
}
StreamGuard::~StreamGuard() { thread_streams[device_] = previous_; }

}  // namespace scanline::cuda
