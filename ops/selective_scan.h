#pragma once
// Mamba-1's selective scan (Gu & Dao 2023, Algorithm 2), one fused differentiable node. For every
// batch row b, channel d (of d_inner) and state n (of N = d_state), with channel d reading B and C
// of group g = d / (d_inner / groups):
//   Δ_t = softplus(delta_t + delta_bias[d])      (or delta_t + delta_bias[d] without softplus)
//   h_t[n] = exp(Δ_t A[d, n]) h_{t-1}[n] + Δ_t B[g, n, t] u_t,        h_{-1} = initial_state
//   y_t = Σ_n C[g, n, t] h_t[n] + D[d] u_t,  then y_t *= silu(z_t) when z is given
// final_state is h_{L-1}. The backward recomputes the states instead of saving them.
#include "core/tensor.h"

namespace scanline {

struct SelectiveScanResult {
  Tensor y;            // (batch, d_inner, L), u's dtype
  Tensor final_state;  // (batch, d_inner, N), f32 (f64 when the inputs are f64)
};

// u, delta, z: (batch, d_inner, L), L >= 1;  A: (d_inner, N);  B, C: (batch, groups, N, L) with
// groups dividing d_inner;  D, delta_bias: (d_inner);  initial_state: (batch, d_inner, N).
// D, z, delta_bias and initial_state may be undefined (no skip term, no gate, no bias, zeros).
// dtypes: u, delta, B, C, z share one dtype, f32 or bf16 (f64 for references and gradcheck);
// A, D, delta_bias and initial_state are f32 (f64 with f64 inputs). Every input and final_state
// get gradients; the CPU reference computes in double.
SelectiveScanResult selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                   const Tensor& C, const Tensor& D = Tensor(), const Tensor& z = Tensor(),
                                   const Tensor& delta_bias = Tensor(), bool delta_softplus = false,
                                   const Tensor& initial_state = Tensor());

}  // namespace scanline
