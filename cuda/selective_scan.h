#pragma once
// CUDA selective scan (Mamba-1, Gu & Dao 2023): the device side of ops/selective_scan, with the
// definitions of ops/selective_scan.h and the CPU reference ops/selective_scan_cpu.cpp as ground
// truth. Inputs u, delta, B, C, z in f32 or bf16 (f64 also runs, for references); A, D,
// delta_bias, initial_state and every state in f32 (f64 with f64 inputs); math in f32 (f64).
//
// Forward (cuda/selective_scan_fwd.cu): one warp per (batch, channel) walks time 512 steps a
// pass, a lane owning 16 consecutive steps (cuda/selective_scan_common.cuh). Δ (softplus + bias),
// exp(Δ·A) and Δ·B·u are formed in registers, never in global memory; each state's recurrence is
// composed over a lane's steps in registers, then across the warp with shuffles, and carried
// from pass to pass; C·h over the states, D·u and the SiLU(z) gate are fused. Besides y and
// final_state it writes only the state entering every chunk, chunk_states (batch, d_inner,
// n_chunks, N): L·N / chunk values a channel.
//
// Layouts: u, delta, z, grad_y and B, C are read in place whenever their time stride is 1, with
// any batch, channel, group and state strides (the Mamba-1 mixer's channel-major rows); others
// are copied. y and du, ddelta, dz come back in u's dimension order.
//
// Backward (cuda/selective_scan_bwd.cu): recomputes states from chunk_states, never storing a
// (batch, d_inner, L, N) tensor; the gradient of the states runs the same scan backwards in time.
// Chunks are processed in parallel: a first kernel composes each chunk's backward maps, a tiny
// one carries the state gradient across chunk boundaries, then the main kernel does every chunk
// of a tile of channels. Reductions are deterministic (fixed partitions and orders, no atomics);
// see selective_scan_bwd.cu for how dB/dC of shared groups are summed over channels.
#include <array>

#include "core/tensor.h"

namespace scanline::cuda {

struct ScanForwardResult {
  Tensor y;             // (batch, d_inner, L), u's dtype and layout (see selective_scan_fwd)
  Tensor final_state;   // (batch, d_inner, N), A's dtype
  Tensor chunk_states;  // (batch, d_inner, n_chunks, N), A's dtype: the state entering each chunk
};

// The gradients in input order; undefined where not asked for or where the input is undefined.
// u, delta and z's in u's layout (as y), dB and dC contiguous.
struct ScanBackwardResult {
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state;
};

// Shapes and dtypes as checked by ops/selective_scan.cpp; inputs on one CUDA device. u, delta, z
// (batch, d_inner, L) and B, C (batch, groups, N, L) are read in place when their rows are
// contiguous in time (last stride 1), whatever their other strides: mamba_ssm's channel-major
// layout, u, delta and z as (batch, d_inner, L) views with strides (L, batch·L, 1) of an in_proj
// computed as W·xᵀ, costs no copy. Others are copied, as are non-contiguous A, D, delta_bias and
// initial_state. y takes u's dimension order (channel-major u: (d_inner, batch, L) storage seen
// as (batch, d_inner, L)). D, z, delta_bias, initial_state may be undefined.
ScanForwardResult selective_scan_fwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                     const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& delta_bias,
                                     bool delta_softplus, const Tensor& initial_state);

// chunk_states: the forward's. grad_y (batch, d_inner, L) of u's dtype (read in place when its
// rows are contiguous in time, like u) and grad_final_state (batch, d_inner, N) of A's dtype,
// any strides (undefined grad_final_state: zeros). needs[i]: whether input i's gradient is wanted
// (order u, delta, A, B, C, D, z, delta_bias, initial_state).
ScanBackwardResult selective_scan_bwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                      const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& delta_bias,
                                      bool delta_softplus, const Tensor& initial_state, const Tensor& chunk_states,
                                      const Tensor& grad_y, const Tensor& grad_final_state,
                                      const std::array<bool, 9>& needs);

// The chunk length both kernels use for L steps, N states and input dtype `dtype` (0 when N is
// beyond what the kernels take); chunk_states has ceil(L / chunk) chunks.
int64_t selective_scan_chunk_size(int64_t L, int64_t N, DType dtype);

}  // namespace scanline::cuda
