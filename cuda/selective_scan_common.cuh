#pragma once
// Shared by cuda/selective_scan_fwd.cu and cuda/selective_scan_bwd.cu: the chunk plan (both
// kernels must cut time into the same chunks, because the backward restarts from the states the
// forward saved at chunk starts), item loads and stores, the discretization math and the
// block-wide scans of the affine maps h -> a·h + b.
//
// Time is cut into chunks of kThreads · kItems steps; thread k of a block owns the kItems
// consecutive steps [chunk_start + k·kItems, chunk_start + (k + 1)·kItems). For one state n a
// step t is the affine map f_t(h) = a_t·h + b_t (a_t = exp(Δ_t·A[n]), b_t = Δ_t·B_t[n]·u_t), so
//   (a1, b1) then (a2, b2)  =  (a1·a2, a2·b1 + b2)
// is associative; a chunk's states are the prefix scan of its maps applied to the state entering
// the chunk. The gradient runs the same operator backwards in time (see selective_scan_bwd.cu).
#include <type_traits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda::scan {

// ---- the chunk plan (host) ------------------------------------------------------------------

// Largest state size N the CUDA kernels take (mamba_ssm has the same bound).
inline constexpr int64_t kMaxStateSize = 256;
// Shared memory for the backward's dB/dC accumulators, 2 · N · chunk math values per block.
inline constexpr int64_t kAccumulatorBytes = 64 * 1024;

struct ChunkPlan {
  int threads = 0;     // kThreads: 32, 64 or 128
  int items = 0;       // kItems: 1 or 4 consecutive steps a thread
  int64_t chunk = 0;   // threads · items
  int64_t n_chunks = 0;
};

// The chunk plan of a scan over L steps with N states in a math type of math_bytes bytes. The
// largest chunk (512) whose backward dB/dC accumulators fit kAccumulatorBytes and that does not
// exceed L by much (128 for L <= 128, 256 for L <= 256). Depends on the shape only, so forward
// and backward always agree. Returns threads == 0 when N is too large.
inline ChunkPlan plan_chunks(int64_t L, int64_t N, int64_t math_bytes) {
  struct Candidate { int threads, items; };
  constexpr Candidate kCandidates[] = {{128, 4}, {64, 4}, {32, 4}, {32, 1}};
  const int64_t length_cap = L <= 128 ? 128 : (L <= 256 ? 256 : 512);
  ChunkPlan plan;
  if (N < 1 || N > kMaxStateSize) return plan;
  for (const Candidate& c : kCandidates) {
    const int64_t chunk = int64_t(c.threads) * c.items;
    const bool last = c.items == 1;  // the smallest chunk: taken whenever it fits
    if (!last && chunk > length_cap) continue;
    if (2 * N * chunk * math_bytes > kAccumulatorBytes) continue;
    plan.threads = c.threads;
    plan.items = c.items;
    plan.chunk = chunk;
    plan.n_chunks = (L + chunk - 1) / chunk;
    return plan;
  }
  return plan;
}

// Calls fn.template operator()<kThreads, kItems>() for a plan.
template <typename Fn>
void dispatch_plan(const ChunkPlan& plan, Fn&& fn) {
  if (plan.threads == 128 && plan.items == 4) return fn.template operator()<128, 4>();
  if (plan.threads == 64 && plan.items == 4) return fn.template operator()<64, 4>();
  if (plan.threads == 32 && plan.items == 4) return fn.template operator()<32, 4>();
  if (plan.threads == 32 && plan.items == 1) return fn.template operator()<32, 1>();
  SCANLINE_FAIL("selective_scan: no kernel for ", plan.threads, " threads x ", plan.items, " items");
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

__device__ __forceinline__ float exp_m(float x) { return expf(x); }
__device__ __forceinline__ double exp_m(double x) { return exp(x); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)): neither overflows nor loses digits for large |x|.
__device__ __forceinline__ float softplus_m(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ double softplus_m(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }

template <typename W>
__device__ __forceinline__ W sigmoid_m(W x) { return W(1) / (W(1) + exp_m(-x)); }

// ---- loads and stores of a thread's kItems consecutive steps ----------------------------------

// The widest word that tiles kBytes: 16, 8 or 4 bytes (kBytes is a multiple of 4 here).
template <int kBytes>
using word_t = std::conditional_t<kBytes % 16 == 0, int4, std::conditional_t<kBytes % 8 == 0, int2, int>>;

// v[i] = p[t0 + i] as math values, 0 past L. vec: p's row is aligned so that a full group of
// kItems starting at t0 (a multiple of kItems) may be read as whole words (L % kItems == 0 and
// 16-byte-aligned base pointers, checked by the launcher).
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
#pragma unroll
      for (int i = 0; i < kItems; ++i) v[i] = W(load_math(&e[i]));
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) v[i] = t0 + i < L ? W(load_math(p + t0 + i)) : W(0);
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

