#include "cuda/rms_norm.h"

#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda {
namespace {

// ---- packs of W contiguous elements, converted to the math type on load ---------------------

// The math type of a kernel over two storage types: f64 when either is f64, else f32.
template <typename T, typename S>
using pair_math_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<S, double>, double, float>;

// Elements of one pack on the vector path: 16 bytes of the narrower of the two row dtypes (the
// wider one then moves 32 bytes a pack, two 16-byte words).
template <typename T, typename S>
constexpr int kVecWidth = int(16 / (sizeof(T) < sizeof(S) ? sizeof(T) : sizeof(S)));

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

// The value that is normalized, at pack `col`: x, or (residual variant) x + residual rounded to
// the residual dtype R; store_residual writes that rounded sum to new_residual.
template <typename A, typename T, typename R, bool kRes, int W, bool kVec>
__device__ __forceinline__ void load_input(const T* __restrict__ x, const R* __restrict__ residual,
                                           R* __restrict__ new_residual, int64_t at, bool store_residual,
                                           A (&v)[W]) {
  load_pack<W, kVec>(x + at, v);
  if constexpr (kRes) {
    if (residual) {
      A r[W];
      load_pack<W, kVec>(residual + at, r);
#pragma unroll
      for (int e = 0; e < W; ++e) v[e] += r[e];
    }
#pragma unroll
    for (int e = 0; e < W; ++e) v[e] = to_acc<A>(from_acc<R>(v[e]));
    if (store_residual) store_pack<W, kVec>(new_residual + at, v);
  }
}

template <bool kBlock, typename A>
__device__ __forceinline__ A row_sum(A v, A* scratch) {
  if constexpr (kBlock) return block_sum(v, scratch);
  else return warp_sum(v);
}

template <typename A>
__device__ __forceinline__ A inv_rms(A squares, int64_t width, A eps) {
  if constexpr (std::is_same_v<A, double>) return 1.0 / ::sqrt(squares / double(width) + eps);
  else return 1.0f / ::sqrtf(squares / float(width) + eps);
}

// ---- forward -----------------------------------------------------------------------------------

// Threads a block on the register paths: 512 leaves 128 registers a thread for the row's packs.
constexpr int kCachedMaxThreads = 512;

// A row in registers: kPacks packs of W per thread. kBlock: one block per row; else one warp
// per row, blockDim.x / 32 rows a block. Rows are grid-strided. width % W == 0, pointers aligned.
template <typename T, typename R, bool kRes, int W, int kPacks, bool kBlock>
__global__ void __launch_bounds__(kCachedMaxThreads)
    rms_forward_cached(const T* __restrict__ x, const R* __restrict__ residual, const T* __restrict__ weight,
                       T* __restrict__ y, R* __restrict__ new_residual, pair_math_t<T, R>* __restrict__ rstd,
                       int64_t rows, int64_t width, pair_math_t<T, R> eps) {
  using A = pair_math_t<T, R>;
  __shared__ A scratch[32];
  const int group = kBlock ? int(blockDim.x) : 32;
  const int lane = kBlock ? int(threadIdx.x) : int(threadIdx.x & 31);
  const int64_t groups_per_block = kBlock ? 1 : (blockDim.x >> 5);
  const int64_t packs = width / W;
  int64_t row = int64_t(blockIdx.x) * groups_per_block + (kBlock ? 0 : (threadIdx.x >> 5));
  for (; row < rows; row += int64_t(gridDim.x) * groups_per_block) {
    const int64_t base = row * width;
    A v[kPacks][W];
    A squares = A(0);
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * group;
      if (pk < packs) {
        load_input<A, T, R, kRes, W, true>(x, residual, new_residual, base + pk * W, true, v[i]);
#pragma unroll
        for (int e = 0; e < W; ++e) squares += v[i][e] * v[i][e];
      } else {
#pragma unroll
        for (int e = 0; e < W; ++e) v[i][e] = A(0);
      }
    }
    const A inv = inv_rms(row_sum<kBlock>(squares, scratch), width, eps);
    if (lane == 0) rstd[row] = inv;
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * group;
      if (pk < packs) {
        A w[W];
        load_weight<W, true>(weight, pk * W, w);
#pragma unroll
        for (int e = 0; e < W; ++e) v[i][e] = (v[i][e] * inv) * w[e];
        store_pack<W, true>(y + base + pk * W, v[i]);
      }
    }
  }
}

