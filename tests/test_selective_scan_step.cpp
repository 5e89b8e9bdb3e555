// selective_scan_step: stepping a sequence token by token reproduces selective_scan (y one column
// a step, the final state left in `state`) in f64 to 1e-12 and in f32/bf16 to the rounding of an
// f32 state; one f32 step is the f64 step rounded once; inference-only and bad-input errors.
#include <cmath>

#include "autograd/grad_mode.h"
#include "core/parallel.h"
#include "ops/selective_scan.h"
#include "ops/selective_scan_step.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Config {
  int64_t batch = 2, d_inner = 4, L = 6, N = 3, groups = 1;
  bool D = true, z = true, bias = true, softplus = true;
};

Config with_mask(Config c, int mask) {
  c.D = mask & 1;
  c.z = mask & 2;
  c.bias = mask & 4;
  c.softplus = mask & 8;
  return c;
}

// A whole sequence's inputs in selective_scan's layout; h0 is the state the steps start from.
struct Seq {
  Tensor u, delta, A, B, C, D, z, bias, h0;
  bool softplus = false;
};

// Random f64 inputs in a Mamba layer's ranges: A < 0 and Δ > 0, so every step's decay is in (0, 1).
Seq make_seq(const Config& c, uint64_t seed) {
  auto make = [&](const Shape& shape, double low, double high) {
    return random_tensor(shape, ++seed, DType::f64, low, high);
  };
  const Shape rows{c.batch, c.d_inner, c.L}, bc{c.batch, c.groups, c.N, c.L};
  Seq s;
  s.softplus = c.softplus;
  s.u = make(rows, -1.0, 1.0);
  s.delta = c.softplus ? make(rows, -2.0, 1.0) : make(rows, 0.05, 1.0);
  s.A = make({c.d_inner, c.N}, -2.0, -0.1);
  s.B = make(bc, -1.0, 1.0);
  s.C = make(bc, -1.0, 1.0);
  if (c.D) s.D = make({c.d_inner}, -1.0, 1.0);
  if (c.z) s.z = make(rows, -2.0, 2.0);
  if (c.bias) s.bias = c.softplus ? make({c.d_inner}, -1.0, 1.0) : make({c.d_inner}, 0.0, 0.2);
  s.h0 = make({c.batch, c.d_inner, c.N}, -1.0, 1.0);
  return s;
}

// u, delta, B, C, z in `input`; A, D, bias, h0 in the matching parameter dtype.
Seq cast_seq(const Seq& s, DType input) {
  const DType param = input == DType::f64 ? DType::f64 : DType::f32;
  auto cast = [](const Tensor& t, DType d) { return t.defined() ? to_dtype(t, d) : Tensor(); };
  return {cast(s.u, input), cast(s.delta, input), cast(s.A, param), cast(s.B, input), cast(s.C, input),
          cast(s.D, param), cast(s.z, input),     cast(s.bias, param), cast(s.h0, param), s.softplus};
}

SelectiveScanResult run_full(const Seq& s) {
  return selective_scan(s.u, s.delta, s.A, s.B, s.C, s.D, s.z, s.bias, s.softplus, s.h0);
}

// Token t's inputs (non-contiguous slices of the sequence when L > 1) into the step op.
Tensor run_step(const Tensor& state, const Seq& s, int64_t t) {
  const Tensor z = s.z.defined() ? select(s.z, 2, t) : Tensor();
  return selective_scan_step(state, select(s.u, 2, t), select(s.delta, 2, t), s.A, select(s.B, 3, t),
                             select(s.C, 3, t), s.D, z, s.bias, s.softplus);
}

// Steps through the whole sequence from h0; returns y as (batch, d_inner, L) values and the state.
std::pair<std::vector<double>, Tensor> run_steps(const Seq& s) {
  NoGradGuard no_grad;
  const int64_t rows = s.u.shape()[0] * s.u.shape()[1], L = s.u.shape()[2];
  Tensor state = clone(s.h0);
  std::vector<double> y(size_t(rows * L));
  for (int64_t t = 0; t < L; ++t) {
    Tensor yt = run_step(state, s, t);
    REQUIRE(yt.shape() == Shape{s.u.shape()[0], s.u.shape()[1]});
    REQUIRE(yt.dtype() == s.u.dtype());
    CHECK(!yt.requires_grad());
    const std::vector<double> v = yt.to_double_vector();
    for (int64_t r = 0; r < rows; ++r) y[size_t(r * L + t)] = v[size_t(r)];
  }
  return {y, state};
}

