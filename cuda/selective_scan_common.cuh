#pragma once
// Shared by cuda/selective_scan_fwd.cu and cuda/selective_scan_bwd.cu: the chunk plan (both
// kernels must cut time into the same chunks, because the backward restarts from the states the
// forward saved at chunk starts), item loads and stores, the discretization math and the
// warp-wide scans of the affine maps h -> a·h + b.
//
// Every scan here is warp-wide: lane k of a warp owns kItems consecutive steps, composes their
// maps sequentially in registers, and the warp combines the 32 composites with shuffles. No
// kernel needs a block barrier inside its time loop. For one state n a step t is the affine map
// f_t(h) = a_t·h + b_t (a_t = exp(Δ_t·A[n]), b_t = Δ_t·B_t[n]·u_t), and
//   (a1, b1) then (a2, b2)  =  (a1·a2, a2·b1 + b2)
// is associative; a chunk's states are the prefix scan of its maps applied to the state entering
// the chunk. The gradient runs the same operator backwards in time (see selective_scan_bwd.cu).
#include <algorithm>
#include <type_traits>

#include "core/cuda/device_utils.cuh"
#include "cuda/time_rows.h"

namespace scanline::cuda::scan {

// ---- the chunk plan (host) ------------------------------------------------------------------

// Largest state size N the CUDA kernels take (mamba_ssm has the same bound).
inline constexpr int64_t kMaxStateSize = 256;
// Steps a lane of the forward kernel owns per pass: a warp walks time 32 · 16 = 512 steps at a
// time, so the sequential work of a lane amortizes the shuffles of the warp scan.
inline constexpr int kFwdItems = 16;
// Shared memory a backward warp may spend on its dB/dC accumulators (2 · N · chunk math values):
// 16 KiB keeps about a dozen warps an SM resident for N = 16.
inline constexpr int64_t kWarpAccumulatorBytes = 16 * 1024;

struct ChunkPlan {
  int items = 0;       // backward steps a lane: 4, 2 or 1
  int64_t chunk = 0;   // 32 · items: the steps between saved states, one backward warp's work
  int64_t n_chunks = 0;
};

// The chunk plan of a scan over L steps with N states in a math type of math_bytes bytes: the
// longest chunk (128 steps) whose backward accumulators fit kWarpAccumulatorBytes, else 32 steps
// (up to 64 KiB a warp for N = 256). Depends on the shape only, so forward and backward always
// agree. Returns items == 0 when N is too large.
inline ChunkPlan plan_chunks(int64_t L, int64_t N, int64_t math_bytes) {
  ChunkPlan plan;
  if (N < 1 || N > kMaxStateSize || (math_bytes == 8 && N > kMaxStateSize / 2)) return plan;
  plan.items = 1;
  for (int items : {4, 2})
    if (2 * N * 32 * items * math_bytes <= kWarpAccumulatorBytes) {
      plan.items = items;
      break;
    }
  plan.chunk = 32 * int64_t(plan.items);
  plan.n_chunks = (L + plan.chunk - 1) / plan.chunk;
  return plan;
}

// Calls fn.template operator()<kItems>() for a plan's backward items per lane.
template <typename Fn>
void dispatch_plan(const ChunkPlan& plan, Fn&& fn) {
  if (plan.items == 4) return fn.template operator()<4>();
  if (plan.items == 2) return fn.template operator()<2>();
  if (plan.items == 1) return fn.template operator()<1>();
  SCANLINE_FAIL("selective_scan: no kernel for ", plan.items, " items a lane");
}

// Calls fn.template operator()<T>() for the device type of the scan's input dtype: f32, bf16 or
// f64 (the op rejects every other dtype before it gets here).
template <typename Fn>
void dispatch_scan_dtype(DType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case DType::f32: return fn.template operator()<float>();
    case DType::bf16: return fn.template operator()<__nv_bfloat16>();
    case DType::f64: return fn.template operator()<double>();
    default: SCANLINE_FAIL(op, ": expected f32, bf16 or f64 inputs but found ", dtype);
  }
}

