// Gated RMSNorm forward kernels and launcher (cuda/rms_norm_gated.h; the design is described in
// cuda/rms_norm_gated_common.cuh): a team of threads a (row, group) segment, held in registers,
// or a block a segment in two passes for wide groups.
#include "cuda/rms_norm_gated.h"

#include "cuda/rms_norm_gated_common.cuh"

namespace scanline::cuda {
namespace {

using namespace gated;

constexpr int kFwdSmallBlock = 256;  // block of several teams of <= 32 lanes
constexpr int64_t kMaxGrid = 1 << 20;

// Packs a thread holds: one array of math values (two after the gate), 128 bytes each.
template <int W, typename A>
constexpr int kFwdMaxPacks = std::clamp(int(128 / sizeof(A)) / W, 1, 8);

template <typename T, bool kBefore, int W, bool kVec, int P>
__global__ void __launch_bounds__(kMaxTeam)
    gated_forward_regs(GatedArgs<T> a, T* __restrict__ y, math_t<T>* __restrict__ rstd, math_t<T> eps, int team) {
  using A = math_t<T>;
  __shared__ A scratch[32];
  const int lane = team_lane(team);
  const int64_t teams = blockDim.x / team;
  const int64_t segments = a.rows * a.groups, packs = a.group_size / W;
  // Block-uniform loop (shuffles and barriers need every thread); a team past the end idles.
  for (int64_t first = int64_t(blockIdx.x) * teams; first < segments; first += int64_t(gridDim.x) * teams) {
    const int64_t seg = first + threadIdx.x / team;
    const bool valid = seg < segments;
    const int64_t row = valid ? seg / a.groups : 0, col0 = valid ? (seg - row * a.groups) * a.group_size : 0;
    const T* xs = a.x + row * a.x_stride + col0;
    const T* zs = a.z + row * a.z_stride + col0;
    A v[P][W];                       // the normalized value: x * s, or x
    A zk[kBefore ? P : 1][W];        // after the gate: z, for s in the second pass
    A squares = A(0);
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t pk = lane + int64_t(i) * team;
      if (valid && pk < packs) {
        A zv[W];
        load_pack<W, kVec>(xs + pk * W, v[i]);
        load_pack<W, kVec>(zs + pk * W, zv);
#pragma unroll
        for (int e = 0; e < W; ++e) {
          if constexpr (kBefore) zk[i][e] = zv[e];
          else v[i][e] *= zv[e] * sigmoid(zv[e]);
          squares += v[i][e] * v[i][e];
        }
      } else {
#pragma unroll
        for (int e = 0; e < W; ++e) {
          v[i][e] = A(0);
          if constexpr (kBefore) zk[i][e] = A(0);
        }
      }
    }
    const A inv = inv_rms(team_sum(squares, team, scratch), a.group_size, eps);
    if (valid && lane == 0) rstd[seg] = inv;
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int64_t pk = lane + int64_t(i) * team;
      if (!valid || pk >= packs) continue;
      A w[W], out[W];
      load_weight<W, kVec>(a.weight, col0 + pk * W, w);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        out[e] = (v[i][e] * inv) * w[e];
        if constexpr (kBefore) out[e] *= zk[i][e] * sigmoid(zk[i][e]);
      }
      store_pack<W, kVec>(y + seg * a.group_size + pk * W, out);
    }
  }
}

