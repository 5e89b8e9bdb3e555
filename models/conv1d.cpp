#include "models/conv1d.h"

#include <cmath>

#include "ops/causal_conv1d.h"
#include "ops/views.h"

namespace scanline {

CausalConv1d::CausalConv1d(int64_t channels, int64_t kernel_size, bool has_bias, Generator& gen,
                           TensorOptions options) {
  SCANLINE_CHECK(channels > 0, "CausalConv1d: expected a positive number of channels, found ", channels);
  SCANLINE_CHECK(kernel_size >= 1 && kernel_size <= kMaxCausalConvWidth, "CausalConv1d: kernel_size ", kernel_size,
                 " is outside [1, ", kMaxCausalConvWidth, "]");
  options.requires_grad = false;
  const double bound = 1.0 / std::sqrt(double(kernel_size));
  register_parameter("weight", weight, rand({channels, kernel_size}, gen, options, -bound, bound), true);
  if (has_bias) register_parameter("bias", bias, rand({channels}, gen, options, -bound, bound), false);
}

Tensor CausalConv1d::forward(const Tensor& x, bool silu_activation) const {
  SCANLINE_CHECK(x.defined(), "CausalConv1d: expected an input tensor, found an undefined one");
  return causal_conv1d(x, to_dtype(weight, x.dtype()), bias.defined() ? to_dtype(bias, x.dtype()) : Tensor(),
                       silu_activation);
}

Tensor CausalConv1d::forward_channels_last(const Tensor& x, bool silu_activation) const {
  SCANLINE_CHECK(x.defined(), "CausalConv1d: expected an input tensor, found an undefined one");
  return causal_conv1d_channels_last(x, to_dtype(weight, x.dtype()),
                                     bias.defined() ? to_dtype(bias, x.dtype()) : Tensor(), silu_activation);
}

}  // namespace scanline
