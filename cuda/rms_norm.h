#pragma once
// CUDA RMSNorm over the last dimension: the device side of ops/rms_norm, with the same formulas
// as the CPU references in ops/rms_norm_cpu.cpp (fp32 math for f32/bf16/f16, f64 for f64).
//
// One fused pass a row: the forward holds a row in registers (a warp per row up to a few
// thousand elements, a block per row above), the backward stages rows in shared memory with
// cp.async several iterations ahead (cuda/rms_norm_bwd.cu); a looped two-pass kernel takes
// unaligned or very wide rows. The forward saves rstd = 1 / sqrt(mean(x^2) + eps) per row (f32;
// f64 for f64 input). dweight is reduced deterministically: every block sums g * xhat over a fixed
// range of rows (a function of the shape only) into its own row of a workspace, and a second
// kernel adds the workspace rows in a fixed order.
#include <tuple>
#include <utility>

#include "core/tensor.h"

namespace scanline::cuda {

// x (..., D) any strides; weight (D) of x's dtype or undefined. Returns y (contiguous, x's shape
// and dtype) and rstd (rows).
std::pair<Tensor, Tensor> rms_norm_forward(const Tensor& x, const Tensor& weight, double eps);

// Returns dx (when need_dx) and dweight (when need_dweight and weight is defined).
std::pair<Tensor, Tensor> rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                            const Tensor& rstd, bool need_dx, bool need_dweight);

// Fused residual add + RMSNorm: new_residual = x + residual (residual undefined: x), stored in
// residual_dtype (x's dtype or f32; a defined residual has that dtype), and
// y = rms_norm(new_residual) * weight in x's dtype. Returns (y, new_residual, rstd).
std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_forward(const Tensor& x, const Tensor& residual,
                                                             const Tensor& weight, double eps,
                                                             DType residual_dtype);

// From grad_y (x's dtype) and grad_new_residual (new_residual's dtype; undefined reads as zeros):
// dh = rms_norm backward of grad_y at new_residual, plus grad_new_residual. Returns (dx = dh in
// x_dtype when need_dx, dresidual = dh in new_residual's dtype when need_dresidual, dweight when
// need_dweight).
std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_backward(const Tensor& grad_y, const Tensor& grad_new_residual,
                                                              const Tensor& new_residual, const Tensor& weight,
                                                              const Tensor& rstd, DType x_dtype, bool need_dx,
                                                              bool need_dresidual, bool need_dweight);

}  // namespace scanline::cuda
