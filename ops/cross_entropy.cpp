#include "ops/cross_entropy.h"

#include "ops/cross_entropy_cpu.h"
#include "ops/dispatch.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/cross_entropy.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

#ifdef SCANLINE_HAVE_CUDA
namespace {

// The CUDA path: per-row losses and logsumexp stay on the device, totals are a deterministic
// device reduction; only the target check's result (with the count for the mean) is copied back.
Tensor cross_entropy_cuda(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Reduction reduction,
                          DType loss_dtype, const Shape& lead) {
  constexpr const char* op = "cross_entropy";
  cuda::CrossEntropyForward forward = cuda::cross_entropy_forward(logits, targets, ignore_index);
  Tensor out;
  double scale = 1.0;  // d out / d row loss
  switch (reduction) {
    case Reduction::none:
      out = contiguous_copy(as_strided(forward.losses, lead, contiguous_strides(lead), 0), loss_dtype,
                            logits.device());
      break;
    case Reduction::sum:
      out = cuda::cross_entropy_total(forward.losses, 1.0, loss_dtype);
      break;
    case Reduction::mean:
      // With every target ignored there is nothing to average: the loss and its gradient are 0.
      scale = forward.count > 0 ? 1.0 / double(forward.count) : 0.0;
      out = cuda::cross_entropy_total(forward.losses, scale, loss_dtype);
      break;
  }
  record(op, {logits}, {out},
         [x = logits.detach(), t = targets.detach(), lse = forward.lse, ignore_index, scale](const BackwardContext& ctx) {
           return Grads{cuda::cross_entropy_backward(ctx.grad(), x, t, lse, ignore_index, scale)};
         });
  return out;
}

}  // namespace
#endif

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Reduction reduction) {
  ops_detail::check_floating("cross_entropy", logits, "logits");
  return cross_entropy(logits, targets, ignore_index, reduction, logits.dtype());
}

Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Reduction reduction,
                     DType loss_dtype) {
  constexpr const char* op = "cross_entropy";
  ops_detail::check_floating(op, logits, "logits");
  SCANLINE_CHECK(is_floating(loss_dtype), op, ": expected loss_dtype to be floating (f64, f32, bf16 or f16) but found ",
                 dtype_name(loss_dtype));
  ops_detail::check_defined(op, targets, "targets");
  SCANLINE_CHECK(targets.dtype() == DType::i64 || targets.dtype() == DType::i32, op,
                 ": expected targets to be class indices (i64 or i32) but found ", describe(targets));
  SCANLINE_CHECK(logits.dim() >= 1, op, ": expected logits of shape (..., C) but found ", describe(logits));
  const Shape lead(logits.shape().begin(), logits.shape().end() - 1);
  SCANLINE_CHECK(targets.shape() == lead, op, ": expected targets of shape ", lead, " to match logits ",
                 describe(logits), " without its last (class) dim, but found ", describe(targets));
  SCANLINE_CHECK(logits.size(-1) >= 1, op, ": expected at least one class but found logits ", describe(logits));
  ops_detail::check_same_device(op, {logits, targets});
#ifdef SCANLINE_HAVE_CUDA
  if (logits.device().is_cuda()) return cross_entropy_cuda(logits, targets, ignore_index, reduction, loss_dtype, lead);
#endif
  if (!logits.device().is_cpu()) ops_detail::no_cuda_kernel(op, logits);

  cpu::CrossEntropyForward forward = cpu::cross_entropy_forward(logits, targets, ignore_index);
  // Totals run over rows in order, in double, so the loss does not depend on the thread count.
  double total = 0.0;
  for (double loss : forward.losses) total += loss;
  Tensor out;
  double scale = 1.0;  // d out / d row loss
  switch (reduction) {
    case Reduction::none:
      out = contiguous_copy(from_vector<double>(forward.losses, lead), loss_dtype, logits.device());
      break;
    case Reduction::sum:
      out = scalar_tensor(total, logits.options().with_dtype(loss_dtype));
      break;
    case Reduction::mean:
      // With every target ignored there is nothing to average: the loss and its gradient are 0.
      scale = forward.count > 0 ? 1.0 / double(forward.count) : 0.0;
      out = scalar_tensor(total * scale, logits.options().with_dtype(loss_dtype));
      break;
  }
  record(op, {logits}, {out},
         [x = logits.detach(), t = targets.detach(), lse = forward.lse, ignore_index, scale](const BackwardContext& ctx) {
           if (!ctx.grad().device().is_cpu()) ops_detail::no_cuda_kernel("cross_entropy backward", x);
           return Grads{cpu::cross_entropy_backward(ctx.grad(), x, t, lse, ignore_index, scale)};
         });
  return out;
}

}  // namespace scanline
