// Gated RMSNorm backward kernels and launcher (cuda/rms_norm_gated.h; the design is described in
// cuda/rms_norm_gated_common.cuh): grid (group, slot of rows), dweight summed per thread in
// registers over the slot, one workspace row a block, then a fixed-order reduction over slots.
#include "cuda/rms_norm_gated.h"

#include "cuda/rms_norm_gated_common.cuh"

namespace scanline::cuda {
namespace {

using namespace gated;

constexpr int kBwdSmallBlock = 128;  // block of several teams of <= 32 lanes (one dweight slot)

// Packs a thread holds: four arrays of math values plus its dweight sums, 64 bytes each.
template <int W, typename A>
constexpr int kBwdMaxPacks = std::clamp(int(64 / sizeof(A)) / W, 1, 8);

// One element's backward terms (formulas in cuda/rms_norm_gated_common.cuh): gw and vhat (the
// dot's factors), the dweight term q * vhat; ca, cb: what the second pass needs besides dv
// (before the gate: s and x * silu'(z)); dz_now: dz after the gate, complete in the first pass.
template <bool kBefore, typename A>
__device__ __forceinline__ void element_terms(A dy, A xv, A zv, A w, A inv, A& gw, A& vhat, A& dw_term, A& ca, A& cb,
                                              A& dz_now) {
  const A sig = sigmoid(zv);
  const A s = zv * sig;
  const A dsilu = sig * (A(1) + zv * (A(1) - sig));
  if constexpr (kBefore) {
    vhat = xv * inv;
    const A q = dy * s;
    gw = q * w;
    dw_term = q * vhat;
    dz_now = ((dy * vhat) * w) * dsilu;
  } else {
    vhat = (xv * s) * inv;
    gw = dy * w;
    dw_term = dy * vhat;
    ca = s;
    cb = xv * dsilu;
  }
}

// Grid (groups, slots); block (g, slot) takes rows [slot * rows_per_slot, ...) of group g, team t
// of the block rows first + t. Dynamic shared memory (several teams a block): blockDim.x * P * W
// math values, where the teams' dweight sums are combined.
template <typename T, bool kBefore, int W, bool kVec, int P>
__global__ void __launch_bounds__(kMaxTeam)
    gated_backward_regs(GatedArgs<T> a, const math_t<T>* __restrict__ rstd, T* __restrict__ dx, T* __restrict__ dz,
                        math_t<T>* __restrict__ partial, int64_t rows_per_slot, int team) {
  using A = math_t<T>;
  __shared__ A scratch[32];
  extern __shared__ int4 gated_stash[];
  const int lane = team_lane(team);
  const int teams = int(blockDim.x) / team, t = int(threadIdx.x) / team;
  const int64_t width = a.groups * a.group_size, packs = a.group_size / W;
  const int64_t g = blockIdx.x, col0 = g * a.group_size;
  const int64_t slot_begin = int64_t(blockIdx.y) * rows_per_slot;
  const int64_t slot_end = min(a.rows, slot_begin + rows_per_slot);
  const bool need_dot = dx != nullptr || (!kBefore && dz != nullptr);
  A acc[P][W];
#pragma unroll
  for (int i = 0; i < P; ++i)
#pragma unroll
    for (int e = 0; e < W; ++e) acc[i][e] = A(0);

  for (int64_t first = slot_begin; first < slot_end; first += teams) {  // block-uniform
    const int64_t row = first + t;
    const bool valid = row < slot_end;
    const A inv = valid ? rstd[row * a.groups + g] : A(0);
    const T* gs = a.grad + row * a.grad_stride + col0;
    const T* xs = a.x + row * a.x_stride + col0;
    const T* zs = a.z + row * a.z_stride + col0;
    const int64_t out_at = row * width + col0;
    A gw[P][W], vhat[P][W];
    A ca[kBefore ? 1 : P][W], cb[kBefore ? 1 : P][W];
    A dot = A(0);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t pk = lane + int64_t(i) * team;
      if (valid && pk < packs) {
        A dy[W], xv[W], zv[W], w[W], dz_now[W];
        load_pack<W, kVec>(gs + pk * W, dy);
        load_pack<W, kVec>(xs + pk * W, xv);
        load_pack<W, kVec>(zs + pk * W, zv);
        load_weight<W, kVec>(a.weight, col0 + pk * W, w);
#pragma unroll
        for (int e = 0; e < W; ++e) {
          A dw_term, c0 = A(0), c1 = A(0);
          element_terms<kBefore>(dy[e], xv[e], zv[e], w[e], inv, gw[i][e], vhat[i][e], dw_term, c0, c1, dz_now[e]);
          if constexpr (!kBefore) {
            ca[i][e] = c0;
            cb[i][e] = c1;
          }
          acc[i][e] += dw_term;
          dot += gw[i][e] * vhat[i][e];
        }
        if constexpr (kBefore)
          if (dz) store_pack<W, kVec>(dz + out_at + pk * W, dz_now);
      } else {
#pragma unroll
        for (int e = 0; e < W; ++e) {
          gw[i][e] = vhat[i][e] = A(0);
          if constexpr (!kBefore) ca[i][e] = cb[i][e] = A(0);
        }
      }
    }
    if (!need_dot) continue;
    const A mean = team_sum(dot, team, scratch) / A(a.group_size);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t pk = lane + int64_t(i) * team;
      if (!valid || pk >= packs) continue;
      A dv[W];
#pragma unroll
      for (int e = 0; e < W; ++e) dv[e] = inv * (gw[i][e] - vhat[i][e] * mean);
      if constexpr (kBefore) {
        if (dx) store_pack<W, kVec>(dx + out_at + pk * W, dv);
      } else {
        A out[W];
        if (dx) {
#pragma unroll
          for (int e = 0; e < W; ++e) out[e] = dv[e] * ca[i][e];
          store_pack<W, kVec>(dx + out_at + pk * W, out);
        }
        if (dz) {
#pragma unroll
          for (int e = 0; e < W; ++e) out[e] = dv[e] * cb[i][e];
          store_pack<W, kVec>(dz + out_at + pk * W, out);
        }
      }
    }
  }
  if (partial == nullptr) return;
  A* out = partial + int64_t(blockIdx.y) * width + col0;
  if (teams == 1) {
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t pk = lane + int64_t(i) * team;
      if (pk < packs) store_pack<W, kVec>(out + pk * W, acc[i]);
    }
    return;
  }
  // Several teams: each stashes its sums, then every column adds the teams' in team order.
  A* stash = reinterpret_cast<A*>(gated_stash);
