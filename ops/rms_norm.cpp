#include "ops/rms_norm.h"

#include <tuple>

#include "ops/dispatch.h"
#include "ops/rms_norm_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/rms_norm.h"
#endif

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
  Tensor y, rstd;
  if (x.device().is_cpu()) {
    std::tie(y, rstd) = cpu::rms_norm_forward(x, weight, eps);
  } else {
#ifdef SCANLINE_HAVE_CUDA
    std::tie(y, rstd) = cuda::rms_norm_forward(x, weight, eps);
#else
    ops_detail::no_cuda_kernel("rms_norm", x);
#endif
  }
  record("rms_norm", {x, weight}, {y},
         [x = x.detach(), w = weight.defined() ? weight.detach() : Tensor(), rstd](const BackwardContext& ctx) {
           if (ctx.grad().device().is_cpu()) {
             auto [dx, dw] = cpu::rms_norm_backward(ctx.grad(), x, w, rstd, ctx.needs(0), ctx.needs(1));
             return Grads{dx, dw};
           }
#ifdef SCANLINE_HAVE_CUDA
           auto [dx, dw] = cuda::rms_norm_backward(ctx.grad(), x, w, rstd, ctx.needs(0), ctx.needs(1));
           return Grads{dx, dw};
#else
           ops_detail::no_cuda_kernel("rms_norm backward", x);
#endif
         });
  return y;
}

std::pair<Tensor, Tensor> rms_norm_residual(const Tensor& x, const Tensor& residual, const Tensor& weight, double eps,
                                            bool residual_in_fp32) {
  constexpr const char* op = "rms_norm_residual";
  check_inputs(op, x, weight, eps);
  if (residual.defined()) {
    ops_detail::check_floating(op, residual, "residual");
    SCANLINE_CHECK(residual.shape() == x.shape(), op, ": expected residual of the input's shape ", describe(x),
                   " but found ", describe(residual));
    SCANLINE_CHECK(residual.dtype() == x.dtype() || residual.dtype() == DType::f32, op,
                   ": expected residual of the input's dtype or f32 (input ", describe(x), ") but found ",
                   describe(residual));
    SCANLINE_CHECK(!residual_in_fp32 || residual.dtype() == DType::f32, op,
                   ": residual_in_fp32 expects an f32 residual but found ", describe(residual));
    ops_detail::check_same_device(op, {x, residual});
  }
  const DType residual_dtype = residual.defined() ? residual.dtype() : (residual_in_fp32 ? DType::f32 : x.dtype());
  Tensor y, new_residual, rstd;
  if (x.device().is_cpu()) {
    std::tie(y, new_residual, rstd) = cpu::rms_norm_residual_forward(x, residual, weight, eps, residual_dtype);
  } else {
#ifdef SCANLINE_HAVE_CUDA
    std::tie(y, new_residual, rstd) = cuda::rms_norm_residual_forward(x, residual, weight, eps, residual_dtype);
#else
    ops_detail::no_cuda_kernel(op, x);
#endif
  }
  // One node for both outputs; the backward needs only new_residual (the normalized value) and rstd.
  record(op, {x, residual, weight}, {y, new_residual},
         [h = new_residual.detach(), w = weight.defined() ? weight.detach() : Tensor(), rstd,
          x_dtype = x.dtype()](const BackwardContext& ctx) {
           const Tensor& grad_y = ctx.grad(0);
           const Tensor& grad_h = ctx.grad(1);
           if (grad_y.device().is_cpu()) {
             auto [dx, dres, dw] = cpu::rms_norm_residual_backward(grad_y, grad_h, h, w, rstd, x_dtype, ctx.needs(0),
                                                                   ctx.needs(1), ctx.needs(2));
             return Grads{dx, dres, dw};
           }
#ifdef SCANLINE_HAVE_CUDA
           auto [dx, dres, dw] = cuda::rms_norm_residual_backward(grad_y, grad_h, h, w, rstd, x_dtype, ctx.needs(0),
                                                                  ctx.needs(1), ctx.needs(2));
           return Grads{dx, dres, dw};
#else
           ops_detail::no_cuda_kernel("rms_norm_residual backward", h);
#endif
         });
  return {y, new_residual};
}

}  // namespace scanline