// Any group size: one block a segment, two passes over it.
template <typename T, bool kBefore, int W, bool kVec>
__global__ void __launch_bounds__(1024)
    gated_forward_looped(GatedArgs<T> a, T* __restrict__ y, math_t<T>* __restrict__ rstd, math_t<T> eps) {
  using A = math_t<T>;
  __shared__ A scratch[32];
  const int64_t segments = a.rows * a.groups, packs = a.group_size / W;
  for (int64_t seg = blockIdx.x; seg < segments; seg += gridDim.x) {
    const int64_t row = seg / a.groups, col0 = (seg - row * a.groups) * a.group_size;
    const T* xs = a.x + row * a.x_stride + col0;
    const T* zs = a.z + row * a.z_stride + col0;
    A squares = A(0);
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
      A xv[W], zv[W];
      load_pack<W, kVec>(xs + pk * W, xv);
      load_pack<W, kVec>(zs + pk * W, zv);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const A v = kBefore ? xv[e] : xv[e] * (zv[e] * sigmoid(zv[e]));
        squares += v * v;
      }
    }
    const A inv = inv_rms(block_sum(squares, scratch), a.group_size, eps);
    if (threadIdx.x == 0) rstd[seg] = inv;
    for (int64_t pk = threadIdx.x; pk < packs; pk += blockDim.x) {
      A xv[W], zv[W], w[W], out[W];
      load_pack<W, kVec>(xs + pk * W, xv);
      load_pack<W, kVec>(zs + pk * W, zv);
      load_weight<W, kVec>(a.weight, col0 + pk * W, w);
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const A s = zv[e] * sigmoid(zv[e]);
        out[e] = kBefore ? ((xv[e] * inv) * w[e]) * s : ((xv[e] * s) * inv) * w[e];
      }
      store_pack<W, kVec>(y + seg * a.group_size + pk * W, out);
    }
  }
}

template <typename T, bool kBefore>
void launch_forward(const GatedArgs<T>& a, T* y, math_t<T>* rstd, double eps) {
  using A = math_t<T>;
  const int64_t segments = a.rows * a.groups;
  cudaStream_t stream = current_stream();
  dispatch_vec<T>(vector_ok(a, {y}, false), [&]<int W, bool kVec>() {
    constexpr int kMax = kFwdMaxPacks<W, A>;
    const TeamPlan plan = plan_team(a.group_size / W, kMax, kFwdSmallBlock);
    if (plan.packs_per_thread > 0) {
      const int64_t teams = plan.block / plan.team;
      const unsigned blocks = unsigned(std::min<int64_t>((segments + teams - 1) / teams, kMaxGrid));
      dispatch_packs<kMax>(plan.packs_per_thread, [&]<int P>() {
        gated_forward_regs<T, kBefore, W, kVec, P><<<blocks, plan.block, 0, stream>>>(a, y, rstd, A(eps), plan.team);
      });
    } else {
      const unsigned blocks = unsigned(std::min<int64_t>(segments, kMaxGrid));
      gated_forward_looped<T, kBefore, W, kVec><<<blocks, 1024, 0, stream>>>(a, y, rstd, A(eps));
    }
  });
  CUDA_CHECK_LAUNCH("rms_norm_gated forward");
}

}  // namespace

std::pair<Tensor, Tensor> rms_norm_gated_forward(const Tensor& x_in, const Tensor& z_in, const Tensor& weight_in,
                                                 double eps, bool norm_before_gate, int64_t group_size) {
  constexpr const char* op = "rms_norm_gated";
  check_cuda_tensor(op, x_in, "input");
  check_cuda_tensor(op, z_in, "gate z");
  check_group_size(op, x_in, group_size);
  DeviceGuard guard(x_in.device().index);
  const RowView x = row_view(x_in), z = row_view(z_in);
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  const int64_t width = x_in.size(-1), rows = x_in.numel() / width, groups = width / group_size;
  Tensor y = empty(x_in.shape(), x_in.options());
  Tensor rstd;
  dispatch_floating_device(x_in.dtype(), op, [&]<typename T>() {
    using A = math_t<T>;
    rstd = empty({rows, groups}, x_in.options().with_dtype(dtype_of<A>()));
    if (rows == 0) return;
    const GatedArgs<T> a{.x = data_at<const T>(x.t), .z = data_at<const T>(z.t), .grad = nullptr,
                         .weight = ptr_or_null<T>(weight), .x_stride = x.stride, .z_stride = z.stride,
                         .grad_stride = 0, .rows = rows, .groups = groups, .group_size = group_size};
    if (norm_before_gate) launch_forward<T, true>(a, data_at<T>(y), data_at<A>(rstd), eps);
    else launch_forward<T, false>(a, data_at<T>(y), data_at<A>(rstd), eps);
  });
  return {y, rstd};
}

}  // namespace scanline::cuda
