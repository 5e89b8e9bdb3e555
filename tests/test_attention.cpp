// attention, rope and attention_decode on the CPU: the forward matches a naive softmax(QK^T)V
// (causal and not, GQA ratios 1, 2, 4, a custom scale) in every dtype, f64 gradchecks of
// attention (also through column slices of a fused qkv tensor) and of rope, rope against its
// formula, rope at an offset equals the full sequence's rope at those positions, decode equals
// the last row of the full causal attention (rows of different lengths, a length-0 row, padded
// caches), thread-count independence, and clear errors for bad inputs.
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "core/parallel.h"
#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/rope.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive attention in double straight from the definition: for each (b, h, i) the full score row,
// softmax, weighted sum of v. Returns (batch, L, heads, headdim) values, row-major.
std::vector<double> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  const int64_t B = q.size(0), L = q.size(1), H = q.size(2), D = q.size(3), KVH = k.size(2), G = H / KVH;
  const std::vector<double> Q = q.to_double_vector(), K = k.to_double_vector(), V = v.to_double_vector();
  std::vector<double> out(size_t(B * L * H * D), 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < L; ++i) {
        std::vector<double> s(size_t(L), -std::numeric_limits<double>::infinity());
        double m = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j < L; ++j) {
          if (causal && j > i) continue;
          double dot = 0.0;
          for (int64_t d = 0; d < D; ++d)
            dot += Q[size_t(((b * L + i) * H + h) * D + d)] * K[size_t(((b * L + j) * KVH + h / G) * D + d)];
          s[size_t(j)] = scale * dot;
          m = std::max(m, s[size_t(j)]);
        }
        double total = 0.0;
        for (int64_t j = 0; j < L; ++j) total += std::exp(s[size_t(j)] - m);
        for (int64_t j = 0; j < L; ++j) {
          const double p = std::exp(s[size_t(j)] - m) / total;
          for (int64_t d = 0; d < D; ++d)
            out[size_t(((b * L + i) * H + h) * D + d)] += p * V[size_t(((b * L + j) * KVH + h / G) * D + d)];
        }
      }
  return out;
}

// Σ w ∘ y: a scalar with a random direction for gradchecks.
Tensor project(const Tensor& y, uint64_t seed) { return sum(y * random_tensor(y.shape(), seed)); }

}  // namespace

TEST_CASE("attention matches a naive softmax(QK^T)V: causal and not, GQA 1/2/4, custom scale") {
  for (int64_t kv_heads : {4, 2, 1}) {
    for (bool causal : {true, false}) {
      for (double scale : {0.0, 0.7}) {
        CAPTURE(kv_heads);
        CAPTURE(causal);
        CAPTURE(scale);
        Tensor q = random_tensor({2, 7, 4, 8}, 1, DType::f64, -2.0, 2.0);
        Tensor k = random_tensor({2, 7, kv_heads, 8}, 2, DType::f64, -2.0, 2.0);
        Tensor v = random_tensor({2, 7, kv_heads, 8}, 3);
        Tensor y = attention(q, k, v, causal, scale);
        CHECK(y.shape() == q.shape());
        check_close(y, naive_attention(q, k, v, causal, scale == 0.0 ? 1.0 / std::sqrt(8.0) : scale), 1e-12);
      }
    }
  }
}

TEST_CASE("attention in f32 and bf16 is the f64 result rounded") {
  Tensor q = random_tensor({1, 9, 2, 16}, 4, DType::f64, -2.0, 2.0), k = random_tensor({1, 9, 1, 16}, 5),
         v = random_tensor({1, 9, 1, 16}, 6);
  const std::vector<double> ref = attention(q, k, v).to_double_vector();
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    Tensor qd = to_dtype(q, dtype), kd = to_dtype(k, dtype), vd = to_dtype(v, dtype);
    Tensor y = attention(qd, kd, vd);
    CHECK(y.dtype() == dtype);
    // The inputs are rounded too, so compare with the f64 result of the rounded inputs.
    check_close(y, attention(to_dtype(qd, DType::f64), to_dtype(kd, DType::f64), to_dtype(vd, DType::f64))
                       .to_double_vector(),
                dtype == DType::f32 ? 1e-6 : 1e-2);
    check_close(y, ref, dtype == DType::f32 ? 1e-5 : 5e-2);
  }
}

