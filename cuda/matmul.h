#pragma once
// CUDA matrix products through cuBLASLt: the device side of ops/matmul (matmul, bmm, linear and
// their backward). Row-major operands are handed to cuBLASLt's column-major GEMM as transposes:
// an operand whose last or second-to-last stride is 1 is read in place (a transpose flag, no
// copy); any other layout is copied to a contiguous tensor first. Batches go in one strided
// batched call; a broadcast operand keeps batch stride 0 when its batch dims collapse to one
// stride, else it is expanded into a copy.
//
// Precision: bf16/f16 operands with fp32 accumulation and a bf16/f16 result; f32 in exact fp32
// (CUBLAS_COMPUTE_32F) unless allow_tf32 (CUBLAS_COMPUTE_32F_FAST_TF32: TF32 tensor cores,
// ~1e-3 relative error); f64 in f64. Split-K partial sums are kept in the compute type (no
// reductions in the output type), so results are fp32-accumulated and run-to-run deterministic.
#include "core/tensor.h"

namespace scanline::cuda {

// a (batch..., m, k) @ b (batch..., k, n) [+ bias (n) added to every row] -> a fresh contiguous
// (batch..., m, n). a and b have equal batch shapes (broadcast operands come in as stride-0
// views), one floating dtype, one CUDA device; bias, when defined, has their dtype and device.
Tensor gemm(const Tensor& a, const Tensor& b, const Tensor& bias = Tensor(), bool allow_tf32 = false);

// x (rows, in) @ weight(out, in)^T + bias(out) -> (rows, out); bias may be undefined. The weight
// is read transposed in place (cuBLASLt's transpose flag); the bias is fused as an epilogue.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, bool allow_tf32 = false);

// Number of cached GEMM plans (descriptors + chosen algorithm) on all devices; for tests.
size_t gemm_plan_count();

}  // namespace scanline::cuda
