#pragma once
// `scanline bench ssd`: the Mamba-2 SSD kernels (cuda/ssd.h) on issue 6's shapes, bf16, chunk 256,
// D, dt bias and softplus on, no gate: forward and forward+backward times, the FLOPs of the
// chunked algorithm and the minimal bytes, read against the bf16 matrix rate (bench/matrix_rate.h)
// and the device copy measured in the same run, and against the official mamba_ssm Triton
// kernels' (mamba_chunk_scan_combined) published H100 times. The PyTorch peer of the same
// algorithm, bench/peers/ssd_torch.py, runs in the same gpu-check and reads this bench's table.
#include <cstdint>

namespace scanline::bench {

// Returns 0 when every case beats the Triton times (forward and forward+backward), 1 otherwise.
// quick: the first case only.
int run_ssd_bench(bool quick);

struct SsdShape {
  int64_t batch, L, heads, headdim, N, ngroups;
};

// Work of one pass, per direction (forward alone, or the backward alone).
//
// FLOPs: the matrix products of the chunked algorithm (Dao & Gu 2024, as in mamba_ssm's Triton
// kernels), per (batch row b, chunk c, head h), with len the chunk's length (chunk_size; the last
// chunk may be shorter), P = headdim, and T = len·(len+1)/2 the causal pairs j <= i of the chunk:
//   forward  = 2·len·P·N        the chunk's own end state X^T·diag(exp(a_last − a)·Δ)·B
//            + 2·T·N            C·B^T, the causal half (j <= i)
//            + 2·T·P            (C·B^T ∘ decay ∘ Δ)·X, the causal half
//            + 2·len·N·P        the incoming state's term C·H^T
//            = 4·len·P·N + 2·T·(N + P)
//   backward = 4 × 2·len·P·N    dH from the chunk's outputs (dY^T·diag(exp a)·C), dC from the
//                               incoming state (dY·H), dX and dB from the outgoing state's gradient
//            + 2·T·N            C·B^T recomputed
//            + 2·T·P + 2·T·P    dM = dY·X^T and dX = M^T·dY, causal halves
//            + 2·T·N + 2·T·N    dC = dM'·B and dB = dM'^T·C, causal halves
//            = 8·len·P·N + 2·T·(3N + 2P)
// Elementwise work (softplus, the cumulative sums, exponentials, D·x, the chunk-to-chunk state
// passing of 2·P·N per chunk, the dt and A gradients' reductions) is not counted.
//
// Bytes: every input read once and every output written once, in their dtypes (elem_bytes for
// x, dt, B, C, y and their gradients; f32 for A, D (heads), dt_bias and the state):
//   forward  reads x, dt, B, C, A, D, dt_bias; writes y and final_state (batch, heads, P, N);
//   backward reads x, dt, B, C, A, D, dt_bias and grad_y; writes dx, ddt, dB, dC, dA, dD, ddt_bias.
// What an implementation keeps between the passes (our chunk_states) is not minimal and not counted.
struct SsdWork {
  double flops = 0.0;
  double bytes = 0.0;
};
SsdWork ssd_work(const SsdShape& s, int64_t chunk_size, int64_t elem_bytes, bool backward);

}  // namespace scanline::bench
