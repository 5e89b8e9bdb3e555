#pragma once
// Device side of cuda/reduce.cu (included only there): accumulators and their combine
// operations (sum, NaN-propagating max, max with first index), warp and block reductions in a
// fixed order, and the two reduction kernels (rows and columns) with their problem descriptions.
#include <limits>
#include <type_traits>

#include "core/cuda/device_utils.cuh"
#include "cuda/row_reduce.cuh"

namespace scanline::cuda::reduce_detail {

constexpr int kThreads = 256;
constexpr int kRowLanes = 8;  // warps of a column block, on interleaved rows

// ---- accumulators and combine operations ----

template <typename T> struct AccOf { using type = math_t<T>; };
template <> struct AccOf<int64_t> { using type = int64_t; };
template <> struct AccOf<int32_t> { using type = int64_t; };
template <> struct AccOf<bool> { using type = int64_t; };
template <typename T> using acc_of = typename AccOf<T>::type;

template <typename A, typename T>
__device__ __forceinline__ A to_acc(T v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) return load_math(&v);
  else return A(v);
}

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A a) {
  if constexpr (std::is_same_v<T, bool>) return a != A(0);
  else if constexpr (std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>) return from_math<T>(a);
  else return T(a);
}

template <typename A>
__device__ __forceinline__ A lowest_of() {
  if constexpr (std::is_floating_point_v<A>) return -std::numeric_limits<A>::infinity();
  else return std::numeric_limits<A>::lowest();
}

template <typename A>
struct SumOp {
  using Value = A;
  using Acc = A;
  static constexpr bool kIndexed = false;
  __device__ static Acc identity() { return A(0); }
  __device__ static Acc make(A v, int64_t) { return v; }
  __device__ static Acc combine(Acc a, Acc b) { return a + b; }
  __device__ static Acc shuffle(Acc a, int mask) { return __shfl_xor_sync(0xffffffffu, a, mask); }
};

template <typename A>
struct MaxOp {
  using Value = A;
  using Acc = A;
  static constexpr bool kIndexed = false;
  __device__ static Acc identity() { return lowest_of<A>(); }
  __device__ static Acc make(A v, int64_t) { return v; }
  __device__ static Acc combine(Acc a, Acc b) { return (a > b || a != a) ? a : b; }  // NaN wins
  __device__ static Acc shuffle(Acc a, int mask) { return __shfl_xor_sync(0xffffffffu, a, mask); }
};

template <typename A>
struct ArgMax {
  A value;
  int64_t index;
};

// The largest value and its first index; the first NaN wins. The choice is a total order on
// (is NaN, value, -index), so the result does not depend on the order of combination.
template <typename A>
struct ArgMaxOp {
  using Value = A;
  using Acc = ArgMax<A>;
  static constexpr bool kIndexed = true;
  __device__ static Acc identity() { return {lowest_of<A>(), std::numeric_limits<int64_t>::max()}; }
  __device__ static Acc make(A v, int64_t k) { return {v, k}; }
  __device__ static Acc combine(Acc a, Acc b) {
    const bool a_nan = a.value != a.value, b_nan = b.value != b.value;
    if (a_nan != b_nan) return a_nan ? a : b;
    if (!a_nan && a.value != b.value) return a.value > b.value ? a : b;
    return a.index <= b.index ? a : b;
  }
  __device__ static Acc shuffle(Acc a, int mask) {
    return {__shfl_xor_sync(0xffffffffu, a.value, mask), __shfl_xor_sync(0xffffffffu, a.index, mask)};
  }
};

template <typename Op>
__device__ __forceinline__ typename Op::Acc warp_reduce(typename Op::Acc a) {
#pragma unroll
  for (int mask = 16; mask > 0; mask >>= 1) a = Op::combine(a, Op::shuffle(a, mask));
  return a;
}

// Over a 1-D block (blockDim.x a multiple of 32); synchronizes; thread 0 gets the result.
template <typename Op>
__device__ __forceinline__ typename Op::Acc block_reduce(typename Op::Acc a, typename Op::Acc* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  a = warp_reduce<Op>(a);
  __syncthreads();  // scratch may still be read by the previous row
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  a = lane < warps ? scratch[lane] : Op::identity();
  return warp_reduce<Op>(a);
}

template <typename T, typename Op>
__device__ __forceinline__ void write_final(T* out, int64_t* out_index, int64_t offset, typename Op::Acc acc) {
  if constexpr (Op::kIndexed) {
    out[offset] = from_acc<T>(acc.value);
    out_index[offset] = acc.index;
  } else {
    out[offset] = from_acc<T>(acc);
  }
}

// 16-byte packs and their loads are shared with the row kernels of softmax and cross-entropy.
using rowwise::Pack;
using rowwise::load_pack;

