// causal_conv1d_step: stepping a sequence token by token from a zero state reproduces
// causal_conv1d (its zero padding) and leaves the last k - 1 inputs in the state, for every
// width (k = 1: an empty state), bias and SiLU, in f64 to 1e-12 and in f32/bf16 to rounding;
// inference-only and bad-input errors.
#include <cmath>

#include "autograd/grad_mode.h"
#include "core/parallel.h"
#include "ops/causal_conv1d.h"
#include "ops/causal_conv1d_step.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Stepped {
  std::vector<double> out;  // (batch, channels, L) values
  Tensor state;
};

// Steps x (batch, channels, L) token by token from a zero state; the tokens are non-contiguous
// slices of x when L > 1.
Stepped run_steps(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu) {
  NoGradGuard no_grad;
  const int64_t batch = x.shape()[0], channels = x.shape()[1], L = x.shape()[2], k = weight.shape()[1];
  Stepped s{std::vector<double>(size_t(batch * channels * L)), zeros({batch, channels, k - 1}, {.dtype = x.dtype()})};
  for (int64_t t = 0; t < L; ++t) {
    const Tensor out = causal_conv1d_step(s.state, select(x, 2, t), weight, bias, silu);
    REQUIRE(out.shape() == Shape{batch, channels});
    REQUIRE(out.dtype() == x.dtype());
    CHECK(!out.requires_grad());
    const std::vector<double> v = out.to_double_vector();
    for (int64_t r = 0; r < batch * channels; ++r) s.out[size_t(r * L + t)] = v[size_t(r)];
  }
  return s;
}

// What the state must hold after L tokens: the last k - 1 inputs, zeros before time 0.
std::vector<double> expected_state(const Tensor& x, int64_t k) {
  const int64_t rows = x.shape()[0] * x.shape()[1], L = x.shape()[2];
  const std::vector<double> v = x.to_double_vector();
  std::vector<double> state;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < k - 1; ++j) {
      const int64_t t = L - (k - 1) + j;
      state.push_back(t >= 0 ? v[size_t(r * L + t)] : 0.0);
    }
  return state;
}

// Naive float64 loop: the output and the sum of its terms' magnitudes |bias| + Σ_j |w_j x_j|,
// the scale of an output's rounding error.
std::pair<std::vector<double>, std::vector<double>> reference(const Tensor& x, const Tensor& weight,
                                                              const Tensor& bias, bool silu) {
  const int64_t rows = x.shape()[0] * x.shape()[1], C = x.shape()[1], L = x.shape()[2], k = weight.shape()[1];
  const std::vector<double> vx = x.to_double_vector(), vw = weight.to_double_vector();
  const std::vector<double> vb = bias.defined() ? bias.to_double_vector() : std::vector<double>(size_t(C), 0.0);
  std::vector<double> out(vx.size()), scale(vx.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 0; t < L; ++t) {
      const int64_t c = r % C;
      double z = vb[c], s = std::abs(vb[c]);
      for (int64_t j = 0; j < k; ++j)
        if (const int64_t src = t - (k - 1) + j; src >= 0) {
          z += vw[c * k + j] * vx[r * L + src];
          s += std::abs(vw[c * k + j] * vx[r * L + src]);
        }
      out[r * L + t] = silu ? z / (1.0 + std::exp(-z)) : z;
      scale[r * L + t] = s;
    }
  return {out, scale};
}

}  // namespace

TEST_CASE("causal_conv1d_step stepped through a sequence reproduces causal_conv1d in float64") {
  uint64_t seed = 100;
  for (int64_t k : {1, 2, 3, 4, 8})
    for (int64_t L : {1, 2, 9})  // 1 and 2 are shorter than most windows
      for (bool with_bias : {false, true})
        for (bool silu : {false, true}) {
          CAPTURE(k); CAPTURE(L); CAPTURE(with_bias); CAPTURE(silu);
          const Tensor x = random_tensor({2, 3, L}, ++seed, DType::f64, -2.0, 2.0);
          const Tensor w = random_tensor({3, k}, ++seed);
          const Tensor b = with_bias ? random_tensor({3}, ++seed) : Tensor();
          const Stepped s = run_steps(x, w, b, silu);
          CHECK(s.state.shape() == Shape{2, 3, k - 1});
          check_close(from_vector<double>(s.out, x.shape()), causal_conv1d(x, w, b, silu).to_double_vector(), 1e-12);
          check_close(from_vector<double>(s.out, x.shape()), reference(x, w, b, silu).first, 1e-12);
          CHECK(s.state.to_double_vector() == expected_state(x, k));
        }
}

