#include "core/cuda/device_utils.cuh"
#include "core/cuda/tensor_kernels.h"

#include <cstring>

namespace scanline::cuda {
namespace {

template <typename D, typename S>
__device__ __forceinline__ D convert(S s) {
  if constexpr (std::is_same_v<D, S>) return s;
  else if constexpr (std::is_same_v<D, bool>) return load_math(&s) != math_t<S>(0);
  else if constexpr (std::is_integral_v<S> && std::is_integral_v<D>) return D(s);
  else if constexpr (std::is_integral_v<D>) return D(load_math(&s));
  else if constexpr (std::is_same_v<S, double>) {
    // Round once: double -> bf16/f16 directly, not through float.
    if constexpr (std::is_same_v<D, __nv_bfloat16>) return __double2bfloat16(s);
    else if constexpr (std::is_same_v<D, __half>) return __double2half(s);
    else return D(s);
  } else if constexpr (std::is_integral_v<S>) return convert<D>(double(s));  // one rounding, as on the CPU
  else return from_math<D>(math_t<D>(load_math(&s)));
}


template <typename D, typename S>
__global__ void copy_kernel(D* dst, StridedLayout dl, const S* src, StridedLayout sl, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[dl.offset(i)] = convert<D>(src[sl.offset(i)]);
}

// Contiguous same-dtype copies are a cudaMemcpy; this handles 16-byte vectors of converted data.
template <typename D, typename S>
__global__ void copy_contiguous_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = convert<D>(src[i]);
}

template <typename T>
__global__ void fill_kernel(T* dst, StridedLayout l, T value, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[l.offset(i)] = value;
}

template <typename T>
__global__ void accumulate_kernel(T* dst, StridedLayout dl, const T* src, StridedLayout sl, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    T* d = dst + dl.offset(i);
    *d = from_math<T>(load_math(d) + load_math(src + sl.offset(i)));
  }
}

template <typename Fn>
decltype(auto) dispatch_all_device(DType dtype, const char* op, Fn&& fn) {
  return dispatch_all(dtype, op, [&]<typename T>() { return fn.template operator()<device_t<T>>(); });
}

constexpr int kThreads = 256;

}  // namespace

void copy_tensor(const Tensor& dst, const Tensor& src) {
  SCANLINE_CHECK(dst.device() == src.device() && dst.device().is_cuda() && dst.shape() == src.shape(),
                 "cuda copy: expected tensors of one shape on one CUDA device, found ", describe(dst), " and ",
                 describe(src));
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceGuard guard(dst.device().index);
  cudaStream_t stream = current_stream();
  dispatch_all_device(dst.dtype(), "copy", [&]<typename D>() {
    dispatch_all_device(src.dtype(), "copy", [&]<typename S>() {
      D* d = data_at<D>(dst);
      const S* s = data_at<const S>(src);
      if (dst.is_contiguous() && src.is_contiguous()) {
        copy_contiguous_kernel<D, S><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(d, s, n);
      } else {
        copy_kernel<D, S><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(d, layout_of(dst), s, layout_of(src), n);
      }
      CUDA_CHECK_LAUNCH("copy_kernel");
    });
  });
}

void fill_tensor(const Tensor& t, double value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  DeviceGuard guard(t.device().index);
  // The host converts the value with core's rounding rules; the kernel stores its bits.
  Tensor host_value = full({}, value, {.dtype = t.dtype()});
  dispatch_all_device(t.dtype(), "fill", [&]<typename T>() {
    T v;
    std::memcpy(&v, host_value.raw_data(), sizeof(T));
    fill_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(data_at<T>(t), layout_of(t), v, n);
    CUDA_CHECK_LAUNCH("fill_kernel");
  });
}

void accumulate_tensor(const Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  DeviceGuard guard(dst.device().index);
  dispatch_floating_device(dst.dtype(), "accumulate", [&]<typename T>() {
    accumulate_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, current_stream()>>>(
        data_at<T>(dst), layout_of(dst), data_at<const T>(src), layout_of(src), n);
    CUDA_CHECK_LAUNCH("accumulate_kernel");
  });
}

}  // namespace scanline::cuda