// Naive float64 loop of the recurrence on s's values. Besides y and the final state it returns
// error scales of an f32 state rounded after every step (decays are <= 1, so the rounding errors
// add up): y_scale = |silu(z)| Σ_n |C_t[n]| Σ_{s<t} |h_s[n]|, state_scale = Σ_{s<L} |h_s[n]|.
struct Reference {
  std::vector<double> y, final_state, y_scale, state_scale;
};

Reference reference(const Seq& s) {
  const int64_t Bn = s.u.shape()[0], Dn = s.u.shape()[1], L = s.u.shape()[2];
  const int64_t N = s.A.shape()[1], G = s.B.shape()[1];
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const auto u = values(s.u), delta = values(s.delta), A = values(s.A), B = values(s.B), C = values(s.C);
  const auto D = values(s.D), z = values(s.z), bias = values(s.bias), h0 = values(s.h0);
  Reference r;
  r.y.resize(size_t(Bn * Dn * L));
  r.y_scale.resize(r.y.size());
  r.final_state.resize(size_t(Bn * Dn * N));
  r.state_scale.resize(r.final_state.size());
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t d = 0; d < Dn; ++d) {
      const int64_t g = d / (Dn / G), row = b * Dn + d;
      std::vector<double> h(size_t(N), 0.0), sum_abs(size_t(N), 0.0);
      for (int64_t n = 0; n < N; ++n) h[n] = h0[row * N + n];
      for (int64_t t = 0; t < L; ++t) {
        const size_t i = size_t(row * L + t);
        double dt = delta[i] + (bias.empty() ? 0.0 : bias[d]);
        if (s.softplus) dt = std::log1p(std::exp(dt));
        double out = 0.0, scale = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const size_t bc = size_t(((b * G + g) * N + n) * L + t);
          h[n] = std::exp(dt * A[d * N + n]) * h[n] + dt * B[bc] * u[i];
          out += C[bc] * h[n];
          scale += std::abs(C[bc]) * sum_abs[n];
          sum_abs[n] += std::abs(h[n]);
        }
        if (!D.empty()) out += D[d] * u[i];
        const double gate = z.empty() ? 1.0 : z[i] / (1.0 + std::exp(-z[i]));
        r.y[i] = out * gate;
        r.y_scale[i] = scale * std::abs(gate);
      }
      for (int64_t n = 0; n < N; ++n) {
        r.final_state[row * N + n] = h[n];
        r.state_scale[row * N + n] = sum_abs[n];
      }
    }
  return r;
}

// |actual - expected| <= bound[i] for every element.
void check_within(const std::vector<double>& actual, const std::vector<double>& expected,
                  const std::vector<double>& bound, const char* what) {
  REQUIRE(actual.size() == expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    INFO(what, " element ", i, ": ", actual[i], " vs ", expected[i], ", allowed ", bound[i]);
    CHECK(std::abs(actual[i] - expected[i]) <= bound[i]);
  }
}

}  // namespace

TEST_CASE("selective_scan_step stepped through a sequence reproduces selective_scan in float64") {
  uint64_t seed = 100;
  for (int64_t N : {1, 4, 16})
    for (int64_t groups : {1, 2, 4})
      for (int mask = 0; mask < 16; ++mask) {
        const Config c = with_mask({.batch = 2, .d_inner = 4, .L = 6, .N = N, .groups = groups}, mask);
        CAPTURE(N); CAPTURE(groups); CAPTURE(mask);
        const Seq s = make_seq(c, seed += 20);
        const SelectiveScanResult full = run_full(s);
        auto [y, state] = run_steps(s);
        CHECK(state.dtype() == DType::f64);
        check_close(from_vector<double>(y, {c.batch, c.d_inner, c.L}), full.y.to_double_vector(), 1e-12);
        check_close(state, full.final_state.to_double_vector(), 1e-12);
        const Reference ref = reference(s);
        check_close(from_vector<double>(y, {c.batch, c.d_inner, c.L}), ref.y, 1e-12);
        check_close(state, ref.final_state, 1e-12);
      }
}

