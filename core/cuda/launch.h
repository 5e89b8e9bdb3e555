#pragma once
// Host-side launch helpers shared by every kernel file (compiles with g++ or nvcc): dtype mapping
// to CUDA's types, launch sizing with 64-bit indices, strided layouts passed to kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"
#include "core/dtype.h"
#include "core/tensor.h"

namespace scanline::cuda {

// The CUDA type with the same bits as a scanline storage type.
template <typename T> struct DeviceTypeOf { using type = T; };
template <> struct DeviceTypeOf<BFloat16> { using type = __nv_bfloat16; };
template <> struct DeviceTypeOf<Half> { using type = __half; };
template <typename T> using device_t = typename DeviceTypeOf<T>::type;

// Calls fn.template operator()<T>() with the device type of an f32/bf16/f16 (and f64) dtype.
template <typename Fn>
decltype(auto) dispatch_floating_device(DType dtype, const char* op, Fn&& fn) {
  return dispatch_floating(dtype, op, [&]<typename T>() { return fn.template operator()<device_t<T>>(); });
}

// A grid that covers n items with `threads` per block, capped so grid-stride loops take the rest.
inline unsigned blocks_for(int64_t n, int threads, int64_t max_blocks = 65535LL * 16) {
  int64_t b = (n + threads - 1) / threads;
  return unsigned(b < 1 ? 1 : (b > max_blocks ? max_blocks : b));
}

// 16-byte vector of T for vectorized loads and stores of contiguous data.
template <typename T>
struct alignas(16) Vec16 {
  static constexpr int size = 16 / sizeof(T);
  T v[size];
};

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Up to 8 dims of sizes and element strides, passed by value to kernels that walk arbitrary
// strided or broadcast views. offset(i) maps a row-major linear index to a storage offset.
constexpr int kMaxDims = 8;
struct StridedLayout {
  int ndim = 0;
  int64_t sizes[kMaxDims] = {};
  int64_t strides[kMaxDims] = {};
  __host__ __device__ __forceinline__ int64_t offset(int64_t linear) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      int64_t s = sizes[d];
      off += (linear % s) * strides[d];
      linear /= s;
    }
    return off;
  }
};

// The layout of t read as `shape` (t broadcast to it; strides 0 on broadcast dims).
StridedLayout layout_of(const Tensor& t, const Shape& shape);
inline StridedLayout layout_of(const Tensor& t) { return layout_of(t, t.shape()); }
// The same from sizes and element strides (size-1 dims dropped, contiguous runs merged).
StridedLayout layout_of_dims(const Shape& shape, const std::vector<int64_t>& strides);

// Pointer to element 0 of t's storage (kernels add the tensor's offset themselves via layouts,
// or use data_at for a dense tensor).
template <typename T>
T* storage_ptr(const Tensor& t) { return static_cast<T*>(t.impl()->storage->data()); }
template <typename T>
T* data_at(const Tensor& t) { return storage_ptr<T>(t) + t.offset(); }

void check_cuda_tensor(const char* op, const Tensor& t, const char* name);

}  // namespace scanline::cuda