// Combines n contiguous elements p[0..n) (element i has index k0 + i) over the threads of a
// group: a scalar head up to 16-byte alignment, 16-byte vectors (4 in flight per thread), a
// scalar tail. p must be aligned to sizeof(T).
template <typename T, typename Op>
__device__ __forceinline__ typename Op::Acc reduce_segment(const T* p, int64_t n, int64_t k0, int tid, int nthreads,
                                                           typename Op::Acc acc) {
  using A = typename Op::Value;
  constexpr int W = int(16 / sizeof(T));
  constexpr int U = 4;
  const int64_t misalign = int64_t((reinterpret_cast<uintptr_t>(p) / sizeof(T)) % W);
  const int64_t head = misalign == 0 ? 0 : min(n, int64_t(W) - misalign);
  if (tid < head) acc = Op::combine(acc, Op::make(to_acc<A>(p[tid]), k0 + tid));
  const T* body = p + head;
  const int64_t packs = (n - head) / W;
  const int64_t kb = k0 + head;
  int64_t i = tid;
  for (; i + int64_t(U - 1) * nthreads < packs; i += int64_t(U) * nthreads) {
    Pack<T, W> v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) v[u] = load_pack<T, W>(body + (i + int64_t(u) * nthreads) * W);
#pragma unroll
    for (int u = 0; u < U; ++u)
#pragma unroll
      for (int e = 0; e < W; ++e)
        acc = Op::combine(acc, Op::make(to_acc<A>(v[u].v[e]), kb + (i + int64_t(u) * nthreads) * W + e));
  }
  for (; i < packs; i += nthreads) {
    Pack<T, W> v = load_pack<T, W>(body + i * W);
#pragma unroll
    for (int e = 0; e < W; ++e) acc = Op::combine(acc, Op::make(to_acc<A>(v.v[e]), kb + i * W + e));
  }
  const int64_t done = head + packs * W;
  if (tid < n - done) acc = Op::combine(acc, Op::make(to_acc<A>(p[done + tid]), k0 + done + tid));
  return acc;
}

// ---- rows: each output reduces a row of `length` elements ----

enum class RowMode { contiguous, layout, partial };

struct RowProblem {
  int64_t rows = 1, length = 1;
  int64_t chunk = 1, splits = 1;  // elements per block, blocks per row
  StridedLayout kept;             // row -> input offset of the row's first element
  StridedLayout reduced;          // (layout mode) position in the row -> offset from its first element
  StridedLayout out;              // row -> output offset
};

// kGroup: 1 a thread per row, 32 a warp, 0 the block. contiguous/layout modes read T at `in`
// (storage + tensor offset); partial mode reads rows of `length` accumulators. With `partial`
// set, group g = row * splits + split writes partial[g]; else the final value goes to out.
template <typename T, typename Op, RowMode kMode, int kGroup>
__global__ void __launch_bounds__(kThreads)
    reduce_rows_kernel(const void* __restrict__ in, RowProblem p, typename Op::Acc* __restrict__ partial,
                       T* __restrict__ out, int64_t* __restrict__ out_index) {
  using Acc = typename Op::Acc;
  using A = typename Op::Value;
  __shared__ Acc scratch[32];
  int tid, nthreads;
  int64_t first, step;
  if constexpr (kGroup == 0) {
    tid = threadIdx.x, nthreads = blockDim.x, first = blockIdx.x, step = gridDim.x;
  } else if constexpr (kGroup == 32) {
    const int warps = blockDim.x >> 5;
    tid = threadIdx.x & 31, nthreads = 32;
    first = int64_t(blockIdx.x) * warps + (threadIdx.x >> 5), step = int64_t(gridDim.x) * warps;
  } else {
    tid = 0, nthreads = 1;
    first = int64_t(blockIdx.x) * blockDim.x + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  }
  const int64_t groups = p.rows * p.splits;
  for (int64_t g = first; g < groups; g += step) {  // uniform over the group
    const int64_t row = g / p.splits, split = g - row * p.splits;
    const int64_t k0 = split * p.chunk, k1 = min(p.length, k0 + p.chunk);
    Acc acc = Op::identity();
    if constexpr (kMode == RowMode::contiguous) {
      const T* rp = static_cast<const T*>(in) + p.kept.offset(row);
      if constexpr (kGroup == 1) {
        for (int64_t k = k0; k < k1; ++k) acc = Op::combine(acc, Op::make(to_acc<A>(rp[k]), k));
      } else {
        acc = reduce_segment<T, Op>(rp + k0, k1 - k0, k0, tid, nthreads, acc);
      }
    } else if constexpr (kMode == RowMode::layout) {
      const T* rp = static_cast<const T*>(in) + p.kept.offset(row);
      for (int64_t k = k0 + tid; k < k1; k += nthreads)
        acc = Op::combine(acc, Op::make(to_acc<A>(rp[p.reduced.offset(k)]), k));
    } else {
      const Acc* rp = static_cast<const Acc*>(in) + row * p.length;
      for (int64_t k = k0 + tid; k < k1; k += nthreads) acc = Op::combine(acc, rp[k]);
    }
    if constexpr (kGroup == 0) acc = block_reduce<Op>(acc, scratch);
    else if constexpr (kGroup == 32) acc = warp_reduce<Op>(acc);
    if (tid == 0) {
      if (partial) partial[g] = acc;
      else write_final<T, Op>(out, out_index, p.out.offset(row), acc);
    }
  }
}

