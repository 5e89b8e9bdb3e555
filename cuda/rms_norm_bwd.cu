// RMSNorm backward kernels and launchers (cuda/rms_norm.h), plain and after a fused residual add.
// With xhat = h * rstd (h: x, or new_residual) and gw = g * weight:
//   dh = rstd * (gw - xhat * mean(gw * xhat)) [+ grad_new_residual],  dweight = sum_rows g * xhat.
//
// dweight is reduced deterministically, without atomics: the rows are cut into slots (a function
// of the shape and dtypes only, never of the GPU), block b adds g * xhat over slot b's rows in a
// fixed order into row b of a partial workspace, and dweight_reduce adds the partial rows in a
// fixed order.
//
// Staged path (rms_backward_rows, rows of up to 512 * kMaxPacks packs): a group of threads covers
// a row, and thread `lane` of a group owns the same columns (packs lane, lane + group_threads, ...)
// in every row, so its dweight sums stay in registers for the whole slot and a block writes them
// once. Each iteration a group takes R rows: their g and h (16-byte cp.async copies into shared
// memory, issued kStages - 1 iterations ahead, so ~2/3 of a 228 KiB SM's shared memory is loads in
// flight), one reduction of the R dot products across the group (one __syncthreads an iteration
// when a group spans several warps), and R rows of dh written. Groups narrower than 128 threads
// (rows under 64 packs) share a block and combine their sums, in group order, at the end. Wider or
// unaligned rows take the looped kernel.
#include "cuda/rms_norm.h"

#include <bit>

#include "cuda/rms_norm_common.cuh"

