#pragma once
// CUDA depthwise causal conv1d (+ bias, + fused SiLU): the device side of ops/causal_conv1d, with
// the formulas and tap order of the CPU reference (ops/causal_conv1d_cpu.cpp), fp32 math for
// f32/bf16/f16 and f64 for f64, k in [1, 8].
//
// Layouts: channels-first x (batch, channels, length) runs threads along the length (8 outputs a
// thread, 16-byte loads when every row starts 16-byte aligned, else scalar) and addresses each
// (b, c) row through its batch and channel strides, so rows may lie in any order: contiguous, or
// mamba_ssm's channel-major in_proj output ((channels, batch, length) memory). Channels-last x
// (batch, length, channels) runs threads along the channels (4 channels a thread, 2 for f64) and
// each thread walks 64 time steps with its taps' window in registers. The backward recomputes the
// pre-activation for SiLU instead of reading a saved one. grad_weight and grad_bias are
// deterministic: every block writes the sums of its fixed (batch, time range) part to a
// workspace, and a second kernel adds the parts in a fixed order.
#include "core/tensor.h"

namespace scanline::cuda {

// x: (batch, channels, length), or (batch, length, channels) when channels_last; weight
// (channels, k); bias (channels) or undefined. Channels-first x is read in place when its time
// stride is 1 (any batch and channel strides), other layouts through a contiguous copy. Writes out,
// of x's shape: channels-last contiguous; channels-first with time stride 1 and any row strides.
void causal_conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, bool channels_last,
                           const Tensor& out);

// grad_out of x's shape, read like x (in place, or copied when its layout does not fit). Writes
// those of grad_x (laid out as out is in the forward), grad_weight (contiguous (channels, k)) and
// grad_bias (contiguous (channels)) that are defined.
void causal_conv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu, bool channels_last,
                            const Tensor& grad_out, const Tensor& grad_x, const Tensor& grad_weight,
                            const Tensor& grad_bias);

}  // namespace scanline::cuda
