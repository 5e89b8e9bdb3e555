#include "ops/causal_conv1d.h"

#include "autograd/node.h"
#include "ops/causal_conv1d_cpu.h"
#include "ops/dispatch.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/causal_conv1d.h"
#endif

namespace scanline {

using autograd::BackwardContext;

namespace {

// t as a logical (batch, channels, length) view: channels-last tensors swap their last two
// dims' sizes and strides, so the kernels see one layout. Undefined stays undefined.
Tensor as_bcl(const Tensor& t, bool channels_last) {
  if (!t.defined() || !channels_last) return t;
  return as_strided(t, {t.shape()[0], t.shape()[2], t.shape()[1]},
                    {t.strides()[0], t.strides()[2], t.strides()[1]}, t.offset());
}

void check_inputs(const char* op, const Tensor& x, bool channels_last, const Tensor& weight,
                  const Tensor& bias) {
  const char* layout = channels_last ? "(batch, length, channels)" : "(batch, channels, length)";
  ops_detail::check_floating(op, x, "x");
  SCANLINE_CHECK(x.dim() == 3, op, ": expected x of shape ", layout, " but found ", describe(x));
  ops_detail::check_defined(op, weight, "weight");
  SCANLINE_CHECK(weight.dim() == 2, op, ": expected weight of shape (channels, k) but found ",
                 describe(weight));
  ops_detail::check_same_dtype(op, {x, weight, bias});
  ops_detail::check_same_device(op, {x, weight, bias});
  const int64_t channels = x.shape()[channels_last ? 2 : 1];
  SCANLINE_CHECK(weight.shape()[0] == channels, op, ": weight ", describe(weight), " has ",
                 weight.shape()[0], " channels but x ", describe(x), " ", layout, " has ", channels);
  const int64_t k = weight.shape()[1];
  SCANLINE_CHECK(k >= 1 && k <= kMaxCausalConvWidth, op, ": kernel width k = ", k, " of weight ",
                 describe(weight), " is outside [1, ", kMaxCausalConvWidth, "]");
  if (bias.defined())
    SCANLINE_CHECK(bias.dim() == 1 && bias.shape()[0] == channels, op,
                   ": expected bias of shape (channels) = [", channels, "] but found ", describe(bias));
}

// A fresh tensor of x's shape for out and grad_x. Channels-first x whose time steps are
// adjacent gets x's dimension order (empty_in_layout_of): mamba_ssm's channel-major in_proj
// output, strides (L, batch * L, 1), gets a contiguous (channels, batch, length) buffer seen as
// (batch, channels, length), so the next op reads it as it read x. Every other layout (time
// strided, channels-last) gets a contiguous tensor.
Tensor empty_like_rows(const Tensor& x, bool channels_last) {
  const bool time_adjacent = x.shape()[2] <= 1 || x.strides()[2] == 1;
  return !channels_last && time_adjacent ? empty_in_layout_of(x, x.options()) : empty(x.shape(), x.options());
}

// Both public functions: out has x's shape and empty_like_rows' layout; the CPU kernels read and
// write through as_bcl, the CUDA launchers take each tensor's own strides.
Tensor conv(const char* op, const Tensor& x, bool channels_last, const Tensor& weight,
            const Tensor& bias, bool silu) {
  check_inputs(op, x, channels_last, weight, bias);
  Tensor out = empty_like_rows(x, channels_last);
  if (x.device().is_cpu()) {
    cpu::causal_conv1d_forward(as_bcl(x, channels_last), weight, bias, silu, as_bcl(out, channels_last));
  } else {
#ifdef SCANLINE_HAVE_CUDA
    cuda::causal_conv1d_forward(x, weight, bias, silu, channels_last, out);  // takes x's own layout
#else
    ops_detail::no_cuda_kernel(op, x);
#endif
  }
  // One node for conv + bias + SiLU. The pre-activation is not saved: the backward recomputes it
  // from x and weight (k multiply-adds an element), which saves a (batch, channels, length) tensor.
  autograd::record(op, {x, weight, bias}, {out},
                   [op, channels_last, silu, x = x.detach(), weight = weight.detach(),
                    bias = bias.defined() ? bias.detach() : Tensor()](const BackwardContext& ctx) {
                     const Tensor& grad = ctx.grad();
#ifndef SCANLINE_HAVE_CUDA
                     if (!grad.device().is_cpu()) ops_detail::no_cuda_kernel(op, grad);
#endif
                     SCANLINE_CHECK(grad.dtype() == x.dtype(), op, ": backward expected a gradient of dtype ",
                                    x.dtype(), " but found ", describe(grad));
                     Tensor gx, gw, gb;
                     if (ctx.needs(0)) gx = empty_like_rows(x, channels_last);  // x's layout, as out's
                     if (ctx.needs(1)) gw = empty(weight.shape(), weight.options());
                     if (ctx.needs(2)) gb = empty(bias.shape(), bias.options());
                     if (grad.device().is_cpu()) {
                       cpu::causal_conv1d_backward(as_bcl(x, channels_last), weight, bias, silu,
                                                   as_bcl(grad, channels_last), as_bcl(gx, channels_last),
                                                   gw, gb);
                     } else {
#ifdef SCANLINE_HAVE_CUDA
                       cuda::causal_conv1d_backward(x, weight, bias, silu, channels_last, grad, gx, gw, gb);
#endif
                     }
                     return std::vector<Tensor>{gx, gw, gb};
                   });
  return out;
}

}  // namespace

Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu_activation) {
  return conv("causal_conv1d", x, false, weight, bias, silu_activation);
}

Tensor causal_conv1d_channels_last(const Tensor& x, const Tensor& weight, const Tensor& bias,
                                   bool silu_activation) {
  return conv("causal_conv1d_channels_last", x, true, weight, bias, silu_activation);
}

}  // namespace scanline