namespace scanline::cuda {
namespace {

using namespace rms;

// ---- staged register path ----------------------------------------------------------------------

constexpr int kRowsMaxThreads = 512;    // threads a group at most
constexpr int kRowsBlockThreads = 128;  // groups narrower than this share a block
// Shared memory a thread stages rows in: 54 KiB a 128-thread block, so that four blocks (16 warps)
// fit an SM's 228 KiB.
constexpr int kStageBytes = 432;
constexpr int kMaxRows = 8;
constexpr int kMaxStages = 4;

// Bytes a thread stages for one row: its packs of g and h (and grad_residual), and the row's rstd.
template <typename T, typename S, bool kRes, int W, int kPacks>
constexpr int kRowBytes =
    kPacks * W * int(sizeof(T) + sizeof(S) + (kRes ? sizeof(S) : 0)) + int(sizeof(pair_math_t<T, S>));
// R: rows a group takes an iteration, sized for three stages; then as many stages (1 to 4) of R
// rows as kStageBytes holds. kMaxPacks keeps kRowBytes <= kStageBytes.
template <typename T, typename S, bool kRes, int W, int kPacks>
constexpr int kRowsPerGroup = std::clamp(kStageBytes / (3 * kRowBytes<T, S, kRes, W, kPacks>), 1, kMaxRows);
template <typename T, typename S, bool kRes, int W, int kPacks>
constexpr int kStages =
    std::clamp(kStageBytes / (kRowsPerGroup<T, S, kRes, W, kPacks> * kRowBytes<T, S, kRes, W, kPacks>), 1, kMaxStages);

// 16-byte asynchronous copies global -> shared (cp.async, bypassing L1), in commit groups.
__device__ __forceinline__ void cp_async16(int4* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem) : "memory");
}
// A 4- or 8-byte copy (through L1: rstd values are read by every thread of a group).
template <typename A>
__device__ __forceinline__ void cp_async_small(A* smem, const A* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2;\n" ::"r"(dst), "l"(gmem), "n"(int(sizeof(A))) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
// Waits until at most N of this thread's newest commit groups are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// W elements in storage precision, as staged; converted to the math type where they are used.
template <typename X, int W>
struct alignas(16) RawPack {
  static_assert((sizeof(X) * W) % 16 == 0, "a raw pack is whole 16-byte words");
  static constexpr int kWords = int(sizeof(X) * W / 16);
  X v[W];
};

// blockDim.x / group_threads groups of group_threads threads (a power of two below 32, else a
// multiple of 32; blockDim.x a multiple of 32); thread `lane` of a group owns packs lane + i *
// group_threads, i < kPacks. Block b takes the rows [b * rows_per_slot, (b + 1) * rows_per_slot),
// R rows a group an iteration, and writes its dweight sums to partial[b * width ...]. More than
// one group only with kPacks == 1 and width <= 64 * W. width % W == 0, pointers aligned.
//
// Loads are staged in shared memory by cp.async, kStages iterations deep: each thread copies only
// the words it reads itself (word j of stage s at [(s * kStageWords + j) * blockDim.x + thread],
// conflict-free; then the rows' rstd values, [(s * R + r) * blockDim.x + thread]), so a
// wait_group orders them and no barrier is needed. A stage is refilled one iteration after it was
// read, once its values have fed that iteration's stores and sums. Dynamic shared memory:
// blockDim.x * kStages * R * kRowBytes bytes.
template <typename T, typename S, bool kRes, int W, int kPacks>
__global__ void __launch_bounds__(kRowsMaxThreads)
    rms_backward_rows(const T* __restrict__ grad, const S* __restrict__ h, const T* __restrict__ weight,
                      const pair_math_t<T, S>* __restrict__ rstd, const S* __restrict__ grad_residual,
                      T* __restrict__ dx, S* __restrict__ dresidual, pair_math_t<T, S>* __restrict__ partial,
                      int64_t rows, int64_t width, int64_t rows_per_slot, int group_threads) {
  using A = pair_math_t<T, S>;
  constexpr int R = kRowsPerGroup<T, S, kRes, W, kPacks>;
  constexpr int kNumStages = kStages<T, S, kRes, W, kPacks>;
  constexpr int kGWords = RawPack<T, W>::kWords, kXWords = RawPack<S, W>::kWords;
  constexpr int kPackWords = kGWords + kXWords + (kRes ? kXWords : 0);
  constexpr int kStageWords = R * kPacks * kPackWords;
  constexpr bool kCacheWeight = kPacks <= 2;  // wider: reload the weight packs (L1) in each pass
  static_assert(kRowBytes<T, S, kRes, W, kPacks> <= kStageBytes, "a row's packs fit the stages");
  static_assert(kStageWords * 16 + R * int(sizeof(A)) == R * kRowBytes<T, S, kRes, W, kPacks>);
  extern __shared__ int4 stage_smem[];
  __shared__ A red[2][kRowsMaxThreads / 32][R];  // per-warp dot sums, double-buffered
  const int tg = group_threads, nthreads = int(blockDim.x);
  const int group = int(threadIdx.x) / tg, lane = int(threadIdx.x) - group * tg;
  const int groups = nthreads / tg;
  const int64_t packs = width / W;
  const bool need_dh = dx != nullptr || dresidual != nullptr;
  const bool need_dw = partial != nullptr;
  const int64_t slot_begin = int64_t(blockIdx.x) * rows_per_slot;
  const int64_t slot_end = min(rows, slot_begin + rows_per_slot);
  const int64_t step = int64_t(groups) * R;
  const int64_t iters = (slot_end - slot_begin + step - 1) / step;  // the same for the whole block
  int4* const my_words = stage_smem + threadIdx.x;
  A* const my_rstd = reinterpret_cast<A*>(stage_smem + kNumStages * kStageWords * nthreads) + threadIdx.x;

  // Copies iteration `it`'s rows (nothing past the slot's or the row's end) into stage `stage`,
  // and commits a group (empty past the last iteration, so the group count stays uniform).
  auto issue = [&](int64_t it, int stage) {
    if (it < iters) {
      int4* const dst = my_words + stage * kStageWords * nthreads;
      const int64_t row0 = slot_begin + it * step + int64_t(group) * R;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t row = row0 + r;
        if (row < slot_end) cp_async_small(my_rstd + (stage * R + r) * nthreads, rstd + row);
#pragma unroll
        for (int i = 0; i < kPacks; ++i) {
          const int64_t pk = lane + int64_t(i) * tg;
          if (row >= slot_end || pk >= packs) continue;
          const int64_t at = row * width + pk * W;
          int4* const d = dst + (r * kPacks + i) * kPackWords * nthreads;
#pragma unroll
          for (int c = 0; c < kGWords; ++c) cp_async16(d + c * nthreads, reinterpret_cast<const int4*>(grad + at) + c);
#pragma unroll
          for (int c = 0; c < kXWords; ++c)
            cp_async16(d + (kGWords + c) * nthreads, reinterpret_cast<const int4*>(h + at) + c);
          if constexpr (kRes) {
            if (grad_residual)
#pragma unroll
              for (int c = 0; c < kXWords; ++c)
                cp_async16(d + (kGWords + kXWords + c) * nthreads, reinterpret_cast<const int4*>(grad_residual + at) + c);
          }
        }
      }
    }
    cp_async_commit();
  };

  A w_cached[kCacheWeight ? kPacks : 1][W];
  if constexpr (kCacheWeight) {
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * tg;
      if (pk < packs) load_weight<W, true>(weight, pk * W, w_cached[i]);
    }
  }
  auto weight_pack = [&](int i, int64_t pk, A(&w)[W]) {
    if constexpr (kCacheWeight) {
#pragma unroll
      for (int e = 0; e < W; ++e) w[e] = w_cached[i][e];
    } else {
      load_weight<W, true>(weight, pk * W, w);
    }
  };
  A acc[kPacks][W];
