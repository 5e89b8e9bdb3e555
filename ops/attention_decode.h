#pragma once
// One generation step of attention (ops/attention.h) against a KV cache: the new token's query
// attends to the first lengths[b] entries of its row's cache (the caller has already appended the
// token's own key and value, so a causal model sees itself). For batch row b and query head h
// reading kv head g = h / (heads / kv_heads):
//   out[b, h, :] = Σ_{j < n} softmax_j(scale · <q[b, h, :], k_cache[b, j, g, :]>) v_cache[b, j, g, :]
// with n = lengths[b]; a row with n = 0 gets zeros. The CUDA kernel splits the cache length
// across blocks (flash-decoding) and combines the partial results with their log-sum-exps.
#include "core/tensor.h"

namespace scanline {

// q: (batch, heads, headdim); k_cache, v_cache: (batch, max_len, kv_heads, headdim) with kv_heads
// dividing heads; lengths: (batch) i32 or i64 on q's device. One floating dtype for q and the
// caches (CUDA: f32 or bf16 with headdim 64 or 128). Caches may be strided views with a
// contiguous last dim. scale as attention's (0: 1/sqrt(headdim)). Returns (batch, heads,
// headdim) in q's dtype.
//
// lengths must lie in [0, max_len]: the CPU checks them; the CUDA kernel does not read them on
// the host (that would synchronize every step) and clamps them to [0, max_len] instead.
//
// Inference only: there is no gradient. With grad mode on, an input that requires grad is an
// error; run it under NoGradGuard.
Tensor attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& lengths,
                        double scale = 0.0);

}  // namespace scanline
