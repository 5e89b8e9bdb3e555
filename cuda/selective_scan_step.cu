// One token of Mamba-1's selective scan (see cuda/selective_scan_step.h for the layout).
#include "cuda/selective_scan_step.h"

#include <type_traits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda {
namespace {

constexpr int kThreads = 256;  // a multiple of 32, so no lane segment straddles two warps
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float exp_m(float x) { return expf(x); }
__device__ __forceinline__ double exp_m(double x) { return exp(x); }
// max(x, 0) + log1p(exp(-|x|)): the CPU reference's form, no overflow for large |x|.
__device__ __forceinline__ float softplus_m(float x) { return fmaxf(x, 0.0f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ double softplus_m(double x) { return fmax(x, 0.0) + log1p(exp(-fabs(x))); }
template <typename W>
__device__ __forceinline__ W silu_m(W x) { return x / (W(1) + exp_m(-x)); }

// kVec consecutive elements of p as math values: one 4/8/16-byte word when kVec > 1 (the caller
// guarantees p is aligned to kVec * sizeof(T)); read-only words go through the read-only cache.
template <int kVec, bool kReadOnly, typename T>
__device__ __forceinline__ void load_vec(const T* p, math_t<T> (&out)[kVec]) {
  if constexpr (kVec == 1) {
    out[0] = load_math(p);
  } else {
    constexpr int kBytes = kVec * int(sizeof(T));
    using Word = std::conditional_t<kBytes == 16, int4, std::conditional_t<kBytes == 8, int2, int>>;
    static_assert(kBytes == int(sizeof(Word)), "a vector is one 4, 8 or 16-byte word");
    alignas(16) T e[kVec];
    *reinterpret_cast<Word*>(e) =
        kReadOnly ? __ldg(reinterpret_cast<const Word*>(p)) : *reinterpret_cast<const Word*>(p);
#pragma unroll
    for (int i = 0; i < kVec; ++i) out[i] = load_math(&e[i]);
  }
}

template <int kVec, typename W>
__device__ __forceinline__ void store_vec(W* p, const W (&in)[kVec]) {
  if constexpr (kVec == 1) {
    p[0] = in[0];
  } else {
    constexpr int kBytes = kVec * int(sizeof(W));
    using Word = std::conditional_t<kBytes == 16, int4, std::conditional_t<kBytes == 8, int2, int>>;
    static_assert(kBytes == int(sizeof(Word)), "a vector is one 4, 8 or 16-byte word");
    *reinterpret_cast<Word*>(p) = *reinterpret_cast<const Word*>(in);
  }
}

// Element strides of the token inputs, read in place: in a mixer they are column slices of a
// projection's output, and copying them would cost a launch each.
struct RowStrides {
  int64_t batch, channel;
};
struct GroupStrides {
  int64_t batch, group, state;  // state == 1 on the 16-byte path
};

template <typename T>
struct StepParams {
  using W = math_t<T>;
  W* state;                 // (rows, N), contiguous, read and written
  const T *u, *delta, *z;   // (batch, d_inner), strides su, sdelta, sz
  const T *B, *C;           // (batch, groups, N), strides sB, sC
  const W *A;               // (d_inner, N), contiguous
  const W *D, *bias;        // (d_inner), contiguous, or null
  T* y;                     // (rows), contiguous
  RowStrides su, sdelta, sz;
  GroupStrides sB, sC;
  int64_t rows, d_inner, N, groups, per_group;
  int lane_shift;           // log2 of the lanes a row
  bool softplus;
};

// Thread t serves row t >> lane_shift with lane t & (lanes - 1); the lanes of a row split its
// states in kVec-wide slices, n = (lane + k·lanes)·kVec. Every lane of the warp runs the shuffles,
// rows past the end included, so the masks are always full.
template <typename T, int kVec>
__global__ void __launch_bounds__(kThreads) selective_scan_step_kernel(StepParams<T> p) {
  using W = math_t<T>;
  const int64_t thread = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  const int lanes = 1 << p.lane_shift;
  const int lane = int(threadIdx.x) & (lanes - 1);
  const int64_t row = thread >> p.lane_shift;
  const bool active = row < p.rows;
  const int64_t N = p.N;
  W acc = W(0), x = W(0);
  int64_t b = 0, d = 0;
  if (active) {
    d = row % p.d_inner;
    b = row / p.d_inner;
    const int64_t g = d / p.per_group;
    const W raw = load_math(p.delta + b * p.sdelta.batch + d * p.sdelta.channel) + (p.bias ? p.bias[d] : W(0));
    const W dt = p.softplus ? softplus_m(raw) : raw;
    x = load_math(p.u + b * p.su.batch + d * p.su.channel);
    W* h = p.state + row * N;
    const W* A = p.A + d * N;
    const T* Bg = p.B + b * p.sB.batch + g * p.sB.group;
    const T* Cg = p.C + b * p.sC.batch + g * p.sC.group;
#pragma unroll 2
    for (int64_t n = int64_t(lane) * kVec; n < N; n += int64_t(lanes) * kVec) {
      W hv[kVec], av[kVec], bv[kVec], cv[kVec];
      load_vec<kVec, false>(h + n, hv);
      load_vec<kVec, true>(A + n, av);
      load_vec<kVec, true>(Bg + n * p.sB.state, bv);
      load_vec<kVec, true>(Cg + n * p.sC.state, cv);
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        hv[i] = exp_m(dt * av[i]) * hv[i] + dt * bv[i] * x;
        acc += cv[i] * hv[i];
      }
      store_vec<kVec>(h + n, hv);
    }
  }
  // Σ_n C·h over the row's lanes: a butterfly inside the aligned segment, the same order always.
  for (int offset = lanes >> 1; offset > 0; offset >>= 1) acc += __shfl_xor_sync(kFullMask, acc, offset);
  if (active && lane == 0) {
    if (p.D) acc += p.D[d] * x;
    if (p.z) acc *= silu_m(load_math(p.z + b * p.sz.batch + d * p.sz.channel));
    p.y[row] = from_math<T>(acc);
  }
}

template <typename T>
const T* ptr_or_null(const Tensor& t) { return t.defined() ? data_at<const T>(t) : nullptr; }

Tensor dense_or_undefined(const Tensor& t) { return t.defined() ? as_contiguous(t) : Tensor(); }

bool aligned_to(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

RowStrides row_strides(const Tensor& t) {
  return t.defined() ? RowStrides{t.strides()[0], t.strides()[1]} : RowStrides{0, 0};
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

Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A,
                           const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                           const Tensor& delta_bias, bool delta_softplus) {
  constexpr const char* op = "selective_scan_step";
  check_cuda_tensor(op, u, "u");
  check_cuda_tensor(op, state, "state");
  DeviceGuard guard(u.device().index);
  const int64_t batch = u.shape()[0], d_inner = u.shape()[1], N = A.shape()[1], groups = B.shape()[1];
  const int64_t rows = batch * d_inner;
  Tensor y = empty(u.shape(), u.options());
  if (rows == 0) return y;
  SCANLINE_CHECK(state.is_contiguous(), op, ": state is updated in place and must be contiguous, but found ",
                 describe(state));
  // The parameters are contiguous in practice (a copy otherwise); the token inputs are read in place.
  const Tensor dA = as_contiguous(A), dD = dense_or_undefined(D), dbias = dense_or_undefined(delta_bias);

  auto launch = [&]<typename T>() {
    using W = math_t<T>;
    StepParams<T> p;
    p.state = data_at<W>(state);
    p.u = data_at<const T>(u);
    p.delta = data_at<const T>(delta);
    p.z = ptr_or_null<T>(z);
    p.B = data_at<const T>(B);
    p.C = data_at<const T>(C);
    p.su = row_strides(u);
    p.sdelta = row_strides(delta);
    p.sz = row_strides(z);
    p.sB = group_strides(B);
    p.sC = group_strides(C);
    p.A = data_at<const W>(dA);
    p.D = ptr_or_null<W>(dD);
    p.bias = ptr_or_null<W>(dbias);
    p.y = data_at<T>(y);
    p.rows = rows;
    p.d_inner = d_inner;
    p.N = N;
    p.groups = groups;
    p.per_group = d_inner / groups;
    p.softplus = delta_softplus;
    // 16-byte slices of the state (4 f32 or 2 f64) when every row starts on a slice boundary:
    // N a multiple of the slice, the state and A aligned, B and C read as kVec-element words.
    constexpr int kVec = 16 / int(sizeof(W));
    const bool vec = N % kVec == 0 && aligned_to(p.state, 16) && aligned_to(p.A, 16) &&
                     vectorizable(B, p.B, kVec, kVec * sizeof(T)) && vectorizable(C, p.C, kVec, kVec * sizeof(T));
    const int64_t slices = vec ? N / kVec : N;
    p.lane_shift = 0;
    while (p.lane_shift < 5 && (int64_t(1) << p.lane_shift) < slices) ++p.lane_shift;
    const int64_t threads = rows << p.lane_shift;
    const int64_t blocks = (threads + kThreads - 1) / kThreads;
    SCANLINE_CHECK(blocks <= int64_t(0x7fffffff), op, ": batch * d_inner = ", rows, " rows exceed the CUDA grid");
    if (vec) {
      selective_scan_step_kernel<T, kVec><<<unsigned(blocks), kThreads, 0, current_stream()>>>(p);
    } else {
      selective_scan_step_kernel<T, 1><<<unsigned(blocks), kThreads, 0, current_stream()>>>(p);
    }
    CUDA_CHECK_LAUNCH("selective_scan_step");
  };
  switch (u.dtype()) {
    case DType::f32: launch.template operator()<float>(); break;
    case DType::bf16: launch.template operator()<__nv_bfloat16>(); break;
    case DType::f64: launch.template operator()<double>(); break;
    default: SCANLINE_FAIL(op, ": expected f32, bf16 or f64 inputs but found ", describe(u));
  }
  return y;
}

}  // namespace scanline::cuda
