#pragma once
// RMSNorm over the last dimension, one fused node: y = x * rsqrt(mean(x^2) + eps) * weight. The
// forward saves the per-row reciprocal RMS (rstd) so the backward needs no second reduction over x.
#include "core/tensor.h"

namespace scanline {

// x (..., D) floating; weight (D) of x's dtype, or an undefined Tensor for no weight.
Tensor rms_norm(const Tensor& x, const Tensor& weight = Tensor(), double eps = 1e-5);

// Mamba-2's gated RMSNorm (RMSNormGated with one group), z of x's shape:
//   norm_before_gate = false (Mamba-2's default): rms_norm(x * silu(z)) * weight
//   norm_before_gate = true:                      rms_norm(x) * weight * silu(z)
Tensor rms_norm_gated(const Tensor& x, const Tensor& z, const Tensor& weight = Tensor(), double eps = 1e-5,
                      bool norm_before_gate = false);

}  // namespace scanline
