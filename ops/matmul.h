#pragma once
// Matrix products with numpy/PyTorch semantics: matmul broadcasts leading (batch) dimensions,
// bmm multiplies two 3-D stacks of equal batch size, linear is x @ weight^T + bias with weight
// stored (out_features, in_features). Operands share one floating dtype and one device.
#include "core/tensor.h"

namespace scanline {

// a (..., m, k) @ b (..., k, n) -> (broadcast(...), m, n). A 1-D a is a row vector (1, k) and a
// 1-D b a column vector (k, 1); the added dimension is removed from the result, as in numpy.
Tensor matmul(const Tensor& a, const Tensor& b);

// a (batch, m, k) @ b (batch, k, n) -> (batch, m, n); no broadcasting.
Tensor bmm(const Tensor& a, const Tensor& b);

// x (..., in) @ weight(out, in)^T + bias(out) -> (..., out); bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

}  // namespace scanline