// Any width: one block per row, two passes over the row (the second mostly from L1/L2).
template <typename T, typename R, bool kRes, int W, bool kVec>
__global__ void __launch_bounds__(1024)
    rms_forward_looped(const T* __restrict__ x, const R* __restrict__ residual, const T* __restrict__ weight,
                       T* __restrict__ y, R* __restrict__ new_residual, pair_math_t<T, R>* __restrict__ rstd,
                       int64_t rows, int64_t width, pair_math_t<T, R> eps) {
  using A = pair_math_t<T, R>;
  __shared__ A scratch[32];
  const int64_t packs = width / W;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * width;
    A squares = A(0);
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
      A v[W];
      load_input<A, T, R, kRes, W, kVec>(x, residual, new_residual, base + pk * W, true, v);
#pragma unroll
      for (int e = 0; e < W; ++e) squares += v[e] * v[e];
    }
    const A inv = inv_rms(block_sum(squares, scratch), width, eps);
    if (threadIdx.x == 0) rstd[row] = inv;
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
      A v[W], w[W];
      load_input<A, T, R, kRes, W, kVec>(x, residual, new_residual, base + pk * W, false, v);
      load_weight<W, kVec>(weight, pk * W, w);
#pragma unroll
      for (int e = 0; e < W; ++e) v[e] = (v[e] * inv) * w[e];
      store_pack<W, kVec>(y + base + pk * W, v);
    }
  }
}

// ---- backward ----------------------------------------------------------------------------------
// With xhat = h * rstd (h: x, or new_residual) and gw = g * weight:
//   dh = rstd * (gw - xhat * mean(gw * xhat)) [+ grad_new_residual], dweight = sum_rows g * xhat.
// Block b owns rows [b * rows_per_slot, (b + 1) * rows_per_slot) and writes its dweight partial
// sums to partial[b * width ...]; dweight_reduce adds the partial rows in order.

