// Fused cross-entropy kernels. A block of 256 threads handles a row (a warp when the row has at
// most 256 packs); a pack is 16 bytes of logits (one element when rows are not 16-byte aligned).
// Forward: 4 packs in flight per thread, a running max and a sum of exp rescaled when the max
// grows, combined over the block in a fixed tree: one read of the logits. Backward: one read of
// the logits and one write of the gradient, streaming (evict-first) loads and stores.
#include "cuda/cross_entropy.h"

#include <sstream>

#include "cuda/reduce.h"
#include "cuda/row_reduce.cuh"

namespace scanline::cuda {
namespace {

using rowwise::group_reduce;
using rowwise::GroupIndex;
using rowwise::online_combine;
using rowwise::online_update;
using rowwise::negative_infinity;
using rowwise::Pack;
using rowwise::SumFn;
using rowwise::fast_exp;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;
constexpr int kWarpPacks = 256;  // rows of at most this many packs take a warp each
constexpr int kCheckThreads = 1024;

template <typename T>
__device__ __forceinline__ math_t<T> at(const T& v) { return load_math(&v); }

struct MinFn {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};

// One block: result = {first row whose target is neither ignore_index nor in [0, classes) or -1,
// that target, count of rows not ignored}.
template <typename Index>
__global__ void __launch_bounds__(kCheckThreads)
    check_targets_kernel(const Index* __restrict__ targets, int64_t rows, int64_t classes, int64_t ignore_index,
                         int64_t* __restrict__ result) {
  __shared__ int64_t scratch[32];
  constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  int64_t first_bad = kNone, count = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    const int64_t t = int64_t(targets[r]);
    if (t == ignore_index) continue;
    ++count;
    if ((t < 0 || t >= classes) && first_bad == kNone) first_bad = r;
  }
  first_bad = group_reduce<0>(first_bad, MinFn{}, kNone, scratch);
  count = group_reduce<0>(count, SumFn{}, int64_t(0), scratch);
  if (threadIdx.x == 0) {
    result[0] = first_bad == kNone ? -1 : first_bad;
    result[1] = first_bad == kNone ? 0 : int64_t(targets[first_bad]);
    result[2] = count;
  }
}

template <typename T, typename Index, int W, int kGroup>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_forward_kernel(const T* __restrict__ logits, const Index* __restrict__ targets, int64_t rows,
                                 int64_t classes, int64_t ignore_index, math_t<T>* __restrict__ losses,
                                 math_t<T>* __restrict__ lse) {
  using A = math_t<T>;
  __shared__ A scratch[32];
  const GroupIndex<kGroup> g;
  const int64_t packs = classes / W;
  for (int64_t row = g.first; row < rows; row += g.step) {  // uniform over the group
    const T* xr = logits + row * classes;
    A m = negative_infinity<A>(), s = A(0);
    int64_t i = g.tid;
    for (; i + int64_t(kUnroll - 1) * g.nthreads < packs; i += int64_t(kUnroll) * g.nthreads) {
      Pack<T, W> v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = rowwise::load_pack_stream<T, W>(xr + (i + int64_t(u) * g.nthreads) * W);
      online_update<T, W, kUnroll>(v, m, s);
    }
    for (; i < packs; i += g.nthreads) {
      Pack<T, W> v[1] = {rowwise::load_pack_stream<T, W>(xr + i * W)};
      online_update<T, W, 1>(v, m, s);
    }
    const A row_m = online_combine<kGroup>(m, s, scratch);
    if (g.tid == 0) {
      const A l = row_m + rowwise::log_of(s);
      lse[row] = l;
      const int64_t t = int64_t(targets[row]);
      // Targets were checked; a bad one still reads nothing out of bounds.
      losses[row] = (t == ignore_index || t < 0 || t >= classes) ? A(0) : l - at(xr[t]);
    }
  }
}

template <typename T, typename Index, int W, int kGroup>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_backward_kernel(const T* __restrict__ logits, const Index* __restrict__ targets,
                                  const math_t<T>* __restrict__ lse, const math_t<T>* __restrict__ grad,
                                  int64_t grad_stride,
                                  math_t<T> scale, int64_t rows, int64_t classes, int64_t ignore_index,
                                  T* __restrict__ dlogits) {
  using A = math_t<T>;
  const GroupIndex<kGroup> g;
  const int64_t packs = classes / W;
  for (int64_t row = g.first; row < rows; row += g.step) {
    const T* xr = logits + row * classes;
    T* dr = dlogits + row * classes;
    const int64_t t = int64_t(targets[row]);
    if (t == ignore_index || t < 0 || t >= classes) {
      Pack<T, W> zero;
#pragma unroll
      for (int e = 0; e < W; ++e) zero.v[e] = from_math<T>(A(0));
      for (int64_t i = g.tid; i < packs; i += g.nthreads) rowwise::store_pack_stream<T, W>(dr + i * W, zero);
      continue;
    }
    const A coef = scale * grad[row * grad_stride];
    const A l = lse[row];
    auto gradient = [&](const Pack<T, W>& x, int64_t first_class) {
      const int64_t target_at = t - first_class;  // in [0, W) when the pack holds the target
      Pack<T, W> d;
#pragma unroll
      for (int e = 0; e < W; ++e) {
        const A p = fast_exp(at(x.v[e]) - l);
        d.v[e] = from_math<T>(coef * (target_at == e ? p - A(1) : p));
      }
      return d;
    };
    int64_t i = g.tid;
    for (; i + int64_t(kUnroll - 1) * g.nthreads < packs; i += int64_t(kUnroll) * g.nthreads) {
      Pack<T, W> v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = rowwise::load_pack_stream<T, W>(xr + (i + int64_t(u) * g.nthreads) * W);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t k = i + int64_t(u) * g.nthreads;
        rowwise::store_pack_stream<T, W>(dr + k * W, gradient(v[u], k * W));
      }
    }
    for (; i < packs; i += g.nthreads)
      rowwise::store_pack_stream<T, W>(dr + i * W, gradient(rowwise::load_pack_stream<T, W>(xr + i * W), i * W));
  }
}

