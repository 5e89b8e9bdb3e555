// Backward selective scan. The gradient of the state, x_t = d loss / d h_{t-1} through step t,
// obeys (with g_t = d loss / d h_t = x_{t+1} + ds_t·C_t[n], ds the gradient of the ungated y)
//   x_t = a_t·(x_{t+1} + ds_t·C_t[n]),          x_L = d loss / d final_state,
// an affine map x_{t+1} -> x_t per step: the same associative scan as the forward, run from the
// last step to the first (scan_suffix in cuda/selective_scan_common.cuh).
//
// Kernels, in order (a chunk is 32 lanes x kItems steps; every scan is warp-wide):
//  1. chunk_maps (when there is more than one chunk): one warp per (row, chunk >= 1) composes
//     its chunk's backward maps into one (P, Q) per state: x_chunk_start = P·x_chunk_end + Q.
//  2. carry: one thread per (row, state) walks the chunks from last to first and turns (P, Q)
//     into x at every chunk's right edge (in place; a few values per chunk).
//  3. main: one warp per (batch, group, tile of channels, chunk). For each channel of its tile,
//     in order, it recomputes the chunk's states from chunk_states (forward scan), runs the
//     backward scan from the carried x, and produces du, ddelta, dz and d initial_state directly,
//     dA per (row, chunk) and dD, d delta_bias per (row, chunk) as partial sums (warp
//     reductions in a fixed order), and its channels' dB/dC summed in shared memory.
//  4. reductions in a fixed order: dA, dD, d delta_bias over batch and chunks; dB, dC over tiles.
//
// dB/dC (batch, groups, N, L) sum over the channels of a group. No atomics and no
// (batch, d_inner, N, L) workspace: a warp sums its tile's channels into its own shared memory
// accumulators (N x chunk per tensor; the chunk plan keeps them within 16 KiB for N <= 16) in
// channel order and writes its (N, chunk) tile once. With one tile per group that tile is the result; with
// several (at most kMaxTiles, and a workspace of at most max(2 x u's bytes, 4 MiB)) the tiles go
// to a (batch, groups, tiles, N, L) f32 workspace that a second kernel adds in tile order. The
// tile count depends on the shape only (and on whether dB/dC are wanted), so results are
// bitwise reproducible. When groups == d_inner there is nothing to sum and dB/dC are written
// straight from registers.
#include <algorithm>

#include "cuda/selective_scan.h"
#include "cuda/selective_scan_common.cuh"

