#include "models/attention.h"

#include <algorithm>

#include "autograd/grad_mode.h"
#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "ops/concat.h"
#include "ops/rope.h"
#include "ops/views.h"

namespace scanline {

namespace {

constexpr int64_t kMinCacheCapacity = 16;

const AttentionConfig& validated(const AttentionConfig& config) {
  config.validate();
  return config;
}

}  // namespace

void AttentionConfig::validate() const {
  SCANLINE_CHECK(d_model > 0, "AttentionConfig: d_model must be positive, found ", d_model);
  const int64_t h = resolved_n_heads(), g = resolved_n_kv_heads(), dh = resolved_head_dim();
  SCANLINE_CHECK(n_heads >= 0 && h > 0, "AttentionConfig: n_heads must be positive (or 0 for d_model / 64, which "
                 "needs d_model >= 64), found n_heads ", n_heads, " with d_model ", d_model);
  SCANLINE_CHECK(n_kv_heads >= 0 && h % g == 0, "AttentionConfig: n_kv_heads must divide n_heads = ", h, ", found ",
                 n_kv_heads);
  SCANLINE_CHECK(head_dim >= 0 && dh > 0, "AttentionConfig: head_dim must be positive (or 0 for d_model / n_heads), "
                 "found head_dim ", head_dim, " with d_model ", d_model, " and n_heads ", h);
  SCANLINE_CHECK(!rope || dh % 2 == 0, "AttentionConfig: rope needs an even head_dim, found ", dh);
  SCANLINE_CHECK(!rope || rope_theta > 0, "AttentionConfig: rope_theta must be > 0, found ", rope_theta);
}

Attention::Attention(const AttentionConfig& config, Generator& gen, TensorOptions options)
    : in_proj(validated(config).d_model,
              (config.resolved_n_heads() + 2 * config.resolved_n_kv_heads()) * config.resolved_head_dim(), config.bias,
              gen, options),
      out_proj(config.resolved_n_heads() * config.resolved_head_dim(), config.d_model, config.bias, gen, options),
      config_(config) {
  register_module("in_proj", in_proj);
  register_module("out_proj", out_proj);
}

AttentionState Attention::initial_state(int64_t batch, DType dtype, int64_t capacity) const {
  AttentionState state;
  if (capacity > 0) {
    const TensorOptions o{.dtype = dtype, .device = in_proj.weight.device()};
    const Shape shape{batch, capacity, config_.resolved_n_kv_heads(), config_.resolved_head_dim()};
    state.k_cache = zeros(shape, o);
    state.v_cache = zeros(shape, o);
  }
  return state;
}

void Attention::prepare_cache(AttentionState& state, int64_t batch, int64_t needed, DType dtype, Device device,
                              const char* where) const {
  const int64_t G = config_.resolved_n_kv_heads(), D = config_.resolved_head_dim();
  SCANLINE_CHECK(state.length >= 0 && state.length <= state.capacity(), where, ": the state's length ", state.length,
                 " is outside its cache capacity ", state.capacity());
  for (const Tensor* t : {&state.k_cache, &state.v_cache}) {
    if (!t->defined()) continue;
    SCANLINE_CHECK(t->dim() == 4 && t->size(0) == batch && t->size(2) == G && t->size(3) == D &&
                       t->dtype() == dtype && t->device() == device && t->is_contiguous() &&
                       t->shape() == state.k_cache.shape() && state.v_cache.defined(),
                   where, ": expected the KV caches to be contiguous ", dtype, " (", batch, ", capacity, ", G, ", ", D,
                   ") on ", device, " but found ", describe(*t));
  }
  SCANLINE_CHECK(state.k_cache.defined() == state.v_cache.defined(), where,
                 ": the state has one of k_cache and v_cache but not the other");
  if (needed <= state.capacity()) return;
  NoGradGuard no_grad;
  const int64_t capacity = std::max({needed, 2 * state.capacity(), kMinCacheCapacity});
  const TensorOptions o{.dtype = dtype, .device = device};
  Tensor k = zeros({batch, capacity, G, D}, o), v = zeros({batch, capacity, G, D}, o);
  if (state.length > 0) {
    copy_into(narrow(k, 1, 0, state.length), narrow(state.k_cache, 1, 0, state.length));
    copy_into(narrow(v, 1, 0, state.length), narrow(state.v_cache, 1, 0, state.length));
  }
  state.k_cache = k;
  state.v_cache = v;
}

Tensor Attention::forward(const Tensor& x, AttentionState* state) const {
  const int64_t d = config_.d_model, H = config_.resolved_n_heads(), G = config_.resolved_n_kv_heads(),
                D = config_.resolved_head_dim();
  SCANLINE_CHECK(x.defined() && x.dim() == 3 && x.size(2) == d, "Attention: expected x of shape (batch, L, ", d,
                 ") but found ", x.defined() ? describe(x) : "an undefined tensor");
  const int64_t batch = x.size(0), L = x.size(1);
  const int64_t past = state ? state->length : 0;
  if (state) prepare_cache(*state, batch, past + L, x.dtype(), x.device(), "Attention::forward");

  // (batch, L, H + 2G, D) is a view of the contiguous projection; the heads are slices of it.
  const Tensor qkv = view(in_proj.forward(x), {batch, L, H + 2 * G, D});
  Tensor q = narrow(qkv, 2, 0, H), k = narrow(qkv, 2, H, G), v = narrow(qkv, 2, H + G, G);
  if (config_.rope) {
    q = rope(q, past, config_.rope_theta);
    k = rope(k, past, config_.rope_theta);
  }
  Tensor out;
  if (past == 0) {
    out = attention(q, k, v, true);
  } else {
    // Queries for the cached positions are zeros whose outputs are dropped: the causal mask then
    // lets token t see the cache and the new tokens up to t. The cache carries no gradient.
    const Tensor k_all = cat({narrow(state->k_cache, 1, 0, past), k}, 1);
    const Tensor v_all = cat({narrow(state->v_cache, 1, 0, past), v}, 1);
    const Tensor q_all = cat({zeros({batch, past, H, D}, q.options()), q}, 1);
    out = narrow(attention(q_all, k_all, v_all, true), 1, past, L);
  }
  if (state) {
    NoGradGuard no_grad;
    copy_into(narrow(state->k_cache, 1, past, L), k.detach());
    copy_into(narrow(state->v_cache, 1, past, L), v.detach());
    state->length = past + L;
  }
  return out_proj.forward(reshape(out, {batch, L, H * D}));
}

Tensor Attention::step(const Tensor& x, AttentionState& state) const {
  NoGradGuard no_grad;
  const int64_t d = config_.d_model, H = config_.resolved_n_heads(), G = config_.resolved_n_kv_heads(),
                D = config_.resolved_head_dim();
  SCANLINE_CHECK(x.defined() && x.dim() == 2 && x.size(1) == d, "Attention::step: expected x of shape (batch, ", d,
                 ") but found ", x.defined() ? describe(x) : "an undefined tensor");
  const int64_t batch = x.size(0), pos = state.length;
  prepare_cache(state, batch, pos + 1, x.dtype(), x.device(), "Attention::step");

  const Tensor qkv = view(in_proj.forward(x), {batch, H + 2 * G, D});
  Tensor q = narrow(qkv, 1, 0, H), k = narrow(qkv, 1, H, G), v = narrow(qkv, 1, H + G, G);
  if (config_.rope) {  // rope takes (batch, L, heads, D): a length-1 sequence at position pos
    q = select(rope(unsqueeze(q, 1), pos, config_.rope_theta), 1, 0);
    k = select(rope(unsqueeze(k, 1), pos, config_.rope_theta), 1, 0);
  }
  copy_into(select(state.k_cache, 1, pos), k);
  copy_into(select(state.v_cache, 1, pos), v);
  state.length = pos + 1;
  const Tensor lengths = full({batch}, double(state.length), {.dtype = DType::i64, .device = x.device()});
  const Tensor out = attention_decode(q, state.k_cache, state.v_cache, lengths);
  return out_proj.forward(reshape(out, {batch, H * D}));
}

}  // namespace scanline
