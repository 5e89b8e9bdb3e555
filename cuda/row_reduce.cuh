#pragma once
// Device helpers of the per-row kernels (softmax, cross-entropy): packed loads and stores of W
// contiguous elements, fast exp in fp32, the online (running max, rescaled sum) softmax update,
// and reductions over a warp or a block in a fixed order (deterministic).
#include <cmath>
#include <limits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda::rowwise {

constexpr unsigned kFullMask = 0xffffffffu;

// W contiguous elements; W * sizeof(T) is 16 (one vector access) or W is 1.
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

// The widest pack of T: 16 bytes.
template <typename T> constexpr int kVecWidth = int(16 / sizeof(T));

template <typename T, int W>
__device__ __forceinline__ Pack<T, W> load_pack(const T* p) {
  Pack<T, W> r;
  if constexpr (sizeof(T) * W == 16) *reinterpret_cast<int4*>(&r) = __ldg(reinterpret_cast<const int4*>(p));
  else
#pragma unroll
    for (int e = 0; e < W; ++e) r.v[e] = p[e];
  return r;
}

// Streaming variants (evict-first) for data read or written once, like logits rows.
template <typename T, int W>
__device__ __forceinline__ Pack<T, W> load_pack_stream(const T* p) {
  Pack<T, W> r;
  if constexpr (sizeof(T) * W == 16) *reinterpret_cast<int4*>(&r) = __ldcs(reinterpret_cast<const int4*>(p));
  else
#pragma unroll
    for (int e = 0; e < W; ++e) r.v[e] = p[e];
  return r;
}

template <typename T, int W>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, W>& v) {
  if constexpr (sizeof(T) * W == 16) *reinterpret_cast<int4*>(p) = *reinterpret_cast<const int4*>(&v);
  else
#pragma unroll
    for (int e = 0; e < W; ++e) p[e] = v.v[e];
}

template <typename T, int W>
__device__ __forceinline__ void store_pack_stream(T* p, const Pack<T, W>& v) {
  if constexpr (sizeof(T) * W == 16) __stcs(reinterpret_cast<int4*>(p), *reinterpret_cast<const int4*>(&v));
  else
#pragma unroll
    for (int e = 0; e < W; ++e) p[e] = v.v[e];
}

// max that ignores a NaN (one instruction): row kernels let a NaN reach the sum of exp instead,
// which makes the row's result NaN as the CPU reference does.
__device__ __forceinline__ float fast_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double fast_max(double a, double b) { return fmax(a, b); }

template <typename A>
__device__ __forceinline__ A negative_infinity() { return -std::numeric_limits<A>::infinity(); }

constexpr float kLog2e = 1.4426950408889634f;

__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// exp in the math type: ex2.approx for fp32 (relative error about 1e-6 over the softmax range),
// the accurate exp for f64.
__device__ __forceinline__ float fast_exp(float x) { return exp2_approx(x * kLog2e); }
__device__ __forceinline__ double fast_exp(double x) { return ::exp(x); }

__device__ __forceinline__ float log_of(float x) { return logf(x); }
__device__ __forceinline__ double log_of(double x) { return ::log(x); }

// v -> exp(v - m) for a fixed m. v - m first (exact when v is near m, so large logits keep
// their precision), then ex2.approx in fp32.
template <typename A>
struct ExpShift {
  A m;
  __device__ __forceinline__ explicit ExpShift(A max) : m(max) {}
  __device__ __forceinline__ A operator()(A v) const { return fast_exp(v - m); }
};

struct MaxFn {  // NaN-ignoring, like fast_max
  template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return fast_max(a, b); }
};
struct SumFn {
  template <typename A> __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};

// Reduces v over a group: kGroup == 32 a warp, kGroup == 0 the whole block (blockDim.x a multiple
// of 32, at most 1024; `scratch` holds 32 values; every thread of the block must call it, and it
// synchronizes). Every thread of the group gets the result.
template <int kGroup, typename A, typename Fn>
__device__ __forceinline__ A group_reduce(A v, Fn fn, A identity, A* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fn(v, __shfl_xor_sync(kFullMask, v, offset));
  if constexpr (kGroup == 32) {
    return v;
  } else {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    __syncthreads();  // scratch may still be read by the previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : identity;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fn(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
  }
}

// Folds N packs into a thread's running max m and sum s of exp(v - m) (online softmax). The max
// ignores NaN, which reaches s through exp instead (the row's result is NaN, as on the CPU);
// rows may start with -inf. m starts at -inf and s at 0.
template <typename T, int W, int N>
__device__ __forceinline__ void online_update(const Pack<T, W> (&v)[N], math_t<T>& m, math_t<T>& s) {
  using A = math_t<T>;
  A pm = m;
#pragma unroll
  for (int u = 0; u < N; ++u)
#pragma unroll
    for (int e = 0; e < W; ++e) pm = fast_max(pm, load_math(&v[u].v[e]));
  if (pm != m) {  // the max grew: rescale the sum (from -inf: s * 0)
    s *= fast_exp(m - pm);
    m = pm;
  }
  const ExpShift<A> shift(m == negative_infinity<A>() ? A(0) : m);
#pragma unroll
  for (int u = 0; u < N; ++u)
#pragma unroll
    for (int e = 0; e < W; ++e) s += shift(load_math(&v[u].v[e]));
}

// Combines the threads' online (m, s) over the group in a fixed tree: returns the row's max and
// leaves the row's sum of exp(v - max) in s (every thread of the group).
template <int kGroup, typename A>
__device__ __forceinline__ A online_combine(A m, A& s, A* scratch) {
  const A row_m = group_reduce<kGroup>(m, MaxFn{}, negative_infinity<A>(), scratch);
  if (m != row_m) s *= fast_exp(m - row_m);
  s = group_reduce<kGroup>(s, SumFn{}, A(0), scratch);
  return row_m;
}

// The thread's slot in a group of rows: a warp per row (kGroup 32) or a block per row (0).
template <int kGroup>
struct GroupIndex {
  int tid, nthreads;
  int64_t first, step;
  __device__ __forceinline__ GroupIndex() {
    if constexpr (kGroup == 32) {
      const int warps = blockDim.x >> 5;
      tid = threadIdx.x & 31;
      nthreads = 32;
      first = int64_t(blockIdx.x) * warps + (threadIdx.x >> 5);
      step = int64_t(gridDim.x) * warps;
    } else {
      tid = threadIdx.x;
      nthreads = blockDim.x;
      first = blockIdx.x;
      step = gridDim.x;
    }
  }
};

}  // namespace scanline::cuda::rowwise