namespace scanline::cuda {
namespace {

using namespace scan;

// Enough warps for the main kernel to fill an H100 a few times over (about 12 warps an SM are
// resident, bound by the dB/dC accumulators).
constexpr int64_t kTargetWarps = 8192;
constexpr int64_t kMaxTiles = 64;
// Dynamic shared memory a block may use on sm_90 (227 KiB), rounded down.
constexpr int64_t kMaxBlockSharedBytes = 224 * 1024;
constexpr int64_t kMinTileWorkspace = int64_t(4) << 20;

// ds (d loss / d ungated y) from dy and z at one step.
template <typename W>
__device__ __forceinline__ W gate_grad(W dy, W z, bool has_z) {
  return has_z ? dy * z * sigmoid_m(z) : dy;
}

// ---- 1. compose each chunk's backward maps ----------------------------------------------------

template <typename T>
struct MapsParams {
  ScanInputs<T> in;
  Rows<const T> dy;   // (batch, d_inner, L), rows contiguous in time
  math_t<T>* maps_a;  // (rows, n_chunks, N): P, written for chunks >= 1
  math_t<T>* maps_b;  // (rows, n_chunks, N): Q
};

// A warp covers 32 · kFwdItems steps: lanes of kFwdItems steps each, chunk / kFwdItems lanes a
// chunk, each chunk's maps composed by a segmented shuffle reduction. Chunks 0 (never needed)
// and past the end are skipped. kVec: whole-word loads (see load_items).
template <typename T, bool kVec>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) selective_scan_chunk_maps_kernel(MapsParams<T> p) {
  using W = math_t<T>;
  constexpr int kItems = kFwdItems;
  constexpr int64_t kSpan = 32 * kItems;
  const ScanInputs<T>& in = p.in;
  const bool vec = kVec;
  const int64_t L = in.L, N = in.N, n_chunks = in.n_chunks, chunk = in.chunk;
  const int64_t spans = (L + kSpan - 1) / kSpan;
  const int lane = int(threadIdx.x & 31), width = int(chunk / kItems);
  const int64_t work = int64_t(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (work >= in.batch * in.d_inner * spans) return;  // whole warps only
  const int64_t row = work / spans, t0 = (work % spans) * kSpan + int64_t(lane) * kItems;
  const int64_t c = t0 / chunk;
  const bool writes = (lane & (width - 1)) == 0 && c >= 1 && c < n_chunks;
  const int64_t d = row % in.d_inner, b = row / in.d_inner, g = d / in.per_group;

  W dt[kItems], ds[kItems], dt_sum = W(0);
  {
    W dy[kItems], zv[kItems];
    load_items(in.delta.row(b, d), t0, L, vec, dt);
    load_items(p.dy.row(b, d), t0, L, vec, dy);
    if (in.z.data) load_items(in.z.row(b, d), t0, L, vec, zv);
    const W bias = in.bias ? in.bias[d] : W(0);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const W raw = dt[i] + bias;
      dt[i] = t0 + i < L ? (in.softplus ? softplus_m(raw) : raw) * kLog2e<W> : W(0);
      dt_sum += dt[i];
      ds[i] = gate_grad(dy[i], in.z.data ? zv[i] : W(0), in.z.data != nullptr);
    }
  }
  const int64_t valid = L - t0;
  const bool full = vec && valid >= kItems;
  const T* C_at = in.C.row(b, g) + t0;  // state n's row at the lane's first step
  const W* A_row = in.A + d * N;
  RawItems<kItems, T> C_next;  // state n + 1's, loaded while state n computes
  load_raw(C_at, full, valid, C_next);
  const int states = int(N);
  for (int n = 0; n < states; ++n) {
    const W A_n = A_row[n];
    W Cv[kItems];
    to_math(C_next, Cv);
    if (n + 1 < states) {
      C_at += in.C.stride_n;
      load_raw(C_at, full, valid, C_next);
    }
    W qa = exp2_m(dt_sum * A_n), qb = W(0);  // the lane's maps, the latest applied first
#pragma unroll
    for (int i = kItems - 1; i >= 0; --i) qb = exp2_m(dt[i] * A_n) * (qb + ds[i] * Cv[i]);
    warp_suffix_inclusive(qa, qb, width);
    if (writes) {
      const int64_t at = (row * n_chunks + c) * N + n;
      p.maps_a[at] = qa;
      p.maps_b[at] = qb;
    }
  }
}

// ---- 2. carry the state gradient across chunk boundaries --------------------------------------

// maps_a in: P; out: x at the right edge of each chunk (the last chunk's is grad_final). The
// maps of kBatch chunks are loaded before they are applied, so their loads overlap.
template <typename W>
__global__ void selective_scan_carry_kernel(W* __restrict__ maps_a, const W* __restrict__ maps_b,
                                            const W* __restrict__ grad_final, int64_t rows, int64_t N,
                                            int64_t n_chunks) {
  constexpr int kBatch = 8;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * N;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / N, n = i % N;
    W* a_row = maps_a + row * n_chunks * N + n;
    const W* b_row = maps_b + row * n_chunks * N + n;
    W x = grad_final ? grad_final[i] : W(0);
    for (int64_t top = n_chunks - 1; top >= 1; top -= kBatch) {
      W a[kBatch], b[kBatch];
#pragma unroll
      for (int k = 0; k < kBatch; ++k)
        if (top - k >= 1) a[k] = a_row[(top - k) * N], b[k] = b_row[(top - k) * N];
#pragma unroll
      for (int k = 0; k < kBatch; ++k)
        if (top - k >= 1) {
          a_row[(top - k) * N] = x;
          x = a[k] * x + b[k];
        }
    }
    a_row[0] = x;
  }
}

// ---- 3. the main backward kernel ----------------------------------------------------------------

