#pragma once
// CUDA gated RMSNorm (Mamba-2's RMSNormGated, grouped): the device side of ops/rms_norm_gated,
// with the formulas of the CPU reference (ops/rms_norm_gated_cpu.h) in fp32 math (f64 for f64).
//
// One (row, group) segment per team of threads (a few lanes, a warp, or a block of up to 512
// threads), the segment's x and z held in registers, 16-byte vector loads and stores where every
// pointer and row stride allows (else a scalar variant of the same kernels); a looped two-pass
// kernel takes groups too wide for registers. x, z and grad may be row-strided views (a column
// slice of a wider matrix, as in Mamba2Mixer) and are read in place; other layouts are copied.
// The forward saves rstd per (row, group): f32 (f64 for f64 input). dweight is reduced
// deterministically: block (g, slot) sums its rows of group g in a fixed order into row `slot`
// of a workspace, and a second kernel adds the workspace rows in a fixed order.
#include <tuple>
#include <utility>

#include "core/tensor.h"

namespace scanline::cuda {

// x, z (..., D), weight (D) or undefined, group_size dividing D. Returns y (contiguous, x's shape
// and dtype) and rstd (rows, D / group_size).
std::pair<Tensor, Tensor> rms_norm_gated_forward(const Tensor& x, const Tensor& z, const Tensor& weight, double eps,
                                                 bool norm_before_gate, int64_t group_size);

// Returns dx (when need_dx), dz (when need_dz) and dweight (when need_dweight and weight is
// defined), each contiguous.
std::tuple<Tensor, Tensor, Tensor> rms_norm_gated_backward(const Tensor& grad, const Tensor& x, const Tensor& z,
                                                           const Tensor& weight, const Tensor& rstd,
                                                           bool norm_before_gate, int64_t group_size, bool need_dx,
                                                           bool need_dz, bool need_dweight);

}  // namespace scanline::cuda