#pragma unroll
  for (int i = 0; i < kPacks; ++i)
#pragma unroll
    for (int e = 0; e < W; ++e) acc[i][e] = A(0);

#pragma unroll
  for (int s = 0; s < kNumStages - 1; ++s) issue(s, s);
  int stage = 0, parity = 0;
  for (int64_t it = 0; it < iters; ++it) {
    issue(it + kNumStages - 1, stage == 0 ? kNumStages - 1 : stage - 1);  // the stage used last iteration
    cp_async_wait<kNumStages - 1>();
    // This iteration's rows, from the stage into registers (zeros past the slot's or row's end).
    const int64_t row0 = slot_begin + it * step + int64_t(group) * R;
    const int4* const src = my_words + stage * kStageWords * nthreads;
    const A* const src_rstd = my_rstd + stage * R * nthreads;
    RawPack<T, W> g[R][kPacks];
    RawPack<S, W> x[R][kPacks];
    RawPack<S, W> gr[kRes ? R : 1][kPacks];
    A inv[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool row_ok = row0 + r < slot_end;
      inv[r] = row_ok ? src_rstd[r * nthreads] : A(0);
#pragma unroll
      for (int i = 0; i < kPacks; ++i) {
        const bool ok = row_ok && lane + int64_t(i) * tg < packs;
        const int4* const s_ = src + (r * kPacks + i) * kPackWords * nthreads;
        const int4 zero = make_int4(0, 0, 0, 0);
#pragma unroll
        for (int c = 0; c < kGWords; ++c) reinterpret_cast<int4*>(g[r][i].v)[c] = ok ? s_[c * nthreads] : zero;
#pragma unroll
        for (int c = 0; c < kXWords; ++c)
          reinterpret_cast<int4*>(x[r][i].v)[c] = ok ? s_[(kGWords + c) * nthreads] : zero;
        if constexpr (kRes) {
#pragma unroll
          for (int c = 0; c < kXWords; ++c)
            reinterpret_cast<int4*>(gr[r][i].v)[c] = ok && grad_residual ? s_[(kGWords + kXWords + c) * nthreads] : zero;
        }
      }
    }
    stage = stage == kNumStages - 1 ? 0 : stage + 1;
    // Pass 1: the dot products gw . xhat and the dweight terms g * xhat (rows in order).
    A dot[R];
#pragma unroll
    for (int r = 0; r < R; ++r) dot[r] = A(0);
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * tg;
      if (pk >= packs) continue;
      A w[W];
      weight_pack(i, pk, w);
#pragma unroll
      for (int r = 0; r < R; ++r)
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const A gv = to_acc<A>(g[r][i].v[e]);
          const A xhat = to_acc<A>(x[r][i].v[e]) * inv[r];
          dot[r] += (gv * w[e]) * xhat;
          if (need_dw) acc[i][e] += gv * xhat;
        }
    }
    if (!need_dh) continue;
    // The group's sums of the R dot products: shuffles within a warp, then the group's warps
    // through shared memory in warp order.
    if (tg <= 32) {
      for (int offset = tg >> 1; offset > 0; offset >>= 1)
#pragma unroll
        for (int r = 0; r < R; ++r) dot[r] += __shfl_xor_sync(0xffffffffu, dot[r], offset);
    } else {
#pragma unroll
      for (int r = 0; r < R; ++r) dot[r] = warp_sum(dot[r]);
      if ((threadIdx.x & 31) == 0)
#pragma unroll
        for (int r = 0; r < R; ++r) red[parity][threadIdx.x >> 5][r] = dot[r];
      // One barrier an iteration: the next iteration writes the other buffer, and the one after
      // can only start writing this one once every warp has passed the next barrier.
      __syncthreads();
      const int first_warp = group * (tg >> 5);
#pragma unroll
      for (int r = 0; r < R; ++r) dot[r] = red[parity][first_warp][r];
      for (int wi = 1; wi < (tg >> 5); ++wi)
#pragma unroll
        for (int r = 0; r < R; ++r) dot[r] += red[parity][first_warp + wi][r];
      parity ^= 1;
    }
    // Pass 2: dh = rstd * (gw - xhat * mean) [+ grad_residual].
