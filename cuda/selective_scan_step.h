#pragma once
// CUDA kernel of selective_scan_step (ops/selective_scan_step.h): one token of Mamba-1's
// recurrence for generation, with the CPU reference ops/selective_scan_step_cpu.cpp as ground
// truth. Math in f32 (f64 for f64 inputs).
//
// The op is bound by the state's memory traffic (read and written once, batch·d_inner·N values),
// so a segment of `lanes` consecutive threads (a power of two up to 32, chosen from N) owns one
// (batch, channel) row: each lane updates a strided share of the row's states with 16-byte
// loads and stores where N and the pointers allow, and the segment sums C·h with warp shuffles
// in a fixed order (deterministic, no atomics).
#include "core/tensor.h"

namespace scanline::cuda {

// Shapes and dtypes as checked by ops/selective_scan_step.cpp; every tensor on one CUDA device;
// state contiguous and updated in place; u, delta, z, B and C read in place through their
// strides (in a mixer they are column slices of projections); A, D and delta_bias copied when not
// contiguous. D, z, delta_bias may be undefined. Returns y (batch, d_inner) in u's dtype.
Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A,
                           const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                           const Tensor& delta_bias, bool delta_softplus);

}  // namespace scanline::cuda
