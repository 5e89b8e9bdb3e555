#include "models/linear.h"

#include <cmath>

#include "ops/matmul.h"
#include "ops/views.h"

namespace scanline {

Linear::Linear(int64_t in_features, int64_t out_features, bool has_bias, Generator& gen, TensorOptions options)
    : in_features_(in_features), out_features_(out_features) {
  SCANLINE_CHECK(in_features > 0 && out_features > 0, "Linear: expected positive in_features and out_features, found ",
                 in_features, " and ", out_features);
  options.requires_grad = false;
  const double bound = 1.0 / std::sqrt(double(in_features));
  register_parameter("weight", weight, rand({out_features, in_features}, gen, options, -bound, bound), true);
  if (has_bias) register_parameter("bias", bias, rand({out_features}, gen, options, -bound, bound), false);
}

Tensor Linear::forward(const Tensor& x) const {
  SCANLINE_CHECK(x.defined(), "Linear: expected an input tensor, found an undefined one");
  return linear(x, to_dtype(weight, x.dtype()), bias.defined() ? to_dtype(bias, x.dtype()) : Tensor());
}

}  // namespace scanline