// ---- block-wide scans of affine maps ------------------------------------------------------------

// Per-warp totals of one scan, double-buffered: scan k writes slot k & 1, so a scan never
// overwrites totals that a slower warp may still read from the previous one (each scan has one
// __syncthreads between its writes and its reads).
template <typename W, int kWarps>
struct ScanSmem {
  W a[2][kWarps];
  W b[2][kWarps];
};

// Forward in time. In: (a, b), this thread's composite map over its items (earliest applied
// first). Out: the composite of every earlier thread of the block, so that the state entering
// this thread's items is a·h_chunk + b, h_chunk being the state entering the chunk. All threads
// of the block must call it (it synchronizes once).
template <int kWarps, typename W>
__device__ __forceinline__ void scan_prefix(W& a, W& b, ScanSmem<W, kWarps>& smem, int slot) {
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  constexpr unsigned kFull = 0xffffffffu;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const W a_up = __shfl_up_sync(kFull, a, offset), b_up = __shfl_up_sync(kFull, b, offset);
    if (lane >= offset) {  // (a_up, b_up) covers the earlier lanes: it applies first
      b = a * b_up + b;
      a = a * a_up;
    }
  }
  // (a, b) now covers lanes 0 .. lane; the exclusive prefix is the previous lane's.
  W ea = __shfl_up_sync(kFull, a, 1), eb = __shfl_up_sync(kFull, b, 1);
  if (lane == 0) ea = W(1), eb = W(0);
  if (lane == 31) smem.a[slot][warp] = a, smem.b[slot][warp] = b;
  __syncthreads();
  W wa = W(1), wb = W(0);  // the warps before this one, in order
  for (int w = 0; w < warp; ++w) {
    const W xa = smem.a[slot][w], xb = smem.b[slot][w];
    wb = xa * wb + xb;
    wa = xa * wa;
  }
  a = ea * wa;
  b = ea * wb + eb;
}

// Backward in time. In: (a, b), this thread's composite map x_left = a·x_right + b over its items
// (latest applied first). Out: the composite of every later thread of the block, so that the
// value at this thread's right edge is a·x_chunk + b, x_chunk being the value at the chunk's
// right edge. All threads of the block must call it (it synchronizes once).
template <int kWarps, typename W>
__device__ __forceinline__ void scan_suffix(W& a, W& b, ScanSmem<W, kWarps>& smem, int slot) {
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  constexpr unsigned kFull = 0xffffffffu;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const W a_down = __shfl_down_sync(kFull, a, offset), b_down = __shfl_down_sync(kFull, b, offset);
    if (lane + offset < 32) {  // (a_down, b_down) covers the later lanes: it applies first
      b = a * b_down + b;
      a = a * a_down;
    }
  }
  // (a, b) now covers lanes lane .. 31; the exclusive suffix is the next lane's.
  W ea = __shfl_down_sync(kFull, a, 1), eb = __shfl_down_sync(kFull, b, 1);
  if (lane == 31) ea = W(1), eb = W(0);
  if (lane == 0) smem.a[slot][warp] = a, smem.b[slot][warp] = b;
  __syncthreads();
  W wa = W(1), wb = W(0);  // the warps after this one, the last applied first
  for (int w = kWarps - 1; w > warp; --w) {
    const W xa = smem.a[slot][w], xb = smem.b[slot][w];
    wb = xa * wb + xb;
    wa = xa * wa;
  }
  a = ea * wa;
  b = ea * wb + eb;
}

}  // namespace scanline::cuda::scan

