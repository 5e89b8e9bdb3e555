#pragma once
// Shared by cuda/rms_norm_fwd.cu and cuda/rms_norm_bwd.cu: the math type of a pair of storage
// types, packs of W contiguous elements (16-byte vector loads and stores, converted to the math
// type), and the host helpers both launchers use.
#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda::rms {

// ---- packs of W contiguous elements, converted to the math type on load ---------------------

// The math type of a kernel over two storage types: f64 when either is f64, else f32.
template <typename T, typename S>
using pair_math_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<S, double>, double, float>;

// Elements of one pack on the vector path: 16 bytes of the narrower of the two row dtypes (the
// wider one then moves 32 bytes a pack, two 16-byte words).
template <typename T, typename S>
constexpr int kVecWidth = int(16 / (sizeof(T) < sizeof(S) ? sizeof(T) : sizeof(S)));

// Packs a thread holds on the register paths: 128 bytes of math values (32 f32, 16 f64), at most
// 8 packs.
template <int W, typename A>
constexpr int kMaxPacks = std::clamp(int(128 / sizeof(A)) / W, 1, 8);

template <typename A, typename X>
__device__ __forceinline__ A to_acc(X v) { return A(load_math(&v)); }
template <typename X, typename A>
__device__ __forceinline__ X from_acc(A v) { return from_math<X>(math_t<X>(v)); }

// kVec: p is 16-byte aligned and W * sizeof(X) is a multiple of 16 (whole 16-byte words).
template <int W, bool kVec, typename A, typename X>
__device__ __forceinline__ void load_pack(const X* __restrict__ p, A (&out)[W]) {
  if constexpr (kVec) {
    static_assert((sizeof(X) * W) % 16 == 0, "a vector pack is whole 16-byte words");
    constexpr int kWords = int(sizeof(X) * W / 16);
    alignas(16) X v[W];
#pragma unroll
    for (int c = 0; c < kWords; ++c) reinterpret_cast<int4*>(v)[c] = __ldg(reinterpret_cast<const int4*>(p) + c);
#pragma unroll
    for (int e = 0; e < W; ++e) out[e] = to_acc<A>(v[e]);
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) out[e] = to_acc<A>(p[e]);
  }
}

template <int W, bool kVec, typename X, typename A>
__device__ __forceinline__ void store_pack(X* __restrict__ p, const A (&in)[W]) {
  alignas(16) X v[W];
#pragma unroll
  for (int e = 0; e < W; ++e) v[e] = from_acc<X>(in[e]);
  if constexpr (kVec) {
    static_assert((sizeof(X) * W) % 16 == 0, "a vector pack is whole 16-byte words");
#pragma unroll
    for (int c = 0; c < int(sizeof(X) * W / 16); ++c)
      reinterpret_cast<int4*>(p)[c] = reinterpret_cast<const int4*>(v)[c];
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) p[e] = v[e];
  }
}

// weight pack, or ones without a weight.
template <int W, bool kVec, typename A, typename T>
__device__ __forceinline__ void load_weight(const T* __restrict__ weight, int64_t col, A (&out)[W]) {
  if (weight) {
    load_pack<W, kVec>(weight + col, out);
  } else {
#pragma unroll
    for (int e = 0; e < W; ++e) out[e] = A(1);
  }
}

// ---- host side ---------------------------------------------------------------------------------

inline int round_up32(int64_t n) { return int((n + 31) / 32 * 32); }

// Calls fn.template operator()<P>() for P packs a thread (1, 2, 4 or 8, at most kMax).
template <int kMax, typename Fn>
void dispatch_packs(int packs, Fn&& fn) {
  switch (packs) {
    case 1: return fn.template operator()<1>();
    case 2: if constexpr (kMax >= 2) return fn.template operator()<2>(); break;
    case 4: if constexpr (kMax >= 4) return fn.template operator()<4>(); break;
    case 8: if constexpr (kMax >= 8) return fn.template operator()<8>(); break;
    default: break;
  }
  SCANLINE_FAIL("rms_norm: no kernel for ", packs, " packs a thread");
}

template <typename T>
const T* ptr_or_null(const Tensor& t) { return t.defined() ? data_at<const T>(t) : nullptr; }
template <typename T>
T* mut_ptr_or_null(const Tensor& t) { return t.defined() ? data_at<T>(t) : nullptr; }

inline bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

inline int64_t rows_of(const Tensor& x) { return x.numel() / x.size(-1); }

// Calls fn.template operator()<T, R>() for x's device type T and residual device type R, where R is
// T or f32.
template <typename Fn>
void dispatch_pair(DType x_dtype, DType residual_dtype, const char* op, Fn&& fn) {
  dispatch_floating_device(x_dtype, op, [&]<typename T>() {
    if (residual_dtype == x_dtype) fn.template operator()<T, T>();
    else if (residual_dtype == DType::f32) fn.template operator()<T, float>();
    else SCANLINE_FAIL(op, ": expected a residual of dtype ", x_dtype, " or f32 but found ", residual_dtype);
  });
}

}  // namespace scanline::cuda::rms
