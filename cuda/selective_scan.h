#pragma once
// CUDA selective scan (Mamba-1, Gu & Dao 2023): the device side of ops/selective_scan, with the
// definitions of ops/selective_scan.h and the CPU reference ops/selective_scan_cpu.cpp as ground
// truth. Inputs u, delta, B, C, z in f32 or bf16 (f64 also runs, for references); A, D,
// delta_bias, initial_state and every state in f32 (f64 with f64 inputs); math in f32 (f64).
//
// Forward (cuda/selective_scan_fwd.cu): one block per (batch, channel) walks time in chunks of
// kThreads · kItems steps (cuda/selective_scan_common.cuh picks 128..512 by L and N). Δ
// (softplus + bias), exp(Δ·A) and Δ·B·u are formed in registers, never in global memory; each
// state's recurrence is a block-wide associative scan (sequential over a thread's items, warp
// shuffles, then across warps through shared memory), carried from chunk to chunk; C·h over the
// states, D·u and the SiLU(z) gate are fused. Besides y and final_state it writes only the state
// entering every chunk, chunk_states (batch, d_inner, n_chunks, N): L·N / chunk values a channel.
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
  Tensor y;             // (batch, d_inner, L), u's dtype
  Tensor final_state;   // (batch, d_inner, N), A's dtype
  Tensor chunk_states;  // (batch, d_inner, n_chunks, N), A's dtype: the state entering each chunk
};

// The gradients in input order; undefined where not asked for or where the input is undefined.
struct ScanBackwardResult {
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state;
};

// Shapes and dtypes as checked by ops/selective_scan.cpp; inputs on one CUDA device, any strides
// (non-contiguous ones are copied). D, z, delta_bias, initial_state may be undefined.
ScanForwardResult selective_scan_fwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                     const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& delta_bias,
                                     bool delta_softplus, const Tensor& initial_state);

// chunk_states: the forward's. grad_y (batch, d_inner, L) of u's dtype and grad_final_state
// (batch, d_inner, N) of A's dtype, any strides (undefined grad_final_state: zeros). needs[i]:
// whether input i's gradient is wanted (order u, delta, A, B, C, D, z, delta_bias, initial_state).
ScanBackwardResult selective_scan_bwd(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                      const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& delta_bias,
                                      bool delta_softplus, const Tensor& initial_state, const Tensor& chunk_states,
                                      const Tensor& grad_y, const Tensor& grad_final_state,
                                      const std::array<bool, 9>& needs);

// The chunk length both kernels use for L steps, N states and input dtype `dtype` (0 when N is
// beyond what the kernels take); chunk_states has ceil(L / chunk) chunks.
int64_t selective_scan_chunk_size(int64_t L, int64_t N, DType dtype);

}  // namespace scanline::cuda
