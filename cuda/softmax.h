#pragma once
// Softmax and log-softmax of CUDA tensors along one dim: one warp (short rows) or one block per
// row, fp32 math (f64 for f64), the row kept in registers between its passes when it fits.
#include <cstdint>

#include "core/tensor.h"

namespace scanline::cuda {

// dim in range; x floating with any strides. Returns a contiguous tensor of x's shape.
Tensor softmax(const Tensor& x, int64_t dim, bool log);
// From the output gradient and the saved output y: softmax: y * (g - sum(g * y));
// log_softmax: g - exp(y) * sum(g). Returns a contiguous tensor of y's shape.
Tensor softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim, bool log);

}  // namespace scanline::cuda