template <typename T, typename S, bool kRes, int W, int kPacks, bool kBlock>
__global__ void __launch_bounds__(kCachedMaxThreads)
    rms_backward_cached(const T* __restrict__ grad, const S* __restrict__ h, const T* __restrict__ weight,
                        const pair_math_t<T, S>* __restrict__ rstd, const S* __restrict__ grad_residual,
                        T* __restrict__ dx, S* __restrict__ dresidual, pair_math_t<T, S>* __restrict__ partial,
                        int64_t rows, int64_t width, int64_t rows_per_slot) {
  using A = pair_math_t<T, S>;
  extern __shared__ __align__(16) unsigned char dynamic_smem[];  // warp rows: width A's to combine the warps' dweight
  __shared__ A scratch[32];
  const int group = kBlock ? int(blockDim.x) : 32;
  const int lane = kBlock ? int(threadIdx.x) : int(threadIdx.x & 31);
  const int warp = int(threadIdx.x >> 5), warps = int(blockDim.x >> 5);
  const int64_t packs = width / W;
  const bool need_dh = dx != nullptr || dresidual != nullptr;
  const bool need_dw = partial != nullptr;
  const int64_t row_begin = int64_t(blockIdx.x) * rows_per_slot;
  const int64_t row_end = min(rows, row_begin + rows_per_slot);

  A acc[kPacks][W];
#pragma unroll
  for (int i = 0; i < kPacks; ++i)
#pragma unroll
    for (int e = 0; e < W; ++e) acc[i][e] = A(0);

  for (int64_t row = row_begin + (kBlock ? 0 : warp); row < row_end; row += (kBlock ? 1 : warps)) {
    const int64_t base = row * width;
    const A inv = rstd[row];
    A gw[kPacks][W], xhat[kPacks][W];
    A dot = A(0);
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * group;
      if (pk < packs) {
        A g[W], w[W];
        load_pack<W, true>(grad + base + pk * W, g);
        load_pack<W, true>(h + base + pk * W, xhat[i]);
        load_weight<W, true>(weight, pk * W, w);
#pragma unroll
        for (int e = 0; e < W; ++e) {
          xhat[i][e] *= inv;
          gw[i][e] = g[e] * w[e];
          dot += gw[i][e] * xhat[i][e];
          if (need_dw) acc[i][e] += g[e] * xhat[i][e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < W; ++e) gw[i][e] = xhat[i][e] = A(0);
      }
    }
    if (!need_dh) continue;
    const A mean_dot = row_sum<kBlock>(dot, scratch) / A(width);
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * group;
      if (pk < packs) {
        A d[W];
#pragma unroll
        for (int e = 0; e < W; ++e) d[e] = inv * (gw[i][e] - xhat[i][e] * mean_dot);
        if constexpr (kRes) {
          if (grad_residual) {
            A gr[W];
            load_pack<W, true>(grad_residual + base + pk * W, gr);
#pragma unroll
            for (int e = 0; e < W; ++e) d[e] += gr[e];
          }
          if (dresidual) store_pack<W, true>(dresidual + base + pk * W, d);
        }
        if (dx) store_pack<W, true>(dx + base + pk * W, d);
      }
    }
  }
  if (!need_dw) return;
  A* out = partial + int64_t(blockIdx.x) * width;
  if constexpr (kBlock) {
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * group;
      if (pk < packs)
#pragma unroll
        for (int e = 0; e < W; ++e) out[pk * W + e] = acc[i][e];
    }
  } else {
    // The warps add their sums into shared memory one after another (a fixed order).
    A* sums = reinterpret_cast<A*>(dynamic_smem);
    for (int w = 0; w < warps; ++w) {
      if (warp == w) {
#pragma unroll
        for (int i = 0; i < kPacks; ++i) {
          const int64_t pk = lane + int64_t(i) * group;
          if (pk < packs)
#pragma unroll
            for (int e = 0; e < W; ++e) sums[pk * W + e] = w == 0 ? acc[i][e] : sums[pk * W + e] + acc[i][e];
        }
      }
      __syncthreads();
    }
    for (int64_t col = threadIdx.x; col < width; col += blockDim.x) out[col] = sums[col];
  }
}

