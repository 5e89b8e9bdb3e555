#pragma once
// Device-side helpers shared by every kernel file: float conversion of storage types and
// warp/block reductions.
#include "core/cuda/launch.h"

namespace scanline::cuda {

// Math type of a storage type: float for every floating type but double.
template <typename T> struct MathTypeOf { using type = float; };
template <> struct MathTypeOf<double> { using type = double; };
template <typename T> using math_t = typename MathTypeOf<T>::type;

template <typename T> __device__ __forceinline__ math_t<T> load_math(const T* p) { return math_t<T>(*p); }
template <> __device__ __forceinline__ float load_math(const __nv_bfloat16* p) { return __bfloat162float(*p); }
template <> __device__ __forceinline__ float load_math(const __half* p) { return __half2float(*p); }
template <typename T> __device__ __forceinline__ T from_math(math_t<T> v) { return T(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_math<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_math<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` must hold 32 values; the call synchronizes the block.
template <typename T>
__device__ __forceinline__ T block_sum(T v, T* scratch) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : T(0);
  return warp_sum(v);
}

template <typename T>
__device__ __forceinline__ T block_max(T v, T* scratch, T lowest) {
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : lowest;
  return warp_max(v);
}

}  // namespace scanline::cuda
