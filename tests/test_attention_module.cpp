// models/attention.h: the attention module. Parameter names and shapes; forward against a float64
// loop of the definition (fused q|k|v projection, GQA head mapping, rotate_half rope, causal
// softmax); step() token by token, prefill + step and prefill + forward against the full forward
// in f64 and f32, through KV-cache growth; gradcheck w.r.t. the input and every parameter; bad
// configs and inputs.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "models/attention.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

AttentionConfig small(bool rope, int64_t kv_heads = 2, bool bias = false) {
  AttentionConfig c;
  c.d_model = 8;
  c.n_heads = 4;
  c.n_kv_heads = kv_heads;
  c.head_dim = 4;
  c.rope = rope;
  c.rope_theta = 100.0;  // large angles within a few positions
  c.bias = bias;
  return c;
}

// The module's definition as float64 loops over its parameters: x (batch, L, d) -> (batch, L, d).
std::vector<double> reference_forward(const Attention& m, const Tensor& x_in) {
  const AttentionConfig& c = m.config();
  const int64_t batch = x_in.size(0), L = x_in.size(1), d = c.d_model, H = c.resolved_n_heads(),
                G = c.resolved_n_kv_heads(), D = c.resolved_head_dim(), P = (H + 2 * G) * D;
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const std::vector<double> x = values(x_in), w_in = values(m.in_proj.weight), b_in = values(m.in_proj.bias),
                            w_out = values(m.out_proj.weight), b_out = values(m.out_proj.bias);
  // qkv[b][t][p]
  std::vector<double> qkv(size_t(batch * L * P));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t p = 0; p < P; ++p) {
        double s = b_in.empty() ? 0.0 : b_in[size_t(p)];
        for (int64_t i = 0; i < d; ++i) s += w_in[size_t(p * d + i)] * x[size_t((b * L + t) * d + i)];
        qkv[size_t((b * L + t) * P + p)] = s;
      }
  // Head vector `head` (0..H+2G) of token t, rotated for position t when rope is on (q and k).
  auto head_vec = [&](int64_t b, int64_t t, int64_t head) {
    std::vector<double> v(static_cast<size_t>(D));
    for (int64_t j = 0; j < D; ++j) v[size_t(j)] = qkv[size_t((b * L + t) * P + head * D + j)];
    if (c.rope && head < H + G) {
      std::vector<double> r = v;
      const int64_t half = D / 2;
      for (int64_t i = 0; i < half; ++i) {
        const double a = double(t) * std::pow(c.rope_theta, -2.0 * double(i) / double(D));
        r[size_t(i)] = v[size_t(i)] * std::cos(a) - v[size_t(i + half)] * std::sin(a);
        r[size_t(i + half)] = v[size_t(i + half)] * std::cos(a) + v[size_t(i)] * std::sin(a);
      }
      v = r;
    }
    return v;
  };
  std::vector<double> o(size_t(batch * L * H * D), 0.0), out(size_t(batch * L * d));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      for (int64_t i = 0; i < L; ++i) {
        const std::vector<double> q = head_vec(b, i, h);
        std::vector<double> s(size_t(i + 1));
        for (int64_t j = 0; j <= i; ++j) {
          const std::vector<double> k = head_vec(b, j, H + g);
          double dot = 0;
          for (int64_t e = 0; e < D; ++e) dot += q[size_t(e)] * k[size_t(e)];
          s[size_t(j)] = dot / std::sqrt(double(D));
        }
        const double mx = *std::max_element(s.begin(), s.end());
        double z = 0;
        for (double& v : s) z += (v = std::exp(v - mx));
        for (int64_t j = 0; j <= i; ++j) {
          const std::vector<double> v = head_vec(b, j, H + G + g);
          for (int64_t e = 0; e < D; ++e) o[size_t(((b * L + i) * H + h) * D + e)] += s[size_t(j)] / z * v[size_t(e)];
        }
      }
    }
  for (int64_t r = 0; r < batch * L; ++r)
    for (int64_t j = 0; j < d; ++j) {
      double s = b_out.empty() ? 0.0 : b_out[size_t(j)];
      for (int64_t e = 0; e < H * D; ++e) s += w_out[size_t(j * H * D + e)] * o[size_t(r * H * D + e)];
      out[size_t(r * d + j)] = s;
    }
  return out;
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

}  // namespace

TEST_CASE("Attention registers a fused in_proj and an out_proj under mamba_ssm's names") {
  Generator gen(1);
  Attention m(small(false, 2, true), gen);
  const auto params = m.named_parameters();
  REQUIRE(params.size() == 4);
  CHECK(params[0].name == "in_proj.weight");
  CHECK(params[0].tensor.shape() == Shape{(4 + 2 * 2) * 4, 8});
  CHECK(params[1].name == "in_proj.bias");
  CHECK_FALSE(params[1].weight_decay);
  CHECK(params[2].name == "out_proj.weight");
  CHECK(params[2].tensor.shape() == Shape{8, 16});
  CHECK(params[3].name == "out_proj.bias");
  // Defaults: heads of 64, kv heads = heads, head_dim = d / heads.
  AttentionConfig c;
  c.d_model = 256;
  CHECK(c.resolved_n_heads() == 4);
  CHECK(c.resolved_n_kv_heads() == 4);
  CHECK(c.resolved_head_dim() == 64);
}