// Any width: one block per slot of rows, each row in two passes; every thread adds its own
// columns' dweight terms straight into the block's partial row (no other thread touches them).
template <typename T, typename S, bool kRes, int W, bool kVec>
__global__ void __launch_bounds__(1024)
    rms_backward_looped(const T* __restrict__ grad, const S* __restrict__ h, const T* __restrict__ weight,
                        const pair_math_t<T, S>* __restrict__ rstd, const S* __restrict__ grad_residual,
                        T* __restrict__ dx, S* __restrict__ dresidual, pair_math_t<T, S>* __restrict__ partial,
                        int64_t rows, int64_t width, int64_t rows_per_slot) {
  using A = pair_math_t<T, S>;
  __shared__ A scratch[32];
  const int64_t packs = width / W;
  const bool need_dh = dx != nullptr || dresidual != nullptr;
  // Thread t owns the columns of packs t, t + blockDim.x, ...: the zeroing here and every later
  // update of a column come from one thread, so no synchronization is needed.
  A* out = partial ? partial + int64_t(blockIdx.x) * width : nullptr;
  if (out)
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x)
#pragma unroll
      for (int e = 0; e < W; ++e) out[pk * W + e] = A(0);
  const int64_t row_begin = int64_t(blockIdx.x) * rows_per_slot;
  const int64_t row_end = min(rows, row_begin + rows_per_slot);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t base = row * width;
    const A inv = rstd[row];
    A mean_dot = A(0);
    if (need_dh) {
      A dot = A(0);
      for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
        A g[W], xh[W], w[W];
        load_pack<W, kVec>(grad + base + pk * W, g);
        load_pack<W, kVec>(h + base + pk * W, xh);
        load_weight<W, kVec>(weight, pk * W, w);
#pragma unroll
        for (int e = 0; e < W; ++e) dot += (g[e] * w[e]) * (xh[e] * inv);
      }
      mean_dot = block_sum(dot, scratch) / A(width);
    }
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
      A g[W], xh[W], w[W], d[W];
      load_pack<W, kVec>(grad + base + pk * W, g);
      load_pack<W, kVec>(h + base + pk * W, xh);
      load_weight<W, kVec>(weight, pk * W, w);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        xh[e] *= inv;
        if (out) out[pk * W + e] += g[e] * xh[e];
        d[e] = inv * (g[e] * w[e] - xh[e] * mean_dot);
      }
      if (!need_dh) continue;
      if constexpr (kRes) {
        if (grad_residual) {
          A gr[W];
          load_pack<W, kVec>(grad_residual + base + pk * W, gr);
#pragma unroll
          for (int e = 0; e < W; ++e) d[e] += gr[e];
        }
        if (dresidual) store_pack<W, kVec>(dresidual + base + pk * W, d);
      }
      if (dx) store_pack<W, kVec>(dx + base + pk * W, d);
    }
  }
}

// dweight[col] = sum over slots of partial[slot, col]: 32 columns a block, 32 threads down the
// slots of each column (strided, in order), then thread row 0 adds the 32 sums in order.
template <typename T, typename A>
__global__ void __launch_bounds__(1024)
    dweight_reduce(const A* __restrict__ partial, int64_t slots, int64_t width, T* __restrict__ dweight) {
  __shared__ A sums[32][33];
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  A acc = A(0);
  if (col < width)
    for (int64_t s = threadIdx.y; s < slots; s += 32) acc += partial[s * width + col];
  sums[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < width) {
    A total = A(0);
#pragma unroll 8
    for (int r = 0; r < 32; ++r) total += sums[r][threadIdx.x];
    dweight[col] = from_acc<T>(total);
  }
}

// ---- host side ---------------------------------------------------------------------------------

constexpr int kWarpRowThreads = 256;     // 8 rows a block on the warp-per-row path
constexpr int64_t kMaxGrid = 1 << 20;    // grid-stride beyond this many blocks
constexpr int64_t kMaxSlots = 1024;      // dweight partial rows at most
constexpr int64_t kPartialBudget = 1 << 22;  // ... and about this many partial elements

// Packs a thread holds on the register paths: 128 bytes of math values (32 f32, 16 f64), at most
// 8 packs.
template <int W, typename A>
constexpr int kMaxPacks = std::clamp(int(128 / sizeof(A)) / W, 1, 8);

int round_up32(int64_t n) { return int((n + 31) / 32 * 32); }

enum class Path { warp, block, looped };

struct Plan {
  Path path = Path::looped;
  int packs_per_thread = 0;  // warp path: 1, 2, 4 or 8
  int threads = 0;
};

// The kernel family for a row of `packs` packs of W (vec) or of single elements.
template <int W, typename A>
Plan plan_for(int64_t width, bool vec) {
  Plan p;
  if (!vec) {
    p.threads = std::min<int>(1024, std::max<int>(32, round_up32(width)));
    return p;
  }
  const int64_t packs = width / W;
  constexpr int kMax = kMaxPacks<W, A>;
  if (packs <= 32 * kMax) {
    p.path = Path::warp;
    p.packs_per_thread = 1;
    while (int64_t(p.packs_per_thread) * 32 < packs) p.packs_per_thread *= 2;
    p.threads = kWarpRowThreads;
  } else if (packs <= kCachedMaxThreads * kMax) {
    p.path = Path::block;
    p.packs_per_thread = kMax;
    p.threads = round_up32((packs + kMax - 1) / kMax);
  } else {
    p.threads = 1024;
  }
  return p;
}