template <typename T, typename A>
__global__ void scale_total_kernel(const A* __restrict__ total, double scale, T* __restrict__ out) {
  out[0] = from_math<T>(math_t<T>(double(total[0]) * scale));
}

// "[1, 3]": the multi-index of flat position `flat` in `shape` (as the CPU path reports it).
std::string position_of(int64_t flat, const Shape& shape) {
  Shape index(shape.size(), 0);
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return shape_str(index);
}

DType loss_dtype_of(DType logits) { return logits == DType::f64 ? DType::f64 : DType::f32; }

// Pack width for rows of `classes` elements at these pointers: 16 bytes when everything aligns.
template <typename T>
int pack_width(int64_t classes, const void* a, const void* b) {
  constexpr int V = rowwise::kVecWidth<T>;
  return classes % V == 0 && aligned16(a) && aligned16(b) ? V : 1;
}

// Calls launch.template operator()<W, kGroup>(blocks, threads) for the row shape.
template <typename T, typename Launch>
void launch_rows(int64_t rows, int64_t classes, int width, Launch&& launch) {
  constexpr int V = rowwise::kVecWidth<T>;
  const bool warp = classes / width <= kWarpPacks;
  const unsigned blocks = warp ? blocks_for(rows, kThreads / 32) : blocks_for(rows, 1);
  if (width == V && warp) launch.template operator()<V, 32>(blocks, kThreads);
  else if (width == V) launch.template operator()<V, 0>(blocks, kThreads);
  else if (warp) launch.template operator()<1, 32>(blocks, kThreads);
  else launch.template operator()<1, 0>(blocks, kThreads);
}

}  // namespace

CrossEntropyForward cross_entropy_forward(const Tensor& logits_in, const Tensor& targets_in, int64_t ignore_index) {
  constexpr const char* op = "cross_entropy";
  check_cuda_tensor(op, logits_in, "logits");
  check_cuda_tensor(op, targets_in, "targets");
  SCANLINE_CHECK(logits_in.dim() >= 1 && logits_in.size(-1) >= 1, op, ": expected logits (..., C) but found ",
                 describe(logits_in));
  Tensor logits = as_contiguous(logits_in), targets = as_contiguous(targets_in);
  const int64_t classes = logits.size(-1);
  const int64_t rows = logits.numel() / classes;
  SCANLINE_CHECK(targets.numel() == rows, op, ": expected ", rows, " targets but found ", describe(targets));
  DeviceGuard guard(logits.device().index);
  const TensorOptions loss_options{.dtype = loss_dtype_of(logits.dtype()), .device = logits.device()};
  CrossEntropyForward result;
  result.losses = empty({rows}, loss_options);
  result.lse = empty({rows}, loss_options);
  if (rows == 0) return result;
  Tensor check = empty({3}, {.dtype = DType::i64, .device = logits.device()});
  dispatch_index(targets.dtype(), op, [&]<typename Index>() {
    const Index* pt = data_at<const Index>(targets);
    check_targets_kernel<Index>
        <<<1, kCheckThreads, 0, current_stream()>>>(pt, rows, classes, ignore_index, data_at<int64_t>(check));
    CUDA_CHECK_LAUNCH("check_targets_kernel");
    dispatch_floating_device(logits.dtype(), op, [&]<typename T>() {
      const T* px = data_at<const T>(logits);
      math_t<T>* losses = data_at<math_t<T>>(result.losses);
      math_t<T>* lse = data_at<math_t<T>>(result.lse);
      launch_rows<T>(rows, classes, pack_width<T>(classes, px, px), [&]<int W, int kGroup>(unsigned blocks, int threads) {
        cross_entropy_forward_kernel<T, Index, W, kGroup>
            <<<blocks, threads, 0, current_stream()>>>(px, pt, rows, classes, ignore_index, losses, lse);
        CUDA_CHECK_LAUNCH("cross_entropy_forward_kernel");
      });
    });
  });
  // One small copy (it waits for the kernels): the first bad target, and the count for the mean.
  const std::vector<int64_t> checked = check.to_vector<int64_t>();
  if (checked[0] >= 0) {
    const Shape& shape = targets_in.shape();
    SCANLINE_FAIL("cross_entropy: target ", checked[1], " at position ", position_of(checked[0], shape),
                  " of targets ", shape, " is out of range for ", classes, " classes (expected 0 <= target < ",
                  classes, " or ignore_index ", ignore_index, ")");
  }
  result.count = checked[2];
  return result;
}

