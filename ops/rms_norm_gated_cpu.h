#pragma once
// CPU reference kernels of rms_norm_gated (ops/rms_norm.h): Mamba-2's gated RMSNorm over groups
// of group_size consecutive channels of the last dim. All math in double from the stored values,
// each output rounded once to its dtype. Rows (all dims but the last) are split across threads,
// every (row, group) reduced by one thread; dweight is summed over fixed chunks of rows and the
// chunk partials added in chunk order, so every result is independent of the thread count.
//
//   s = silu(z) = z * sigmoid(z)
//   norm_before_gate = false:  v = x * s,  y = v * rstd(v) * weight
//   norm_before_gate = true:   v = x,      y = v * rstd(v) * weight * s
//   rstd(v) = 1 / sqrt(mean over the group of v^2 + eps)
#include <tuple>
#include <utility>

#include "core/tensor.h"

namespace scanline::cpu {

// x, z (..., D) of one dtype, any strides; weight (D) of x's dtype or undefined; group_size
// divides D. Returns y (contiguous, x's shape and dtype) and rstd (rows, D / group_size),
// contiguous, f64 for f64 x, else f32.
std::pair<Tensor, Tensor> rms_norm_gated_forward(const Tensor& x, const Tensor& z, const Tensor& weight, double eps,
                                                 bool norm_before_gate, int64_t group_size);

// From grad (x's shape and dtype) and the forward's rstd: returns dx (when need_dx), dz (when
// need_dz) and dweight (when need_dweight and weight is defined).
std::tuple<Tensor, Tensor, Tensor> rms_norm_gated_backward(const Tensor& grad, const Tensor& x, const Tensor& z,
                                                           const Tensor& weight, const Tensor& rstd,
                                                           bool norm_before_gate, int64_t group_size, bool need_dx,
                                                           bool need_dz, bool need_dweight);

}  // namespace scanline::cpu
