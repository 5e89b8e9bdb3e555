#pragma once
// One step of the depthwise causal conv1d (ops/causal_conv1d.h) for token-by-token generation.
// conv_state holds each channel's previous k - 1 inputs, oldest first; a step computes
//   out[b, c] = bias[c] + Σ_{j < k-1} weight[c, j] state[b, c, j] + weight[c, k-1] x[b, c]
// (then SiLU when asked), and shifts the state left by one, appending x. Starting from a zero
// state (the full op's zero padding), stepping through x[:, :, t] for t = 0 .. L-1 gives
// causal_conv1d's out[:, :, t], and leaves the last k - 1 inputs in the state.
#include "core/tensor.h"

namespace scanline {

// conv_state (batch, channels, k - 1), contiguous, updated in place (k = 1: an empty state);
// x (batch, channels); weight (channels, k) with k in [1, kMaxCausalConvWidth]; bias (channels) or
// undefined. One floating dtype for all. Returns (batch, channels) in x's dtype.
//
// Inference only: there is no gradient (the state is overwritten). With grad mode on, an input
// that requires grad is an error; run it under NoGradGuard.
Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight,
                          const Tensor& bias = Tensor(), bool silu_activation = false);

}  // namespace scanline
