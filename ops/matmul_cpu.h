#pragma once
// CPU matrix products. One GEMM entry point chooses the path: OpenBLAS (cblas_sgemm/dgemm) for
// f32/f64 when the build has it, else a cache-blocked multi-threaded kernel that also serves
// bf16/f16 (tiles converted to float, float accumulation; f64 accumulates in double). Operands
// may have any strides; outputs are fresh contiguous tensors.
#include "core/tensor.h"

namespace scanline::cpu {

// a (batch..., m, k) @ b (batch..., k, n) -> (batch..., m, n). The batch shapes of a and b must
// already be equal (broadcast operands come in as stride-0 views).
Tensor matmul(const Tensor& a, const Tensor& b);

// x (rows, in) @ weight(out, in)^T + bias(out) -> (rows, out); bias may be undefined.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias);

// Which GEMM path f32/f64 take in this build: "openblas" or "blocked".
const char* gemm_backend();

}  // namespace scanline::cpu
