#pragma once
// CausalConv1d: the depthwise causal convolution of the Mamba mixers (ops/causal_conv1d.h), one
// k-tap filter per channel. It stands for mamba_ssm's nn.Conv1d(E, E, k, groups=E, padding=k-1)
// with the outputs past the sequence end dropped; the weight is stored (channels, k) instead of
// PyTorch's (channels, 1, k).
#include "core/random.h"
#include "models/module.h"

namespace scanline {

class CausalConv1d : public Module {
 public:
  // PyTorch's Conv1d default init: weight and bias uniform in +-1/sqrt(fan_in), fan_in = k for a
  // depthwise filter.
  CausalConv1d(int64_t channels, int64_t kernel_size, bool bias, Generator& gen, TensorOptions options = {});

  // x (batch, channels, length) -> same shape, optionally followed by SiLU (fused). The
  // parameters are cast to x's dtype. x's rows may have any batch and channel strides (time
  // stride 1 is read in place on CUDA); a channel-major x (strides (length, batch·length, 1), the
  // Mamba-1 mixer's) gives a channel-major result, see ops/causal_conv1d.cpp.
  Tensor forward(const Tensor& x, bool silu_activation) const;

  // x (batch, length, channels) -> same shape, optionally followed by SiLU (fused). The
  // parameters are cast to x's dtype.
  Tensor forward_channels_last(const Tensor& x, bool silu_activation) const;

  int64_t channels() const { return weight.size(0); }
  int64_t kernel_size() const { return weight.size(1); }

  Tensor weight;  // (channels, kernel_size), decays
  Tensor bias;    // (channels) or undefined, no decay
};

}  // namespace scanline