// ---- columns: threads over kept columns of stride 1, looping over one reduced dim ----

struct ColumnProblem {
  int64_t columns = 1;     // kept dim of input stride 1
  int64_t outer = 1;       // product of the other kept dims
  int64_t length = 1;      // reduced rows
  int64_t row_stride = 0;  // input stride of the reduced dim
  int64_t chunk = 1, splits = 1, col_blocks = 1;
  StridedLayout outer_in, outer_out;  // outer index -> input / output offset
  int64_t out_col_stride = 1;
};

// Block (32, kRowLanes): lane x owns W columns, warp y rows y, y + 8, ... of the block's chunk.
// Block b = (split * outer + o) * col_blocks + column block. kPartialIn reads accumulators laid
// out (length, outer, columns); with `partial` set, writes them as (splits, outer, columns).
template <typename T, typename Op, int W, bool kPartialIn>
__global__ void __launch_bounds__(32 * kRowLanes)
    reduce_columns_kernel(const void* __restrict__ in, ColumnProblem p, typename Op::Acc* __restrict__ partial,
                          T* __restrict__ out, int64_t* __restrict__ out_index) {
  using Acc = typename Op::Acc;
  using A = typename Op::Value;
  constexpr int U = 4;
  __shared__ Acc lanes[kRowLanes][32];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t blocks = p.col_blocks * p.outer * p.splits;
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {  // uniform over the block
    const int64_t cb = b % p.col_blocks, rest = b / p.col_blocks;
    const int64_t o = rest % p.outer, split = rest / p.outer;
    const int64_t col = (cb * 32 + tx) * W;
    const bool active = col < p.columns;
    const int64_t r0 = split * p.chunk, r1 = min(p.length, r0 + p.chunk);
    Acc acc[W];
#pragma unroll
    for (int e = 0; e < W; ++e) acc[e] = Op::identity();
    if (active) {
      const int64_t base = p.outer_in.offset(o) + col;
      int64_t r = r0 + ty;
      if constexpr (kPartialIn) {
        const Acc* src = static_cast<const Acc*>(in) + base;
        for (; r + int64_t(U - 1) * kRowLanes < r1; r += int64_t(U) * kRowLanes) {
          Acc v[U];
#pragma unroll
          for (int u = 0; u < U; ++u) v[u] = src[(r + u * kRowLanes) * p.row_stride];
#pragma unroll
          for (int u = 0; u < U; ++u) acc[0] = Op::combine(acc[0], v[u]);
        }
        for (; r < r1; r += kRowLanes) acc[0] = Op::combine(acc[0], src[r * p.row_stride]);
      } else {
        const T* src = static_cast<const T*>(in) + base;
        for (; r + int64_t(U - 1) * kRowLanes < r1; r += int64_t(U) * kRowLanes) {
          Pack<T, W> v[U];
#pragma unroll
          for (int u = 0; u < U; ++u) v[u] = load_pack<T, W>(src + (r + u * kRowLanes) * p.row_stride);
#pragma unroll
          for (int u = 0; u < U; ++u)
#pragma unroll
            for (int e = 0; e < W; ++e) acc[e] = Op::combine(acc[e], Op::make(to_acc<A>(v[u].v[e]), r + u * kRowLanes));
        }
        for (; r < r1; r += kRowLanes) {
          Pack<T, W> v = load_pack<T, W>(src + r * p.row_stride);
#pragma unroll
          for (int e = 0; e < W; ++e) acc[e] = Op::combine(acc[e], Op::make(to_acc<A>(v.v[e]), r));
        }
      }
    }
    // The row lanes, combined in lane order.
#pragma unroll
    for (int e = 0; e < W; ++e) {
      lanes[ty][tx] = acc[e];
      __syncthreads();
      if (ty == 0) {
        Acc t = lanes[0][tx];
#pragma unroll
        for (int j = 1; j < kRowLanes; ++j) t = Op::combine(t, lanes[j][tx]);
        acc[e] = t;
      }
      __syncthreads();
    }
    if (ty == 0 && active) {
#pragma unroll
      for (int e = 0; e < W; ++e) {
        if (partial) partial[(split * p.outer + o) * p.columns + col + e] = acc[e];
        else write_final<T, Op>(out, out_index, p.outer_out.offset(o) + (col + e) * p.out_col_stride, acc[e]);
      }
    }
  }
}

}  // namespace scanline::cuda::reduce_detail