#pragma unroll
  for (int i = 0; i < P; ++i) {
    const int64_t pk = lane + int64_t(i) * team;
    if (pk < packs)
#pragma unroll
      for (int e = 0; e < W; ++e) stash[t * a.group_size + pk * W + e] = acc[i][e];
  }
  __syncthreads();
  for (int64_t col = threadIdx.x; col < a.group_size; col += blockDim.x) {
    A total = stash[col];
    for (int k = 1; k < teams; ++k) total += stash[k * a.group_size + col];
    out[col] = total;
  }
}

// Any group size: block (g, slot) walks its rows, each in two passes; thread t owns the columns of
// packs t, t + blockDim.x, ... of the block's workspace row and adds into them directly.
template <typename T, bool kBefore, int W, bool kVec>
__global__ void __launch_bounds__(1024)
    gated_backward_looped(GatedArgs<T> a, const math_t<T>* __restrict__ rstd, T* __restrict__ dx, T* __restrict__ dz,
                          math_t<T>* __restrict__ partial, int64_t rows_per_slot) {
  using A = math_t<T>;
  __shared__ A scratch[32];
  const int64_t width = a.groups * a.group_size, packs = a.group_size / W;
  const int64_t g = blockIdx.x, col0 = g * a.group_size;
  const int64_t slot_begin = int64_t(blockIdx.y) * rows_per_slot;
  const int64_t slot_end = min(a.rows, slot_begin + rows_per_slot);
  const bool need_dot = dx != nullptr || (!kBefore && dz != nullptr);
  A* out = partial ? partial + int64_t(blockIdx.y) * width + col0 : nullptr;
  if (out)
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x)
#pragma unroll
      for (int e = 0; e < W; ++e) out[pk * W + e] = A(0);
  for (int64_t row = slot_begin; row < slot_end; ++row) {
    const A inv = rstd[row * a.groups + g];
    const T* gs = a.grad + row * a.grad_stride + col0;
    const T* xs = a.x + row * a.x_stride + col0;
    const T* zs = a.z + row * a.z_stride + col0;
    const int64_t out_at = row * width + col0;
    A mean = A(0);
    if (need_dot) {
      A dot = A(0);
      for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
        A dy[W], xv[W], zv[W], w[W];
        load_pack<W, kVec>(gs + pk * W, dy);
        load_pack<W, kVec>(xs + pk * W, xv);
        load_pack<W, kVec>(zs + pk * W, zv);
        load_weight<W, kVec>(a.weight, col0 + pk * W, w);
#pragma unroll
        for (int e = 0; e < W; ++e) {
          A gw, vhat, dw_term, c0 = A(0), c1 = A(0), dz_now = A(0);
          element_terms<kBefore>(dy[e], xv[e], zv[e], w[e], inv, gw, vhat, dw_term, c0, c1, dz_now);
          dot += gw * vhat;
        }
      }
      mean = block_sum(dot, scratch) / A(a.group_size);
    }
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
      A dy[W], xv[W], zv[W], w[W], o1[W], o2[W];
      load_pack<W, kVec>(gs + pk * W, dy);
      load_pack<W, kVec>(xs + pk * W, xv);
      load_pack<W, kVec>(zs + pk * W, zv);
      load_weight<W, kVec>(a.weight, col0 + pk * W, w);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        A gw, vhat, dw_term, c0 = A(0), c1 = A(0), dz_now = A(0);
        element_terms<kBefore>(dy[e], xv[e], zv[e], w[e], inv, gw, vhat, dw_term, c0, c1, dz_now);
        if (out) out[pk * W + e] += dw_term;
        const A dv = inv * (gw - vhat * mean);
        o1[e] = kBefore ? dv : dv * c0;
        o2[e] = kBefore ? dz_now : dv * c1;
      }
      if (dx) store_pack<W, kVec>(dx + out_at + pk * W, o1);
      if (dz) store_pack<W, kVec>(dz + out_at + pk * W, o2);
    }
  }
}

