#pragma once
// CUDA elementwise ops: the device side of ops/elementwise. Same formulas, NaN rules and
// broadcasting as the CPU references in ops/elementwise_cpu.cpp (fp32 math for f32/bf16/f16,
// f64 math for f64, 64-bit integer math for i32/i64). Every result is a fresh contiguous tensor.
//
// Dtypes: floating for everything; i64/i32 also for add, sub, mul, maximum, minimum and compare;
// compare and where take any dtype (bool included). Integer div and pow are CPU-only (the CPU
// reference reports a division by zero, which a kernel cannot).
#include "core/op_kinds.h"
#include "core/tensor.h"

namespace scanline::cuda {

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);  // numpy broadcasting
Tensor unary(UnaryOp op, const Tensor& x);
// grad * d(op)/dx, from the input x and the forward output y (all of x's shape).
Tensor unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y);
Tensor compare(CompareOp op, const Tensor& a, const Tensor& b);  // bool result, broadcasting
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);  // cond ? a : b, broadcasting

}  // namespace scanline::cuda
