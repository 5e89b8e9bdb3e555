#pragma once
// The engine behind the elementwise kernel files (elementwise_binary.cu, elementwise_unary.cu,
// elementwise_compare.cu): one functor per op, applied to up to three broadcast operands and
// written to a fresh contiguous output.
//
// Two kernels per functor:
// - vector_kernel, the fast path: every operand is dense (contiguous with the output's shape),
//   a one-element scalar, a row repeated over leading dims ((rows, n) + (n)), or a column
//   repeated along the last dim ((rows, n) * (rows, 1)), and the dense/row pointers are aligned.
//   Each thread moves kUnroll packs of V elements (16 bytes of the widest type: Vec16 for the
//   data) per operand, all loads issued before any store, in a grid-stride loop with 64-bit
//   indices; the n % V tail is done element by element.
// - strided_kernel, the general path: any strides and broadcasting through StridedLayout, with
//   32-bit index division when the output has fewer than 2^31 elements and 64-bit otherwise.
#include <algorithm>
#include <atomic>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda::elementwise {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;          // packs in flight per operand and thread
constexpr int kBlocksPerSm = 32;    // grid cap; grid-stride loops take the rest

// The type a kernel computes in: fp32 for f32/bf16/f16, f64 for f64, int64 for integers and
// bool (the CPU reference's acc_t).
template <typename T> struct MathOf { using type = math_t<T>; };
template <> struct MathOf<int32_t> { using type = int64_t; };
template <> struct MathOf<int64_t> { using type = int64_t; };
template <> struct MathOf<bool> { using type = int64_t; };
template <typename T> using ew_math_t = typename MathOf<T>::type;

template <typename T>
__device__ __forceinline__ ew_math_t<T> to_math(T v) {
  if constexpr (std::is_integral_v<T>) return ew_math_t<T>(v);
  else return load_math(&v);
}
template <typename T>
__device__ __forceinline__ T from_math_value(ew_math_t<T> v) {
  if constexpr (std::is_integral_v<T>) return T(v);
  else return from_math<T>(v);
}

// Math functions of the compute type (fp32 or f64), the ones the CPU reference calls.
__device__ __forceinline__ float m_exp(float x) { return expf(x); }
__device__ __forceinline__ double m_exp(double x) { return ::exp(x); }
__device__ __forceinline__ float m_log(float x) { return logf(x); }
__device__ __forceinline__ double m_log(double x) { return ::log(x); }
__device__ __forceinline__ float m_log1p(float x) { return log1pf(x); }
__device__ __forceinline__ double m_log1p(double x) { return ::log1p(x); }
__device__ __forceinline__ float m_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double m_sqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float m_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double m_tanh(double x) { return ::tanh(x); }
__device__ __forceinline__ float m_erf(float x) { return erff(x); }
__device__ __forceinline__ double m_erf(double x) { return ::erf(x); }
__device__ __forceinline__ float m_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double m_abs(double x) { return ::fabs(x); }
__device__ __forceinline__ float m_pow(float x, float y) { return powf(x, y); }
__device__ __forceinline__ double m_pow(double x, double y) { return ::pow(x, y); }

// V consecutive elements moved as one aligned access (Vec16 when V * sizeof(T) == 16).
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};
static_assert(sizeof(Pack<float, 4>) == sizeof(Vec16<float>) && alignof(Pack<float, 4>) == alignof(Vec16<float>));

// Elements per pack: 16 bytes of the widest operand.
template <typename... T>
constexpr int pack_width() { return int(16 / std::max({sizeof(T)...})); }

// How the fast path reads an operand at output element i.
enum class Access : int {
  dense,   // ptr[i]
  scalar,  // ptr[0]
  row,     // ptr[i % inner]: a trailing block repeated over the leading dims
  col,     // ptr[i / inner]: one value per `inner` consecutive outputs
};

template <typename T>
struct FastOperand {
  const T* ptr = nullptr;
  int64_t inner = 1;
  Access access = Access::dense;
};

template <typename T>
struct StridedOperand {
  const T* ptr = nullptr;  // element 0 of the view (storage + offset)
  StridedLayout layout;
};

// 64-bit division that takes the 32-bit unit when both operands fit.
__device__ __forceinline__ uint64_t div_u64(uint64_t a, uint64_t b) {
  return ((a | b) >> 32) == 0 ? uint64_t(uint32_t(a) / uint32_t(b)) : a / b;
}
__device__ __forceinline__ uint64_t mod_u64(uint64_t a, uint64_t b) {
  return ((a | b) >> 32) == 0 ? uint64_t(uint32_t(a) % uint32_t(b)) : a % b;
}

template <typename T>
__device__ __forceinline__ T load_one(const FastOperand<T>& op, int64_t i) {
  uint64_t index = uint64_t(i);
  if (op.access == Access::scalar) index = 0;
  else if (op.access == Access::row) index = mod_u64(index, uint64_t(op.inner));
  else if (op.access == Access::col) index = div_u64(index, uint64_t(op.inner));
  return op.ptr[index];
}

