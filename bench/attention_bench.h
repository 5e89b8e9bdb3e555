#pragma once
// `scanline bench attention`: the causal grouped-query attention op (ops/attention.h, on the CUDA
// kernels of cuda/attention.h) on issue 7's shapes, bf16, forward and forward+backward through the
// autograd node: times, the causal attention FLOPs read against the bf16 matrix rate measured in
// the same run (bench/matrix_rate.h), and the ratio to PyTorch's scaled_dot_product_attention
// (enable_gqa=True) as issue 7 measured it on an H100. The PyTorch peer, bench/peers/attention_torch.py,
// times SDPA in the same gpu-check and reads this bench's table.
#include <cstdint>

namespace scanline::bench {

// Returns 0 when every case reaches at least 0.8x SDPA's speed (issue 7's times; forward and
// forward+backward), 1 otherwise. quick: the first case only.
int run_attention_bench(bool quick);

struct AttentionShape {
  int64_t batch, heads, kv_heads, L, headdim;
};

// FLOPs of one causal pass, the FlashAttention convention (the L x L products only, half of them
// for causal; softmax and the rest not counted):
//   forward  = 4·batch·heads·L²·headdim / 2     (S = Q·K^T and O = P·V, 2·L²·d each, causal half)
//   backward = 2.5 × forward                     (dV = P^T·dO, dP = dO·V^T, dQ = dS·K, dK = dS^T·Q,
//                                                 plus the recomputed S: 5 products)
// Key/value heads shared by several query heads (GQA) do not change the count.
double attention_flops(const AttentionShape& s, bool backward);

}  // namespace scanline::bench
