#include "ops/softmax.h"

#include "ops/dispatch.h"
#include "ops/softmax_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/softmax.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

Tensor softmax_op(const Tensor& x, int64_t dim, bool log) {
  const char* name = log ? "log_softmax" : "softmax";
  ops_detail::check_floating(name, x, "input");
  SCANLINE_CHECK(x.dim() >= 1, name, ": expected an input with at least one dimension but found ", describe(x));
  SCANLINE_CHECK(dim >= -x.dim() && dim < x.dim(), name, ": dim ", dim, " is out of range for input ",
                 describe(x));
  const int64_t d = wrap_dim(dim, x.dim(), name);
  Tensor out;
  if (x.device().is_cpu()) out = cpu::softmax(x, d, log);
#ifdef SCANLINE_HAVE_CUDA
  else out = cuda::softmax(x, d, log);
#else
  else ops_detail::no_cuda_kernel(name, x);
#endif
  // One node; the backward reads only the output (exp(log_softmax) is the softmax).
  record(name, {x}, {out}, [y = out.detach(), d, log, name](const BackwardContext& ctx) {
    if (ctx.grad().device().is_cpu()) return Grads{cpu::softmax_backward(ctx.grad(), y, d, log)};
#ifdef SCANLINE_HAVE_CUDA
    return Grads{cuda::softmax_backward(ctx.grad(), y, d, log)};
#else
    ops_detail::no_cuda_kernel(name, y);
#endif
  });
  return out;
}

}  // namespace

Tensor softmax(const Tensor& x, int64_t dim) { return softmax_op(x, dim, false); }
Tensor log_softmax(const Tensor& x, int64_t dim) { return softmax_op(x, dim, true); }

}  // namespace scanline