// The pack of output elements [j * V, j * V + V). Row and col operands have inner % V == 0, so a
// pack never straddles a row.
template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const FastOperand<T>& op, int64_t j) {
  const uint64_t first = uint64_t(j) * V;
  if (op.access == Access::dense) return *reinterpret_cast<const Pack<T, V>*>(op.ptr + first);
  if (op.access == Access::row)
    return *reinterpret_cast<const Pack<T, V>*>(op.ptr + mod_u64(first, uint64_t(op.inner)));
  const T s = op.access == Access::scalar ? op.ptr[0] : op.ptr[div_u64(first, uint64_t(op.inner))];
  Pack<T, V> p;
#pragma unroll
  for (int e = 0; e < V; ++e) p.v[e] = s;
  return p;
}

template <int Arity, typename F, typename X0, typename X1, typename X2>
__device__ __forceinline__ auto call(const F& f, const X0& x0, const X1& x1, const X2& x2) {
  if constexpr (Arity == 1) return f(x0);
  else if constexpr (Arity == 2) return f(x0, x1);
  else return f(x0, x1, x2);
}

template <int V, typename Out, typename I0, typename I1, typename I2, int Arity, typename F>
__global__ void __launch_bounds__(kThreads)
    vector_kernel(Out* __restrict__ out, int64_t n, F f, FastOperand<I0> a0, FastOperand<I1> a1, FastOperand<I2> a2) {
  const int64_t nvec = n / V;
  const int64_t step = int64_t(gridDim.x) * (kThreads * kUnroll);
  for (int64_t base = int64_t(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x; base < nvec; base += step) {
    Pack<I0, V> p0[kUnroll];
    Pack<I1, V> p1[kUnroll];
    Pack<I2, V> p2[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t j = base + int64_t(k) * kThreads;
      if (j < nvec) {
        p0[k] = load_pack<V>(a0, j);
        if constexpr (Arity > 1) p1[k] = load_pack<V>(a1, j);
        if constexpr (Arity > 2) p2[k] = load_pack<V>(a2, j);
      }
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t j = base + int64_t(k) * kThreads;
      if (j < nvec) {
        Pack<Out, V> r;
#pragma unroll
        for (int e = 0; e < V; ++e) r.v[e] = call<Arity>(f, p0[k].v[e], p1[k].v[e], p2[k].v[e]);
        *reinterpret_cast<Pack<Out, V>*>(out + j * V) = r;
      }
    }
  }
  // The last n % V (< V <= kThreads) elements.
  if (blockIdx.x == 0) {
    const int64_t i = nvec * V + threadIdx.x;
    if (i < n) {
      I0 x0 = load_one(a0, i);
      I1 x1{};
      I2 x2{};
      if constexpr (Arity > 1) x1 = load_one(a1, i);
      if constexpr (Arity > 2) x2 = load_one(a2, i);
      out[i] = call<Arity>(f, x0, x1, x2);
    }
  }
}

// Storage offset of row-major element `linear` of a layout. The outermost dim needs no division
// (linear is in range), so a 1-d layout costs none.
template <typename Index>
__device__ __forceinline__ int64_t offset_of(const StridedLayout& l, Index linear) {
  int64_t off = 0;
#pragma unroll
  for (int d = kMaxDims - 1; d >= 1; --d) {  // static indices keep the layout in parameter space
    if (d < l.ndim) {
      const Index size = Index(l.sizes[d]);
      const Index q = linear / size;
      off += int64_t(linear - q * size) * l.strides[d];
      linear = q;
    }
  }
  return l.ndim > 0 ? off + int64_t(linear) * l.strides[0] : 0;
}

template <typename Index, int Arity, typename Out, typename I0, typename I1, typename I2, typename F>
__device__ __forceinline__ void strided_loop(Out* __restrict__ out, Index n, const F& f, const StridedOperand<I0>& a0,
                                             const StridedOperand<I1>& a1, const StridedOperand<I2>& a2) {
  const Index step = Index(gridDim.x) * kThreads;
  for (Index i = Index(blockIdx.x) * kThreads + threadIdx.x; i < n; i += step) {
    I0 x0 = a0.ptr[offset_of(a0.layout, i)];
    I1 x1{};
    I2 x2{};
    if constexpr (Arity > 1) x1 = a1.ptr[offset_of(a1.layout, i)];
    if constexpr (Arity > 2) x2 = a2.ptr[offset_of(a2.layout, i)];
    out[i] = call<Arity>(f, x0, x1, x2);
  }
}

template <typename Out, typename I0, typename I1, typename I2, int Arity, typename F>
__global__ void __launch_bounds__(kThreads)
    strided_kernel(Out* __restrict__ out, int64_t n, F f, StridedOperand<I0> a0, StridedOperand<I1> a1,
                   StridedOperand<I2> a2) {
  // Below 2^31 elements every size and the loop index fit 32 bits (no overflow of i + step).
  if (n <= int64_t(INT32_MAX)) strided_loop<uint32_t, Arity>(out, uint32_t(n), f, a0, a1, a2);
  else strided_loop<int64_t, Arity>(out, n, f, a0, a1, a2);
}

// ---- host side ---------------------------------------------------------------------------------

inline int multiprocessor_count(int device) {
  static std::atomic<int> cache[64] = {};
  int count = device >= 0 && device < 64 ? cache[device].load(std::memory_order_relaxed) : 0;
  if (count == 0) {
    CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    if (device >= 0 && device < 64) cache[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

inline bool aligned_to(const void* p, size_t alignment) { return reinterpret_cast<uintptr_t>(p) % alignment == 0; }

// Fills `op` with how the fast path reads t broadcast to `shape`; false when it cannot.
template <int V, typename T>
bool fast_operand(const Tensor& t, const Shape& shape, int64_t n, FastOperand<T>& op) {
  op.ptr = data_at<const T>(t);
  constexpr size_t alignment = alignof(Pack<T, V>);
  if (t.numel() == 1) {
    op.access = Access::scalar;
    return true;
  }
  if (t.numel() == n && t.is_contiguous()) {
    op.access = Access::dense;
    return aligned_to(op.ptr, alignment);
  }
  StridedLayout l = layout_of(t, shape);
  if (l.ndim == 1 && l.strides[0] == 1) {
    op.access = Access::dense;
    return aligned_to(op.ptr, alignment);
  }
  if (l.ndim == 2 && l.sizes[1] % V == 0) {
    op.inner = l.sizes[1];
    if (l.strides[0] == 0 && l.strides[1] == 1) {
      op.access = Access::row;
      return aligned_to(op.ptr, alignment);
    }
    if (l.strides[0] == 1 && l.strides[1] == 0) {
      op.access = Access::col;
      return true;
    }
  }
  return false;
}

template <typename T>
StridedOperand<T> strided_operand(const Tensor& t, const Shape& shape) {
  return {data_at<const T>(t), layout_of(t, shape)};
}

// Writes out[i] = f(t0[i], t1[i], t2[i]) (the first Arity operands, broadcast to out's shape) on
// out's device and current stream. out must be a fresh contiguous tensor; I0..I2 are the
// operands' device storage types (unused ones: char).
template <typename Out, typename I0, typename I1, typename I2, int Arity, typename F>
void launch(const char* name, const Tensor& out, const F& f, const Tensor& t0, const Tensor& t1 = Tensor(),
            const Tensor& t2 = Tensor()) {
  static_assert(Arity >= 1 && Arity <= 3);
  const int64_t n = out.numel();
  if (n == 0) return;
  SCANLINE_CHECK(out.is_contiguous(), name, ": expected a contiguous output but found ", describe(out));
  const int device = out.device().index;
  DeviceGuard guard(device);
  cudaStream_t stream = current_stream();
  const Shape& shape = out.shape();
  const int64_t max_blocks = int64_t(multiprocessor_count(device)) * kBlocksPerSm;
  Out* o = data_at<Out>(out);

  constexpr int V = Arity == 1 ? pack_width<Out, I0>()
                               : (Arity == 2 ? pack_width<Out, I0, I1>() : pack_width<Out, I0, I1, I2>());
  FastOperand<I0> f0;
  FastOperand<I1> f1;
  FastOperand<I2> f2;
  bool fast = aligned_to(o, alignof(Pack<Out, V>)) && fast_operand<V>(t0, shape, n, f0);
  if constexpr (Arity > 1) fast = fast && fast_operand<V>(t1, shape, n, f1);
  if constexpr (Arity > 2) fast = fast && fast_operand<V>(t2, shape, n, f2);
  if (fast) {
    const int64_t packs = n / V;
    const unsigned blocks = blocks_for(packs, kThreads * kUnroll, max_blocks);
    vector_kernel<V, Out, I0, I1, I2, Arity, F><<<blocks, kThreads, 0, stream>>>(o, n, f, f0, f1, f2);
    CUDA_CHECK_LAUNCH(name);
    return;
  }
  StridedOperand<I0> s0 = strided_operand<I0>(t0, shape);
  StridedOperand<I1> s1;
  StridedOperand<I2> s2;
  if constexpr (Arity > 1) s1 = strided_operand<I1>(t1, shape);
  if constexpr (Arity > 2) s2 = strided_operand<I2>(t2, shape);
  strided_kernel<Out, I0, I1, I2, Arity, F><<<blocks_for(n, kThreads, max_blocks), kThreads, 0, stream>>>(
      o, n, f, s0, s1, s2);
  CUDA_CHECK_LAUNCH(name);
}

// Checks shared by the launchers: defined CUDA tensors on one device.
inline void check_operands(const char* op, std::initializer_list<std::pair<const Tensor*, const char*>> operands) {
  const Tensor* first = nullptr;
  for (auto [t, name] : operands) {
    check_cuda_tensor(op, *t, name);
    if (!first) first = t;
    SCANLINE_CHECK(t->device() == first->device(), op, ": expected all tensors on one device but found ",
                   describe(*first), " and ", describe(*t));
  }
}

}  // namespace scanline::cuda::elementwise
