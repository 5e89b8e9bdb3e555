#pragma once
// Linear: y = x W^T + b with W (out_features, in_features), PyTorch's nn.Linear.
#include "core/random.h"
#include "models/module.h"

namespace scanline {

class Linear : public Module {
 public:
  // PyTorch's default init: W and b uniform in [-1/sqrt(in_features), 1/sqrt(in_features)).
  // Parameters are made in `options` (dtype, device); options.requires_grad is ignored.
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen, TensorOptions options = {});

  // x (..., in_features) -> (..., out_features). The parameters are cast to x's dtype for the
  // product (fp32 parameters with bf16 activations, DESIGN.md "Precision"); the cast is part of
  // the graph, so gradients arrive in the parameters' dtype.
  Tensor forward(const Tensor& x) const;

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  Tensor weight;  // (out_features, in_features), decays
  Tensor bias;    // (out_features) or undefined, no decay

 private:
  int64_t in_features_, out_features_;
};

}  // namespace scanline
