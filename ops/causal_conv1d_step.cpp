#include "ops/causal_conv1d_step.h"

#include "autograd/grad_mode.h"
#include "ops/causal_conv1d.h"
#include "ops/causal_conv1d_step_cpu.h"
#include "ops/dispatch.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/causal_conv1d_step.h"
#endif

namespace scanline {
namespace {

constexpr const char* kOp = "causal_conv1d_step";

void check_inputs(const Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias) {
  ops_detail::check_floating(kOp, x, "x");
  SCANLINE_CHECK(x.dim() == 2, kOp, ": expected x of shape (batch, channels) but found ", describe(x));
  ops_detail::check_defined(kOp, weight, "weight");
  SCANLINE_CHECK(weight.dim() == 2, kOp, ": expected weight of shape (channels, k) but found ", describe(weight));
  ops_detail::check_defined(kOp, conv_state, "conv_state");
  ops_detail::check_same_dtype(kOp, {x, weight, bias, conv_state});
  ops_detail::check_same_device(kOp, {x, weight, bias, conv_state});
  const int64_t batch = x.shape()[0], channels = x.shape()[1];
  SCANLINE_CHECK(weight.shape()[0] == channels, kOp, ": weight ", describe(weight), " has ", weight.shape()[0],
                 " channels but x ", describe(x), " (batch, channels) has ", channels);
  const int64_t k = weight.shape()[1];
  SCANLINE_CHECK(k >= 1 && k <= kMaxCausalConvWidth, kOp, ": kernel width k = ", k, " of weight ", describe(weight),
                 " is outside [1, ", kMaxCausalConvWidth, "]");
  if (bias.defined())
    SCANLINE_CHECK(bias.dim() == 1 && bias.shape()[0] == channels, kOp, ": expected bias of shape (channels) = [",
                   channels, "] but found ", describe(bias));
  const Shape state_shape{batch, channels, k - 1};
  SCANLINE_CHECK(conv_state.shape() == state_shape, kOp, ": expected conv_state of shape (batch, channels, k - 1) = ",
                 state_shape, " but found ", describe(conv_state));
  // Written in place by one linear pass: a view with gaps or overlaps cannot be.
  SCANLINE_CHECK(conv_state.numel() == 0 || conv_state.is_contiguous(), kOp,
                 ": conv_state is updated in place and must be contiguous, but found ", describe(conv_state),
                 " with strides ", conv_state.strides());

  ops_detail::check_inference_only(kOp, {{conv_state, "conv_state"}, {x, "x"}, {weight, "weight"}, {bias, "bias"}});
}

}  // namespace

Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias,
                          bool silu_activation) {
  check_inputs(conv_state, x, weight, bias);
  NoGradGuard no_grad;  // nothing below records a graph
#ifdef SCANLINE_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::causal_conv1d_step(conv_state, x, weight, bias, silu_activation);
#endif
  if (!x.device().is_cpu()) ops_detail::no_cuda_kernel(kOp, x);
  return cpu::causal_conv1d_step(conv_state, x, weight, bias, silu_activation);
}

}  // namespace scanline