// dweight[col] = sum over slots of partial[slot, col] (as in cuda/rms_norm_bwd.cu): kReduceCols
// columns a block, kReduceLanes threads down the slots of each column in a fixed order, then a
// fixed tree over the lanes.
constexpr int kReduceCols = 8;
constexpr int kReduceLanes = 128;

template <typename T, typename A>
__global__ void __launch_bounds__(kReduceCols * kReduceLanes)
    gated_dweight_reduce(const A* __restrict__ partial, int64_t slots, int64_t width, T* __restrict__ dweight) {
  __shared__ A sums[kReduceLanes][kReduceCols];
  const int c = int(threadIdx.x), lane = int(threadIdx.y);
  const int64_t col = int64_t(blockIdx.x) * kReduceCols + c;
  A acc = A(0);
  if (col < width)
    for (int64_t s = lane; s < slots; s += kReduceLanes) acc += partial[s * width + col];
  sums[lane][c] = acc;
  __syncthreads();
  for (int step = kReduceLanes / 2; step > 0; step >>= 1) {
    if (lane < step) sums[lane][c] += sums[lane + step][c];
    __syncthreads();
  }
  if (lane == 0 && col < width) dweight[col] = from_acc<T>(sums[0][c]);
}

// dweight slots (as cuda/rms_norm_bwd.cu, counting blocks over all groups): at least kMinBlocks
// blocks when there are that many steps, at most kMaxSlots slots and kPartialBudget workspace
// values, at least kMinSlotRows rows a slot otherwise; whole steps of rows_per_step rows a slot.
constexpr int64_t kMaxSlots = 1024;
constexpr int64_t kMinBlocks = 256;
constexpr int64_t kPartialBudget = 1 << 22;
constexpr int64_t kMinSlotRows = 32;

int64_t plan_slot_rows(int64_t rows, int64_t width, int64_t groups, int64_t rows_per_step) {
  const int64_t steps = (rows + rows_per_step - 1) / rows_per_step;
  const int64_t wanted =
      std::max((kMinBlocks + groups - 1) / groups, std::min(kPartialBudget / width, rows / kMinSlotRows));
  const int64_t slots = std::max<int64_t>(1, std::min({steps, kMaxSlots, wanted}));
  return (steps + slots - 1) / slots * rows_per_step;
}