TEST_CASE("Attention forward matches a float64 loop of its definition") {
  for (bool rope : {false, true})
    for (int64_t kv : {1, 2, 4})
      for (bool bias : {false, true}) {
        INFO("rope ", rope, " kv_heads ", kv, " bias ", bias);
        Generator gen(7);
        Attention m(small(rope, kv, bias), gen, {.dtype = DType::f64});
        const Tensor x = random_tensor({2, 6, 8}, 3);
        check_close(m.forward(x), reference_forward(m, x), 1e-12);
      }
}

namespace {

// The full forward vs step() from an empty state, vs a prefill + step(), and vs a prefill +
// forward of the rest; L runs past the initial cache capacity so the cache reallocates.
void check_incremental(const Attention& m, DType dtype, int64_t L, int64_t capacity) {
  NoGradGuard no_grad;
  const int64_t batch = 2, prefix = 5;
  const Tensor x = random_tensor({batch, L, 8}, 21, dtype);
  const Tensor full = m.forward(x);
  const double tol = dtype == DType::f64 ? 1e-12 : 1e-5;

  AttentionState fresh = m.initial_state(batch, dtype, capacity);
  for (int64_t t = 0; t < L; ++t) {
    CAPTURE(t);
    CHECK(max_abs_diff(m.step(contiguous(select(x, 1, t)), fresh), select(full, 1, t)) <= tol);
  }
  CHECK(fresh.length == L);
  CHECK(fresh.capacity() >= L);

  AttentionState state;
  CHECK(max_abs_diff(m.forward(narrow(x, 1, 0, prefix), &state), narrow(full, 1, 0, prefix)) <= tol);
  CHECK(state.length == prefix);
  for (int64_t t = prefix; t < L; ++t) {
    CAPTURE(t);
    CHECK(max_abs_diff(m.step(contiguous(select(x, 1, t)), state), select(full, 1, t)) <= tol);
  }
  // The cache holds exactly the keys and values a prefill of everything leaves.
  AttentionState whole;
  m.forward(x, &whole);
  CHECK(max_abs_diff(narrow(state.k_cache, 1, 0, L), narrow(whole.k_cache, 1, 0, L)) == 0.0);
  CHECK(max_abs_diff(narrow(state.v_cache, 1, 0, L), narrow(whole.v_cache, 1, 0, L)) == 0.0);

  AttentionState cont;
  m.forward(narrow(x, 1, 0, prefix), &cont);
  const Tensor rest = m.forward(narrow(x, 1, prefix, L - prefix), &cont);
  CHECK(max_abs_diff(rest, narrow(full, 1, prefix, L - prefix)) <= tol);
  CHECK(cont.length == L);
}

}  // namespace

TEST_CASE("Attention step() and prefills reproduce the full forward") {
  for (DType dtype : {DType::f64, DType::f32})
    for (bool rope : {false, true})
      for (int64_t kv : {1, 2}) {
        INFO("dtype ", dtype, " rope ", rope, " kv_heads ", kv);
        Generator gen(9);
        Attention m(small(rope, kv), gen, {.dtype = dtype});
        check_incremental(m, dtype, 20, 0);  // grows 16 -> 32
        check_incremental(m, dtype, 9, 3);   // preallocated small, grows to 16
      }
}

TEST_CASE("Attention passes float64 gradcheck w.r.t. the input and every parameter") {
  for (bool rope : {false, true})
    for (int64_t kv : {1, 2}) {
      INFO("rope ", rope, " kv_heads ", kv);
      Generator gen(13);
      Attention m(small(rope, kv, true), gen, {.dtype = DType::f64});
      const Tensor x = random_leaf({2, 4, 8}, 17);
      std::vector<Tensor> inputs{x};
      for (const Tensor& p : m.parameters()) inputs.push_back(p);
      check_gradients([&](const std::vector<Tensor>& in) { return m.forward(in[0]); }, inputs);
    }
  // Through a continued prefill too: gradients reach the new tokens (the cache is detached).
  Generator gen(14);
  Attention m(small(true, 2), gen, {.dtype = DType::f64});
  AttentionState prefix;
  {
    NoGradGuard no_grad;
    m.forward(random_tensor({2, 3, 8}, 18), &prefix);
  }
  const Tensor x = random_leaf({2, 3, 8}, 19);
  std::vector<Tensor> inputs{x};
  for (const Tensor& p : m.parameters()) inputs.push_back(p);
  check_gradients(
      [&](const std::vector<Tensor>& in) {
        AttentionState s = prefix;  // the caches are shared but only positions >= 3 get written
        return m.forward(in[0], &s);
      },
      inputs);
}

TEST_CASE("Attention rejects impossible configurations and inputs") {
  Generator gen(1);
  AttentionConfig c = small(false);
  c.n_kv_heads = 3;
  CHECK_THROWS_WITH_AS(Attention(c, gen), doctest::Contains("n_kv_heads must divide n_heads = 4, found 3"), Error);
  c = small(true);
  c.head_dim = 3;
  CHECK_THROWS_WITH_AS(Attention(c, gen), doctest::Contains("rope needs an even head_dim, found 3"), Error);
  c = AttentionConfig{};
  c.d_model = 32;
  CHECK_THROWS_WITH_AS(Attention(c, gen), doctest::Contains("n_heads must be positive (or 0 for d_model / 64"), Error);
  Attention m(small(false), gen);
  CHECK_THROWS_WITH_AS(m.forward(zeros({2, 3, 7})), doctest::Contains("Attention: expected x of shape (batch, L, 8)"),
                       Error);
  AttentionState s = m.initial_state(2, DType::f32, 4);
  CHECK_THROWS_WITH_AS(m.step(zeros({3, 8}), s), doctest::Contains("Attention::step: expected the KV caches"), Error);
}
