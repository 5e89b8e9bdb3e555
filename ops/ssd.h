#pragma once
// Mamba-2's state-space duality (SSD) layer (Dao & Gu 2024), one fused differentiable node. For
// every batch row b and head h (of `heads`), with head h reading B and C of group
// g = h / (heads / ngroups), and a state of (headdim, N) per head as in mamba_ssm:
//   Δ_t = softplus(dt_t + dt_bias[h])      (or dt_t + dt_bias[h] without softplus)
//   h_t[p, n] = exp(Δ_t A[h]) h_{t-1}[p, n] + Δ_t x_t[p] B_t[g, n],      h_{-1} = initial_state
//   y_t[p] = Σ_n C_t[g, n] h_t[p, n] + D[h] x_t[p]  (or D[h, p]),  then y_t *= silu(z_t) when z is given
// final_state is h_{L-1}. A is the (negative) decay rate itself: the Mamba-2 mixer passes
// -exp(A_log). The CUDA kernels compute this in chunks of `chunk_size` steps (the SSD algorithm);
// the CPU reference runs the recurrence, whose result the chunked form equals exactly in real
// arithmetic (cpu::ssd_chunked_forward is the chunked form on CPU).
#include <cstdint>

#include "core/tensor.h"

namespace scanline {

struct SsdResult {
  Tensor y;            // (batch, L, heads, headdim), x's dtype
  Tensor final_state;  // (batch, heads, headdim, N), f32 (f64 when the inputs are f64)
};

// x, z: (batch, L, heads, headdim), L >= 1;  dt: (batch, L, heads);  A, dt_bias: (heads);
// B, C: (batch, L, ngroups, N) with ngroups dividing heads;  D: (heads) or (heads, headdim);
// initial_state: (batch, heads, headdim, N);  chunk_size >= 1 (any L: the last chunk may be short).
// D, z, dt_bias and initial_state may be undefined (no skip term, no gate, no bias, zeros).
// dtypes: x, dt, B, C, z share one dtype, f32 or bf16 (f64 for references and gradcheck);
// A, D, dt_bias and initial_state are f32 (f64 with f64 inputs). Every input and final_state get
// gradients; the CPU reference computes in double.
SsdResult ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
              const Tensor& D = Tensor(), const Tensor& z = Tensor(), const Tensor& dt_bias = Tensor(),
              bool dt_softplus = false, int64_t chunk_size = 256, const Tensor& initial_state = Tensor());

}  // namespace scanline
