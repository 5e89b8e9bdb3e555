#pragma once
// CUDA depthwise causal conv1d (+ bias, + fused SiLU): the device side of ops/causal_conv1d, with
// the formulas and tap order of the CPU reference (ops/causal_conv1d_cpu.cpp), fp32 math for
// f32/bf16/f16 and f64 for f64, k in [1, 8].
//
// Layouts: channels-first x (batch, channels, length) runs threads along the length (8 outputs a
// thread, 16-byte loads); channels-last x (batch, length, channels) runs threads along the
// channels (4 channels a thread, 2 for f64) and each thread walks 64 time steps with its taps'
// window in registers. The backward recomputes the pre-activation for SiLU instead of reading a
// saved one. grad_weight and grad_bias are deterministic: every block writes the sums of its fixed
// (batch, time range) part to a workspace, and a second kernel adds the parts in a fixed order.
#include "core/tensor.h"

namespace scanline::cuda {

// x: (batch, channels, length), or (batch, length, channels) when channels_last, any strides;
// weight (channels, k); bias (channels) or undefined. Writes out, a contiguous tensor of x's shape.
void causal_conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, bool channels_last,
                           const Tensor& out);

// grad_out in x's layout and shape (any strides). Writes those of grad_x (contiguous, x's shape),
// grad_weight (contiguous (channels, k)) and grad_bias (contiguous (channels)) that are defined.
void causal_conv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, bool channels_last,
                            const Tensor& grad_out, const Tensor& grad_x, const Tensor& grad_weight,
                            const Tensor& grad_bias);

}  // namespace scanline::cuda