TEST_CASE("attention gradcheck in f64: GQA 1/2/4, causal and not") {
  for (int64_t kv_heads : {4, 2, 1}) {
    for (bool causal : {true, false}) {
      CAPTURE(kv_heads);
      CAPTURE(causal);
      Tensor q = random_leaf({2, 5, 4, 3}, 10, -1.5, 1.5), k = random_leaf({2, 5, kv_heads, 3}, 11, -1.5, 1.5);
      Tensor v = random_leaf({2, 5, kv_heads, 3}, 12);
      check_gradients(
          [&](const std::vector<Tensor>& in) { return project(attention(in[0], in[1], in[2], causal), 13); },
          {q, k, v});
    }
  }
}

TEST_CASE("attention reads column slices of a fused qkv tensor (non-contiguous views)") {
  const int64_t heads = 4, kv_heads = 2, d = 3;
  Tensor qkv = random_leaf({2, 6, heads + 2 * kv_heads, d}, 20, -1.5, 1.5);
  auto run = [&](const std::vector<Tensor>& in) {
    Tensor q = slice(in[0], 2, 0, heads), k = slice(in[0], 2, heads, heads + kv_heads);
    Tensor v = slice(in[0], 2, heads + kv_heads, heads + 2 * kv_heads);
    return attention(q, k, v, true, 0.0);
  };
  Tensor q = slice(qkv, 2, 0, heads);
  REQUIRE(!q.is_contiguous());
  const std::vector<double> expected = naive_attention(contiguous(q), contiguous(slice(qkv, 2, heads, heads + kv_heads)),
                                                       contiguous(slice(qkv, 2, heads + kv_heads, heads + 2 * kv_heads)),
                                                       true, 1.0 / std::sqrt(double(d)));
  check_close(run({qkv}), expected, 1e-12);
  check_gradients([&](const std::vector<Tensor>& in) { return project(run(in), 21); }, {qkv});
}

TEST_CASE("attention does not depend on the thread count and handles L = 1") {
  Tensor q = random_leaf({1, 40, 2, 8}, 30), k = random_leaf({1, 40, 1, 8}, 31), v = random_leaf({1, 40, 1, 8}, 32);
  Tensor g = random_tensor({1, 40, 2, 8}, 33);
  auto grads = [&](int threads) {
    set_num_threads(threads);
    q.zero_grad(), k.zero_grad(), v.zero_grad();
    Tensor y = attention(to_dtype(q, DType::f32), to_dtype(k, DType::f32), to_dtype(v, DType::f32));
    backward(y, to_dtype(g, DType::f32));
    return std::vector<std::vector<double>>{y.to_double_vector(), q.grad().to_double_vector(),
                                            k.grad().to_double_vector(), v.grad().to_double_vector()};
  };
  const int before = num_threads();
  const auto one = grads(1), four = grads(4);
  set_num_threads(before);
  CHECK(one == four);

  Tensor q1 = random_tensor({3, 1, 2, 4}, 34), k1 = random_tensor({3, 1, 1, 4}, 35), v1 = random_tensor({3, 1, 1, 4}, 36);
  // One key: the output is v itself, for each query head of the group.
  const std::vector<double> y1 = attention(q1, k1, v1).to_double_vector(), vv = v1.to_double_vector();
  for (int64_t b = 0; b < 3; ++b)
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t c = 0; c < 4; ++c) CHECK(std::abs(y1[size_t((b * 2 + h) * 4 + c)] - vv[size_t(b * 4 + c)]) < 1e-15);
}

TEST_CASE("rope rotates pairs (i, i + headdim/2) by position · theta^(-2i/headdim)") {
  const int64_t B = 2, L = 5, H = 3, D = 6, half = D / 2, offset = 7;
  const double theta = 500.0;
  Tensor x = random_tensor({B, L, H, D}, 40);
  const std::vector<double> xv = x.to_double_vector(), y = rope(x, offset, theta).to_double_vector();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < L; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const double a = double(offset + t) * std::pow(theta, -2.0 * double(i) / double(D));
          const size_t base = size_t(((b * L + t) * H + h) * D);
          const double x0 = xv[base + size_t(i)], x1 = xv[base + size_t(i + half)];
          CHECK(std::abs(y[base + size_t(i)] - (x0 * std::cos(a) - x1 * std::sin(a))) < 1e-14);
          CHECK(std::abs(y[base + size_t(i + half)] - (x1 * std::cos(a) + x0 * std::sin(a))) < 1e-14);
        }
}

