#pragma once
// CUDA attention (the device side of ops/attention.h, ops/rope.h and ops/attention_decode.h; the
// CPU references in ops/attention_cpu.cpp, ops/rope_cpu.cpp and ops/attention_decode_cpu.cpp are
// the ground truth). Inputs f32 or bf16, headdim 64 or 128. Matrix products run on bf16 tensor
// cores (mma.sync m16n8k16, fp32 accumulation, cuda/mma_bf16.cuh); f32 operands are split into
// bf16 hi + lo halves and multiplied with three products, which keeps ~16 bits. Softmax, the
// log-sum-exps and every accumulator are fp32.
//
// Forward (cuda/attention_fwd.cu), FlashAttention-2 style: one block of 4 warps per (128-row
// query tile, head, batch row), each warp owning 32 query rows; K/V tiles of 64 keys are double
// buffered in shared memory (cp.async for bf16); S = Q K^T, the online softmax (exp2 with the
// scale pre-multiplied by log2 e) and P V stay in registers (P goes from the accumulator layout
// to the A operand without shared memory). Causal: key tiles entirely above a warp's rows are
// skipped, only the diagonal tiles are masked, and the heaviest query tiles are launched first.
//
// Backward (cuda/attention_bwd.cu, cuda/attention_bwd_dkdv.cu), deterministic (no atomics):
// a pass computes D = rowsum(dO ∘ O) and the log2-scaled lse per query row; one kernel per
// (64-key tile, kv head, batch row) recomputes P^T and dP^T from K, V and each 64-row query tile
// of each query head in the kv head's group, in a fixed order, and accumulates dV = P^T dO and
// dK = dS^T Q in registers (the group's heads summed inside the block); a second kernel per
// (128-row query tile, head, batch row; 64 rows for f32) recomputes S and dP and accumulates
// dQ = dS K. The price of determinism is recomputing S and dP twice: 7 tile products where an
// atomic dQ would need 5.
#include <cstdint>

#include "core/tensor.h"

namespace scanline::cuda {

struct AttentionForwardResult {
  Tensor out;  // (batch, L, heads, headdim), q's dtype, contiguous
  Tensor lse;  // (batch, heads, L), f32: natural-log log-sum-exp of each row's scaled scores
};

struct AttentionBackwardResult {
  Tensor dq, dk, dv;  // contiguous, in the inputs' shapes and dtype; undefined where not asked for
};

// q (batch, L, heads, headdim), k and v (batch, L, kv_heads, headdim), one dtype (f32 or bf16),
// one CUDA device; views whose last dimension is contiguous are read in place (others are
// copied). scale: the resolved one (> 0).
AttentionForwardResult attention_fwd(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale);

// out and lse: the forward's; grad_out: any strides.
AttentionBackwardResult attention_bwd(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                      const Tensor& lse, const Tensor& grad_out, bool causal, double scale,
                                      bool need_dq, bool need_dkv);

// Rotary embedding of x (batch, L, heads, headdim), headdim even, f32 or bf16 (f16 too); inverse
// rotates by the negative angles. Returns a contiguous tensor.
Tensor rope(const Tensor& x, int64_t position_offset, double theta, bool inverse);

// One query token per batch row against the first lengths[b] cache entries (clamped to
// [0, max_len]); shapes as ops/attention_decode.h. Split-K over the cache length: one block per
// (batch row, kv head, group of up to 16 query heads, split), then a combine kernel.
Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                        double scale);

}  // namespace scanline::cuda
