// RMSNorm forward kernels and launchers (cuda/rms_norm.h): plain and fused residual add + norm.
// One fused pass a row: a warp per row up to a few thousand elements, a block per row above, the
// row held in registers; a looped two-pass kernel for unaligned or very wide rows.
#include "cuda/rms_norm.h"

#include "cuda/rms_norm_common.cuh"

namespace scanline::cuda {
namespace {

using namespace rms;

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

// ---- host side ---------------------------------------------------------------------------------

constexpr int kWarpRowThreads = 256;     // 8 rows a block on the warp-per-row path
constexpr int64_t kMaxGrid = 1 << 20;    // grid-stride beyond this many blocks

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

}  // namespace scanline::cuda