template <typename T>
struct BwdParams {
  using W = math_t<T>;
  ScanInputs<T> in;
  Rows<const T> dy;          // (batch, d_inner, L), rows contiguous in time
  const W* chunk_states;     // (rows, n_chunks, N): the state entering each chunk
  const W* x_right;          // (rows, n_chunks, N): x at each chunk's right edge; null: zeros
  Rows<T> du, ddelta, dz;    // (batch, d_inner, L) in u's layout, each may be absent
  W* dinit;                  // (rows, N) or null
  W* dA_part;                // (rows, n_chunks, N) or null
  W *dD_part, *dbias_part;   // (rows, n_chunks), each may be null
  T *dB, *dC;                // (batch, groups, N, L) when tiles == 1, else null; each may be null
  W *dB_part, *dC_part;      // (batch, groups, tiles, N, L) when tiles > 1, else null
  bool need_B, need_C;
  bool direct;               // one channel a group: dB/dC straight from registers
  int64_t tiles, tile_channels;
};

// Dynamic shared memory, per warp: (unless direct) its dB and dC accumulators [N][kItems][32]
// each (when wanted), laid out so that a warp's accesses hit distinct banks, then the lanes' dA
// partials [N][32]. Only the owning lane touches an accumulator slot, so no synchronization is
// needed; the dA partials are summed after a __syncwarp.
// kFast: the training case, compiled without its branches: whole-word loads (vec), channels
// summed in the accumulators (not direct), and dB, dC, dA all wanted.
template <typename T, int kItems, bool kFast>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) selective_scan_bwd_kernel(BwdParams<T> p) {
  using W = math_t<T>;
  extern __shared__ __align__(16) unsigned char bwd_smem[];
  const ScanInputs<T>& in = p.in;
  const int64_t L = in.L, N = in.N, n_chunks = in.n_chunks;
  const int lane = int(threadIdx.x & 31), warp = int(threadIdx.x >> 5);
  const bool vec = kFast || in.vec;
  const bool accumulate = kFast || !p.direct;
  const bool need_B = kFast || p.need_B, need_C = kFast || p.need_C, need_dA = kFast || p.dA_part;
  const int64_t acc_values = accumulate ? int64_t(need_B + need_C) * N * kItems * 32 : 0;
  W* acc_B = reinterpret_cast<W*>(bwd_smem) + warp * (acc_values + N * 32);
  W* acc_C = acc_B + (accumulate && need_B ? N * kItems * 32 : 0);
  W* dA_lane = acc_B + acc_values;  // [N][32]: each lane's dA partial of the current channel

  int64_t work = int64_t(blockIdx.x) * (blockDim.x >> 5) + warp;
  if (work >= in.batch * in.groups * p.tiles * n_chunks) return;  // whole warps only
  const int64_t c = work % n_chunks;
  work /= n_chunks;
  const int64_t tile = work % p.tiles;
  const int64_t bg = work / p.tiles;  // batch * groups + group
  const int64_t g = bg % in.groups, b = bg / in.groups;
  const int64_t d_begin = g * in.per_group + tile * p.tile_channels;
  const int64_t d_end = min(d_begin + p.tile_channels, (g + 1) * in.per_group);
  const T* B_rows = in.B.row(b, g);
  const T* C_rows = in.C.row(b, g);
  const int64_t t0 = c * in.chunk + int64_t(lane) * kItems;
  const int64_t valid = L - t0;
  const bool full = vec && valid >= kItems;
  const int states = int(N);

  if (accumulate) {
    for (int64_t k = 0; k < N * kItems; ++k) {  // only this lane's slots
      if (need_B) acc_B[k * 32 + lane] = W(0);
      if (need_C) acc_C[k * 32 + lane] = W(0);
    }
  }

  for (int64_t d = d_begin; d < d_end; ++d) {
    const int64_t row = b * in.d_inner + d;
    const int64_t state_at = (row * n_chunks + c) * N;
    W u[kItems], dt[kItems], dt2[kItems], raw[kItems], dy[kItems], zv[kItems], ds[kItems], dtu[kItems];
    W du[kItems], ddt[kItems], pre[kItems], dt2_sum = W(0);
    load_steps<kItems>(in, vec, b, d, t0, u, dt, raw);
    load_items(p.dy.row(b, d), t0, L, vec, dy);
    if (in.z.data) load_items(in.z.row(b, d), t0, L, vec, zv);
    const W D = in.D ? in.D[d] : W(0);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      ds[i] = gate_grad(dy[i], in.z.data ? zv[i] : W(0), in.z.data != nullptr);
      dtu[i] = dt[i] * u[i];
      dt2[i] = dt[i] * kLog2e<W>;
      dt2_sum += dt2[i];
      du[i] = ds[i] * D;
      ddt[i] = W(0);
      pre[i] = D * u[i];
    }
    const W* A_row = in.A + d * N;
    // State n + 1's inputs are loaded while state n computes, hiding their latency.
    // Running pointers: state n's rows at the lane's first step, its chunk state and carry.
    const T* B_at = B_rows + t0;
    const T* C_at = C_rows + t0;
    const W* h_at = p.chunk_states + state_at;
    const W* x_at = p.x_right ? p.x_right + state_at : nullptr;
    W* accB_at = acc_B + lane;  // this lane's accumulator slots of state n
    W* accC_at = acc_C + lane;
    RawItems<kItems, T> B_next, C_next;
    load_raw(B_at, full, valid, B_next);
    load_raw(C_at, full, valid, C_next);
    W A_next = A_row[0], h_next = h_at[0], x_next = x_at ? x_at[0] : W(0);
    for (int n = 0; n < states; ++n) {
      const W A_n = A_next, h_chunk = h_next, x_chunk = x_next;
      W Bv[kItems], Cv[kItems], a[kItems], bx[kItems], h_prev[kItems + 1], dsC[kItems];
      to_math(B_next, Bv);
      to_math(C_next, Cv);
      if (n + 1 < states) {
        B_at += in.B.stride_n;
        C_at += in.C.stride_n;
        load_raw(B_at, full, valid, B_next);
        load_raw(C_at, full, valid, C_next);
        A_next = A_row[n + 1];
        h_next = h_at[n + 1];
        x_next = x_at ? x_at[n + 1] : W(0);
      }
      W accB[kItems], accC[kItems];  // the running dB/dC sums, read early for the same reason
      if (accumulate) {
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          accB[i] = need_B ? accB_at[i * 32] : W(0);
          accC[i] = need_C ? accC_at[i * 32] : W(0);
        }
      }
      // Recompute the states: forward scan from the state entering the chunk.
      // Both composites multiply the same decays: Π_i a_i = exp2(Σ_i dt2_i·A) for either.
      W pa = exp2_m(dt2_sum * A_n), pb = W(0);
#pragma unroll
      for (int i = 0; i < kItems; ++i) {
        a[i] = exp2_m(dt2[i] * A_n);
        bx[i] = dtu[i] * Bv[i];
        dsC[i] = ds[i] * Cv[i];
        pb = a[i] * pb + bx[i];
      }
      // The state gradient: backward scan of x_t = a_t·(x_{t+1} + ds_t·C_t) from the chunk's right edge.
      W qa = pa, qb = W(0);
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) qb = a[i] * (qb + dsC[i]);
      warp_prefix_inclusive(pa, pb);  // the two scans are independent: their shuffles overlap
      warp_suffix_inclusive(qa, qb);
      // h_prev[i]: the state before step i; h_prev[kItems]: after. x: at the lane's right edge.
      h_prev[0] = from_previous_lane(pa * h_chunk + pb, h_chunk);
      W x = from_next_lane(qa * x_chunk + qb, x_chunk);
