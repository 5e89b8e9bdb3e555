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
//   indices; the n % V tail is done element by element. The common operand combinations
//   (with_access_kinds) get an instantiation with the access kinds fixed at compile time: no
//   per-pack branch, a scalar read once, row/col positions advanced without division. The
//   rest share one that reads the kinds at run time.
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
// vector_kernel's register cap: 4 resident blocks (1024 threads, 64 registers a thread) on an
// SM of 64K registers. Left to itself ptxas spends up to ~100 registers on bf16 kernels (2 blocks
// a SM, too few bytes in flight); at 64 the common f32/bf16 kernels do not spill (ptxas -v).
constexpr int kMinBlocks = 4;

// The type a kernel computes in: fp32 for f32/bf16/f16, f64 for f64, int64 for integers and
// bool (the CPU reference's acc_t).
template <typename T> struct MathOf { using type = math_t<T>; };
template <> struct MathOf<int32_t> { using type = int64_t; };
template <> struct MathOf<int64_t> { using type = int64_t; };
template <> struct MathOf<bool> { using type = int64_t; };
template <typename T> using ew_math_t = typename MathOf<T>::type;

// bf16 widens by a shift written in plain C++ (the same bits as __bfloat162float, NaNs included)
// rather than cvt.f32.bf16, whose 16-bit operand makes ptxas split every loaded 32-bit word into
// two registers up front; the compiler folds the shift into the word (w << 16, w & 0xffff0000).
template <typename T>
__device__ __forceinline__ ew_math_t<T> to_math(T v) {
  if constexpr (std::is_integral_v<T>) return ew_math_t<T>(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __uint_as_float(uint32_t(__bfloat16_as_ushort(v)) << 16);
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
  __device__ __forceinline__ T get(int e) const { return v[e]; }
};
static_assert(sizeof(Pack<float, 4>) == sizeof(Vec16<float>) && alignof(Pack<float, 4>) == alignof(Vec16<float>));

// The same bytes as Pack<T, V> for elements narrower than 32 bits (bf16, f16, bool), kept as the
// 32-bit words they were loaded as until get(e) shifts element e out. Held as a Pack, every
// element gets a register of its own as soon as the pack is loaded (the loads of kUnroll packs
// then need twice or four times the registers); from the word, a bf16 widens to fp32 with one
// shift or mask (to_math).
template <typename T, int V>
struct alignas(sizeof(T) * V) WordPack {
  static constexpr int kPerWord = int(4 / sizeof(T));
  uint32_t w[V / kPerWord];
  __device__ __forceinline__ T get(int e) const {
    const uint32_t bits = w[e / kPerWord] >> (8 * sizeof(T) * (e % kPerWord));
    if constexpr (std::is_same_v<T, bool>) return (bits & 0xffu) != 0;
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __ushort_as_bfloat16((unsigned short)(bits));
    else if constexpr (std::is_same_v<T, __half>) return __ushort_as_half((unsigned short)(bits));
    else static_assert(sizeof(T) == 0, "WordPack: unsupported element type");
  }
};

// How a vector path holds V loaded elements of T.
template <typename T, int V>
using LoadedPack = std::conditional_t<(sizeof(T) < 4 && (V * sizeof(T)) % 4 == 0), WordPack<T, V>, Pack<T, V>>;
static_assert(sizeof(LoadedPack<__nv_bfloat16, 8>) == 16 && alignof(LoadedPack<__nv_bfloat16, 8>) == 16);

// One value standing for all V elements of a pack (scalar and col operands).
template <typename T>
struct Splat {
  T value;
  __device__ __forceinline__ T get(int) const { return value; }
};

// Elements per pack: 16 bytes of the widest operand.
template <typename... T>
constexpr int pack_width() { return int(16 / std::max({sizeof(T)...})); }

// How the fast path reads an operand at output element i.
enum class Access : int {
  dense,   // ptr[i]
  scalar,  // ptr[0]
  row,     // ptr[i % inner]: a trailing block repeated over the leading dims
  col,     // ptr[i / inner]: one value per `inner` consecutive outputs
  any,     // template argument only: the kind is FastOperand::access, read at run time
};

template <typename T>
struct FastOperand {
  const T* ptr = nullptr;
  int64_t inner = 1;
  Access access = Access::dense;
  // Row and col operands only, set by the launcher for the grid it launches: the pack position
  // (q, r) = (j / packs, j % packs), packs = inner / V, is advanced without division. A thread
  // steps j by kThreads between its unrolled packs and by `iter` (step - (kUnroll - 1) * kThreads)
  // from its last pack of one grid-stride iteration to its first pack of the next.
  int64_t packs = 1;
  int64_t thread_q = 0, thread_r = 0;  // kThreads / packs, kThreads % packs
  int64_t iter_q = 0, iter_r = 0;      // iter / packs, iter % packs
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

// A loaded pack whose V elements are all s.
template <int V, typename T>
__device__ __forceinline__ LoadedPack<T, V> splat(T s) {
  LoadedPack<T, V> p;
  if constexpr (std::is_same_v<LoadedPack<T, V>, Pack<T, V>>) {
#pragma unroll
    for (int e = 0; e < V; ++e) p.v[e] = s;
  } else {
    uint32_t bits;
    if constexpr (sizeof(T) == 1) bits = 0x01010101u * uint32_t(*reinterpret_cast<const uint8_t*>(&s));
    else bits = 0x00010001u * uint32_t(*reinterpret_cast<const uint16_t*>(&s));
#pragma unroll
    for (int w = 0; w < V / LoadedPack<T, V>::kPerWord; ++w) p.w[w] = bits;
  }
  return p;
}

// The pack of output elements [j * V, j * V + V), with the access kind read at run time. Row and
// col operands have inner % V == 0, so a pack never straddles a row.
template <int V, typename T>
__device__ __forceinline__ LoadedPack<T, V> load_pack(const FastOperand<T>& op, int64_t j) {
  const uint64_t first = uint64_t(j) * V;
  if (op.access == Access::dense) return *reinterpret_cast<const LoadedPack<T, V>*>(op.ptr + first);
  if (op.access == Access::row)
    return *reinterpret_cast<const LoadedPack<T, V>*>(op.ptr + mod_u64(first, uint64_t(op.inner)));
  return splat<V>(op.access == Access::scalar ? op.ptr[0] : op.ptr[div_u64(first, uint64_t(op.inner))]);
}

// Reads one operand's packs along a thread's walk through the pack indices: load(j) gives pack
// j, then next() moves on by kThreads (to the thread's next unrolled pack) and next_iteration()
// by step - (kUnroll - 1) * kThreads (from its last unrolled pack to the first of its next
// grid-stride iteration). The access kind is a template argument, so the loop holds no branch on
// it; scalar operands are read once, row and col positions are kept without division.
template <int V, typename T, Access A>
struct PackReader;

template <int V, typename T>
struct PackReader<V, T, Access::dense> {
  const T* ptr;
  __device__ __forceinline__ PackReader(const FastOperand<T>& op, int64_t) : ptr(op.ptr) {}
  __device__ __forceinline__ LoadedPack<T, V> load(int64_t j) const {
    return *reinterpret_cast<const LoadedPack<T, V>*>(ptr + j * V);
  }
  __device__ __forceinline__ void next() {}
  __device__ __forceinline__ void next_iteration() {}
};

template <int V, typename T>
struct PackReader<V, T, Access::scalar> {
  Splat<T> value;
  __device__ __forceinline__ PackReader(const FastOperand<T>& op, int64_t) : value{op.ptr[0]} {}
  __device__ __forceinline__ Splat<T> load(int64_t) const { return value; }
  __device__ __forceinline__ void next() {}
  __device__ __forceinline__ void next_iteration() {}
};

// Pack position (q, r) of j within rows of `packs` packs, advanced by a precomputed (dq, dr)
// with dr < packs: one add, one compare and a conditional subtract per step.
struct RowPosition {
  int64_t q, r;
  __device__ __forceinline__ void init(int64_t j, int64_t packs) {
    q = int64_t(div_u64(uint64_t(j), uint64_t(packs)));
    r = j - q * packs;
  }
  __device__ __forceinline__ void advance(int64_t dq, int64_t dr, int64_t packs) {
    r += dr;
    q += dq;
    if (r >= packs) {
      r -= packs;
      ++q;
    }
  }
};

template <int V, typename T>
struct PackReader<V, T, Access::row> {
  FastOperand<T> op;
  RowPosition pos;
  __device__ __forceinline__ PackReader(const FastOperand<T>& o, int64_t first) : op(o) { pos.init(first, o.packs); }
  __device__ __forceinline__ LoadedPack<T, V> load(int64_t) const {
    return *reinterpret_cast<const LoadedPack<T, V>*>(op.ptr + pos.r * V);
  }
  __device__ __forceinline__ void next() { pos.advance(op.thread_q, op.thread_r, op.packs); }
  __device__ __forceinline__ void next_iteration() { pos.advance(op.iter_q, op.iter_r, op.packs); }
};

template <int V, typename T>
struct PackReader<V, T, Access::col> {
  FastOperand<T> op;
  RowPosition pos;
  __device__ __forceinline__ PackReader(const FastOperand<T>& o, int64_t first) : op(o) { pos.init(first, o.packs); }
  __device__ __forceinline__ Splat<T> load(int64_t) const { return {op.ptr[pos.q]}; }
  __device__ __forceinline__ void next() { pos.advance(op.thread_q, op.thread_r, op.packs); }
  __device__ __forceinline__ void next_iteration() { pos.advance(op.iter_q, op.iter_r, op.packs); }
};

template <int V, typename T>
struct PackReader<V, T, Access::any> {
  FastOperand<T> op;
  __device__ __forceinline__ PackReader(const FastOperand<T>& o, int64_t) : op(o) {}
  __device__ __forceinline__ LoadedPack<T, V> load(int64_t j) const { return load_pack<V>(op, j); }
  __device__ __forceinline__ void next() {}
  __device__ __forceinline__ void next_iteration() {}
};

template <int Arity, typename F, typename X0, typename X1, typename X2>
__device__ __forceinline__ auto call(const F& f, const X0& x0, const X1& x1, const X2& x2) {
  if constexpr (Arity == 1) return f(x0);
  else if constexpr (Arity == 2) return f(x0, x1);
  else return f(x0, x1, x2);
}

// One grid-stride iteration of vector_kernel: the packs base + k * kThreads (k < kUnroll) below
// nvec, all loads issued before any store. (A copy of the loop without the bounds checks for the
// full iterations made ptxas use more registers, not fewer.)
template <int V, int Arity, typename Out, typename F, typename R0, typename R1, typename R2>
__device__ __forceinline__ void vector_iteration(Out* __restrict__ out, int64_t base, int64_t nvec, const F& f, R0& r0,
                                                 R1& r1, R2& r2) {
  using P0 = decltype(r0.load(0));
  using P1 = decltype(r1.load(0));
  using P2 = decltype(r2.load(0));
  P0 p0[kUnroll];
  P1 p1[kUnroll];
  P2 p2[kUnroll];
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const int64_t j = base + int64_t(k) * kThreads;
    if (j < nvec) {
      p0[k] = r0.load(j);
      if constexpr (Arity > 1) p1[k] = r1.load(j);
      if constexpr (Arity > 2) p2[k] = r2.load(j);
    }
    if (k + 1 < kUnroll) {
      r0.next();
      r1.next();
      r2.next();
    }
  }
  r0.next_iteration();
  r1.next_iteration();
  r2.next_iteration();
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const int64_t j = base + int64_t(k) * kThreads;
    if (j < nvec) {
      Pack<Out, V> r;
#pragma unroll
      for (int e = 0; e < V; ++e) {
        if constexpr (Arity == 1) r.v[e] = f(p0[k].get(e));
        else if constexpr (Arity == 2) r.v[e] = f(p0[k].get(e), p1[k].get(e));
        else r.v[e] = f(p0[k].get(e), p1[k].get(e), p2[k].get(e));
      }
      *reinterpret_cast<Pack<Out, V>*>(out + j * V) = r;
    }
  }
}