// ---- math -------------------------------------------------------------------------------------

template <typename W>
inline constexpr W kLog2e = W(1.4426950408889634);

__device__ __forceinline__ float exp_m(float x) { return expf(x); }
__device__ __forceinline__ double exp_m(double x) { return exp(x); }
// 2^x as one MUFU.EX2 in f32 (2 ulp; results below 2^-126 flush to zero, which a decay factor
// may). The kernels scale A by log2(e) once per state, so that exp(Δ·A) = exp2(Δ·A·log2 e)
// costs a multiply and this instead of expf's longer sequence.
__device__ __forceinline__ float exp2_m(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double exp2_m(double x) { return exp2(x); }


// softplus(x) = max(x, 0) + log1p(exp(-|x|)): neither overflows nor loses digits for large |x|.
__device__ __forceinline__ float softplus_m(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ double softplus_m(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }

__device__ __forceinline__ float sigmoid_m(float x) { return __frcp_rn(1.0f + exp2_m(-x * kLog2e<float>)); }
__device__ __forceinline__ double sigmoid_m(double x) { return 1.0 / (1.0 + exp(-x)); }

// ---- loads and stores of a thread's kItems consecutive steps ----------------------------------

// The widest word that tiles kBytes: 16, 8 or 4 bytes (kBytes is a multiple of 4 here).
template <int kBytes>
using word_t = std::conditional_t<kBytes % 16 == 0, int4, std::conditional_t<kBytes % 8 == 0, int2, int>>;

// v[i] = e[i] as math values; e is 16-byte aligned.
template <int kItems, typename T, typename W>
__device__ __forceinline__ void convert_items(const T (&e)[kItems], W (&v)[kItems]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> && kItems % 2 == 0) {
    // A bf16 is the top half of its f32: one shift or mask a value (the generic conversion
    // spends a byte permute and a multiply on every odd item).
#pragma unroll
    for (int i = 0; i < kItems; i += 2) {
      const uint32_t w = *reinterpret_cast<const uint32_t*>(&e[i]);
      v[i] = __uint_as_float(w << 16);
      v[i + 1] = __uint_as_float(w & 0xffff0000u);
    }
  } else {
#pragma unroll
    for (int i = 0; i < kItems; ++i) v[i] = W(load_math(&e[i]));
  }
}

// v[i] = p[t0 + i] as math values, 0 past L. vec: p's row is aligned so that a full group of
// kItems starting at t0 (a multiple of kItems) may be read as whole words (vec_for, checked by
// the launcher).
template <int kItems, typename T, typename W>
__device__ __forceinline__ void load_items(const T* __restrict__ p, int64_t t0, int64_t L, bool vec, W (&v)[kItems]) {
  constexpr int kBytes = kItems * int(sizeof(T));
  if constexpr (kItems > 1 && kBytes % 4 == 0) {
    if (vec && t0 + kItems <= L) {
      using Word = word_t<kBytes>;
      alignas(16) T e[kItems];
#pragma unroll
      for (int w = 0; w < kBytes / int(sizeof(Word)); ++w)
        reinterpret_cast<Word*>(e)[w] = reinterpret_cast<const Word*>(p + t0)[w];
      convert_items(e, v);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) v[i] = t0 + i < L ? W(load_math(p + t0 + i)) : W(0);
}

// A lane's kItems raw values of one row, as stored (bf16 stays 2 bytes): the kernels load the
// next state's B and C into these while computing the current one, which hides the load latency
// without doubling the registers a prefetch in f32 would take.
template <int kItems, typename T>
struct RawItems {
  alignas(16) T e[kItems];
};

// r = p[0 .. kItems), p already at the lane's first step t0, zeros from step `valid` = L - t0 on.
// full: vec and all kItems steps before L, so whole words may be read (load_items' contract).
// The kernels walk a row per state with a running pointer and compute full/valid once: the
// per-state address and bounds arithmetic was a sixth of the backward's instructions.
template <int kItems, typename T>
__device__ __forceinline__ void load_raw(const T* __restrict__ p, bool full, int64_t valid, RawItems<kItems, T>& r) {
  constexpr int kBytes = kItems * int(sizeof(T));
  if constexpr (kItems > 1 && kBytes % 4 == 0) {
    if (full) {
      using Word = word_t<kBytes>;
#pragma unroll
      for (int w = 0; w < kBytes / int(sizeof(Word)); ++w)
        reinterpret_cast<Word*>(r.e)[w] = reinterpret_cast<const Word*>(p)[w];
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) r.e[i] = i < valid ? p[i] : from_math<T>(math_t<T>(0));
}

template <int kItems, typename T, typename W>
__device__ __forceinline__ void to_math(const RawItems<kItems, T>& r, W (&v)[kItems]) {
  convert_items(r.e, v);
}

// p[t0 + i] = v[i] for the steps before L (same vec contract as load_items).
template <int kItems, typename T, typename W>
__device__ __forceinline__ void store_items(T* __restrict__ p, int64_t t0, int64_t L, bool vec, const W (&v)[kItems]) {
  constexpr int kBytes = kItems * int(sizeof(T));
  if constexpr (kItems > 1 && kBytes % 4 == 0) {
    if (vec && t0 + kItems <= L) {
      using Word = word_t<kBytes>;
      alignas(16) T e[kItems];
#pragma unroll
      for (int i = 0; i < kItems; ++i) e[i] = from_math<T>(math_t<T>(v[i]));
#pragma unroll
      for (int w = 0; w < kBytes / int(sizeof(Word)); ++w)
        reinterpret_cast<Word*>(p + t0)[w] = reinterpret_cast<const Word*>(e)[w];
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i)
    if (t0 + i < L) p[t0 + i] = from_math<T>(math_t<T>(v[i]));
}

// ---- warp-wide scans of affine maps --------------------------------------------------------------

inline constexpr unsigned kFullMask = 0xffffffffu;

// Forward in time, inclusive. In: (a, b), this lane's composite map over its items (earliest
// applied first). Out: the composite over lanes 0 .. lane, so that the state after this lane's
// items is a·h + b, h being the state entering the warp's steps. The state entering the lane's
// items is then the previous lane's result: one shuffle of that value instead of two of (a, b).
template <typename W>
__device__ __forceinline__ void warp_prefix_inclusive(W& a, W& b) {
  const int lane = int(threadIdx.x & 31);
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const W a_up = __shfl_up_sync(kFullMask, a, offset), b_up = __shfl_up_sync(kFullMask, b, offset);
    if (lane >= offset) {  // (a_up, b_up) covers earlier lanes: it applies first
      b = a * b_up + b;
      a = a * a_up;
    }
  }
}

// Forward in time, exclusive: the composite of every earlier lane (identity for lane 0). The
// forward kernel uses this form: its pass carry comes from shared memory, and the inclusive
// form's value shuffle would put that load's latency on the scan's critical path.
template <typename W>
__device__ __forceinline__ void warp_prefix(W& a, W& b) {
  warp_prefix_inclusive(a, b);
  const int lane = int(threadIdx.x & 31);
  const W ea = __shfl_up_sync(kFullMask, a, 1), eb = __shfl_up_sync(kFullMask, b, 1);
  a = lane == 0 ? W(1) : ea;
  b = lane == 0 ? W(0) : eb;
}

// The value `v` of the previous lane (lane 0: `first`), e.g. the state entering a lane's items
// from the state after the previous lane's.
template <typename W>
__device__ __forceinline__ W from_previous_lane(W v, W first) {
  const W up = __shfl_up_sync(kFullMask, v, 1);
  return (threadIdx.x & 31) == 0 ? first : up;
}

// The value `v` of the next lane (lane 31: `last`).
template <typename W>
__device__ __forceinline__ W from_next_lane(W v, W last) {
  const W down = __shfl_down_sync(kFullMask, v, 1);
  return (threadIdx.x & 31) == 31 ? last : down;
}

// Backward in time, inclusive, within segments of `width` lanes (a power of two <= 32). In:
// (a, b), this lane's composite x_left = a·x_right + b over its items (latest applied first).
// Out: the composite over lanes lane .. the end of its segment.
template <typename W>
__device__ __forceinline__ void warp_suffix_inclusive(W& a, W& b, int width = 32) {
  const int in_segment = int(threadIdx.x & 31) & (width - 1);
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    if (offset >= width) break;
    const W a_down = __shfl_down_sync(kFullMask, a, offset, width);
    const W b_down = __shfl_down_sync(kFullMask, b, offset, width);
    if (in_segment + offset < width) {  // (a_down, b_down) covers later lanes: it applies first
      b = a * b_down + b;
      a = a * a_down;
    }
  }
}

}  // namespace scanline::cuda::scan

namespace scanline::cuda::scan {

// ---- host: inputs as device tensors whose rows are contiguous in time --------------------------

// Rows are read in place when their time steps are adjacent (time_contiguous, row_alignment:
// cuda/time_rows.h); y and du, ddelta, dz take u's layout (empty_in_layout_of, core/tensor.h).

// The scan's inputs ready for the kernels (copies only where needed): u, delta, z, B and C with
// rows contiguous in time (time_contiguous), the small ones contiguous; with the sizes and the plan.
struct Prepared {
  Tensor u, delta, A, B, C, D, z, bias, h0;
  bool softplus = false;
  int64_t batch = 0, d_inner = 0, L = 0, N = 0, groups = 0, per_group = 0;
  ChunkPlan plan;
};

inline Tensor dense_or_undefined(const Tensor& t) { return t.defined() ? as_contiguous(t) : Tensor(); }

inline Prepared prepare(const char* op, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                        const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias, bool softplus,
                        const Tensor& h0) {
  check_cuda_tensor(op, u, "u");
  Prepared p;
  p.u = time_contiguous(u);
  p.delta = time_contiguous(delta);
  p.A = as_contiguous(A);
  p.B = time_contiguous(B);
  p.C = time_contiguous(C);
  p.D = dense_or_undefined(D);
  p.z = time_contiguous(z);
  p.bias = dense_or_undefined(bias);
  p.h0 = dense_or_undefined(h0);
  p.softplus = softplus;
  p.batch = u.shape()[0];
  p.d_inner = u.shape()[1];
  p.L = u.shape()[2];
  p.N = A.shape()[1];
  p.groups = B.shape()[1];
  p.per_group = p.d_inner / p.groups;
  const int64_t math_bytes = u.dtype() == DType::f64 ? 8 : 4;
  p.plan = plan_chunks(p.L, p.N, math_bytes);
  SCANLINE_CHECK(p.plan.items > 0, op, ": the CUDA kernels take at most ", math_bytes == 8 ? kMaxStateSize / 2 : kMaxStateSize,
                 " states (N) for ", u.dtype(), " inputs but A ", describe(A), " has N = ", p.N);
  SCANLINE_CHECK(p.batch * p.d_inner <= int64_t(0x7fffffff), op, ": batch * d_inner = ", p.batch * p.d_inner,
                 " exceeds the CUDA grid limit of 2^31 - 1 blocks");
  return p;
}

template <typename T>
const T* ptr_or_null(const Tensor& t) { return t.defined() ? data_at<const T>(t) : nullptr; }
template <typename T>
T* mut_ptr_or_null(const Tensor& t) { return t.defined() ? data_at<T>(t) : nullptr; }

// A (batch, d_inner, L) tensor as the kernels address it: row (b, d) starts at
// data + b·stride_b + d·stride_d and is contiguous in time. Contiguous: (d_inner·L, L);
// channel-major: (L, batch·L). data is null for an absent tensor.
template <typename P>
struct Rows {
  P* data = nullptr;
  int64_t stride_b = 0, stride_d = 0;
  __device__ __forceinline__ P* row(int64_t b, int64_t d) const { return data + b * stride_b + d * stride_d; }
};

template <typename P>
Rows<P> rows_of(const Tensor& t) {
  return t.defined() ? Rows<P>{data_at<P>(t), t.stride(0), t.stride(1)} : Rows<P>{};
}

// B or C (batch, groups, N, L): state n's row of (b, g) starts at row(b, g) + n·stride_n and is
// contiguous in time; the kernels walk the states with a running pointer.
template <typename T>
struct StateRows {
  const T* data = nullptr;
  int64_t stride_b = 0, stride_g = 0, stride_n = 0;
  __device__ __forceinline__ const T* row(int64_t b, int64_t g) const { return data + b * stride_b + g * stride_g; }
};

template <typename T>
StateRows<T> state_rows_of(const Tensor& t) {
  return {data_at<const T>(t), t.stride(0), t.stride(1), t.stride(2)};
}

// What both kernels read, as raw pointers and strides. align: row_alignment of u, delta, z, B
// and C; see vec_for.
template <typename T>
struct ScanInputs {
  using W = math_t<T>;
  Rows<const T> u, delta, z;
  StateRows<T> B, C;
  const W *A, *D, *bias;
  int64_t batch, d_inner, L, N, groups, per_group, chunk, n_chunks;
  int64_t align;
  bool softplus;
  bool vec = false;  // set per kernel by vec_for
};

// Whether a kernel whose lanes own `items` steps may move them as whole words (load_items): a
// word is min(16, items · sizeof(T)) bytes (word_t), so every row start, of the inputs and of
// the kernel's other rows (row_alignment `other_align`), must sit on one. L % items == 0 too: the
// f32 dB/dC tile workspaces of bf16 inputs move wider words, and their rows start at multiples
// of L (as do all rows of dense inputs, which so take the same paths as before strides were).
template <typename T>
bool vec_for(const ScanInputs<T>& in, int items, int64_t other_align) {
  const int64_t word = std::min<int64_t>(16, int64_t(items) * int64_t(sizeof(T)));
  return items > 1 && in.L % items == 0 && std::min(in.align, other_align) >= word;
}

template <typename T>
ScanInputs<T> scan_inputs(const Prepared& p) {
  using W = math_t<T>;
  ScanInputs<T> in;
  in.u = rows_of<const T>(p.u);
  in.delta = rows_of<const T>(p.delta);
  in.z = rows_of<const T>(p.z);
  in.B = state_rows_of<T>(p.B);
  in.C = state_rows_of<T>(p.C);
  in.A = data_at<const W>(p.A);
  in.D = ptr_or_null<W>(p.D);
  in.bias = ptr_or_null<W>(p.bias);
  in.batch = p.batch;
  in.d_inner = p.d_inner;
  in.L = p.L;
  in.N = p.N;
  in.groups = p.groups;
  in.per_group = p.per_group;
  in.chunk = p.plan.chunk;
  in.n_chunks = p.plan.n_chunks;
  in.softplus = p.softplus;
  in.align = row_alignment({p.u, p.delta, p.z, p.B, p.C});
  return in;
}

// Warps a block of the scan kernels: independent warps, grouped only to share L1 and launch.
inline constexpr int kWarpsPerBlock = 4;

// Opts a kernel into more than the default 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// ---- device: one lane's steps of one (batch, channel) row -------------------------------------

// Loads u and delta of steps [t0, t0 + kItems) of a row and forms Δ (bias, softplus); steps past
// L get u = 0 and Δ = 0, so that their map is the identity (a = 1, b = 0) and they add nothing.
template <int kItems, typename T>
__device__ __forceinline__ void load_steps(const ScanInputs<T>& in, bool vec, int64_t b, int64_t d, int64_t t0,
                                           math_t<T> (&u)[kItems], math_t<T> (&dt)[kItems],
                                           math_t<T> (&raw)[kItems]) {
  using W = math_t<T>;
  load_items(in.u.row(b, d), t0, in.L, vec, u);
  load_items(in.delta.row(b, d), t0, in.L, vec, raw);
  const W bias = in.bias ? in.bias[d] : W(0);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    raw[i] += bias;
    dt[i] = t0 + i < in.L ? (in.softplus ? softplus_m(raw[i]) : raw[i]) : W(0);
  }
}

}  // namespace scanline::cuda::scan