TEST_CASE("selective_scan_step in f32 and bf16 matches selective_scan to the rounding of an f32 state") {
  // The full op keeps the state in double; the steps round it to f32 after every token. Both see
  // the same (rounded) inputs, so their difference is bounded by 2^-24 per step and state (decays
  // are <= 1), plus each side's rounding of y; the bounds below allow twice that.
  constexpr double kEps32 = 0x1p-24, kEps16 = 0x1p-8;
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t groups : {1, 2, 8})
      for (int mask = 0; mask < 16; ++mask) {
        const Config c = with_mask({.batch = 2, .d_inner = 8, .L = 12, .N = 16, .groups = groups}, mask);
        CAPTURE(dtype); CAPTURE(groups); CAPTURE(mask);
        const Seq s = cast_seq(make_seq(c, seed += 20), dtype);
        const SelectiveScanResult full = run_full(s);
        auto [y, state] = run_steps(s);
        CHECK(state.dtype() == DType::f32);
        const Reference ref = reference(s);
        const std::vector<double> full_y = full.y.to_double_vector();
        std::vector<double> y_bound(y.size()), state_bound(ref.state_scale.size());
        for (size_t i = 0; i < y.size(); ++i)
          y_bound[i] = 4 * kEps32 * (ref.y_scale[i] + std::abs(ref.y[i])) +
                       (dtype == DType::bf16 ? 2 * kEps16 * std::abs(ref.y[i]) : 0.0);
        for (size_t i = 0; i < state_bound.size(); ++i) state_bound[i] = 4 * kEps32 * ref.state_scale[i];
        check_within(y, full_y, y_bound, "y");
        check_within(state.to_double_vector(), full.final_state.to_double_vector(), state_bound, "state");
      }
}

TEST_CASE("one f32 or bf16 step is the float64 step on the same values, rounded once") {
  uint64_t seed = 2000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int mask = 0; mask < 16; ++mask) {
      const Config c = with_mask({.batch = 3, .d_inner = 6, .L = 1, .N = 5, .groups = 3}, mask);
      CAPTURE(dtype); CAPTURE(mask);
      const Seq low = cast_seq(make_seq(c, seed += 20), dtype);
      const Seq exact = cast_seq(low, DType::f64);
      NoGradGuard no_grad;
      Tensor state_low = clone(low.h0), state_exact = clone(exact.h0);
      const Tensor y_low = run_step(state_low, low, 0), y_exact = run_step(state_exact, exact, 0);
      CHECK(y_low.to_double_vector() == to_dtype(y_exact, dtype).to_double_vector());
      CHECK(state_low.to_double_vector() == to_dtype(state_exact, DType::f32).to_double_vector());
    }
}

TEST_CASE("selective_scan_step results do not depend on the thread count") {
  const Seq s = cast_seq(make_seq({.batch = 3, .d_inner = 130, .L = 5, .N = 16, .groups = 2}, 3000), DType::f32);
  auto steps = [&](int threads) {
    set_num_threads(threads);
    auto [y, state] = run_steps(s);
    return std::pair{y, state.to_double_vector()};
  };
  const int previous = num_threads();
  const auto one = steps(1), many = steps(4);
  set_num_threads(previous);
  CHECK(one == many);
}

TEST_CASE("selective_scan_step handles an empty batch") {
  const Seq s = make_seq({.batch = 0, .d_inner = 4, .L = 1, .N = 3, .groups = 2}, 4000);
  Tensor state = clone(s.h0);
  const Tensor y = run_step(state, s, 0);
  CHECK(y.shape() == Shape{0, 4});
}

TEST_CASE("selective_scan_step is for inference: inputs requiring grad need NoGradGuard") {
  const Seq s = make_seq({.batch = 2, .d_inner = 4, .L = 1, .N = 3}, 5000);
  Tensor state = clone(s.h0);
  Tensor u = select(s.u, 2, 0).detach().set_requires_grad(true);
  auto call = [&] {
    return selective_scan_step(state, u, select(s.delta, 2, 0), s.A, select(s.B, 3, 0), select(s.C, 3, 0));
  };
  CHECK_THROWS_WITH_AS(call(), doctest::Contains("selective_scan_step: the step op is for inference and has no "
                                                 "gradient, but u f64[2, 4] on cpu requires grad; run it under "
                                                 "NoGradGuard"),
                       Error);
  Tensor A = s.A.detach().set_requires_grad(true);
  CHECK_THROWS_WITH_AS(selective_scan_step(state, select(s.u, 2, 0), select(s.delta, 2, 0), A, select(s.B, 3, 0),
                                           select(s.C, 3, 0)),
                       doctest::Contains("but A f64[4, 3] on cpu requires grad"), Error);
  Tensor grad_state = clone(s.h0).set_requires_grad(true);
  CHECK_THROWS_WITH_AS(selective_scan_step(grad_state, select(s.u, 2, 0), select(s.delta, 2, 0), s.A,
                                           select(s.B, 3, 0), select(s.C, 3, 0)),
                       doctest::Contains("but state f64[2, 4, 3] on cpu requires grad"), Error);
  CHECK(state.to_double_vector() == s.h0.to_double_vector());  // a rejected call leaves the state alone
  NoGradGuard no_grad;
  const Tensor y = call();
  CHECK(!y.requires_grad());
  CHECK(state.to_double_vector() != s.h0.to_double_vector());
}

