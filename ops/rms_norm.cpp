#include "ops/rms_norm.h"

#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/rms_norm_cpu.h"

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

void check_inputs(const char* op, const Tensor& x, const Tensor& weight, double eps) {
  ops_detail::check_floating(op, x, "input");
  SCANLINE_CHECK(x.dim() >= 1 && x.size(-1) >= 1, op,
                 ": expected an input of shape (..., D) with D >= 1 but found ", describe(x));
  if (weight.defined()) {
    SCANLINE_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1), op, ": expected weight of shape [",
                   x.size(-1), "] (the last dim of input ", describe(x), ") but found ", describe(weight));
    ops_detail::check_same_dtype(op, {x, weight});
    ops_detail::check_same_device(op, {x, weight});
  }
  SCANLINE_CHECK(eps >= 0.0, op, ": expected eps >= 0 but found ", eps);
}

}  // namespace

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  check_inputs("rms_norm", x, weight, eps);
  if (!x.device().is_cpu()) ops_detail::no_cuda_kernel("rms_norm", x);
  auto [y, rstd] = cpu::rms_norm_forward(x, weight, eps);
  record("rms_norm", {x, weight}, {y},
         [x = x.detach(), w = weight.defined() ? weight.detach() : Tensor(), rstd](const BackwardContext& ctx) {
           if (!ctx.grad().device().is_cpu()) ops_detail::no_cuda_kernel("rms_norm backward", x);
           auto [dx, dw] = cpu::rms_norm_backward(ctx.grad(), x, w, rstd, ctx.needs(0), ctx.needs(1));
           return Grads{dx, dw};
         });
  return y;
}

Tensor rms_norm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, double eps, bool norm_before_gate) {
  constexpr const char* op = "rms_norm_gated";
  check_inputs(op, x, weight, eps);
  ops_detail::check_floating(op, z, "gate z");
  SCANLINE_CHECK(z.shape() == x.shape(), op, ": expected gate z of the input's shape ", describe(x),
                 " but found ", describe(z));
  ops_detail::check_same_dtype(op, {x, z});
  ops_detail::check_same_device(op, {x, z});
  // Composed from the fused rms_norm and the elementwise ops; each piece has its own backward.
  if (norm_before_gate) return mul(rms_norm(x, weight, eps), silu(z));
  return rms_norm(mul(x, silu(z)), weight, eps);
}

}  // namespace scanline
