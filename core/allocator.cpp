#include "core/allocator.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

#ifdef SCANLINE_HAVE_CUDA
#include "core/cuda/caching_allocator.h"
#include "core/cuda/cuda_check.h"
#include "core/cuda/device_copy.h"
#include "core/cuda/stream.h"
#endif

namespace scanline {
namespace {

class CpuAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes, Device) override {
    if (nbytes == 0) return nullptr;
    size_t rounded = (nbytes + 63) / 64 * 64;  // aligned_alloc needs a multiple of the alignment
    void* ptr = std::aligned_alloc(64, rounded);
    SCANLINE_CHECK(ptr != nullptr, "cpu allocator: out of memory allocating ", nbytes, " bytes");
    return ptr;
  }
  void deallocate(void* ptr, size_t, Device) override { std::free(ptr); }
};

CpuAllocator cpu_allocator;

#ifdef SCANLINE_HAVE_CUDA
// Device memory from the caching allocator, on the device's current stream.
class CudaAllocator final : public Allocator {
 public:
  void* allocate(size_t nbytes, Device device) override {
    if (nbytes == 0) return nullptr;
    cudaStream_t stream = cuda::current_stream(device.index);
    void* ptr = cuda::device_allocate(nbytes, device.index, stream);
    // Tests poison fresh memory (all bits set: NaN in every float type) so an unwritten output
    // element cannot pass as a correct zero.
    static const bool poison = [] {
      const char* v = std::getenv("SCANLINE_CUDA_POISON");
      return v && v[0] == '1';
    }();
    if (poison) {
      cuda::DeviceGuard guard(device.index);
      CUDA_CHECK(cudaMemsetAsync(ptr, 0xff, nbytes, stream));
    }
    return ptr;
  }
  void deallocate(void* ptr, size_t, Device) override {
    if (ptr) cuda::device_free(ptr);
  }
};
CudaAllocator cuda_caching_allocator;
Allocator* const cuda_allocator = &cuda_caching_allocator;
CopyBytesFn const device_copy = &cuda::copy_bytes;
#else
Allocator* const cuda_allocator = nullptr;
CopyBytesFn const device_copy = nullptr;
#endif

}  // namespace

Allocator& allocator_for(Device device) {
  if (device.is_cpu()) return cpu_allocator;
  SCANLINE_CHECK(cuda_allocator != nullptr, "allocator: ", device,
                 " requested but this build has no CUDA backend (configure with SCANLINE_CUDA=ON)");
  return *cuda_allocator;
}

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  SCANLINE_CHECK(device_copy != nullptr, "copy: from ", src_device, " to ", dst_device,
                 " needs the CUDA backend, which this build lacks");
  device_copy(dst, dst_device, src, src_device, nbytes);
}

}  // namespace scanline
