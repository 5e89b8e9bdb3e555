#pragma once
// CUDA kernel of ssd_step (ops/ssd_step.h): one token of Mamba-2's SSD recurrence for
// generation, with the CPU reference ops/ssd_step_cpu.cpp as ground truth. Math in f32 (f64 for
// f64 inputs).
//
// The op is bound by the state's memory traffic (batch·heads·headdim·N values read and written
// once), so a segment of `lanes` consecutive threads (a power of two up to 32, chosen from N)
// owns one (batch, head, p) row of N states: each lane updates a strided share of the row with
// 16-byte loads and stores where N and the pointers allow, two slices in flight per pass, and the
// segment sums C·h with warp shuffles in a fixed order (deterministic, no atomics). The decay
// exp(Δ·A) is one scalar per head, computed once per row.
#include "core/tensor.h"

namespace scanline::cuda {

// Shapes and dtypes as checked by ops/ssd_step.cpp; every tensor on one CUDA device; state
// contiguous and updated in place; x, dt, z, B and C read in place through their strides (in a
// mixer they are column slices of projections); A, D and dt_bias copied when not contiguous.
// D, z, dt_bias may be undefined. Returns y (batch, heads, headdim) in x's dtype.
Tensor ssd_step(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus);

}  // namespace scanline::cuda