#pragma unroll
    for (int i = 0; i < kPacks; ++i) {
      const int64_t pk = lane + int64_t(i) * tg;
      if (pk >= packs) continue;
      A w[W];
      weight_pack(i, pk, w);
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const int64_t row = row0 + r;
        if (row >= slot_end) continue;
        const A mean = dot[r] / A(width);
        const int64_t at = row * width + pk * W;
        A d[W];
#pragma unroll
        for (int e = 0; e < W; ++e) {
          const A xhat = to_acc<A>(x[r][i].v[e]) * inv[r];
          d[e] = inv[r] * (to_acc<A>(g[r][i].v[e]) * w[e] - xhat * mean);
        }
        if constexpr (kRes) {
          if (grad_residual)
#pragma unroll
            for (int e = 0; e < W; ++e) d[e] += to_acc<A>(gr[r][i].v[e]);
          if (dresidual) store_pack<W, true>(dresidual + at, d);
        }
        if (dx) store_pack<W, true>(dx + at, d);
      }
    }
  }
  cp_async_wait<0>();  // only empty groups are left; no copy may outlive the block
  if (!need_dw) return;
  A* out = partial + int64_t(blockIdx.x) * width;
  if constexpr (kPacks == 1) {
    if (groups > 1) {
      // The groups add their sums one after another (a fixed order) into the stage memory, free
      // once every thread is past its last iteration (width <= 64 * W math values fit: the stages
      // hold at least 128 * kRowBytes bytes).
      A* const combine = reinterpret_cast<A*>(stage_smem);
      __syncthreads();
      for (int gi = 0; gi < groups; ++gi) {
        if (group == gi && lane < packs)
#pragma unroll
          for (int e = 0; e < W; ++e) combine[lane * W + e] = gi == 0 ? acc[0][e] : combine[lane * W + e] + acc[0][e];
        __syncthreads();
      }
      for (int64_t col = threadIdx.x; col < width; col += blockDim.x) out[col] = combine[col];
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kPacks; ++i) {
    const int64_t pk = lane + int64_t(i) * tg;
    if (pk < packs) store_pack<W, true>(out + pk * W, acc[i]);
  }
}