#pragma unroll
      for (int i = 0; i < kItems; ++i) h_prev[i + 1] = a[i] * h_prev[i] + bx[i];
      W dA_sum = W(0), dBv[kItems], dCv[kItems];
#pragma unroll
      for (int i = kItems - 1; i >= 0; --i) {
        const W grad_h = x + dsC[i];  // d loss / d h_t
        const W h_t = h_prev[i + 1];
        pre[i] += Cv[i] * h_t;
        const W grad_exponent = grad_h * a[i] * h_prev[i];  // d loss / d (Δ_t·A[n])
        const W grad_hB = grad_h * Bv[i];
        ddt[i] += grad_exponent * A_n + grad_hB * u[i];
        dA_sum += grad_exponent * dt[i];
        du[i] += grad_hB * dt[i];
        dBv[i] = grad_h * dtu[i];
        dCv[i] = ds[i] * h_t;
        x = a[i] * grad_h;  // on to h_{t-1}
      }
      if (p.dinit && c == 0 && lane == 0) p.dinit[row * N + n] = x;
      if (!accumulate) {
        if (p.dB) store_items(p.dB + (bg * N + n) * L, t0, L, vec, dBv);
        if (p.dC) store_items(p.dC + (bg * N + n) * L, t0, L, vec, dCv);
      } else {
#pragma unroll
        for (int i = 0; i < kItems; ++i) {
          if (need_B) accB_at[i * 32] = accB[i] + dBv[i];
          if (need_C) accC_at[i * 32] = accC[i] + dCv[i];
        }
        accB_at += kItems * 32;
        accC_at += kItems * 32;
      }
      // dA: the lane's partial now, the sum over lanes once per channel (no shuffle chain a state).
      if (need_dA) dA_lane[n * 32 + lane] = dA_sum;
    }
    if (need_dA) {
      __syncwarp();
      for (int64_t n = lane; n < N; n += 32) {
        W total = W(0);
        for (int j = 0; j < 32; ++j) total += dA_lane[n * 32 + j];
        p.dA_part[state_at + n] = total;
      }
      __syncwarp();  // read before the next channel overwrites them
    }

    // Per-step gradients of the channel and its per-chunk partial sums.
    W ddelta[kItems], dzv[kItems], dD_sum = W(0), dbias_sum = W(0);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      ddelta[i] = in.softplus ? ddt[i] * sigmoid_m(raw[i]) : ddt[i];
      if (t0 + i < L) {
        dD_sum += ds[i] * u[i];
        dbias_sum += ddelta[i];
      }
      if (in.z.data) {
        const W sig = sigmoid_m(zv[i]);
        dzv[i] = dy[i] * pre[i] * sig * (W(1) + zv[i] * (W(1) - sig));
      }
    }
    if (p.du.data) store_items(p.du.row(b, d), t0, L, vec, du);
    if (p.ddelta.data) store_items(p.ddelta.row(b, d), t0, L, vec, ddelta);
    if (p.dz.data) store_items(p.dz.row(b, d), t0, L, vec, dzv);
    if (p.dD_part) {
      dD_sum = warp_sum(dD_sum);
      if (lane == 0) p.dD_part[row * n_chunks + c] = dD_sum;
    }
    if (p.dbias_part) {
      dbias_sum = warp_sum(dbias_sum);
      if (lane == 0) p.dbias_part[row * n_chunks + c] = dbias_sum;
    }
  }

  if (!accumulate) return;
  for (int64_t n = 0; n < N; ++n) {
    W vB[kItems], vC[kItems];
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int64_t k = (n * kItems + i) * 32 + lane;
      vB[i] = need_B ? acc_B[k] : W(0);
      vC[i] = need_C ? acc_C[k] : W(0);
    }
    if (p.tiles == 1) {
      if (p.dB) store_items(p.dB + (bg * N + n) * L, t0, L, vec, vB);
      if (p.dC) store_items(p.dC + (bg * N + n) * L, t0, L, vec, vC);
    } else {
      const int64_t at = ((bg * p.tiles + tile) * N + n) * L;
      if (p.dB_part) store_items(p.dB_part + at, t0, L, vec, vB);
      if (p.dC_part) store_items(p.dC_part + at, t0, L, vec, vC);
    }
  }
}

