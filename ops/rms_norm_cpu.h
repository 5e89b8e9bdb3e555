#pragma once
// CPU reference kernels of rms_norm. Rows (all dims but the last) are split across threads, each
// row reduced in double by one thread; dweight is summed over fixed chunks of rows and the chunk
// partials added in chunk order, so every result is independent of the thread count.
#include <tuple>
#include <utility>

#include "core/tensor.h"

namespace scanline::cpu {

// Returns y (contiguous, x's shape and dtype) and rstd (rows; f64 for f64 x, else f32).
// weight may be undefined; x may have any strides.
std::pair<Tensor, Tensor> rms_norm_forward(const Tensor& x, const Tensor& weight, double eps);

// Returns dx (when need_dx) and dweight (when need_dweight and weight is defined).
std::pair<Tensor, Tensor> rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                            const Tensor& rstd, bool need_dx, bool need_dweight);

// Fused residual add + RMSNorm: h = x + residual (residual undefined: h = x), computed in the
// math type (f32; f64 when x or the residual is f64) and rounded to residual_dtype;
// y = rms_norm(h) * weight in x's dtype, normalizing the rounded h. Returns (y, h, rstd).
std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_forward(const Tensor& x, const Tensor& residual,
                                                             const Tensor& weight, double eps,
                                                             DType residual_dtype);

// From grad_y (x's dtype) and grad_new_residual (h's dtype; undefined reads as zeros):
// dh = (rms_norm backward of grad_y at h) + grad_new_residual. Returns dx = dh in x_dtype (when
// need_dx), dresidual = dh in h's dtype (when need_dresidual) and dweight (when need_dweight and
// weight is defined).
std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_backward(const Tensor& grad_y, const Tensor& grad_new_residual,
                                                              const Tensor& new_residual, const Tensor& weight,
                                                              const Tensor& rstd, DType x_dtype, bool need_dx,
                                                              bool need_dresidual, bool need_dweight);

}  // namespace scanline::cpu
