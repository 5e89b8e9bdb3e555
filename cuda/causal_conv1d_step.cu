// One token of the depthwise causal conv1d (see cuda/causal_conv1d_step.h).
#include "cuda/causal_conv1d_step.h"

#include <type_traits>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxWidth = 8;  // kMaxCausalConvWidth (ops/causal_conv1d.h): the window lives in registers

template <typename A>
__device__ __forceinline__ A sigmoid_of(A z) {
  if constexpr (std::is_same_v<A, double>) return 1.0 / (1.0 + ::exp(-z));
  else return 1.0f / (1.0f + ::expf(-z));
}

// state: (rows, k - 1) contiguous; x: (batch, channels) with element strides x_batch, x_channel
// (read in place: in a mixer it is a column slice of the input projection); out: (rows)
// contiguous; weight: (channels, k) contiguous.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    causal_conv1d_step_kernel(T* __restrict__ state, const T* __restrict__ x, int64_t x_batch, int64_t x_channel,
                              const T* __restrict__ weight, const T* __restrict__ bias, T* __restrict__ out,
                              int64_t rows, int64_t channels, int k, bool silu) {
  using A = math_t<T>;
  const int width = k - 1;
  for (int64_t r = int64_t(blockIdx.x) * kThreads + threadIdx.x; r < rows; r += int64_t(gridDim.x) * kThreads) {
    const int64_t b = r / channels, c = r % channels;
    const T* w = weight + c * k;
    T* s = state + r * width;
    T window[kMaxWidth - 1];  // the previous inputs, oldest first, read before any is overwritten
#pragma unroll
    for (int j = 0; j < kMaxWidth - 1; ++j)
      if (j < width) window[j] = s[j];
    const T xv = x[b * x_batch + c * x_channel];
    // The CPU reference's order: bias, then taps j = 0 .. k - 1.
    A acc = bias ? A(load_math(bias + c)) : A(0);
#pragma unroll
    for (int j = 0; j < kMaxWidth - 1; ++j)
      if (j < width) acc += A(load_math(w + j)) * A(load_math(&window[j]));
    acc += A(load_math(w + width)) * A(load_math(&xv));
    out[r] = from_math<T>(silu ? acc * sigmoid_of(acc) : acc);
    // Shift the window by one token and append x.
#pragma unroll
    for (int j = 0; j < kMaxWidth - 2; ++j)
      if (j + 1 < width) s[j] = window[j + 1];
    if (width > 0) s[width - 1] = xv;
  }
}

}  // namespace

Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias,
                          bool silu) {
  constexpr const char* op = "causal_conv1d_step";
  check_cuda_tensor(op, x, "x");
  check_cuda_tensor(op, conv_state, "conv_state");
  DeviceGuard guard(x.device().index);
  const int64_t batch = x.shape()[0], channels = x.shape()[1], k = weight.shape()[1];
  const int64_t rows = batch * channels;
  Tensor out = empty(x.shape(), x.options());
  if (rows == 0) return out;
  SCANLINE_CHECK(k >= 1 && k <= kMaxWidth, op, ": kernel width k = ", k, " of weight ", describe(weight),
                 " is outside [1, ", kMaxWidth, "]");
  SCANLINE_CHECK(k == 1 || conv_state.is_contiguous(), op,
                 ": conv_state is updated in place and must be contiguous, but found ", describe(conv_state));
  const Tensor dw = as_contiguous(weight);
  const Tensor db = bias.defined() ? as_contiguous(bias) : Tensor();
  dispatch_floating_device(x.dtype(), op, [&]<typename T>() {
    // k = 1: the state is empty and never dereferenced.
    T* state = k > 1 ? data_at<T>(conv_state) : nullptr;
    const T* b = db.defined() ? data_at<const T>(db) : nullptr;
    causal_conv1d_step_kernel<T><<<blocks_for(rows, kThreads), kThreads, 0, current_stream()>>>(
        state, data_at<const T>(x), x.strides()[0], x.strides()[1], data_at<const T>(dw), b, data_at<T>(out), rows,
        channels, int(k), silu);
    CUDA_CHECK_LAUNCH("causal_conv1d_step");
  });
  return out;
}

}  // namespace scanline::cuda