TEST_CASE("causal_conv1d_step in f32 and bf16 matches causal_conv1d to rounding") {
  // Both compute in f32 from the same inputs with the same tap order; an output may differ by the
  // rounding of its k products and k additions (2^-24 of the terms' magnitudes each) and, in bf16,
  // by one rounding of the result on each side. SiLU's slope is below 1.1.
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t k : {1, 2, 4, 8})
      for (bool with_bias : {false, true})
        for (bool silu : {false, true}) {
          CAPTURE(dtype); CAPTURE(k); CAPTURE(with_bias); CAPTURE(silu);
          const Tensor x = random_tensor({3, 5, 11}, ++seed, dtype, -2.0, 2.0);
          const Tensor w = random_tensor({5, k}, ++seed, dtype);
          const Tensor b = with_bias ? random_tensor({5}, ++seed, dtype) : Tensor();
          const Stepped s = run_steps(x, w, b, silu);
          CHECK(s.state.dtype() == dtype);
          const std::vector<double> full = causal_conv1d(x, w, b, silu).to_double_vector();
          const auto [ref, scale] = reference(x, w, b, silu);
          for (size_t i = 0; i < full.size(); ++i) {
            const double bound = 1.1 * 2 * (k + 1) * 0x1p-24 * scale[i] +
                                 (dtype == DType::bf16 ? 2 * 0x1p-8 * std::abs(ref[i]) : 0.0);
            INFO("element ", i, ": ", s.out[i], " vs ", full[i], ", allowed ", bound);
            CHECK(std::abs(s.out[i] - full[i]) <= bound);
          }
          CHECK(s.state.to_double_vector() == expected_state(x, k));  // copies of inputs: exact
        }
}

TEST_CASE("causal_conv1d_step continues from a given state and reads strided inputs") {
  // Two halves of a sequence: the second starts from the state the first left.
  const Tensor x = random_tensor({2, 4, 10}, 2000, DType::f64, -2.0, 2.0);
  const Tensor w = transpose(random_tensor({4, 4}, 2001), 0, 1);  // a non-contiguous weight
  const Tensor b = random_tensor({4}, 2002);
  const Stepped first = run_steps(narrow(x, 2, 0, 6), w, b, true);
  NoGradGuard no_grad;
  Tensor state = first.state;
  std::vector<double> out = first.out;
  const std::vector<double> full = causal_conv1d(x, w, b, true).to_double_vector();
  for (int64_t t = 6; t < 10; ++t) {
    const std::vector<double> v = causal_conv1d_step(state, select(x, 2, t), w, b, true).to_double_vector();
    for (int64_t r = 0; r < 8; ++r) CHECK(std::abs(v[size_t(r)] - full[size_t(r * 10 + t)]) <= 1e-12);
  }
  CHECK(state.to_double_vector() == expected_state(x, 4));
}

TEST_CASE("causal_conv1d_step results do not depend on the thread count") {
  const Tensor x = random_tensor({3, 300, 5}, 3000, DType::f32, -2.0, 2.0);
  const Tensor w = random_tensor({300, 4}, 3001, DType::f32), b = random_tensor({300}, 3002, DType::f32);
  auto steps = [&](int threads) {
    set_num_threads(threads);
    const Stepped s = run_steps(x, w, b, true);
    return std::pair{s.out, s.state.to_double_vector()};
  };
  const int previous = num_threads();
  const auto one = steps(1), many = steps(4);
  set_num_threads(previous);
  CHECK(one == many);
}

TEST_CASE("causal_conv1d_step handles an empty batch") {
  Tensor state = zeros({0, 3, 3});
  const Tensor out = causal_conv1d_step(state, zeros({0, 3}), random_tensor({3, 4}, 4000, DType::f32));
  CHECK(out.shape() == Shape{0, 3});
}