// ---- 4. fixed-order reductions ------------------------------------------------------------------

// out[d, j] = Σ_b Σ_c part[b, d, c, j] for part (batch, d_inner, n_chunks, width), b then c in order.
template <typename W>
__global__ void selective_scan_sum_partials_kernel(const W* __restrict__ part, W* __restrict__ out, int64_t batch,
                                                   int64_t d_inner, int64_t n_chunks, int64_t width) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < d_inner * width;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t d = i / width, j = i % width;
    W total = W(0);
    for (int64_t b = 0; b < batch; ++b) {
      const W* p = part + (b * d_inner + d) * n_chunks * width + j;
      for (int64_t c = 0; c < n_chunks; ++c) total += p[c * width];
    }
    out[i] = total;
  }
}

// out[bg, j] = Σ_k part[bg, k, j] for part (batch · groups, tiles, N · L), tiles in order.
template <typename T, typename W>
__global__ void selective_scan_sum_tiles_kernel(const W* __restrict__ part, T* __restrict__ out, int64_t outer,
                                                int64_t tiles, int64_t inner) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < outer * inner;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t o = i / inner, j = i % inner;
    const W* p = part + o * tiles * inner + j;
    W total = W(0);
    for (int64_t k = 0; k < tiles; ++k) total += p[k * inner];
    out[i] = from_math<T>(math_t<T>(total));
  }
}

