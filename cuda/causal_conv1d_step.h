#pragma once
// CUDA kernel of causal_conv1d_step (ops/causal_conv1d_step.h): one token of the depthwise causal
// conv1d for generation, with the CPU reference ops/causal_conv1d_step_cpu.cpp as ground truth
// (same tap order: bias, then the window oldest first; math in f32, f64 for f64). One thread a
// (batch, channel) row: it reads the row's k - 1 state values, writes the output and the shifted
// state; no thread touches another's row.
#include "core/tensor.h"

namespace scanline::cuda {

// Shapes and dtypes as checked by ops/causal_conv1d_step.cpp; every tensor on one CUDA device;
// conv_state (batch, channels, k - 1) contiguous and updated in place; x (batch, channels) any
// strides, read in place; weight (channels, k) and bias (channels, or undefined) any strides
// (copied when not contiguous). Returns out (batch, channels) in x's dtype.
Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias,
                          bool silu);

}  // namespace scanline::cuda
