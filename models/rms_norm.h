#pragma once
// RMSNorm over the last dimension: y = x * rsqrt(mean(x^2) + eps) * weight.
#include <utility>

#include "models/module.h"

namespace scanline {

class RMSNorm : public Module {
 public:
  // weight starts at ones (no randomness, so no Generator).
  explicit RMSNorm(int64_t dim, double eps = 1e-5, TensorOptions options = {});

  // x (..., dim) -> same shape and dtype; the weight is cast to x's dtype.
  Tensor forward(const Tensor& x) const;
  // The fused add + norm of a pre-norm block (ops/rms_norm.h, rms_norm_residual): returns
  // (normalized x + residual, new residual). residual may be undefined (the first block).
  std::pair<Tensor, Tensor> forward_residual(const Tensor& x, const Tensor& residual,
                                             bool residual_in_fp32 = false) const;

  int64_t dim() const { return weight.size(0); }
  double eps() const { return eps_; }

  Tensor weight;  // (dim), no decay

 private:
  double eps_;
};

}  // namespace scanline