template <typename T, bool kBefore>
void launch_backward(const GatedArgs<T>& a, const math_t<T>* rstd, T* dx, T* dz, T* dweight, int device) {
  using A = math_t<T>;
  const int64_t width = a.groups * a.group_size;
  cudaStream_t stream = current_stream();
  dispatch_vec<T>(vector_ok(a, {dx, dz}, true), [&]<int W, bool kVec>() {
    constexpr int kMax = kBwdMaxPacks<W, A>;
    const TeamPlan plan = plan_team(a.group_size / W, kMax, kBwdSmallBlock);
    const int64_t rows_per_step = plan.packs_per_thread > 0 ? plan.block / plan.team : 1;
    const int64_t rows_per_slot = plan_slot_rows(a.rows, width, a.groups, rows_per_step);
    const int64_t slots = (a.rows + rows_per_slot - 1) / rows_per_slot;
    Tensor partial_t;
    A* partial = nullptr;
    if (dweight) {
      partial_t = empty({slots, width}, {.dtype = dtype_of<A>(), .device = Device::cuda(device)});
      partial = data_at<A>(partial_t);
    }
    const dim3 grid(unsigned(a.groups), unsigned(slots));
    if (plan.packs_per_thread > 0) {
      dispatch_packs<kMax>(plan.packs_per_thread, [&]<int P>() {
        // Several teams a block combine their dweight sums in shared memory (at most
        // kBwdSmallBlock * 64 bytes: 8 KiB).
        const size_t smem = rows_per_step > 1 && dweight ? size_t(plan.block) * P * W * sizeof(A) : 0;
        gated_backward_regs<T, kBefore, W, kVec, P>
            <<<grid, plan.block, smem, stream>>>(a, rstd, dx, dz, partial, rows_per_slot, plan.team);
      });
    } else {
      gated_backward_looped<T, kBefore, W, kVec><<<grid, 1024, 0, stream>>>(a, rstd, dx, dz, partial, rows_per_slot);
    }
    CUDA_CHECK_LAUNCH("rms_norm_gated backward");
    if (dweight) {
      gated_dweight_reduce<T, A><<<unsigned((width + kReduceCols - 1) / kReduceCols), dim3(kReduceCols, kReduceLanes),
                                   0, stream>>>(partial, slots, width, dweight);
      CUDA_CHECK_LAUNCH("rms_norm_gated dweight_reduce");
    }
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor> rms_norm_gated_backward(const Tensor& grad_in, const Tensor& x_in,
                                                           const Tensor& z_in, const Tensor& weight_in,
                                                           const Tensor& rstd_in, bool norm_before_gate,
                                                           int64_t group_size, bool need_dx, bool need_dz,
                                                           bool need_dweight) {
  constexpr const char* op = "rms_norm_gated backward";
  check_cuda_tensor(op, x_in, "input");
  check_cuda_tensor(op, z_in, "gate z");
  check_cuda_tensor(op, grad_in, "grad");
  check_group_size(op, x_in, group_size);
  DeviceGuard guard(x_in.device().index);
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  need_dweight = need_dweight && weight.defined();
  const int64_t width = x_in.size(-1), rows = x_in.numel() / width, groups = width / group_size;
  Tensor dx = need_dx ? empty(x_in.shape(), x_in.options()) : Tensor();
  Tensor dz = need_dz ? empty(x_in.shape(), x_in.options()) : Tensor();
  Tensor dweight = need_dweight ? empty({width}, weight.options()) : Tensor();
  if (rows == 0) {
    if (need_dweight) fill_(dweight, 0.0);
    return {dx, dz, dweight};
  }
  if (!need_dx && !need_dz && !need_dweight) return {dx, dz, dweight};
  const RowView g = row_view(grad_in), x = row_view(x_in), z = row_view(z_in);
  const Tensor rstd = as_contiguous(rstd_in);
  dispatch_floating_device(x_in.dtype(), op, [&]<typename T>() {
    using A = math_t<T>;
    SCANLINE_CHECK(rstd.dtype() == dtype_of<A>() && rstd.numel() == rows * groups, op, ": expected rstd of ",
                   rows * groups, " values in ", dtype_of<A>(), " but found ", describe(rstd));
    const GatedArgs<T> a{.x = data_at<const T>(x.t), .z = data_at<const T>(z.t), .grad = data_at<const T>(g.t),
                         .weight = ptr_or_null<T>(weight), .x_stride = x.stride, .z_stride = z.stride,
                         .grad_stride = g.stride, .rows = rows, .groups = groups, .group_size = group_size};
    if (norm_before_gate)
      launch_backward<T, true>(a, data_at<const A>(rstd), mut_ptr_or_null<T>(dx), mut_ptr_or_null<T>(dz),
                               mut_ptr_or_null<T>(dweight), x_in.device().index);
    else
      launch_backward<T, false>(a, data_at<const A>(rstd), mut_ptr_or_null<T>(dx), mut_ptr_or_null<T>(dz),
                                mut_ptr_or_null<T>(dweight), x_in.device().index);
  });
  return {dx, dz, dweight};
}

}  // namespace scanline::cuda
