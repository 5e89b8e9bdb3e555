#pragma once
// The selective scan without fusion, the baseline of `scanline bench scan`: the same math as
// cuda/selective_scan_{fwd,bwd}.cu (definitions in ops/selective_scan.h) as separate simple
// kernels that materialize their intermediates in global memory, all f32:
//   forward   (a) discretize: Δ (batch, d_inner, L), exp(Δ·A) and Δ·B·u (batch, d_inner, L, N)
//             (b) scan: the states h (batch, d_inner, L, N) from (a)
//             (c) output: y = (Σ_n C·h + D·u) · SiLU(z)
//   backward  gate gradient; reverse scan writing the state gradient (batch, d_inner, L, N) and dA;
//             per-step gradients du, ddelta (sums over n); dB, dC (sums over channels); dD and
//             d delta_bias (sums over batch and time); in fixed orders, no atomics.
// Accesses are coalesced (tiles through shared memory where a kernel reads across layouts) and
// the scans are block-parallel over time, so this is what the work costs when every intermediate
// goes through memory, not a strawman. d_inner is processed in slices of channels so that the
// (batch, slice, L, N) workspaces fit a memory budget; a slice's backward runs right after its
// forward, and dB/dC are summed over the slices in slice order.
#include <cstdint>

#include "core/tensor.h"

namespace scanline::bench {

// Shapes and dtypes as ops/selective_scan.h: u, delta, z (batch, d_inner, L), B, C
// (batch, groups, N, L) in f32 or bf16; A (d_inner, N), D, delta_bias (d_inner), initial_state
// (batch, d_inner, N) in f32; D, z, delta_bias, initial_state may be undefined. One CUDA device.
struct UnfusedScanInputs {
  Tensor u, delta, A, B, C, D, z, delta_bias;
  bool softplus = false;
  Tensor initial_state;
};

// y and final_state always; the gradients (input dtypes; undefined where the input is) only when
// a grad_y was given.
struct UnfusedScanResult {
  Tensor y, final_state;
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state;  // gradients
};

// f32 workspace bytes of one slice of `channels` channels (the big tensors alive at once).
double unfused_workspace_bytes(int64_t batch, int64_t channels, int64_t L, int64_t N);

// Channels a slice so that the workspace stays within budget_bytes, in slices of equal size.
// When d_inner must be sliced at all, a slice also has no more rows (batch · channels) than the
// current device holds scan blocks at once, so every row of a slice is scanned in one wave.
int64_t unfused_slice_channels(int64_t batch, int64_t d_inner, int64_t L, int64_t N, double budget_bytes);

// The forward alone when grad_y is undefined, else forward and backward (grad_final_state may be
// undefined: zeros). slice_channels >= 1.
UnfusedScanResult unfused_selective_scan(const UnfusedScanInputs& in, const Tensor& grad_y,
                                         const Tensor& grad_final_state, int64_t slice_channels);

}  // namespace scanline::bench
