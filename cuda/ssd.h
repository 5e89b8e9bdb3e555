#pragma once
// CUDA SSD (Mamba-2's state-space duality layer, Dao & Gu 2024): the device side of ops/ssd,
// with the definitions of ops/ssd.h and the CPU references ops/ssd_cpu.cpp (recurrence) and
// ops/ssd_chunked_cpu.cpp (the chunked algorithm these kernels implement) as ground truth.
// Inputs x, dt, B, C, z in f32 or bf16; A, D, dt_bias, initial_state and every state f32; matrix
// products on bf16 tensor cores with fp32 accumulation (cuda/mma_bf16.cuh; f32 inputs are split
// into two bf16 terms so that their path keeps ~16 bits), everything else in fp32.
//
// Forward (cuda/ssd_fwd.cu): per chunk of `chunk_size` steps, the cumulative Σ Δ·A (softplus and
// bias fused), each chunk's own end state (X^T·diag(w)·B), the state passed across chunks, and the
// output (the masked C·B^T quadratic part times X, the incoming state's C·H, D·x, the gate). The
// chunk × chunk matrices live only in registers and shared memory.
// Backward (cuda/ssd_bwd.cu): the matching chunked backward from the states entering each chunk
// that the forward saved; deterministic (fixed partitions and orders, no floating-point atomics).
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace scanline::cuda {

struct SsdForwardResult {
  Tensor y;             // (batch, L, heads, headdim), x's dtype
  Tensor final_state;   // (batch, heads, headdim, N), f32
  Tensor chunk_states;  // (batch, n_chunks, heads, headdim, N), f32: the state entering each chunk
  Tensor y_ungated;     // y before the SiLU(z) gate, x's dtype; defined only when z is
};

// The gradients in input order; undefined where not asked for or where the input is undefined.
struct SsdBackwardResult {
  Tensor x, dt, A, B, C, D, z, dt_bias, initial_state;
};

// Whether the CUDA kernels take this shape; when not, `why` says what they take (ops/ssd.cpp
// turns it into the error). n_chunks = ceil(L / chunk_size).
bool ssd_supports(int64_t headdim, int64_t N, int64_t chunk_size, const char** why);

// Shapes and dtypes as checked by ops/ssd.cpp (f32 or bf16 inputs); inputs on one CUDA device.
// The innermost dimension of x, z, B, C must be contiguous (they may be column slices of a
// projection, as in the Mamba-2 mixer); other layouts are copied. D, z, dt_bias, initial_state
// may be undefined.
SsdForwardResult ssd_fwd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus,
                         int64_t chunk_size, const Tensor& initial_state);

// chunk_states and y_ungated: the forward's. grad_y (batch, L, heads, headdim) of x's dtype and
// grad_final_state (batch, heads, headdim, N) f32, any strides (undefined grad_final_state:
// zeros). needs[i]: whether input i's gradient is wanted (order x, dt, A, B, C, D, z, dt_bias,
// initial_state).
SsdBackwardResult ssd_bwd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                          const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus,
                          int64_t chunk_size, const Tensor& initial_state, const Tensor& chunk_states,
                          const Tensor& y_ungated, const Tensor& grad_y, const Tensor& grad_final_state,
                          const std::array<bool, 9>& needs);

}  // namespace scanline::cuda
