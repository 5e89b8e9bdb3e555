#pragma once
// Raw memory for storages. CPU memory is 64-byte aligned; CUDA memory comes from the caching
// allocator in core/cuda/ when the build has CUDA.
#include <cstddef>

#include "core/device.h"

namespace scanline {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes, Device device) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, Device device) = 0;
};

Allocator& allocator_for(Device device);  // Error for CUDA in a CPU-only build

// Copies bytes between any two devices (CPU-CPU is memcpy; CUDA copies are stream-ordered on the
// current stream and complete before returning when host memory is involved).
using CopyBytesFn = void (*)(void* dst, Device dst_device, const void* src, Device src_device,
                             size_t nbytes);
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

}  // namespace scanline

namespace scanline {
class Tensor;
// dst += src elementwise (same shape, dtype and device; any strides): the autograd engine sums
// gradients with it.
void accumulate_into(const Tensor& dst, const Tensor& src);
}  // namespace scanline