// Calls fn.template operator()<P>() for the warp path's packs per thread.
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

bool all_aligned(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

// T: y's (x's) storage type; R: the residual's (== T without a residual).
template <typename T, typename R, bool kRes>
void launch_forward(const T* x, const R* residual, const T* weight, T* y, R* new_residual,
                    pair_math_t<T, R>* rstd, int64_t rows, int64_t width, double eps) {
  using A = pair_math_t<T, R>;
  constexpr int W = kVecWidth<T, R>;
  const bool vec = width % W == 0 && all_aligned({x, residual, weight, y, new_residual});
  const Plan plan = vec ? plan_for<W, A>(width, true) : plan_for<1, A>(width, false);
  cudaStream_t stream = current_stream();
  const A e = A(eps);
  switch (plan.path) {
    case Path::warp: {
      const int rows_per_block = plan.threads / 32;
      const unsigned blocks = unsigned(std::min<int64_t>((rows + rows_per_block - 1) / rows_per_block, kMaxGrid));
      dispatch_packs<kMaxPacks<W, A>>(plan.packs_per_thread, [&]<int P>() {
        rms_forward_cached<T, R, kRes, W, P, false>
            <<<blocks, plan.threads, 0, stream>>>(x, residual, weight, y, new_residual, rstd, rows, width, e);
      });
      break;
    }
    case Path::block: {
      const unsigned blocks = unsigned(std::min<int64_t>(rows, kMaxGrid));
      rms_forward_cached<T, R, kRes, W, kMaxPacks<W, A>, true>
          <<<blocks, plan.threads, 0, stream>>>(x, residual, weight, y, new_residual, rstd, rows, width, e);
      break;
    }
    case Path::looped: {
      const unsigned blocks = unsigned(std::min<int64_t>(rows, kMaxGrid));
      if (vec)
        rms_forward_looped<T, R, kRes, W, true>
            <<<blocks, plan.threads, 0, stream>>>(x, residual, weight, y, new_residual, rstd, rows, width, e);
      else
        rms_forward_looped<T, R, kRes, 1, false>
            <<<blocks, plan.threads, 0, stream>>>(x, residual, weight, y, new_residual, rstd, rows, width, e);
      break;
    }
  }
  CUDA_CHECK_LAUNCH("rms_norm forward");
}

// T: grad's, weight's and dx's storage type; S: the normalized input's (x, or new_residual) and
// the residual gradients'. dweight (T, width) is written when partial sums are asked for.
template <typename T, typename S, bool kRes>
void launch_backward(const T* grad, const S* h, const T* weight, const pair_math_t<T, S>* rstd,
                     const S* grad_residual, T* dx, S* dresidual, T* dweight, int64_t rows, int64_t width,
                     int device) {
  using A = pair_math_t<T, S>;
  constexpr int W = kVecWidth<T, S>;
  const bool vec = width % W == 0 && all_aligned({grad, h, weight, grad_residual, dx, dresidual});
  const Plan plan = vec ? plan_for<W, A>(width, true) : plan_for<1, A>(width, false);
  cudaStream_t stream = current_stream();
  // A fixed partition of the rows (it depends on the shape only): at most kMaxSlots slots and
  // about kPartialBudget partial elements; on the warp path a slot feeds its block's 8 warps.
  const int64_t group_rows = plan.path == Path::warp ? plan.threads / 32 : 1;
  int64_t slots = std::min<int64_t>({(rows + group_rows - 1) / group_rows, kMaxSlots,
                                     std::max<int64_t>(128, kPartialBudget / width)});
  slots = std::max<int64_t>(slots, 1);
  const int64_t rows_per_slot = (rows + slots - 1) / slots;
  slots = (rows + rows_per_slot - 1) / rows_per_slot;
  Tensor partial_t;
  A* partial = nullptr;
  if (dweight) {
    partial_t = empty({slots, width}, {.dtype = dtype_of<A>(), .device = Device::cuda(device)});
    partial = data_at<A>(partial_t);
  }
  const unsigned blocks = unsigned(slots);
  switch (plan.path) {
    case Path::warp: {
      const size_t smem = dweight ? size_t(width) * sizeof(A) : 0;
      dispatch_packs<kMaxPacks<W, A>>(plan.packs_per_thread, [&]<int P>() {
        rms_backward_cached<T, S, kRes, W, P, false><<<blocks, plan.threads, smem, stream>>>(
            grad, h, weight, rstd, grad_residual, dx, dresidual, partial, rows, width, rows_per_slot);
      });
      break;
    }
    case Path::block:
      rms_backward_cached<T, S, kRes, W, kMaxPacks<W, A>, true><<<blocks, plan.threads, 0, stream>>>(
          grad, h, weight, rstd, grad_residual, dx, dresidual, partial, rows, width, rows_per_slot);
      break;
    case Path::looped:
      if (vec)
        rms_backward_looped<T, S, kRes, W, true><<<blocks, plan.threads, 0, stream>>>(
            grad, h, weight, rstd, grad_residual, dx, dresidual, partial, rows, width, rows_per_slot);
      else
        rms_backward_looped<T, S, kRes, 1, false><<<blocks, plan.threads, 0, stream>>>(
            grad, h, weight, rstd, grad_residual, dx, dresidual, partial, rows, width, rows_per_slot);
      break;
  }
  CUDA_CHECK_LAUNCH("rms_norm backward");
  if (dweight) {
    dweight_reduce<T, A><<<unsigned((width + 31) / 32), dim3(32, 32), 0, stream>>>(partial, slots, width, dweight);
    CUDA_CHECK_LAUNCH("rms_norm dweight_reduce");
  }
}

int64_t rows_of(const Tensor& x) { return x.numel() / x.size(-1); }

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

}  // namespace

