// rms_norm_gated (declared in ops/rms_norm.h): Mamba-2's grouped gated RMSNorm as one fused
// node. The forward saves x, z, weight and rstd per (row, group); the backward recomputes silu(z)
// and the normalized values from them.
#include <tuple>

#include "ops/dispatch.h"
#include "ops/rms_norm.h"
#include "ops/rms_norm_gated_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/rms_norm_gated.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

// Checks the inputs; returns the group size with 0 resolved to the whole row.
int64_t checked_group_size(const Tensor& x, const Tensor& z, const Tensor& weight, double eps, int64_t group_size) {
  constexpr const char* op = "rms_norm_gated";
  ops_detail::check_floating(op, x, "input");
  SCANLINE_CHECK(x.dim() >= 1 && x.size(-1) >= 1, op,
                 ": expected an input of shape (..., D) with D >= 1 but found ", describe(x));
  const int64_t width = x.size(-1);
  ops_detail::check_floating(op, z, "gate z");
  SCANLINE_CHECK(z.shape() == x.shape(), op, ": expected gate z of the input's shape ", describe(x),
                 " but found ", describe(z));
  ops_detail::check_same_dtype(op, {x, z});
  ops_detail::check_same_device(op, {x, z});
  if (weight.defined()) {
    SCANLINE_CHECK(weight.dim() == 1 && weight.size(0) == width, op, ": expected weight of shape [", width,
                   "] (the last dim of input ", describe(x), ") but found ", describe(weight));
    ops_detail::check_same_dtype(op, {x, weight});
    ops_detail::check_same_device(op, {x, weight});
  }
  SCANLINE_CHECK(eps >= 0.0, op, ": expected eps >= 0 but found ", eps);
  SCANLINE_CHECK(group_size >= 0 && (group_size == 0 || (group_size <= width && width % group_size == 0)), op,
                 ": expected group_size to divide the last dim D = ", width, " of input ", describe(x),
                 " (or 0 for the whole row) but found ", group_size);
  return group_size == 0 ? width : group_size;
}

}  // namespace

Tensor rms_norm_gated(const Tensor& x, const Tensor& z, const Tensor& weight, double eps, bool norm_before_gate,
                      int64_t group_size_in) {
  constexpr const char* op = "rms_norm_gated";
  const int64_t group_size = checked_group_size(x, z, weight, eps, group_size_in);
  Tensor y, rstd;
  if (x.device().is_cpu()) {
    std::tie(y, rstd) = cpu::rms_norm_gated_forward(x, z, weight, eps, norm_before_gate, group_size);
  } else {
#ifdef SCANLINE_HAVE_CUDA
    std::tie(y, rstd) = cuda::rms_norm_gated_forward(x, z, weight, eps, norm_before_gate, group_size);
#else
    ops_detail::no_cuda_kernel(op, x);
#endif
  }
  record(op, {x, z, weight}, {y},
         [x = x.detach(), z = z.detach(), w = weight.defined() ? weight.detach() : Tensor(), rstd, norm_before_gate,
          group_size](const BackwardContext& ctx) {
           if (ctx.grad().device().is_cpu()) {
             auto [dx, dz, dw] = cpu::rms_norm_gated_backward(ctx.grad(), x, z, w, rstd, norm_before_gate,
                                                              group_size, ctx.needs(0), ctx.needs(1), ctx.needs(2));
             return Grads{dx, dz, dw};
           }
#ifdef SCANLINE_HAVE_CUDA
           auto [dx, dz, dw] = cuda::rms_norm_gated_backward(ctx.grad(), x, z, w, rstd, norm_before_gate, group_size,
                                                             ctx.needs(0), ctx.needs(1), ctx.needs(2));
           return Grads{dx, dz, dw};
#else
           ops_detail::no_cuda_kernel("rms_norm_gated backward", x);
#endif
         });
  return y;
}

}  // namespace scanline
