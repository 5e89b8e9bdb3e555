#pragma once
// Shared by the gated RMSNorm kernels, cuda/rms_norm_gated.cu (forward) and
// cuda/rms_norm_gated_bwd.cu (backward), of cuda/rms_norm_gated.h. With s = silu(z) and v the
// value normalized over each group of group_size channels (x * s before the gate, else x):
//   forward   y = v * rstd * weight [* s when norm_before_gate]
//   backward  vhat = v * rstd, q = grad [* s], gw = q * weight,
//             dv = rstd * (gw - vhat * mean_group(gw * vhat)), dweight = sum_rows q * vhat;
//             before the gate: dx = dv * s, dz = dv * x * silu'(z)
//             after it:        dx = dv,     dz = grad * vhat * weight * silu'(z)
//
// Register kernels: a team of threads takes one (row, group) segment; thread `lane` holds packs
// lane, lane + team, ... (P packs of W elements, 16-byte words on the vector path), so a segment
// is read once and its sum of squares (forward) or dot product (backward) is one team reduction:
// shuffles for a team of up to 32 lanes (several teams a block), a block reduction for a team of
// a whole block (up to kMaxTeam threads). Groups wider than kMaxTeam * P packs take the looped
// kernels, two passes over the segment (the second mostly from L2).
//
// The backward grid is (group, slot of rows): the team(s) of block (g, slot) walk the slot's rows
// of group g, so a thread owns the same columns in every row and sums its dweight terms in
// registers; the block writes them (teams combined in team order) to row `slot` of a workspace
// that gated_dweight_reduce adds up in a fixed order. Slots depend only on the shape: deterministic.
#include <bit>
#include <climits>
#include <initializer_list>

#include "cuda/rms_norm_common.cuh"

namespace scanline::cuda::gated {

using namespace rms;

constexpr int kMaxTeam = 512;        // threads a team (a block) at most on the register paths
constexpr int kPreferredTeam = 256;  // the fewest packs a thread that keep a team this narrow

template <typename A>
__device__ __forceinline__ A sigmoid(A v) {
  if constexpr (std::is_same_v<A, double>) return 1.0 / (1.0 + ::exp(-v));
  else return 1.0f / (1.0f + expf(-v));
}

template <typename A>
__device__ __forceinline__ A inv_rms(A squares, int64_t n, A eps) {
  if constexpr (std::is_same_v<A, double>) return 1.0 / ::sqrt(squares / double(n) + eps);
  else return 1.0f / ::sqrtf(squares / float(n) + eps);
}

// Sum over a team: `team` lanes (a power of two up to 32, aligned in the warp) by shuffles, or the
// whole block (team > 32, team == blockDim.x). Every thread of the block calls it.
template <typename A>
__device__ __forceinline__ A team_sum(A v, int team, A* scratch) {
  if (team > 32) return block_sum(v, scratch);
  for (int offset = team >> 1; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ int team_lane(int team) {
  return team > 32 ? int(threadIdx.x) : int(threadIdx.x) & (team - 1);
}

// Arguments of every kernel: x, z and grad are rows `*_stride` elements apart (last dim dense);
// y, dx and dz are dense (rows, groups * group_size).
template <typename T>
struct GatedArgs {
  const T* x;
  const T* z;
  const T* grad;
  const T* weight;
  int64_t x_stride, z_stride, grad_stride;
  int64_t rows, groups, group_size;
};

// ---- host side ---------------------------------------------------------------------------------

// t (..., D) as rows D wide and `stride` elements apart: t itself when its last dim is dense and
// its leading dims collapse into one row stride (a column slice of a wider matrix, as the mixer's
// z), else a contiguous copy.
struct RowView {
  Tensor t;
  int64_t stride;
};

inline RowView row_view(const Tensor& t) {
  const int64_t width = t.size(-1);
  bool in_place = t.numel() > 0 && (width == 1 || t.stride(-1) == 1);
  int64_t stride = width, expected = -1;  // expected: the stride the next outer non-unit dim needs
  for (int64_t d = t.dim() - 2; in_place && d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (expected < 0) {
      stride = t.stride(d);
      in_place = stride >= 0;
    } else {
      in_place = t.stride(d) == expected;
    }
    expected = t.stride(d) * t.size(d);
  }
  if (in_place) return {t, stride};
  return {as_contiguous(t), width};
}

// The register kernels' shape for segments of `packs` packs: a team of at most 32 lanes with the
// fewest packs a thread (up to max_packs) that fit; else a block team of at most kPreferredTeam, then
// kMaxTeam threads; else none (packs_per_thread 0: the looped kernel).
struct TeamPlan {
  int packs_per_thread = 0;
  int team = 0;
  int block = 0;
};

inline TeamPlan plan_team(int64_t packs, int max_packs, int small_block) {
  TeamPlan p;
  for (int k = 1; k <= max_packs; k *= 2) {
    const int64_t per = (packs + k - 1) / k;
    if (per > 32) continue;
    p.packs_per_thread = k;
    p.team = int(std::bit_ceil(uint64_t(per)));
    p.block = small_block;
    return p;
  }
  for (int64_t limit : {int64_t(kPreferredTeam), int64_t(kMaxTeam)}) {
    for (int k = 1; k <= max_packs; k *= 2) {
      const int64_t per = (packs + k - 1) / k;
      if (per > limit) continue;
      p.packs_per_thread = k;
      p.team = p.block = round_up32(per);
      return p;
    }
  }
  return p;
}

template <typename T>
bool vector_ok(const GatedArgs<T>& a, std::initializer_list<const void*> outputs, bool with_grad) {
  constexpr int W = int(16 / sizeof(T));
  const bool strides = a.x_stride % W == 0 && a.z_stride % W == 0 && (!with_grad || a.grad_stride % W == 0);
  return a.group_size % W == 0 && strides && all_aligned({a.x, a.z, a.weight, with_grad ? a.grad : nullptr}) &&
         all_aligned(outputs);
}

// Calls fn.template operator()<W, kVec>() for the vector (W = 16 / sizeof(T)) or scalar path.
template <typename T, typename Fn>
void dispatch_vec(bool vec, Fn&& fn) {
  if (vec) fn.template operator()<int(16 / sizeof(T)), true>();
  else fn.template operator()<1, false>();
}

inline void check_group_size(const char* op, const Tensor& x, int64_t group_size) {
  const int64_t width = x.size(-1);
  SCANLINE_CHECK(group_size >= 1 && width % group_size == 0 && width / group_size <= INT_MAX, op,
                 ": expected group_size dividing the last dim of ", describe(x), " but found ", group_size);
}

}  // namespace scanline::cuda::gated