// ---- any width -----------------------------------------------------------------------------------

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

// dweight[col] = sum over slots of partial[slot, col]: kReduceCols columns a block (one 32-byte
// sector of f32 a row), kReduceLanes threads down the slots of each column (lane l adds slots l,
// l + kReduceLanes, ... in order), then a fixed tree over the lanes.
constexpr int kReduceCols = 8;
constexpr int kReduceLanes = 128;

template <typename T, typename A>
__global__ void __launch_bounds__(kReduceCols * kReduceLanes)
    dweight_reduce(const A* __restrict__ partial, int64_t slots, int64_t width, T* __restrict__ dweight) {
  __shared__ A sums[kReduceLanes][kReduceCols];
  const int c = int(threadIdx.x), lane = int(threadIdx.y);
  const int64_t col = int64_t(blockIdx.x) * kReduceCols + c;
  A acc = A(0);
  if (col < width) {
#pragma unroll 8
    for (int64_t s = lane; s < slots; s += kReduceLanes) acc += partial[s * width + col];
  }
  sums[lane][c] = acc;
  __syncthreads();
  for (int step = kReduceLanes / 2; step > 0; step >>= 1) {
    if (lane < step) sums[lane][c] += sums[lane + step][c];
    __syncthreads();
  }
  if (lane == 0 && col < width) dweight[col] = from_acc<T>(sums[0][c]);
}

// ---- host side ---------------------------------------------------------------------------------

// dweight slots: min(iterations, kMaxSlots, max(kMinSlots, min(kPartialBudget / width, rows /
// kMinSlotRows))). At least 32 rows a slot keeps the workspace's write and read to 1-2% of the
// kernel's traffic; at least 256 slots (when there are that many iterations) keep the GPU busy.
constexpr int64_t kMaxSlots = 1024;
constexpr int64_t kMinSlots = 256;
constexpr int64_t kPartialBudget = 1 << 22;
constexpr int64_t kMinSlotRows = 32;

// The staged path's shape for rows of `packs` packs: the fewest packs a thread that give a group
// of at most kRowsBlockThreads threads with at most 2 packs a thread, else of at most
// kRowsMaxThreads with at most 2, then kMax packs a thread (more packs a thread hold more
// registers); none (packs_per_thread 0: the looped kernel) for wider rows.
struct RowsPlan {
  int packs_per_thread = 0;
  int group_threads = 0;
  int groups = 1;
};

struct RowsTier {
  int64_t threads;
  int max_packs;
};
constexpr RowsTier kRowsTiers[] = {{kRowsBlockThreads, 2}, {kRowsMaxThreads, 2}, {kRowsMaxThreads, 8}};

template <int kMax>
RowsPlan plan_rows(int64_t packs) {
  RowsPlan p;
  for (const RowsTier& tier : kRowsTiers) {
    for (int k = 1; k <= std::min(tier.max_packs, kMax); k *= 2) {
      const int64_t per = (packs + k - 1) / k;
      if (per > tier.threads) continue;
      p.packs_per_thread = k;
      p.group_threads = per < 32 ? int(std::bit_ceil(uint64_t(per))) : round_up32(per);
      p.groups = std::max(1, kRowsBlockThreads / p.group_threads);
      return p;
    }
  }
  return p;
}

