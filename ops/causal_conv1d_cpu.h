#pragma once
// CPU reference kernels of causal_conv1d. Every activation-shaped tensor here is a logical
// (batch, channels, length) view with arbitrary strides, so the channels-first and channels-last
// layouts share one kernel (the caller permutes strides). Results are written into the given
// output tensors, whose layouts the caller picks (ops/causal_conv1d.cpp: x's row order, as the
// CUDA launchers get); an undefined output is skipped.
#include "core/tensor.h"

namespace scanline::cpu {

// out = [silu](causal_conv(x, weight) + bias).
void causal_conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                           const Tensor& out);

// From grad_out (d loss / d out) computes grad_x, grad_weight (channels, k) and grad_bias
// (channels). With silu the pre-activation is recomputed from x and weight (k multiply-adds per
// element) rather than saved, which keeps a (batch, channels, length) tensor out of memory.
// grad_weight and grad_bias are summed over batch and length in a fixed order per channel (double
// accumulators), so they do not depend on the thread count.
void causal_conv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                            const Tensor& grad_out, const Tensor& grad_x, const Tensor& grad_weight,
                            const Tensor& grad_bias);

}  // namespace scanline::cpu
