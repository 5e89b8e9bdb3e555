#pragma once
// CPU reference kernels of the elementwise ops: float64 math for f64, float for narrower types.
#include "core/tensor.h"
#include "ops/elementwise.h"

namespace scanline::cpu {

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);          // broadcasting
Tensor unary(UnaryOp op, const Tensor& x);
// d(op)/dx * grad, from the input x and (where cheaper) the forward output y.
Tensor unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y);
Tensor compare(CompareOp op, const Tensor& a, const Tensor& b);
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);

}  // namespace scanline::cpu
