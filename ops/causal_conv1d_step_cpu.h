#pragma once
// CPU reference of causal_conv1d_step (ops/causal_conv1d_step.h), the ground truth of its CUDA
// kernel. Math in acc_t<T> (double for f64, float otherwise) with causal_conv1d's tap order (bias
// first, then the taps oldest first), so a step reproduces the full op's CPU values. One
// (batch, channel) row per task: no result depends on the thread count.
#include "core/tensor.h"

namespace scanline::cpu {

// The caller has checked shapes and dtypes and that conv_state is contiguous; x, weight and bias
// may have any strides. Updates conv_state in place and returns out (batch, channels).
Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias,
                          bool silu);

}  // namespace scanline::cpu
