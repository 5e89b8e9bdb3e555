#pragma once
// CPU reference kernels of rms_norm. Rows (all dims but the last) are split across threads, each
// row reduced in double by one thread; dweight is summed over fixed chunks of rows and the chunk
// partials added in chunk order, so every result is independent of the thread count.
#include <utility>

#include "core/tensor.h"

namespace scanline::cpu {

// Returns y (contiguous, x's shape and dtype) and rstd (rows; f64 for f64 x, else f32).
// weight may be undefined; x may have any strides.
std::pair<Tensor, Tensor> rms_norm_forward(const Tensor& x, const Tensor& weight, double eps);

// Returns dx (when need_dx) and dweight (when need_dweight and weight is defined).
std::pair<Tensor, Tensor> rms_norm_backward(const Tensor& grad, const Tensor& x, const Tensor& weight,
                                            const Tensor& rstd, bool need_dx, bool need_dweight);

}  // namespace scanline::cpu