namespace scanline::cuda::scan {

// ---- host: inputs as dense device tensors -------------------------------------------------------

// The scan's inputs made contiguous (copies only where needed), with the sizes and the plan.
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
  p.u = as_contiguous(u);
  p.delta = as_contiguous(delta);
  p.A = as_contiguous(A);
  p.B = as_contiguous(B);
  p.C = as_contiguous(C);
  p.D = dense_or_undefined(D);
  p.z = dense_or_undefined(z);
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
  SCANLINE_CHECK(p.plan.threads > 0, op, ": the CUDA kernels take at most ", math_bytes == 8 ? kMaxStateSize / 2 : kMaxStateSize,
                 " states (N) for ", u.dtype(), " inputs but A ", describe(A), " has N = ", p.N);
  SCANLINE_CHECK(p.batch * p.d_inner <= int64_t(0x7fffffff), op, ": batch * d_inner = ", p.batch * p.d_inner,
                 " exceeds the CUDA grid limit of 2^31 - 1 blocks");
  return p;
}

template <typename T>
const T* ptr_or_null(const Tensor& t) { return t.defined() ? data_at<const T>(t) : nullptr; }
template <typename T>
T* mut_ptr_or_null(const Tensor& t) { return t.defined() ? data_at<T>(t) : nullptr; }

inline bool all_aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

// What both kernels read, as raw pointers. vec: a thread's kItems steps may be moved as whole
// 4/8/16-byte words (L % kItems == 0 and every (batch, channel) or (batch, group, state) row
// starts on a word boundary because the base pointers are 16-byte aligned).
template <typename T>
struct ScanInputs {
  using W = math_t<T>;
  const T *u, *delta, *z, *B, *C;
  const W *A, *D, *bias;
  int64_t batch, d_inner, L, N, groups, per_group, chunk, n_chunks;
  bool softplus, vec;
};

template <typename T>
ScanInputs<T> scan_inputs(const Prepared& p) {
  using W = math_t<T>;
  ScanInputs<T> in;
  in.u = data_at<const T>(p.u);
  in.delta = data_at<const T>(p.delta);
  in.z = ptr_or_null<T>(p.z);
  in.B = data_at<const T>(p.B);
  in.C = data_at<const T>(p.C);
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
  in.vec = p.plan.items > 1 && p.L % p.plan.items == 0 && all_aligned16({in.u, in.delta, in.z, in.B, in.C});
  return in;
}

// Opts a kernel into more than the default 48 KiB of dynamic shared memory when it needs it.
template <typename Kernel>
void allow_shared_memory(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024) CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)));
}

// ---- device: one thread's steps of one (batch, channel) row -------------------------------------

// Loads u and delta of steps [t0, t0 + kItems) of a row and forms Δ (bias, softplus); steps past
// L get u = 0 and Δ = 0, so that their map is the identity (a = 1, b = 0) and they add nothing.
template <int kItems, typename T>
__device__ __forceinline__ void load_steps(const ScanInputs<T>& in, int64_t row, int64_t d, int64_t t0,
                                           math_t<T> (&u)[kItems], math_t<T> (&dt)[kItems],
                                           math_t<T> (&raw)[kItems]) {
  using W = math_t<T>;
  load_items(in.u + row * in.L, t0, in.L, in.vec, u);
  load_items(in.delta + row * in.L, t0, in.L, in.vec, raw);
  const W bias = in.bias ? in.bias[d] : W(0);
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    raw[i] += bias;
    dt[i] = t0 + i < in.L ? (in.softplus ? softplus_m(raw[i]) : raw[i]) : W(0);
  }
}

}  // namespace scanline::cuda::scan
