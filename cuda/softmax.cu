// Softmax and log-softmax along the last dim of contiguous rows (another dim is moved last by a
// strided copy and moved back). A warp handles a row of up to 128 packs (a pack is 16 bytes of
// elements, or one element when the rows are not 16-byte aligned), a block a longer one. Rows
// that fit are loaded once into registers: max, sum of exp and the write all read the registers
// (forward up to 8 packs per thread, backward 4 packs of g and of y, 512 threads). Longer rows take an online
// pass (running max and rescaled sum) and a second read. fp32 math (f64 for f64); fixed
// reduction trees, so results are deterministic.
#include "cuda/softmax.h"

#include "cuda/row_reduce.cuh"

namespace scanline::cuda {
namespace {

using rowwise::group_reduce;
using rowwise::GroupIndex;
using rowwise::load_pack;
using rowwise::log_of;
using rowwise::MaxFn;
using rowwise::fast_max;
using rowwise::ExpShift;
using rowwise::online_combine;
using rowwise::online_update;
using rowwise::negative_infinity;
using rowwise::Pack;
using rowwise::store_pack;
using rowwise::SumFn;

constexpr int kWarpPacks = 4;        // packs per lane of the warp-per-row kernels
constexpr int kForwardPacks = 8;     // packs per thread a forward block keeps in registers
constexpr int kBackwardPacks = 4;    // packs of g and of y per thread a backward block keeps
constexpr int kMaxThreads = 512;  // with up to 128 registers a thread for the cached rows
constexpr int kUncachedThreads = 512;
constexpr int kWarpBlockThreads = 256;
constexpr int kUnroll = 4;  // packs in flight per thread in the two-read kernels

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <typename T>
__device__ __forceinline__ math_t<T> at(const T& v) { return load_math(&v); }

// y = exp(x - m) / s, or (x - m) - log(s) for log_softmax.
template <typename T, int W, bool kLog>
__device__ __forceinline__ Pack<T, W> softmax_pack(const Pack<T, W>& x, math_t<T> m, math_t<T> log_s,
                                                   math_t<T> inv_s) {
  Pack<T, W> y;
#pragma unroll
  for (int e = 0; e < W; ++e) {
    const math_t<T> d = at(x.v[e]) - m;
    y.v[e] = from_math<T>(kLog ? d - log_s : rowwise::fast_exp(d) * inv_s);
  }
  return y;
}

// rows of `packs` packs of W elements; K packs per thread in registers (K == 0: two reads).
// The max ignores NaN; a NaN reaches the sum, so its whole row is NaN, as on the CPU.
template <typename T, int W, int K, int kGroup, bool kLog>
__global__ void __launch_bounds__(kGroup == 32 ? kWarpBlockThreads : kMaxThreads)
    softmax_forward_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t packs) {
  using A = math_t<T>;
  __shared__ A scratch[32];
  const GroupIndex<kGroup> g;
  for (int64_t row = g.first; row < rows; row += g.step) {  // uniform over the group
    const T* xr = x + row * packs * W;
    T* yr = y + row * packs * W;
    A m = negative_infinity<A>(), s = A(0);
    if constexpr (K > 0) {
      Pack<T, W> cache[K];
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int64_t i = g.tid + int64_t(j) * g.nthreads;
        if (i < packs) {
          cache[j] = load_pack<T, W>(xr + i * W);
#pragma unroll
          for (int e = 0; e < W; ++e) m = fast_max(m, at(cache[j].v[e]));
        }
      }
      m = group_reduce<kGroup>(m, MaxFn{}, negative_infinity<A>(), scratch);
      const ExpShift<A> shift(m);  // an all -inf row gives NaN, as on the CPU
#pragma unroll
      for (int j = 0; j < K; ++j) {
        if (g.tid + int64_t(j) * g.nthreads < packs) {
#pragma unroll
          for (int e = 0; e < W; ++e) s += shift(at(cache[j].v[e]));
        }
      }
      s = group_reduce<kGroup>(s, SumFn{}, A(0), scratch);
      const A log_s = log_of(s), inv_s = A(1) / s;
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int64_t i = g.tid + int64_t(j) * g.nthreads;
        if (i < packs) store_pack<T, W>(yr + i * W, softmax_pack<T, W, kLog>(cache[j], m, log_s, inv_s));
      }
    } else {
      // Online: a running max and the sum of exp relative to it, then a second read to write.
      int64_t i = g.tid;
      for (; i + int64_t(kUnroll - 1) * g.nthreads < packs; i += int64_t(kUnroll) * g.nthreads) {
        Pack<T, W> v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) v[u] = load_pack<T, W>(xr + (i + int64_t(u) * g.nthreads) * W);
        online_update<T, W, kUnroll>(v, m, s);
      }
      for (; i < packs; i += g.nthreads) {
        const Pack<T, W> v[1] = {load_pack<T, W>(xr + i * W)};
        online_update<T, W, 1>(v, m, s);
      }
      m = online_combine<kGroup>(m, s, scratch);
      const A log_s = log_of(s), inv_s = A(1) / s;
#pragma unroll 4
      for (int64_t k = g.tid; k < packs; k += g.nthreads)
        store_pack<T, W>(yr + k * W, softmax_pack<T, W, kLog>(load_pack<T, W>(xr + k * W), m, log_s, inv_s));
    }
  }
}

