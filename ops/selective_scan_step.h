#pragma once
// One step of Mamba-1's selective scan for token-by-token generation: the recurrence of
// ops/selective_scan.h applied to a single time step, with the state carried by the caller.
// For every batch row b, channel d (of d_inner) and state n (of N), with channel d reading B and
// C of group g = d / (d_inner / groups):
//   Δ = softplus(delta + delta_bias[d])      (or delta + delta_bias[d] without softplus)
//   h[n] = exp(Δ A[d, n]) h[n] + Δ B[g, n] u,   written back into state
//   y = Σ_n C[g, n] h[n] + D[d] u,  then y *= silu(z) when z is given
// Stepping L tokens from initial_state gives selective_scan's y, one column a step, and leaves
// its final_state in state.
#include "core/tensor.h"

namespace scanline {

// state: (batch, d_inner, N), contiguous, updated in place; u, delta, z: (batch, d_inner);
// A: (d_inner, N); B, C: (batch, groups, N) with groups dividing d_inner; D, delta_bias: (d_inner).
// D, z and delta_bias may be undefined. dtypes as selective_scan: u, delta, B, C, z share one dtype
// (f32, bf16, or f64 for references); A, D, delta_bias and state are f32 (f64 with f64 inputs).
// Returns y (batch, d_inner) in u's dtype.
//
// Inference only: there is no gradient (the state is overwritten). With grad mode on, an input
// that requires grad is an error; run it under NoGradGuard.
Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A,
                           const Tensor& B, const Tensor& C, const Tensor& D = Tensor(), const Tensor& z = Tensor(),
                           const Tensor& delta_bias = Tensor(), bool delta_softplus = false);

}  // namespace scanline
