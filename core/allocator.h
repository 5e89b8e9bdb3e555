#pragma once
// Raw memory for storages. CPU memory is 64-byte aligned; the CUDA backend registers its caching
// allocator for Device::Kind::cuda when it is linked in.
#include <cstddef>

#include "core/device.h"

namespace scanline {

class Allocator {
 public:
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes, Device device) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, Device device) = 0;
};

Allocator& allocator_for(Device device);               // Error if none is registered
void register_allocator(Device::Kind kind, Allocator* allocator);

// Copies bytes between any two devices (CPU-CPU is memcpy; CUDA copies go through the backend).
using CopyBytesFn = void (*)(void* dst, Device dst_device, const void* src, Device src_device,
                             size_t nbytes);
void register_copy_bytes(CopyBytesFn fn);
void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

}  // namespace scanline

namespace scanline {
class Tensor;
// dst += src elementwise (same shape and dtype; dst contiguous). The autograd engine sums
// gradients with it; CPU here, CUDA through the registered backend function.
using AccumulateFn = void (*)(const Tensor& dst, const Tensor& src);
void register_accumulate(AccumulateFn fn);
void accumulate_into(const Tensor& dst, const Tensor& src);
}  // namespace scanline
