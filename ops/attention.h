#pragma once
// Scaled dot-product attention with grouped-query heads (GQA), flash-style: one fused
// differentiable node that never holds an L x L matrix in memory. For batch row b, query head h
// (of `heads`) reading key/value head g = h / (heads / kv_heads), and query position i:
//   s_ij = scale · <q[b, i, h, :], k[b, j, g, :]>         for j <= i (causal) or every j < L
//   out[b, i, h, :] = Σ_j softmax_j(s_i·) v[b, j, g, :]
// The node saves q, k, v, out and the row log-sum-exps lse_i = log Σ_j exp(s_ij) (batch, heads, L);
// the backward recomputes the probabilities from them (FlashAttention-2, Dao 2023).
//
// Positions are not encoded here: apply `rope` (ops/rope.h) to q and k first when the model
// wants rotary embeddings. `attention_decode` (ops/attention_decode.h) is the one-token,
// KV-cache form for generation.
#include "core/tensor.h"

namespace scanline {

// q: (batch, L, heads, headdim); k, v: (batch, L, kv_heads, headdim) with kv_heads dividing heads.
// One floating dtype for all three (f32, bf16; f64 for references and gradcheck on the CPU). The
// CUDA kernels take headdim 64 or 128 and f32 or bf16 (tensor cores with fp32 accumulation; f32
// operands are split into two bf16 halves so their path keeps ~16 bits); the CPU reference takes
// any headdim and computes in double. q, k, v may be strided views whose last dimension is
// contiguous (column slices of a fused qkv projection); other layouts are copied. scale must be
// finite and positive, or 0 for 1/sqrt(headdim). Returns out (batch, L, heads, headdim) in q's
// dtype. Every input gets a gradient. On a GPU, bf16 runs on cuDNN's fused attention when the
// build has cuDNN (cuda/attention_cudnn.h; SCANLINE_ATTENTION_ENGINE=native|cudnn|auto), whose
// backward sums dQ with atomics; our own kernels' backward is deterministic (no atomics).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = true, double scale = 0.0);

}  // namespace scanline