TEST_CASE("rope gradcheck in f64, on a strided view, and its inverse undoes it") {
  Tensor x = random_leaf({2, 4, 3, 8}, 41);
  check_gradients([](const std::vector<Tensor>& in) { return project(rope(in[0], 3, 100.0), 42); }, {x});
  Tensor wide = random_leaf({2, 4, 5, 8}, 43);
  check_gradients([](const std::vector<Tensor>& in) { return project(rope(slice(in[0], 2, 1, 4), 11), 44); }, {wide});
  // The backward rotates back: the gradient of Σ rope(x) ∘ rope(x)... here simply that the
  // gradient of <g, rope(x)> is rope^-1(g), whose rope is g again.
  Tensor leaf = random_leaf({1, 3, 2, 4}, 45);
  Tensor g = random_tensor({1, 3, 2, 4}, 46);
  backward(rope(leaf, 5), g);
  check_close(rope(leaf.grad().detach(), 5), g.to_double_vector(), 1e-14);
}

TEST_CASE("rope at position_offset t equals the full sequence's rope at positions t, t+1, ...") {
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    Tensor x = random_tensor({2, 12, 3, 16}, 47, dtype);
    Tensor full = rope(x, 0, 10000.0);
    for (int64_t t : {0, 5, 11}) {
      Tensor part = rope(slice(x, 1, t, 12), t, 10000.0);
      CHECK(part.to_double_vector() == contiguous(slice(full, 1, t, 12)).to_double_vector());
    }
    Tensor big = rope(x, 100000, 10000.0);  // positions far from zero keep full precision
    CHECK(big.dtype() == dtype);
  }
}

TEST_CASE("attention_decode equals the last row of the full causal attention") {
  const int64_t B = 3, L = 9, max_len = 12, H = 4, D = 8;
  for (int64_t kv_heads : {4, 2, 1}) {
    CAPTURE(kv_heads);
    Tensor q = random_tensor({B, L, H, D}, 50, DType::f64, -2.0, 2.0);
    Tensor k = random_tensor({B, max_len, kv_heads, D}, 51, DType::f64, -2.0, 2.0);
    Tensor v = random_tensor({B, max_len, kv_heads, D}, 52);
    const std::vector<int64_t> lengths{9, 4, 1};
    Tensor len = from_vector(lengths, {B});
    // Row b's new token is at position n - 1 with the cache holding its first n entries.
    Tensor qt = empty({B, H, D}, {.dtype = DType::f64});
    for (int64_t b = 0; b < B; ++b) copy_into(select(qt, 0, b), select(select(q, 0, b), 0, lengths[size_t(b)] - 1));
    Tensor y = attention_decode(qt, k, v, len);
    REQUIRE(y.shape() == Shape({B, H, D}));
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = lengths[size_t(b)];
      Tensor full = attention(narrow(narrow(q, 0, b, 1), 1, 0, n), narrow(narrow(k, 0, b, 1), 1, 0, n),
                              narrow(narrow(v, 0, b, 1), 1, 0, n), true);
      check_close(select(y, 0, b), select(select(full, 0, 0), 0, n - 1).to_double_vector(), 1e-12);
    }
    // Also through i32 lengths, a custom scale and strided caches (slices of a wider cache).
    Tensor wide = random_tensor({B, max_len, 2 * kv_heads, D}, 53);
    Tensor kc = narrow(wide, 2, 0, kv_heads), vc = narrow(wide, 2, kv_heads, kv_heads);
    Tensor y2 = attention_decode(qt, kc, vc, from_vector(std::vector<int32_t>{9, 4, 1}, {B}), 0.3);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t n = lengths[size_t(b)];
      Tensor full = attention(narrow(narrow(q, 0, b, 1), 1, 0, n), narrow(narrow(kc, 0, b, 1), 1, 0, n),
                              narrow(narrow(vc, 0, b, 1), 1, 0, n), true, 0.3);
      check_close(select(y2, 0, b), select(select(full, 0, 0), 0, n - 1).to_double_vector(), 1e-12);
    }
  }
}