TEST_CASE("causal_conv1d_step is for inference: inputs requiring grad need NoGradGuard") {
  Tensor state = random_tensor({2, 3, 3}, 5000);
  const Tensor before = clone(state);
  const Tensor x = random_tensor({2, 3}, 5001), b = random_tensor({3}, 5002);
  Tensor w = random_leaf({3, 4}, 5003);
  CHECK_THROWS_WITH_AS(causal_conv1d_step(state, x, w, b),
                       doctest::Contains("causal_conv1d_step: the step op is for inference and has no gradient, "
                                         "but weight f64[3, 4] on cpu requires grad; run it under NoGradGuard"),
                       Error);
  CHECK_THROWS_WITH_AS(causal_conv1d_step(state, random_leaf({2, 3}, 5004), w.detach(), b),
                       doctest::Contains("but x f64[2, 3] on cpu requires grad"), Error);
  Tensor grad_state = random_leaf({2, 3, 3}, 5005);
  CHECK_THROWS_WITH_AS(causal_conv1d_step(grad_state, x, w.detach(), b),
                       doctest::Contains("but conv_state f64[2, 3, 3] on cpu requires grad"), Error);
  CHECK(state.to_double_vector() == before.to_double_vector());  // a rejected call leaves the state alone
  NoGradGuard no_grad;
  const Tensor out = causal_conv1d_step(state, x, w, b);
  CHECK(!out.requires_grad());
  CHECK(state.to_double_vector() != before.to_double_vector());
}

TEST_CASE("causal_conv1d_step rejects bad inputs naming the tensor and the shapes") {
  const Tensor state = zeros({2, 3, 3}), x = zeros({2, 3}), w = zeros({3, 4}), b = zeros({3});
  auto fails = [](auto&& call, const std::string& message) {
    CHECK_THROWS_WITH_AS(call(), doctest::Contains(("causal_conv1d_step: " + message).c_str()), Error);
  };
  fails([&] { causal_conv1d_step(state, zeros({2, 3, 1}), w, b); },
        "expected x of shape (batch, channels) but found f32[2, 3, 1]");
  fails([&] { causal_conv1d_step(state, zeros({2, 3}, {.dtype = DType::i64}), w, b); },
        "expected x to be floating but found i64[2, 3] on cpu");
  fails([&] { causal_conv1d_step(state, x, zeros({3}), b); },
        "expected weight of shape (channels, k) but found f32[3] on cpu");
  fails([&] { causal_conv1d_step(state, x, zeros({4, 4}), b); },
        "weight f32[4, 4] on cpu has 4 channels but x f32[2, 3] on cpu (batch, channels) has 3");
  fails([&] { causal_conv1d_step(zeros({2, 3, 8}), x, zeros({3, 9}), b); },
        "kernel width k = 9 of weight f32[3, 9] on cpu is outside [1, 8]");
  fails([&] { causal_conv1d_step(state, x, w, zeros({4})); },
        "expected bias of shape (channels) = [3] but found f32[4] on cpu");
  fails([&] { causal_conv1d_step(zeros({2, 3, 4}), x, w, b); },
        "expected conv_state of shape (batch, channels, k - 1) = [2, 3, 3] but found f32[2, 3, 4] on cpu");
  fails([&] { causal_conv1d_step(zeros({2, 3, 1}), x, zeros({3, 1}), b); },
        "expected conv_state of shape (batch, channels, k - 1) = [2, 3, 0] but found f32[2, 3, 1] on cpu");
  fails([&] { causal_conv1d_step(Tensor(), x, w, b); }, "conv_state is an undefined tensor");
  fails([&] { causal_conv1d_step(zeros({2, 3, 3}, {.dtype = DType::bf16}), x, w, b); },
        "expected one dtype but found f32[2, 3] on cpu and bf16[2, 3, 3] on cpu");
  fails([&] { causal_conv1d_step(state, x, zeros({3, 4}, {.dtype = DType::f64}), b); },
        "expected one dtype but found f32[2, 3] on cpu and f64[3, 4] on cpu");
  // The state is written in place: a strided view of it is refused.
  fails([&] { causal_conv1d_step(transpose(zeros({2, 3, 3}), 1, 2), x, w, b); },
        "conv_state is updated in place and must be contiguous, but found f32[2, 3, 3] on cpu with strides [9, 1, 3]");
}