Tensor cross_entropy_total(const Tensor& losses, double scale, DType dtype) {
  check_cuda_tensor("cross_entropy", losses, "losses");
  SCANLINE_CHECK(losses.dim() == 1, "cross_entropy: expected per-row losses but found ", describe(losses));
  Tensor total = sum_dims(losses, {0});
  Tensor out = empty({}, {.dtype = dtype, .device = losses.device()});
  DeviceGuard guard(losses.device().index);
  dispatch_floating_device(dtype, "cross_entropy", [&]<typename T>() {
    dispatch_floating_device(losses.dtype(), "cross_entropy", [&]<typename A>() {
      scale_total_kernel<T, A><<<1, 1, 0, current_stream()>>>(data_at<const A>(total), scale, data_at<T>(out));
      CUDA_CHECK_LAUNCH("scale_total_kernel");
    });
  });
  return out;
}

Tensor cross_entropy_backward(const Tensor& grad_in, const Tensor& logits_in, const Tensor& targets_in,
                              const Tensor& lse_in, int64_t ignore_index, double scale) {
  constexpr const char* op = "cross_entropy backward";
  check_cuda_tensor(op, grad_in, "grad");
  check_cuda_tensor(op, logits_in, "logits");
  check_cuda_tensor(op, targets_in, "targets");
  check_cuda_tensor(op, lse_in, "lse");
  Tensor logits = as_contiguous(logits_in), targets = as_contiguous(targets_in);
  const int64_t classes = logits.size(-1);
  const int64_t rows = logits.numel() / classes;
  SCANLINE_CHECK(grad_in.numel() == 1 || grad_in.numel() == rows, op, ": expected a gradient of 1 or ", rows,
                 " elements but found ", describe(grad_in));
  SCANLINE_CHECK(lse_in.numel() == rows && lse_in.dtype() == loss_dtype_of(logits.dtype()), op,
                 ": expected ", rows, " saved logsumexp values but found ", describe(lse_in));
  SCANLINE_CHECK(is_floating(grad_in.dtype()), op, ": expected a floating gradient but found ", describe(grad_in));
  // The incoming gradient has the loss's dtype, which may differ from the logits' (an f32 loss of
  // bf16 logits): it is read in the math dtype, so an f32 gradient is never rounded to bf16. A
  // bf16 or f16 one converts exactly; the copy is one value a row at most.
  const DType math_dtype = loss_dtype_of(logits.dtype());
  Tensor grad = grad_in.dtype() == math_dtype ? as_contiguous(grad_in)
                                              : contiguous_copy(grad_in, math_dtype, grad_in.device());
  Tensor lse = as_contiguous(lse_in);
  Tensor out = empty(logits.shape(), logits.options());
  if (rows == 0) return out;
  DeviceGuard guard(logits.device().index);
  const int64_t grad_stride = grad.numel() == 1 ? 0 : 1;
  dispatch_index(targets.dtype(), op, [&]<typename Index>() {
    dispatch_floating_device(logits.dtype(), op, [&]<typename T>() {
      const T* px = data_at<const T>(logits);
      const Index* pt = data_at<const Index>(targets);
      const math_t<T>* pl = data_at<const math_t<T>>(lse);
      const math_t<T>* pg = data_at<const math_t<T>>(grad);
      T* po = data_at<T>(out);
      const math_t<T> s = math_t<T>(scale);
      launch_rows<T>(rows, classes, pack_width<T>(classes, px, po), [&]<int W, int kGroup>(unsigned blocks, int threads) {
        cross_entropy_backward_kernel<T, Index, W, kGroup><<<blocks, threads, 0, current_stream()>>>(
            px, pt, pl, pg, grad_stride, s, rows, classes, ignore_index, po);
        CUDA_CHECK_LAUNCH("cross_entropy_backward_kernel");
      });
    });
  });
  return out;
}

}  // namespace scanline::cuda