TEST_CASE("attention_decode: a length-0 row gives zeros; bf16 and f32 round the f64 result") {
  Tensor q = random_tensor({2, 2, 8}, 60), k = random_tensor({2, 5, 1, 8}, 61), v = random_tensor({2, 5, 1, 8}, 62);
  Tensor y = attention_decode(q, k, v, from_vector(std::vector<int64_t>{0, 5}, {2}));
  for (double value : select(y, 0, 0).to_double_vector()) CHECK(value == 0.0);
  const std::vector<double> ref = select(y, 0, 1).to_double_vector();
  for (DType dtype : {DType::f32, DType::bf16}) {
    Tensor yd = attention_decode(to_dtype(q, dtype), to_dtype(k, dtype), to_dtype(v, dtype),
                                 from_vector(std::vector<int64_t>{0, 5}, {2}));
    CHECK(yd.dtype() == dtype);
    check_close(select(yd, 0, 1), ref, dtype == DType::f32 ? 1e-5 : 3e-2);
  }
}

TEST_CASE("attention, rope and attention_decode reject bad inputs with clear errors") {
  Tensor q = random_tensor({1, 4, 4, 8}, 70), k = random_tensor({1, 4, 2, 8}, 71), v = random_tensor({1, 4, 2, 8}, 72);
  CHECK_THROWS_WITH_AS(attention(random_tensor({4, 4, 8}, 73), k, v), doctest::Contains("(batch, L, heads, headdim)"),
                       Error);
  CHECK_THROWS_WITH_AS(attention(q, random_tensor({1, 4, 3, 8}, 74), random_tensor({1, 4, 3, 8}, 75)),
                       doctest::Contains("must divide heads"), Error);
  CHECK_THROWS_WITH_AS(attention(q, random_tensor({1, 5, 2, 8}, 76), v), doctest::Contains("expected k of shape"),
                       Error);
  CHECK_THROWS_WITH_AS(attention(q, k, random_tensor({1, 4, 2, 4}, 77)), doctest::Contains("expected v of shape"),
                       Error);
  CHECK_THROWS_WITH_AS(attention(q, to_dtype(k, DType::f32), v), doctest::Contains("one dtype"), Error);
  CHECK_THROWS_WITH_AS(attention(q, k, v, true, -1.0), doctest::Contains("scale"), Error);
  CHECK_THROWS_WITH_AS(attention(q, k, v, true, std::nan("")), doctest::Contains("scale"), Error);
  CHECK_THROWS_WITH_AS(attention(to_dtype(q, DType::i64), k, v), doctest::Contains("floating"), Error);

  CHECK_THROWS_WITH_AS(rope(random_tensor({1, 4, 2, 7}, 78)), doctest::Contains("even headdim"), Error);
  CHECK_THROWS_WITH_AS(rope(q, -1), doctest::Contains("position_offset"), Error);
  CHECK_THROWS_WITH_AS(rope(q, 0, 0.0), doctest::Contains("theta"), Error);

  Tensor qt = random_tensor({1, 4, 8}, 79), kc = random_tensor({1, 6, 2, 8}, 80), vc = random_tensor({1, 6, 2, 8}, 81);
  Tensor len = from_vector(std::vector<int64_t>{3}, {1});
  CHECK_THROWS_WITH_AS(attention_decode(qt, kc, vc, from_vector(std::vector<int64_t>{7}, {1})),
                       doctest::Contains("lengths[0] = 7"), Error);
  CHECK_THROWS_WITH_AS(attention_decode(qt, kc, vc, from_vector(std::vector<int64_t>{-1}, {1})),
                       doctest::Contains("[0, max_len = 6]"), Error);
  CHECK_THROWS_WITH_AS(attention_decode(qt, kc, vc, from_vector(std::vector<double>{3.0}, {1})),
                       doctest::Contains("i32 or i64"), Error);
  CHECK_THROWS_WITH_AS(attention_decode(qt, kc, vc, from_vector(std::vector<int64_t>{3, 3}, {2})),
                       doctest::Contains("lengths of shape (batch)"), Error);
  CHECK_THROWS_WITH_AS(attention_decode(qt, random_tensor({1, 6, 3, 8}, 82), random_tensor({1, 6, 3, 8}, 83), len),
                       doctest::Contains("must divide heads"), Error);
  CHECK_THROWS_WITH_AS(attention_decode(qt, kc, random_tensor({1, 5, 2, 8}, 84), len),
                       doctest::Contains("expected v_cache of shape"), Error);
  Tensor needs_grad = random_leaf({1, 4, 8}, 85);
  CHECK_THROWS_WITH_AS(attention_decode(needs_grad, kc, vc, len), doctest::Contains("NoGradGuard"), Error);
  NoGradGuard no_grad;
  CHECK(attention_decode(needs_grad, kc, vc, len).shape() == Shape({1, 4, 8}));
}
