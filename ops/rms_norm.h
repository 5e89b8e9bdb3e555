#pragma once
// RMSNorm over the last dimension, one fused node: y = x * rsqrt(mean(x^2) + eps) * weight. The
// forward saves the per-row reciprocal RMS (rstd) so the backward needs no second reduction over x.
#include <cstdint>
#include <utility>

#include "core/tensor.h"

namespace scanline {

// x (..., D) floating; weight (D) of x's dtype, or an undefined Tensor for no weight.
Tensor rms_norm(const Tensor& x, const Tensor& weight = Tensor(), double eps = 1e-5);

// The fused add + norm of pre-norm residual blocks (Mamba's Block), one node:
//   new_residual = x + residual        (residual undefined: new_residual = x, a copy)
//   y            = rms_norm(new_residual) * weight
// Returns (y, new_residual). y has x's dtype. new_residual keeps the residual stream's dtype:
// residual's when given, else f32 with residual_in_fp32, else x's; a given residual has x's
// shape and x's dtype or f32 (f32 with residual_in_fp32). The sum is formed in f32 (f64 for f64)
// and rounded to new_residual's dtype, and y normalizes that rounded value. Gradients from both
// outputs flow to x, residual and weight.
std::pair<Tensor, Tensor> rms_norm_residual(const Tensor& x, const Tensor& residual, const Tensor& weight = Tensor(),
                                            double eps = 1e-5, bool residual_in_fp32 = false);

// Mamba-2's gated RMSNorm (mamba_ssm's RMSNormGated), one fused node (ops/rms_norm_gated.cpp).
// x, z (..., D) of one shape and dtype; weight (D) or undefined; the RMS is taken over each group
// of group_size consecutive channels (0 or D: the whole row; else it must divide D), with
// s = silu(z) and rstd(v) = 1 / sqrt(mean over the group of v^2 + eps):
//   norm_before_gate = false (Mamba-2's default): g = x * s; y = g * rstd(g) * weight
//   norm_before_gate = true:                      y = x * rstd(x) * weight * s
// The forward saves x, z, weight and rstd per (row, group), never the normalized values.
Tensor rms_norm_gated(const Tensor& x, const Tensor& z, const Tensor& weight = Tensor(), double eps = 1e-5,
                      bool norm_before_gate = false, int64_t group_size = 0);

}  // namespace scanline
