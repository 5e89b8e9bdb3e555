#pragma once
// CPU reference of selective_scan_step (ops/selective_scan_step.h), the ground truth of its CUDA
// kernel. Math in double for every dtype, like selective_scan's reference: the new state is
// rounded once to the state's dtype and y once to u's dtype. Inputs may have any strides (they
// are read from contiguous copies where needed); the caller has checked shapes and dtypes and
// that state is contiguous. One (batch, channel) row per task, so no result depends on the
// thread count.
#include "core/tensor.h"

namespace scanline::cpu {

// Updates state in place and returns y (batch, d_inner) in u's dtype. D, z, delta_bias may be
// undefined.
Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A,
                           const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                           const Tensor& delta_bias, bool delta_softplus);

}  // namespace scanline::cpu
