#pragma once
// One step of Mamba-2's SSD layer (ops/ssd.h) for token-by-token generation: the recurrence of
// ssd applied to a single time step, with the state carried by the caller. For every batch row
// b and head h (of `heads`), with head h reading B and C of group g = h / (heads / ngroups):
//   Δ = softplus(dt + dt_bias[h])      (or dt + dt_bias[h] without softplus)
//   h[p, n] = exp(Δ A[h]) h[p, n] + Δ x[p] B[g, n],   written back into state
//   y[p] = Σ_n C[g, n] h[p, n] + D[h] x[p]  (or D[h, p]),  then y[p] *= silu(z[p]) when z is given
// Stepping L tokens from initial_state gives ssd's y, one time step a call, and leaves its
// final_state in state (the chunk size of the full op does not change its result).
#include "core/tensor.h"

namespace scanline {

// state: (batch, heads, headdim, N), contiguous, updated in place; x, z: (batch, heads, headdim);
// dt: (batch, heads); A, dt_bias: (heads); B, C: (batch, ngroups, N) with ngroups dividing heads;
// D: (heads) or (heads, headdim). D, z and dt_bias may be undefined. dtypes as ssd: x, dt, B, C, z
// share one dtype (f32, bf16, or f64 for references); A, D, dt_bias and state are f32 (f64 with
// f64 inputs). Returns y (batch, heads, headdim) in x's dtype.
//
// Inference only: there is no gradient (the state is overwritten). With grad mode on, an input
// that requires grad is an error; run it under NoGradGuard.
Tensor ssd_step(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                const Tensor& C, const Tensor& D = Tensor(), const Tensor& z = Tensor(),
                const Tensor& dt_bias = Tensor(), bool dt_softplus = false);

}  // namespace scanline