std::pair<Tensor, Tensor> rms_norm_forward(const Tensor& x_in, const Tensor& weight_in, double eps) {
  check_cuda_tensor("rms_norm", x_in, "input");
  DeviceGuard guard(x_in.device().index);
  const Tensor x = as_contiguous(x_in);
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  const int64_t width = x.size(-1), rows = rows_of(x);
  Tensor y = empty(x.shape(), x.options());
  Tensor rstd;
  dispatch_floating_device(x.dtype(), "rms_norm", [&]<typename T>() {
    using A = math_t<T>;
    rstd = empty({rows}, x.options().with_dtype(dtype_of<A>()));
    if (rows == 0) return;
    launch_forward<T, T, false>(data_at<const T>(x), nullptr, ptr_or_null<T>(weight), data_at<T>(y), nullptr,
                                data_at<A>(rstd), rows, width, eps);
  });
  return {y, rstd};
}

std::pair<Tensor, Tensor> rms_norm_backward(const Tensor& grad_in, const Tensor& x_in, const Tensor& weight_in,
                                            const Tensor& rstd_in, bool need_dx, bool need_dweight) {
  check_cuda_tensor("rms_norm backward", x_in, "input");
  DeviceGuard guard(x_in.device().index);
  const Tensor g = as_contiguous(grad_in), x = as_contiguous(x_in), rstd = as_contiguous(rstd_in);
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  need_dweight = need_dweight && weight.defined();
  const int64_t width = x.size(-1), rows = rows_of(x);
  Tensor dx = need_dx ? empty(x.shape(), x.options()) : Tensor();
  Tensor dweight = need_dweight ? empty({width}, weight.options()) : Tensor();
  if (rows == 0) {
    if (need_dweight) fill_(dweight, 0.0);
    return {dx, dweight};
  }
  if (!need_dx && !need_dweight) return {dx, dweight};
  dispatch_floating_device(x.dtype(), "rms_norm backward", [&]<typename T>() {
    using A = math_t<T>;
    launch_backward<T, T, false>(data_at<const T>(g), data_at<const T>(x), ptr_or_null<T>(weight),
                                 data_at<const A>(rstd), nullptr, mut_ptr_or_null<T>(dx), nullptr,
                                 mut_ptr_or_null<T>(dweight), rows, width, x.device().index);
  });
  return {dx, dweight};
}