TEST_CASE("selective_scan_step rejects bad inputs naming the tensor and the shapes") {
  const Tensor state = zeros({2, 4, 16}), u = zeros({2, 4}), delta = zeros({2, 4}), A = zeros({4, 16});
  const Tensor B = zeros({2, 1, 16}), C = zeros({2, 1, 16});
  auto fails = [](auto&& call, const std::string& message) {
    CHECK_THROWS_WITH_AS(call(), doctest::Contains(("selective_scan_step: " + message).c_str()), Error);
  };
  fails([&] { selective_scan_step(state, zeros({2, 4, 1}), delta, A, B, C); },
        "expected u of shape (batch, d_inner) but found f32[2, 4, 1]");
  fails([&] { selective_scan_step(state, Tensor(), delta, A, B, C); }, "u is an undefined tensor");
  fails([&] { selective_scan_step(state, u, zeros({2, 5}), A, B, C); },
        "expected delta of shape (batch, d_inner) = [2, 4] but found f32[2, 5] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, B, C, Tensor(), zeros({4, 2})); },
        "expected z of shape (batch, d_inner) = [2, 4] but found f32[4, 2] on cpu");
  fails([&] { selective_scan_step(state, u, delta, zeros({3, 16}), B, C); },
        "expected A of shape (d_inner, N) = [4, N] with N >= 1 but found f32[3, 16] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, zeros({2, 1, 16, 1}), C); },
        "expected B of shape (batch, groups, N) = [2, groups, 16] but found f32[2, 1, 16, 1] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, zeros({2, 3, 16}), zeros({2, 3, 16})); },
        "the groups = 3 of B f32[2, 3, 16] on cpu must divide d_inner = 4 of u f32[2, 4] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, B, zeros({2, 2, 16})); },
        "expected C of shape (batch, groups, N) = [2, 1, 16] but found f32[2, 2, 16] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, B, C, zeros({5})); },
        "expected D of shape (d_inner) = [4] but found f32[5] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, B, C, Tensor(), Tensor(), zeros({4, 1})); },
        "expected delta_bias of shape (d_inner) = [4] but found f32[4, 1] on cpu");
  fails([&] { selective_scan_step(zeros({2, 4, 8}), u, delta, A, B, C); },
        "expected state of shape (batch, d_inner, N) = [2, 4, 16] but found f32[2, 4, 8] on cpu");
  fails([&] { selective_scan_step(Tensor(), u, delta, A, B, C); }, "state is an undefined tensor");
  // dtypes: f16 or integer inputs, a mix of input dtypes, parameters or state not f32.
  fails([&] { selective_scan_step(state, zeros({2, 4}, {.dtype = DType::f16}), delta, A, B, C); },
        "expected u to be f32, bf16 or f64 but found f16[2, 4] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, zeros({2, 1, 16}, {.dtype = DType::bf16}), C); },
        "expected B of u's dtype f32 but found bf16[2, 1, 16] on cpu");
  fails([&] { selective_scan_step(state, u, delta, A, B, C, zeros({4}, {.dtype = DType::f64})); },
        "expected D to be f32 (the parameter dtype for f32 inputs) but found f64[4] on cpu");
  const TensorOptions bf16{.dtype = DType::bf16};
  fails([&] { selective_scan_step(zeros({2, 4, 16}, bf16), zeros({2, 4}, bf16), zeros({2, 4}, bf16), A,
                                  zeros({2, 1, 16}, bf16), zeros({2, 1, 16}, bf16)); },
        "expected state to be f32 (the parameter dtype for bf16 inputs) but found bf16[2, 4, 16] on cpu");
  const TensorOptions f64{.dtype = DType::f64};
  fails([&] { selective_scan_step(state, zeros({2, 4}, f64), zeros({2, 4}, f64), zeros({4, 16}, f64),
                                  zeros({2, 1, 16}, f64), zeros({2, 1, 16}, f64)); },
        "expected state to be f64 (the parameter dtype for f64 inputs) but found f32[2, 4, 16] on cpu");
  // The state is written in place: a strided view of it is refused.
  const Tensor strided_state = transpose(zeros({2, 16, 4}), 1, 2);
  fails([&] { selective_scan_step(strided_state, u, delta, A, B, C); },
        "state is updated in place and must be contiguous, but found f32[2, 4, 16] on cpu with strides [64, 1, 4]");
}