constexpr int kReduceThreads = 256;

template <typename W>
void sum_partials(const Tensor& part, const Tensor& out, int64_t batch, int64_t d_inner, int64_t n_chunks,
                  int64_t width) {
  const int64_t n = d_inner * width;
  if (n == 0) return;
  selective_scan_sum_partials_kernel<W><<<blocks_for(n, kReduceThreads), kReduceThreads, 0, current_stream()>>>(
      data_at<const W>(part), data_at<W>(out), batch, d_inner, n_chunks, width);
  CUDA_CHECK_LAUNCH("selective_scan backward sum_partials");
}

template <typename T, typename W>
void sum_tiles(const Tensor& part, const Tensor& out, int64_t outer, int64_t tiles, int64_t inner) {
  const int64_t n = outer * inner;
  if (n == 0) return;
  selective_scan_sum_tiles_kernel<T, W><<<blocks_for(n, kReduceThreads), kReduceThreads, 0, current_stream()>>>(
      data_at<const W>(part), data_at<T>(out), outer, tiles, inner);
  CUDA_CHECK_LAUNCH("selective_scan backward sum_tiles");
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

ScanBackwardResult selective_scan_bwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                      const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& delta_bias,
                                      bool delta_softplus, const Tensor& initial_state, const Tensor& chunk_states_in,
                                      const Tensor& grad_y, const Tensor& grad_final_state,
                                      const std::array<bool, 9>& needs) {
  constexpr const char* op = "selective_scan backward";
  check_cuda_tensor(op, u, "u");
  DeviceGuard guard(u.device().index);
  const Prepared prep = prepare(op, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
  const int64_t batch = prep.batch, d_inner = prep.d_inner, L = prep.L, N = prep.N, groups = prep.groups;
  const int64_t rows = batch * d_inner, n_chunks = prep.plan.n_chunks;
  SCANLINE_CHECK(chunk_states_in.defined() && chunk_states_in.shape() == Shape({batch, d_inner, n_chunks, N}) &&
                     chunk_states_in.dtype() == A.dtype(),
                 op, ": expected the forward's chunk_states of shape ", Shape({batch, d_inner, n_chunks, N}), " (",
                 A.dtype(), ") but found ", describe(chunk_states_in));
  SCANLINE_CHECK(grad_y.defined() && grad_y.shape() == u.shape() && grad_y.dtype() == u.dtype(), op,
                 ": expected grad_y like u ", describe(u), " but found ", describe(grad_y));
  const Tensor chunk_states = as_contiguous(chunk_states_in);
  const Tensor gy = time_contiguous(grad_y);
  Tensor gf;
  if (grad_final_state.defined()) {
    SCANLINE_CHECK(grad_final_state.shape() == Shape({batch, d_inner, N}) && grad_final_state.dtype() == A.dtype(),
                   op, ": expected grad_final_state of shape ", Shape({batch, d_inner, N}), " (", A.dtype(),
                   ") but found ", describe(grad_final_state));
    gf = as_contiguous(grad_final_state);
  }

  const TensorOptions input_opts = u.options(), param_opts = A.options();
  auto wanted = [&](int i, const Tensor& input, const Shape& shape, TensorOptions opts) {
    return needs[size_t(i)] && input.defined() ? empty(shape, opts) : Tensor();
  };
  // du, ddelta and dz in u's layout, as y: a channel-major u gets channel-major gradients.
  auto wanted_rows = [&](int i, const Tensor& input) {
    return needs[size_t(i)] && input.defined() ? empty_in_layout_of(prep.u, input_opts) : Tensor();
  };
  ScanBackwardResult r;
  r.u = wanted_rows(0, u);
  r.delta = wanted_rows(1, delta);
  r.A = wanted(2, A, A.shape(), param_opts);
  r.B = wanted(3, B, B.shape(), input_opts);
  r.C = wanted(4, C, C.shape(), input_opts);
  r.D = wanted(5, D, {d_inner}, param_opts);
  r.z = wanted_rows(6, z);
  r.delta_bias = wanted(7, delta_bias, {d_inner}, param_opts);
  r.initial_state = wanted(8, initial_state, {batch, d_inner, N}, param_opts);
  const bool need_B = r.B.defined(), need_C = r.C.defined();
  if (rows == 0) {  // no terms: the summed gradients are zeros, the rest is empty
    for (const Tensor* t : {&r.A, &r.B, &r.C, &r.D, &r.delta_bias})
      if (t->defined()) fill_(*t, 0.0);
    return r;
  }

  // Tiles of channels for the main kernel (see the top of this file).
  const int64_t per_group = prep.per_group;
  const bool direct = per_group == 1;
  int64_t tiles = 1;
  if (per_group > 1) {
    tiles = std::min(per_group, ceil_div(kTargetWarps, batch * groups * n_chunks));
    if (need_B || need_C) {
      const int64_t math_bytes = u.dtype() == DType::f64 ? 8 : 4;
      const int64_t per_tile = 2 * batch * groups * N * L * math_bytes;
      const int64_t budget = std::max(2 * u.numel() * int64_t(dtype_size(u.dtype())), kMinTileWorkspace);
      tiles = std::clamp<int64_t>(budget / per_tile, 1, std::min(tiles, kMaxTiles));
    }
  }
  const int64_t tile_channels = ceil_div(per_group, tiles);
  tiles = ceil_div(per_group, tile_channels);
  const int64_t main_warps = batch * groups * tiles * n_chunks;
  SCANLINE_CHECK(ceil_div(rows * ceil_div(L, 32 * kFwdItems), kWarpsPerBlock) <= int64_t(0x7fffffff) &&
                     ceil_div(main_warps, kWarpsPerBlock) <= int64_t(0x7fffffff),
                 op, ": ", rows, " rows x ", n_chunks, " chunks exceed the CUDA grid limit");

  const Shape part_shape{batch, d_inner, n_chunks, N}, row_part_shape{batch, d_inner, n_chunks};
  const Tensor dA_part = r.A.defined() ? empty(part_shape, param_opts) : Tensor();
  const Tensor dD_part = r.D.defined() ? empty(row_part_shape, param_opts) : Tensor();
  const Tensor dbias_part = r.delta_bias.defined() ? empty(row_part_shape, param_opts) : Tensor();
  const Shape tile_shape{batch, groups, tiles, N, L};
  const Tensor dB_part = need_B && tiles > 1 ? empty(tile_shape, param_opts) : Tensor();
  const Tensor dC_part = need_C && tiles > 1 ? empty(tile_shape, param_opts) : Tensor();

  dispatch_scan_dtype(u.dtype(), op, [&]<typename T>() {
    using W = math_t<T>;
    const ScanInputs<T> in = scan_inputs<T>(prep);
    cudaStream_t stream = current_stream();

    // 1 + 2: x at every chunk's right edge (grad_final itself when there is one chunk).
    Tensor maps_a, maps_b;
    const W* x_right = ptr_or_null<W>(gf);
    if (n_chunks > 1) {
      maps_a = empty(part_shape, param_opts);
      maps_b = empty(part_shape, param_opts);
      MapsParams<T> mp{in, rows_of<const T>(gy), data_at<W>(maps_a), data_at<W>(maps_b)};
      mp.in.vec = vec_for(in, kFwdItems, row_alignment({gy}));
      const int64_t map_blocks = ceil_div(rows * ceil_div(L, 32 * kFwdItems), kWarpsPerBlock);
      auto maps_kernel = mp.in.vec ? selective_scan_chunk_maps_kernel<T, true> : selective_scan_chunk_maps_kernel<T, false>;
      maps_kernel<<<unsigned(map_blocks), 32 * kWarpsPerBlock, 0, stream>>>(mp);
      CUDA_CHECK_LAUNCH("selective_scan backward chunk_maps");
      selective_scan_carry_kernel<W><<<blocks_for(rows * N, kReduceThreads), kReduceThreads, 0, stream>>>(
          data_at<W>(maps_a), data_at<const W>(maps_b), x_right, rows, N, n_chunks);
      CUDA_CHECK_LAUNCH("selective_scan backward carry");
      x_right = data_at<const W>(maps_a);
    }

    // 3: the main kernel.
    BwdParams<T> p;
    p.in = in;
    p.dy = rows_of<const T>(gy);
    p.chunk_states = data_at<const W>(chunk_states);
    p.x_right = x_right;
    p.du = rows_of<T>(r.u);
    p.ddelta = rows_of<T>(r.delta);
    p.dz = rows_of<T>(r.z);
    p.dinit = mut_ptr_or_null<W>(r.initial_state);
    p.dA_part = mut_ptr_or_null<W>(dA_part);
    p.dD_part = mut_ptr_or_null<W>(dD_part);
    p.dbias_part = mut_ptr_or_null<W>(dbias_part);
    p.dB = tiles == 1 ? mut_ptr_or_null<T>(r.B) : nullptr;
    p.dC = tiles == 1 ? mut_ptr_or_null<T>(r.C) : nullptr;
    p.dB_part = mut_ptr_or_null<W>(dB_part);
    p.dC_part = mut_ptr_or_null<W>(dC_part);
    p.need_B = need_B;
    p.need_C = need_C;
    p.direct = direct;
    p.tiles = tiles;
    p.tile_channels = tile_channels;
    p.in.vec = vec_for(in, prep.plan.items, row_alignment({gy, r.u, r.delta, r.z, r.B, r.C, dB_part, dC_part}));
    const bool fast = p.in.vec && !direct && need_B && need_C && p.dA_part;
    dispatch_plan(prep.plan, [&]<int kItems>() {
      const int64_t acc_values = (direct ? 0 : int64_t(need_B + need_C) * N * kItems * 32) + N * 32;
      // Fewer warps a block when their accumulators would not fit (N > 128 in f32).
      const int64_t warp_bytes = acc_values * int64_t(sizeof(W));
      const int64_t warps = std::clamp<int64_t>(kMaxBlockSharedBytes / std::max<int64_t>(warp_bytes, 1), 1,
                                                kWarpsPerBlock);
      const size_t smem = size_t(warps * warp_bytes);
      auto kernel = fast ? selective_scan_bwd_kernel<T, kItems, true> : selective_scan_bwd_kernel<T, kItems, false>;
      allow_shared_memory(kernel, smem);
      kernel<<<unsigned(ceil_div(main_warps, warps)), unsigned(32 * warps), smem, stream>>>(p);
      CUDA_CHECK_LAUNCH("selective_scan backward");
    });

    // 4: fixed-order sums.
    if (r.A.defined()) sum_partials<W>(dA_part, r.A, batch, d_inner, n_chunks, N);
    if (r.D.defined()) sum_partials<W>(dD_part, r.D, batch, d_inner, n_chunks, 1);
    if (r.delta_bias.defined()) sum_partials<W>(dbias_part, r.delta_bias, batch, d_inner, n_chunks, 1);
    if (dB_part.defined()) sum_tiles<T, W>(dB_part, r.B, batch * groups, tiles, N * L);
    if (dC_part.defined()) sum_tiles<T, W>(dC_part, r.C, batch * groups, tiles, N * L);
  });
  return r;
}

}  // namespace scanline::cuda