// Rows a slot: whole iterations of rows_per_step rows, cut from the shape only.
int64_t plan_slot_rows(int64_t rows, int64_t width, int64_t rows_per_step) {
  const int64_t steps = (rows + rows_per_step - 1) / rows_per_step;
  const int64_t wanted = std::max(kMinSlots, std::min(kPartialBudget / width, rows / kMinSlotRows));
  const int64_t slots = std::max<int64_t>(1, std::min({steps, kMaxSlots, wanted}));
  return (steps + slots - 1) / slots * rows_per_step;
}

// T: grad's, weight's and dx's storage type; S: the normalized input's (x, or new_residual) and
// the residual gradients'. dweight (T, width) is written when partial sums are asked for.
template <typename T, typename S, bool kRes>
void launch_backward(const T* grad, const S* h, const T* weight, const pair_math_t<T, S>* rstd,
                     const S* grad_residual, T* dx, S* dresidual, T* dweight, int64_t rows, int64_t width,
                     int device) {
  using A = pair_math_t<T, S>;
  constexpr int W = kVecWidth<T, S>;
  constexpr int kMax = kMaxPacks<W, A>;
  const bool vec = width % W == 0 && all_aligned({grad, h, weight, grad_residual, dx, dresidual});
  const RowsPlan plan = vec ? plan_rows<kMax>(width / W) : RowsPlan{};
  int64_t rows_per_step = 1;
  if (plan.packs_per_thread > 0) {
    SCANLINE_CHECK(plan.groups == 1 || (plan.packs_per_thread == 1 && width <= 64 * W),
                   "rms_norm backward: bad register plan for width ", width);
    dispatch_packs<kMax>(plan.packs_per_thread, [&]<int P>() {
      rows_per_step = int64_t(plan.groups) * kRowsPerGroup<T, S, kRes, W, P>;
    });
  }
  const int64_t rows_per_slot = plan_slot_rows(rows, width, rows_per_step);
  const int64_t slots = (rows + rows_per_slot - 1) / rows_per_slot;
  Tensor partial_t;
  A* partial = nullptr;
  if (dweight) {
    partial_t = empty({slots, width}, {.dtype = dtype_of<A>(), .device = Device::cuda(device)});
    partial = data_at<A>(partial_t);
  }
  cudaStream_t stream = current_stream();
  const unsigned blocks = unsigned(slots);
  if (plan.packs_per_thread > 0) {
    const int threads = plan.groups * plan.group_threads;
    dispatch_packs<kMax>(plan.packs_per_thread, [&]<int P>() {
      const auto kernel = rms_backward_rows<T, S, kRes, W, P>;
      const int smem = threads * kStages<T, S, kRes, W, P> * kRowsPerGroup<T, S, kRes, W, P> *
                       kRowBytes<T, S, kRes, W, P>;  // at most 512 * kStageBytes: 216 KiB
      if (smem > 48 * 1024) {
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                        int(cudaSharedmemCarveoutMaxShared)));
      }
      kernel<<<blocks, threads, smem, stream>>>(grad, h, weight, rstd, grad_residual, dx, dresidual, partial, rows,
                                                width, rows_per_slot, plan.group_threads);
    });
  } else if (vec) {
    rms_backward_looped<T, S, kRes, W, true><<<blocks, 1024, 0, stream>>>(
        grad, h, weight, rstd, grad_residual, dx, dresidual, partial, rows, width, rows_per_slot);
  } else {
    const int threads = std::min<int>(1024, std::max<int>(32, round_up32(width)));
    rms_backward_looped<T, S, kRes, 1, false><<<blocks, threads, 0, stream>>>(
        grad, h, weight, rstd, grad_residual, dx, dresidual, partial, rows, width, rows_per_slot);
  }
  CUDA_CHECK_LAUNCH("rms_norm backward");
  if (dweight) {
    dweight_reduce<T, A><<<unsigned((width + kReduceCols - 1) / kReduceCols), dim3(kReduceCols, kReduceLanes), 0,
                           stream>>>(partial, slots, width, dweight);
    CUDA_CHECK_LAUNCH("rms_norm dweight_reduce");
  }
}

}  // namespace

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
