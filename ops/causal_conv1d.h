#pragma once
// Depthwise causal 1-D convolution, the short convolution of the Mamba mixers:
//   out[b, c, t] = bias[c] + sum_{j < k} weight[c, j] * x[b, c, t - (k - 1) + j]
// with x zero for negative times (k - 1 of left padding), then an optional fused SiLU. Each channel
// has its own k taps (k in [1, 8]; Mamba uses 4), so output t never sees inputs after t.
#include "core/tensor.h"

namespace scanline {

// The largest kernel width; GPU kernels keep a channel's taps in registers.
inline constexpr int64_t kMaxCausalConvWidth = 8;

// x (batch, channels, length), weight (channels, k), bias (channels) or undefined.
// Returns (batch, channels, length) in x's dimension order: a channel-major x (rows contiguous in
// time, strides (L, batch·L, 1)) gives a channel-major result and gradient, others contiguous.
Tensor causal_conv1d(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                     bool silu_activation = false);

// The same convolution on channels-last x (batch, length, channels), the layout a Linear
// projection produces; returns (batch, length, channels). No transpose copy is made.
Tensor causal_conv1d_channels_last(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor(),
                                   bool silu_activation = false);

}  // namespace scanline
