#include "core/cuda/device_copy.h"

#include <cstring>
#include <mutex>

#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"

namespace scanline::cuda {
namespace {

constexpr size_t kStagingThreshold = 1 << 20;
constexpr size_t kChunk = 8 << 20;

// Two pinned buffers with an event each, reused by every large copy (one copy at a time).
struct Staging {
  std::mutex mutex;
  void* buffers[2] = {nullptr, nullptr};
  cudaEvent_t done[2] = {nullptr, nullptr};

  void ensure() {
    if (buffers[0]) return;
    for (int i = 0; i < 2; ++i) {
      CUDA_CHECK(cudaHostAlloc(&buffers[i], kChunk, cudaHostAllocDefault));
      CUDA_CHECK(cudaEventCreateWithFlags(&done[i], cudaEventDisableTiming));
    }
  }
};

Staging& staging() {
  static auto* s = new Staging();  // pinned memory lives for the process
  return *s;
}

void host_to_device(void* dst, const void* src, size_t nbytes, cudaStream_t stream) {
  Staging& s = staging();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.ensure();
  for (size_t off = 0, i = 0; off < nbytes; off += kChunk, ++i) {
    size_t n = std::min(kChunk, nbytes - off);
    int b = int(i % 2);
    CUDA_CHECK(cudaEventSynchronize(s.done[b]));  // the buffer's previous DMA has finished
    std::memcpy(s.buffers[b], static_cast<const char*>(src) + off, n);
    CUDA_CHECK(cudaMemcpyAsync(static_cast<char*>(dst) + off, s.buffers[b], n, cudaMemcpyHostToDevice, stream));
    CUDA_CHECK(cudaEventRecord(s.done[b], stream));
  }
  CUDA_CHECK(cudaStreamSynchronize(stream));
}

void device_to_host(void* dst, const void* src, size_t nbytes, cudaStream_t stream) {
  Staging& s = staging();
  std::lock_guard<std::mutex> lock(s.mutex);
  s.ensure();
  size_t chunks = (nbytes + kChunk - 1) / kChunk;
  auto enqueue = [&](size_t i) {
    size_t off = i * kChunk, n = std::min(kChunk, nbytes - off);
    CUDA_CHECK(cudaMemcpyAsync(s.buffers[i % 2], static_cast<const char*>(src) + off, n, cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaEventRecord(s.done[i % 2], stream));
  };
  enqueue(0);
  for (size_t i = 0; i < chunks; ++i) {
    if (i + 1 < chunks) enqueue(i + 1);  // the next chunk streams in while this one is copied out
    size_t off = i * kChunk, n = std::min(kChunk, nbytes - off);
    CUDA_CHECK(cudaEventSynchronize(s.done[i % 2]));
    std::memcpy(static_cast<char*>(dst) + off, s.buffers[i % 2], n);
  }
}

}  // namespace

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cuda() && src_device.is_cuda()) {
    DeviceGuard guard(dst_device.index);
    cudaStream_t stream = current_stream(dst_device.index);
    if (dst_device.index == src_device.index) {
      CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, stream));
    } else {
      CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, nbytes, stream));
    }
    return;  // stream-ordered: later work on this stream sees the data
  }
  int device = dst_device.is_cuda() ? dst_device.index : src_device.index;
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream(device);
  bool to_device = dst_device.is_cuda();
  if (nbytes < kStagingThreshold) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
  } else if (to_device) {
    host_to_device(dst, src, nbytes, stream);
  } else {
    device_to_host(dst, src, nbytes, stream);
  }
}

}  // namespace scanline::cuda