// Stands in for the operands a functor does not take.
template <int V>
struct NoReader {
  template <typename T>
  __device__ __forceinline__ NoReader(const FastOperand<T>&, int64_t) {}
  __device__ __forceinline__ Splat<char> load(int64_t) const { return {}; }
  __device__ __forceinline__ void next() {}
  __device__ __forceinline__ void next_iteration() {}
};

template <int V, typename T, Access A, bool Used>
using ReaderFor = std::conditional_t<Used, PackReader<V, T, A>, NoReader<V>>;

// A0..A2: how each operand is read (Access::any: as its FastOperand says, at run time; ignored
// for the operands past Arity).
template <int V, Access A0, Access A1, Access A2, typename Out, typename I0, typename I1, typename I2, int Arity,
          typename F>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    vector_kernel(Out* __restrict__ out, int64_t n, F f, FastOperand<I0> a0, FastOperand<I1> a1, FastOperand<I2> a2) {
  const int64_t nvec = n / V;
  const int64_t step = int64_t(gridDim.x) * (kThreads * kUnroll);
  int64_t base = int64_t(blockIdx.x) * (kThreads * kUnroll) + threadIdx.x;
  ReaderFor<V, I0, A0, true> r0(a0, base);
  ReaderFor<V, I1, A1, (Arity > 1)> r1(a1, base);
  ReaderFor<V, I2, A2, (Arity > 2)> r2(a2, base);
  for (; base < nvec; base += step) vector_iteration<V, Arity>(out, base, nvec, f, r0, r1, r2);
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

// Sets a row or col operand's position steps for a grid whose grid-stride step is `step` packs.
template <int V, typename T>
void set_position_steps(FastOperand<T>& op, int64_t step) {
  if (op.access != Access::row && op.access != Access::col) return;
  op.packs = op.inner / V;
  op.thread_q = kThreads / op.packs;
  op.thread_r = kThreads % op.packs;
  const int64_t iter = step - (kUnroll - 1) * kThreads;
  op.iter_q = iter / op.packs;
  op.iter_r = iter % op.packs;
}

// Which operand combinations get a vector_kernel of their own (access kinds fixed at compile time);
// every other one runs the Access::any instantiation. same_shape: the operands all have the
// output's shape (unary backward), so only dense ones occur.
enum class Operands { broadcast, same_shape };

template <Operands Kind, int Arity, typename Fn>
void with_access_kinds(Access k0, Access k1, Access k2, Fn&& fn) {
  using enum Access;
  auto is = [&](Access a0, Access a1, Access a2) { return k0 == a0 && k1 == a1 && k2 == a2; };
  if constexpr (Arity == 1) {
    if (is(dense, any, any)) return fn.template operator()<dense, any, any>();
  } else if constexpr (Arity == 2) {
    if (is(dense, dense, any)) return fn.template operator()<dense, dense, any>();
    if constexpr (Kind == Operands::broadcast) {
      if (is(dense, scalar, any)) return fn.template operator()<dense, scalar, any>();
      if (is(scalar, dense, any)) return fn.template operator()<scalar, dense, any>();
      if (is(dense, row, any)) return fn.template operator()<dense, row, any>();
      if (is(dense, col, any)) return fn.template operator()<dense, col, any>();
    }
  } else {
    if (is(dense, dense, dense)) return fn.template operator()<dense, dense, dense>();
    if constexpr (Kind == Operands::broadcast) {  // where(cond, x, 0) and where(cond, 0, x)
      if (is(dense, dense, scalar)) return fn.template operator()<dense, dense, scalar>();
      if (is(dense, scalar, dense)) return fn.template operator()<dense, scalar, dense>();
    }
  }
  return fn.template operator()<any, any, any>();
}

// Writes out[i] = f(t0[i], t1[i], t2[i]) (the first Arity operands, broadcast to out's shape) on
// out's device and current stream. out must be a fresh contiguous tensor; I0..I2 are the
// operands' device storage types (unused ones: char).
template <typename Out, typename I0, typename I1, typename I2, int Arity, Operands Kind = Operands::broadcast,
          typename F>
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
    const int64_t step = int64_t(blocks) * (kThreads * kUnroll);
    set_position_steps<V>(f0, step);
    if constexpr (Arity > 1) set_position_steps<V>(f1, step);
    if constexpr (Arity > 2) set_position_steps<V>(f2, step);
    with_access_kinds<Kind, Arity>(f0.access, Arity > 1 ? f1.access : Access::any,
                                   Arity > 2 ? f2.access : Access::any, [&]<Access A0, Access A1, Access A2>() {
                                     vector_kernel<V, A0, A1, A2, Out, I0, I1, I2, Arity, F>
                                         <<<blocks, kThreads, 0, stream>>>(o, n, f, f0, f1, f2);
                                   });
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
