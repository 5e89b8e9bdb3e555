// One token of Mamba-2's SSD recurrence (see cuda/ssd_step.h for the layout).
#include "cuda/ssd_step.h"

#include <type_traits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda {
namespace {

constexpr int kThreads = 256;  // a multiple of 32, so no lane segment straddles two warps
constexpr int kUnroll = 2;     // state slices a lane has in flight per pass
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float exp_m(float x) { return expf(x); }
__device__ __forceinline__ double exp_m(double x) { return exp(x); }
// max(x, 0) + log1p(exp(-|x|)): the CPU reference's form, no overflow for large |x|.
__device__ __forceinline__ float softplus_m(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ double softplus_m(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }
template <typename W>
__device__ __forceinline__ W silu_m(W x) { return x / (W(1) + exp_m(-x)); }

// The 4, 8 or 16-byte word that holds kBytes.
template <int kBytes>
using Word = std::conditional_t<kBytes == 16, int4, std::conditional_t<kBytes == 8, int2, int>>;

// kVec consecutive elements of p as math values: one word when kVec > 1 (the caller guarantees p
// is aligned to kVec * sizeof(T)); read-only words go through the read-only cache.
template <int kVec, bool kReadOnly, typename T>
__device__ __forceinline__ void load_vec(const T* p, math_t<T> (&out)[kVec]) {
  if constexpr (kVec == 1) {
    out[0] = load_math(p);
  } else {
    constexpr int kBytes = kVec * int(sizeof(T));
    using W = Word<kBytes>;
    static_assert(kBytes == int(sizeof(W)), "a vector is one 4, 8 or 16-byte word");
    alignas(16) T e[kVec];
    *reinterpret_cast<W*>(e) = kReadOnly ? __ldg(reinterpret_cast<const W*>(p)) : *reinterpret_cast<const W*>(p);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = load_math(&e[i]);
  }
}

template <int kVec, typename M>
__device__ __forceinline__ void store_vec(M* p, const M (&in)[kVec]) {
  if constexpr (kVec == 1) {
    p[0] = in[0];
  } else {
    constexpr int kBytes = kVec * int(sizeof(M));
    using W = Word<kBytes>;
    static_assert(kBytes == int(sizeof(W)), "a vector is one 4, 8 or 16-byte word");
    *reinterpret_cast<W*>(p) = *reinterpret_cast<const W*>(in);
  }
}

// Element strides of the token inputs, read in place (column slices of projections in a mixer).
struct HeadStrides {
  int64_t batch, head, channel;  // x, z: (batch, heads, headdim)
};
struct RowStrides {
  int64_t batch, head;  // dt: (batch, heads)
};
struct GroupStrides {
  int64_t batch, group, state;  // B, C: (batch, ngroups, N); state == 1 on the 16-byte path
};

template <typename T>
struct StepParams {
  using W = math_t<T>;
  W* state;              // (rows, N), contiguous, read and written
  const T *x, *z, *dt;   // strides sx, sz, sdt
  const T *B, *C;        // strides sB, sC
  const W *A, *bias;     // (heads), contiguous; bias may be null
  const W* D;            // (heads) or (heads, headdim), contiguous, or null
  T* y;                  // (rows), contiguous
  HeadStrides sx, sz;
  RowStrides sdt;
  GroupStrides sB, sC;
  int64_t rows, heads, headdim, N, per_group;
  int lane_shift;        // log2 of the lanes a row
  bool softplus, D_per_channel;
};

// Thread t serves row t >> lane_shift = (b, h, p) with lane t & (lanes - 1); the lanes of a row
// split its states in kVec-wide slices, n = (lane + k·lanes)·kVec, loading kUnroll slices before
// computing any. Every lane of the warp runs the shuffles, rows past the end included, so the
// masks are always full.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) ssd_step_kernel(StepParams<T> p) {
  using W = math_t<T>;
  const int64_t thread = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int lanes = 1 << p.lane_shift;
  const int lane = int(threadIdx.x) & (lanes - 1);
  const int64_t row = thread >> p.lane_shift;
  const bool active = row < p.rows;
  const int64_t N = p.N;
  W acc = W(0), xv = W(0);
  int64_t b = 0, h = 0, ch = 0;
  if (active) {
    const int64_t per_batch = p.heads * p.headdim;
    b = row / per_batch;
    h = row % per_batch / p.headdim;
    ch = row % p.headdim;
    const int64_t g = h / p.per_group;
    const W raw = load_math(p.dt + b * p.sdt.batch + h * p.sdt.head) + (p.bias ? p.bias[h] : W(0));
    const W delta = p.softplus ? softplus_m(raw) : raw;
    const W decay = exp_m(delta * p.A[h]);
    xv = load_math(p.x + b * p.sx.batch + h * p.sx.head + ch * p.sx.channel);
    const W dx = delta * xv;
    W* __restrict__ hs = p.state + row * N;
    const T* Bg = p.B + b * p.sB.batch + g * p.sB.group;
    const T* Cg = p.C + b * p.sC.batch + g * p.sC.group;
    const int64_t pass = int64_t(lanes) * kVec;
    for (int64_t n0 = int64_t(lane) * kVec; n0 < N; n0 += pass * kUnroll) {
      W hv[kUnroll][kVec], bv[kUnroll][kVec], cv[kUnroll][kVec];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t n = n0 + u * pass;  // a whole slice is in range when its start is
        if (n < N) {
          load_vec<kVec, false>(hs + n, hv[u]);
          load_vec<kVec, true>(Bg + n * p.sB.state, bv[u]);
          load_vec<kVec, true>(Cg + n * p.sC.state, cv[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t n = n0 + u * pass;
        if (n < N) {
#pragma unroll
          for (int i = 0; i < kVec; ++i) {
            hv[u][i] = decay * hv[u][i] + dx * bv[u][i];
            acc += cv[u][i] * hv[u][i];
          }
          store_vec<kVec>(hs + n, hv[u]);
        }
      }
    }
  }
  // Σ_n C·h over the row's lanes: a butterfly inside the aligned segment, the same order always.
  for (int offset = lanes >> 1; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullMask, acc, offset);
  if (active && lane == 0) {
    if (p.D) acc += p.D[p.D_per_channel ? h * p.headdim + ch : h] * xv;
    if (p.z) acc *= silu_m(load_math(p.z + b * p.sz.batch + h * p.sz.head + ch * p.sz.channel));
    p.y[row] = from_math<T>(acc);
  }
}

template <typename T>
const T* ptr_or_null(const Tensor& t) { return t.defined() ? data_at<const T>(t) : nullptr; }

Tensor dense_or_undefined(const Tensor& t) { return t.defined() ? as_contiguous(t) : Tensor(); }

bool aligned_to(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

HeadStrides head_strides(const Tensor& t) {
  return t.defined() ? HeadStrides{t.strides()[0], t.strides()[1], t.strides()[2]} : HeadStrides{0, 0, 0};
}
GroupStrides group_strides(const Tensor& t) { return {t.strides()[0], t.strides()[1], t.strides()[2]}; }

// B or C may be read kVec states at a time: unit state stride, batch and group strides that keep
// every (batch, group) row on a kVec boundary (any stride on a size-1 dim), an aligned base.
bool vectorizable(const Tensor& t, const void* base, int64_t vec, size_t bytes) {
  const Shape& shape = t.shape();
  const Shape& strides = t.strides();
  return (shape[2] == 1 || strides[2] == 1) && (shape[0] == 1 || strides[0] % vec == 0) &&
         (shape[1] == 1 || strides[1] % vec == 0) && aligned_to(base, bytes);
}

}  // namespace

Tensor ssd_step(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus) {
  constexpr const char* op = "ssd_step";
  check_cuda_tensor(op, x, "x");
  check_cuda_tensor(op, state, "state");
  DeviceGuard guard(x.device().index);
  const int64_t batch = x.shape()[0], heads = x.shape()[1], headdim = x.shape()[2];
  const int64_t ngroups = B.shape()[1], N = B.shape()[2];
  const int64_t rows = batch * heads * headdim;
  Tensor y = empty(x.shape(), x.options());
  if (rows == 0) return y;
  SCANLINE_CHECK(state.is_contiguous(), op, ": state is updated in place and must be contiguous, but found ",
                 describe(state));
  // The parameters are contiguous in practice (a copy otherwise); the token inputs are read in place.
  const Tensor dA = as_contiguous(A), dD = dense_or_undefined(D), dbias = dense_or_undefined(dt_bias);

  auto launch = [&]<typename T>() {
    using W = math_t<T>;
    StepParams<T> p;
    p.state = data_at<W>(state);
    p.x = data_at<const T>(x);
    p.z = ptr_or_null<T>(z);
    p.dt = data_at<const T>(dt);
    p.B = data_at<const T>(B);
    p.C = data_at<const T>(C);
    p.sx = head_strides(x);
    p.sz = head_strides(z);
    p.sdt = RowStrides{dt.strides()[0], dt.strides()[1]};
    p.sB = group_strides(B);
    p.sC = group_strides(C);
    p.A = data_at<const W>(dA);
    p.bias = ptr_or_null<W>(dbias);
    p.D = ptr_or_null<W>(dD);
    p.D_per_channel = D.defined() && D.dim() == 2;
    p.y = data_at<T>(y);
    p.rows = rows;
    p.heads = heads;
    p.headdim = headdim;
    p.N = N;
    p.per_group = heads / ngroups;
    p.softplus = dt_softplus;
    // 16-byte slices of the state (4 f32 or 2 f64) when every row starts on a slice boundary:
    // N a multiple of the slice, the state aligned, B and C read as kVec-element words.
    constexpr int kVec = 16 / int(sizeof(W));
    const bool vec = N % kVec == 0 && aligned_to(p.state, 16) && vectorizable(B, p.B, kVec, kVec * sizeof(T)) &&
                     vectorizable(C, p.C, kVec, kVec * sizeof(T));
    const int64_t slices = vec ? N / kVec : N;
    // The fewest lanes (up to 32) that cover the row in one pass of kUnroll slices each.
    p.lane_shift = 0;
    while (p.lane_shift < 5 && (int64_t(kUnroll) << p.lane_shift) < slices) ++p.lane_shift;
    const int64_t threads = rows << p.lane_shift;
    const int64_t blocks = (threads + kThreads - 1) / kThreads;
    SCANLINE_CHECK(blocks <= int64_t(0x7fffffff), op, ": batch * heads * headdim = ", rows,
                   " rows exceed the CUDA grid");
    if (vec) {
      ssd_step_kernel<T, kVec><<<unsigned(blocks), kThreads, 0, current_stream()>>>(p);
    } else {
      ssd_step_kernel<T, 1><<<unsigned(blocks), kThreads, 0, current_stream()>>>(p);
    }
    CUDA_CHECK_LAUNCH("ssd_step");
  };
  switch (x.dtype()) {
    case DType::f32: launch.template operator()<float>(); break;
    case DType::bf16: launch.template operator()<__nv_bfloat16>(); break;
    case DType::f64: launch.template operator()<double>(); break;
    default: SCANLINE_FAIL(op, ": expected f32, bf16 or f64 inputs but found ", describe(x));
  }
  return y;
}

}  // namespace scanline::cuda
