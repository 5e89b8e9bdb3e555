#pragma once
// Attention: causal multi-head self-attention with grouped-query heads and optional rotary
// embeddings (mamba_ssm's MHA module, the `*` block of a hybrid). With H = n_heads, G =
// n_kv_heads, D = head_dim, for x (batch, L, d):
//   qkv     = in_proj(x)                  d -> (H + 2G)·D, laid out [q heads | k heads | v heads]
//   q, k, v = column slices of qkv        views (batch, L, H or G, D), no copies
//   q, k    = rope(q, p), rope(k, p)      when rope is on; p = the tokens already in the cache
//   o       = attention(q, k, v, causal)  ops/attention.h, scale 1/sqrt(D)
//   out     = out_proj(o)                 H·D -> d
// Parameter names follow mamba_ssm: in_proj.weight (and .bias), out_proj.weight (and .bias).
//
// Inference: forward(x, state) is a prefill that appends k and v (after rope) to the state's KV
// cache; step(x, state) appends one token's k and v at position state.length and reads the cache
// with attention_decode (ops/attention_decode.h).
//
// The KV cache grows by doubling: a state needing more room than it has is reallocated to the
// larger of twice its capacity, the length needed and 16 positions, and the filled part is copied
// over (amortized O(1) a token). initial_state(batch, dtype, capacity) preallocates, so a caller
// that knows its maximum length never reallocates.
#include <cstdint>

#include "core/random.h"
#include "models/linear.h"
#include "models/module.h"

namespace scanline {

struct AttentionConfig {
  int64_t d_model = 0;
  int64_t n_heads = 0;     // H; 0 means d_model / 64 (heads of 64, the CUDA kernels' size)
  int64_t n_kv_heads = 0;  // G, dividing H; 0 means H (plain multi-head attention)
  int64_t head_dim = 0;    // D; 0 means d_model / H (the CUDA kernels take 64 or 128)
  bool rope = false;       // rotary embeddings on q and k (off in hybrids, on for Transformers)
  double rope_theta = 10000.0;
  bool bias = false;       // biases of in_proj and out_proj

  int64_t resolved_n_heads() const { return n_heads > 0 ? n_heads : d_model / 64; }
  int64_t resolved_n_kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : resolved_n_heads(); }
  int64_t resolved_head_dim() const {
    const int64_t h = resolved_n_heads();
    return head_dim > 0 ? head_dim : (h > 0 ? d_model / h : 0);
  }
  // Throws an Error naming the first impossible value.
  void validate() const;
};

// The KV cache of one attention layer for `batch` sequences. The caches are contiguous
// (batch, capacity, G, D) in the activations' dtype; positions [0, length) are filled. Undefined
// caches with length 0 are an empty state (a fresh sequence).
struct AttentionState {
  Tensor k_cache, v_cache;
  int64_t length = 0;

  int64_t capacity() const { return k_cache.defined() ? k_cache.size(1) : 0; }
};

class Attention : public Module {
 public:
  // in_proj and out_proj with PyTorch's Linear init, drawn from gen in that order. Parameters in
  // options' dtype and device.
  Attention(const AttentionConfig& config, Generator& gen, TensorOptions options = {});

  // x (batch, L, d_model) -> (batch, L, d_model) in x's dtype, causal. With a state, the tokens
  // sit after the state's `length` cached ones (rope positions and the keys attended to), and
  // their keys and values are appended to the cache (detached). A prefill is a forward with an
  // empty state. Continuing a non-empty state runs attention over (cached + new) keys with the
  // cached query rows zero-filled and dropped after: correct, at (length + L)² cost.
  Tensor forward(const Tensor& x, AttentionState* state = nullptr) const;

  // Advances one token, x (batch, d_model) -> (batch, d_model), appending its k and v to the
  // cache. Inference only: runs without recording a graph.
  Tensor step(const Tensor& x, AttentionState& state) const;

  // An empty state for `batch` sequences in `dtype` on the parameters' device, with room for
  // `capacity` positions (0: allocated on first use).
  AttentionState initial_state(int64_t batch, DType dtype, int64_t capacity = 0) const;

  const AttentionConfig& config() const { return config_; }

  Linear in_proj;   // d -> (H + 2G)·D
  Linear out_proj;  // H·D -> d

 private:
  // Checks a state against x, then makes room for `needed` positions (doubling).
  void prepare_cache(AttentionState& state, int64_t batch, int64_t needed, DType dtype, Device device,
                     const char* where) const;

  AttentionConfig config_;
};

}  // namespace scanline