template <typename T, int W, bool kLog>
__device__ __forceinline__ math_t<T> dot_term(const Pack<T, W>& g, const Pack<T, W>& y) {
  math_t<T> t = 0;
#pragma unroll
  for (int e = 0; e < W; ++e) t += kLog ? at(g.v[e]) : at(g.v[e]) * at(y.v[e]);
  return t;
}

template <typename T, int W, bool kLog>
__device__ __forceinline__ Pack<T, W> backward_pack(const Pack<T, W>& g, const Pack<T, W>& y, math_t<T> dot) {
  Pack<T, W> dx;
#pragma unroll
  for (int e = 0; e < W; ++e) {
    const math_t<T> gv = at(g.v[e]), yv = at(y.v[e]);
    dx.v[e] = from_math<T>(kLog ? gv - rowwise::fast_exp(yv) * dot : yv * (gv - dot));
  }
  return dx;
}

// softmax: dx = y * (g - sum(g * y)); log_softmax: dx = g - exp(y) * sum(g).
template <typename T, int W, int K, int kGroup, bool kLog>
__global__ void __launch_bounds__(kGroup == 32 ? kWarpBlockThreads : kMaxThreads)
    softmax_backward_kernel(const T* __restrict__ grad, const T* __restrict__ y, T* __restrict__ dx, int64_t rows,
                            int64_t packs) {
  using A = math_t<T>;
  __shared__ A scratch[32];
  const GroupIndex<kGroup> g;
  for (int64_t row = g.first; row < rows; row += g.step) {
    const int64_t start = row * packs * W;
    A dot = A(0);
    if constexpr (K > 0) {
      Pack<T, W> gc[K], yc[K];
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int64_t i = g.tid + int64_t(j) * g.nthreads;
        if (i < packs) {
          gc[j] = load_pack<T, W>(grad + start + i * W);
          yc[j] = load_pack<T, W>(y + start + i * W);
          dot += dot_term<T, W, kLog>(gc[j], yc[j]);
        }
      }
      dot = group_reduce<kGroup>(dot, SumFn{}, A(0), scratch);
#pragma unroll
      for (int j = 0; j < K; ++j) {
        const int64_t i = g.tid + int64_t(j) * g.nthreads;
        if (i < packs) store_pack<T, W>(dx + start + i * W, backward_pack<T, W, kLog>(gc[j], yc[j], dot));
      }
    } else {
#pragma unroll 4
      for (int64_t i = g.tid; i < packs; i += g.nthreads)
        dot += dot_term<T, W, kLog>(load_pack<T, W>(grad + start + i * W), load_pack<T, W>(y + start + i * W));
      dot = group_reduce<kGroup>(dot, SumFn{}, A(0), scratch);
#pragma unroll 4
      for (int64_t i = g.tid; i < packs; i += g.nthreads)
        store_pack<T, W>(dx + start + i * W, backward_pack<T, W, kLog>(load_pack<T, W>(grad + start + i * W),
                                                                       load_pack<T, W>(y + start + i * W), dot));
    }
  }
}

// Threads of a block that holds `packs` packs at `per_thread` each: a multiple of 32 in [128, 512].
int block_threads(int64_t packs, int per_thread) {
  const int64_t t = ceil_div(ceil_div(packs, per_thread), 32) * 32;
  return int(std::min<int64_t>(kMaxThreads, std::max<int64_t>(128, t)));
}

// Picks the warp, cached-block or two-read kernel for the row length; Kernel<K, kGroup> is the
// kernel to launch.
template <int kCached, typename Launch>
void launch_for_rows(int64_t rows, int64_t packs, Launch&& launch) {
  if (packs <= 32 * kWarpPacks) {
    launch.template operator()<kWarpPacks, 32>(blocks_for(rows, kWarpBlockThreads / 32), kWarpBlockThreads);
  } else if (packs <= int64_t(kMaxThreads) * kCached) {
    launch.template operator()<kCached, 0>(blocks_for(rows, 1), block_threads(packs, kCached));
  } else {
    launch.template operator()<0, 0>(blocks_for(rows, 1), kUncachedThreads);
  }
}

