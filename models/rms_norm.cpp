#include "models/rms_norm.h"

#include "ops/rms_norm.h"
#include "ops/views.h"

namespace scanline {

RMSNorm::RMSNorm(int64_t dim, double eps, TensorOptions options) : eps_(eps) {
  SCANLINE_CHECK(dim > 0, "RMSNorm: expected a positive dim, found ", dim);
  SCANLINE_CHECK(eps > 0.0, "RMSNorm: expected a positive eps, found ", eps);
  options.requires_grad = false;
  register_parameter("weight", weight, ones({dim}, options), false);
}

Tensor RMSNorm::forward(const Tensor& x) const {
  SCANLINE_CHECK(x.defined(), "RMSNorm: expected an input tensor, found an undefined one");
  return rms_norm(x, to_dtype(weight, x.dtype()), eps_);
}

std::pair<Tensor, Tensor> RMSNorm::forward_residual(const Tensor& x, const Tensor& residual,
                                                    bool residual_in_fp32) const {
  SCANLINE_CHECK(x.defined(), "RMSNorm: expected an input tensor, found an undefined one");
  return rms_norm_residual(x, residual, to_dtype(weight, x.dtype()), eps_, residual_in_fp32);
}

}  // namespace scanline
