#pragma once
// CPU reference of ssd_step (ops/ssd_step.h), the ground truth of its CUDA kernel. Math in double
// for every dtype with the same operations in the same order as ssd's recurrence (ops/ssd_cpu.h),
// so that in f64 a step reproduces the full op exactly: the new state is rounded once to the
// state's dtype and y once to x's dtype. Inputs may have any strides (they are read from
// contiguous copies where needed); the caller has checked shapes and dtypes and that state is
// contiguous. One (batch, head) per task, so no result depends on the thread count.
#include "core/tensor.h"

namespace scanline::cpu {

// Updates state in place and returns y (batch, heads, headdim) in x's dtype. D, z, dt_bias may
// be undefined.
Tensor ssd_step(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus);

}  // namespace scanline::cpu