template <typename T>
int pack_width(int64_t cols, std::initializer_list<const void*> pointers) {
  constexpr int V = rowwise::kVecWidth<T>;
  if (cols % V != 0) return 1;
  for (const void* p : pointers)
    if (!aligned16(p)) return 1;
  return V;
}

// t with dims `dim` and last swapped (a raw view).
Tensor swap_with_last(const Tensor& t, int64_t dim) {
  Shape shape = t.shape(), strides = t.strides();
  std::swap(shape[size_t(dim)], shape.back());
  std::swap(strides[size_t(dim)], strides.back());
  return as_strided(t, shape, strides, t.offset());
}

Tensor moved_last(const Tensor& t, int64_t dim) {
  return contiguous_copy(swap_with_last(t, dim), t.dtype(), t.device());
}

}  // namespace

Tensor softmax(const Tensor& x_in, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  check_cuda_tensor(name, x_in, "input");
  SCANLINE_CHECK(x_in.dim() >= 1 && dim >= 0 && dim < x_in.dim(), name, ": dim ", dim, " is out of range for ",
                 describe(x_in));
  const int64_t last = x_in.dim() - 1;
  if (dim != last) return moved_last(softmax(moved_last(x_in, dim), last, log), dim);
  Tensor x = as_contiguous(x_in);
  Tensor y = empty(x.shape(), x.options());
  const int64_t cols = x.size(last);
  if (x.numel() == 0) return y;
  const int64_t rows = x.numel() / cols;
  DeviceGuard guard(x.device().index);
  dispatch_floating_device(x.dtype(), name, [&]<typename T>() {
    const T* px = data_at<const T>(x);
    T* py = data_at<T>(y);
    auto run = [&]<int W, bool kLog>() {
      launch_for_rows<kForwardPacks>(rows, cols / W, [&]<int K, int kGroup>(unsigned blocks, int threads) {
        softmax_forward_kernel<T, W, K, kGroup, kLog><<<blocks, threads, 0, current_stream()>>>(px, py, rows, cols / W);
        CUDA_CHECK_LAUNCH("softmax_forward_kernel");
      });
    };
    const bool vec = pack_width<T>(cols, {px, py}) > 1;
    constexpr int V = rowwise::kVecWidth<T>;
    if (vec && log) run.template operator()<V, true>();
    else if (vec) run.template operator()<V, false>();
    else if (log) run.template operator()<1, true>();
    else run.template operator()<1, false>();
  });
  return y;
}

Tensor softmax_backward(const Tensor& grad_in, const Tensor& y_in, int64_t dim, bool log) {
  const char* name = log ? "log_softmax backward" : "softmax backward";
  check_cuda_tensor(name, grad_in, "grad");
  check_cuda_tensor(name, y_in, "output");
  SCANLINE_CHECK(grad_in.shape() == y_in.shape() && grad_in.dtype() == y_in.dtype() &&
                     grad_in.device() == y_in.device(),
                 name, ": expected the gradient to match the output ", describe(y_in), " but found ",
                 describe(grad_in));
  SCANLINE_CHECK(y_in.dim() >= 1 && dim >= 0 && dim < y_in.dim(), name, ": dim ", dim, " is out of range for ",
                 describe(y_in));
  const int64_t last = y_in.dim() - 1;
  if (dim != last)
    return moved_last(softmax_backward(moved_last(grad_in, dim), moved_last(y_in, dim), last, log), dim);
  Tensor g = as_contiguous(grad_in), y = as_contiguous(y_in);
  Tensor dx = empty(y.shape(), y.options());
  const int64_t cols = y.size(last);
  if (y.numel() == 0) return dx;
  const int64_t rows = y.numel() / cols;
  DeviceGuard guard(y.device().index);
  dispatch_floating_device(y.dtype(), name, [&]<typename T>() {
    const T* pg = data_at<const T>(g);
    const T* py = data_at<const T>(y);
    T* pdx = data_at<T>(dx);
    auto run = [&]<int W, bool kLog>() {
      launch_for_rows<kBackwardPacks>(rows, cols / W, [&]<int K, int kGroup>(unsigned blocks, int threads) {
        softmax_backward_kernel<T, W, K, kGroup, kLog>
            <<<blocks, threads, 0, current_stream()>>>(pg, py, pdx, rows, cols / W);
        CUDA_CHECK_LAUNCH("softmax_backward_kernel");
      });
    };
    const bool vec = pack_width<T>(cols, {pg, py, pdx}) > 1;
    constexpr int V = rowwise::kVecWidth<T>;
    if (vec && log) run.template operator()<V, true>();
    else if (vec) run.template operator()<V, false>();
    else if (log) run.template operator()<1, true>();
    else run.template operator()<1, false>();
  });
  return dx;
}

}  // namespace scanline::cuda