std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_forward(const Tensor& x_in, const Tensor& residual_in,
                                                             const Tensor& weight_in, double eps,
                                                             DType residual_dtype) {
  constexpr const char* op = "rms_norm_residual";
  check_cuda_tensor(op, x_in, "input");
  DeviceGuard guard(x_in.device().index);
  const Tensor x = as_contiguous(x_in);
  const Tensor residual = residual_in.defined() ? as_contiguous(residual_in) : Tensor();
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  SCANLINE_CHECK(!residual.defined() || residual.dtype() == residual_dtype, op, ": expected a residual of dtype ",
                 residual_dtype, " but found ", describe(residual));
  const int64_t width = x.size(-1), rows = rows_of(x);
  Tensor y = empty(x.shape(), x.options());
  Tensor new_residual = empty(x.shape(), x.options().with_dtype(residual_dtype));
  Tensor rstd;
  dispatch_pair(x.dtype(), residual_dtype, op, [&]<typename T, typename R>() {
    using A = pair_math_t<T, R>;
    rstd = empty({rows}, x.options().with_dtype(dtype_of<A>()));
    if (rows == 0) return;
    launch_forward<T, R, true>(data_at<const T>(x), ptr_or_null<R>(residual), ptr_or_null<T>(weight),
                               data_at<T>(y), data_at<R>(new_residual), data_at<A>(rstd), rows, width, eps);
  });
  return {y, new_residual, rstd};
}

std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_backward(const Tensor& grad_y_in, const Tensor& grad_nr_in,
                                                              const Tensor& new_residual_in, const Tensor& weight_in,
                                                              const Tensor& rstd_in, DType x_dtype, bool need_dx,
                                                              bool need_dresidual, bool need_dweight) {
  constexpr const char* op = "rms_norm_residual backward";
  check_cuda_tensor(op, new_residual_in, "new_residual");
  DeviceGuard guard(new_residual_in.device().index);
  const Tensor gy = as_contiguous(grad_y_in), h = as_contiguous(new_residual_in), rstd = as_contiguous(rstd_in);
  const Tensor gr = grad_nr_in.defined() ? as_contiguous(grad_nr_in) : Tensor();  // undefined: zeros
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  need_dweight = need_dweight && weight.defined();
  const int64_t width = h.size(-1), rows = rows_of(h);
  Tensor dx = need_dx ? empty(h.shape(), h.options().with_dtype(x_dtype)) : Tensor();
  Tensor dres = need_dresidual ? empty(h.shape(), h.options()) : Tensor();
  Tensor dweight = need_dweight ? empty({width}, weight.options()) : Tensor();
  if (rows == 0) {
    if (need_dweight) fill_(dweight, 0.0);
    return {dx, dres, dweight};
  }
  if (!need_dx && !need_dresidual && !need_dweight) return {dx, dres, dweight};
  dispatch_pair(x_dtype, h.dtype(), op, [&]<typename T, typename S>() {
    using A = pair_math_t<T, S>;
    launch_backward<T, S, true>(data_at<const T>(gy), data_at<const S>(h), ptr_or_null<T>(weight),
                                data_at<const A>(rstd), ptr_or_null<S>(gr), mut_ptr_or_null<T>(dx),
                                mut_ptr_or_null<S>(dres), mut_ptr_or_null<T>(dweight), rows, width,
                                h.device().index);
  });
  return {dx, dres, dweight};
}

}  // namespace scanline::cuda
