// ssd_step: stepping a sequence token by token reproduces ssd (y one time step a call, the final
// state left in `state`) in f64 to 1e-12 and in f32/bf16 to the rounding of an f32 state, with
// and without every option, D per head or per channel, several group counts and chunk sizes of
// the full op; one f32/bf16 step is the f64 step rounded once; thread-count independence;
// inference-only and bad-input errors.
#include <cmath>

#include "autograd/grad_mode.h"
#include "core/parallel.h"
#include "ops/ssd.h"
#include "ops/ssd_step.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

enum class Skip { none, per_head, per_channel };  // D absent, (heads), (heads, headdim)

struct Config {
  int64_t batch = 2, L = 6, heads = 4, headdim = 3, N = 4, groups = 1;
  Skip D = Skip::per_head;
  bool z = true, bias = true, softplus = true;
};

// mask bits: z, bias, softplus; D cycles through none / per head / per channel.
Config with_mask(Config c, int mask) {
  c.z = mask & 1;
  c.bias = mask & 2;
  c.softplus = mask & 4;
  c.D = Skip((mask >> 3) % 3);
  return c;
}

// A whole sequence's inputs in ssd's layout; h0 is the state the steps start from.
struct Seq {
  Tensor x, dt, A, B, C, D, z, bias, h0;
  bool softplus = false;
};

// Random f64 inputs in a Mamba-2 layer's ranges: A < 0 and Δ > 0, so every step's decay is in (0, 1).
Seq make_seq(const Config& c, uint64_t seed) {
  auto make = [&](const Shape& shape, double low, double high) {
    return random_tensor(shape, ++seed, DType::f64, low, high);
  };
  const Shape xs{c.batch, c.L, c.heads, c.headdim}, dts{c.batch, c.L, c.heads}, bc{c.batch, c.L, c.groups, c.N};
  Seq s;
  s.softplus = c.softplus;
  s.x = make(xs, -1.0, 1.0);
  s.dt = c.softplus ? make(dts, -2.0, 1.0) : make(dts, 0.05, 1.0);
  s.A = make({c.heads}, -2.0, -0.1);
  s.B = make(bc, -1.0, 1.0);
  s.C = make(bc, -1.0, 1.0);
  if (c.D == Skip::per_head) s.D = make({c.heads}, -1.0, 1.0);
  if (c.D == Skip::per_channel) s.D = make({c.heads, c.headdim}, -1.0, 1.0);
  if (c.z) s.z = make(xs, -2.0, 2.0);
  if (c.bias) s.bias = c.softplus ? make({c.heads}, -1.0, 1.0) : make({c.heads}, 0.0, 0.2);
  s.h0 = make({c.batch, c.heads, c.headdim, c.N}, -1.0, 1.0);
  return s;
}

// x, dt, B, C, z in `input`; A, D, bias, h0 in the matching parameter dtype.
Seq cast_seq(const Seq& s, DType input) {
  const DType param = input == DType::f64 ? DType::f64 : DType::f32;
  auto cast = [](const Tensor& t, DType d) { return t.defined() ? to_dtype(t, d) : Tensor(); };
  return {cast(s.x, input), cast(s.dt, input), cast(s.A, param), cast(s.B, input), cast(s.C, input),
          cast(s.D, param), cast(s.z, input),  cast(s.bias, param), cast(s.h0, param), s.softplus};
}

SsdResult run_full(const Seq& s, int64_t chunk_size) {
  NoGradGuard no_grad;
  return ssd(s.x, s.dt, s.A, s.B, s.C, s.D, s.z, s.bias, s.softplus, chunk_size, s.h0);
}

// Token t's inputs (non-contiguous slices of the sequence when L > 1) into the step op.
Tensor run_step(const Tensor& state, const Seq& s, int64_t t) {
  const Tensor z = s.z.defined() ? select(s.z, 1, t) : Tensor();
  return ssd_step(state, select(s.x, 1, t), select(s.dt, 1, t), s.A, select(s.B, 1, t), select(s.C, 1, t), s.D, z,
                  s.bias, s.softplus);
}

// Steps through the whole sequence from h0; returns y as (batch, L, heads, headdim) values and the state.
std::pair<std::vector<double>, Tensor> run_steps(const Seq& s) {
  NoGradGuard no_grad;
  const int64_t batch = s.x.shape()[0], L = s.x.shape()[1], per_token = s.x.shape()[2] * s.x.shape()[3];
  Tensor state = clone(s.h0);
  std::vector<double> y(size_t(batch * L * per_token));
  for (int64_t t = 0; t < L; ++t) {
    Tensor yt = run_step(state, s, t);
    REQUIRE(yt.shape() == Shape{batch, s.x.shape()[2], s.x.shape()[3]});
    REQUIRE(yt.dtype() == s.x.dtype());
    CHECK(!yt.requires_grad());
    const std::vector<double> v = yt.to_double_vector();
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < per_token; ++i) y[size_t((b * L + t) * per_token + i)] = v[size_t(b * per_token + i)];
  }
  return {y, state};
}

// Naive float64 loop of the recurrence on s's values. Besides y and the final state it returns
// error scales of an f32 state rounded after every step (decays are <= 1, so the rounding errors
// add up): y_scale = |silu(z)| Σ_n |C_t[n]| Σ_{s<t} |h_s[p, n]|, state_scale = Σ_{s<L} |h_s[p, n]|.
struct Reference {
  std::vector<double> y, final_state, y_scale, state_scale;
};

Reference reference(const Seq& s) {
  const int64_t Bn = s.x.shape()[0], L = s.x.shape()[1], H = s.x.shape()[2], P = s.x.shape()[3];
  const int64_t G = s.B.shape()[2], N = s.B.shape()[3];
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const auto x = values(s.x), dt = values(s.dt), A = values(s.A), B = values(s.B), C = values(s.C);
  const auto D = values(s.D), z = values(s.z), bias = values(s.bias), h0 = values(s.h0);
  Reference r;
  r.y.assign(x.size(), 0.0);
  r.y_scale.assign(x.size(), 0.0);
  r.final_state.assign(size_t(Bn * H * P * N), 0.0);
  r.state_scale.assign(r.final_state.size(), 0.0);
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G), base = (b * H + h) * P * N;
      std::vector<double> st(h0.begin() + base, h0.begin() + base + P * N), sum_abs(size_t(P * N), 0.0);
      for (int64_t t = 0; t < L; ++t) {
        double delta = dt[size_t((b * L + t) * H + h)] + (bias.empty() ? 0.0 : bias[size_t(h)]);
        if (s.softplus) delta = std::log1p(std::exp(delta));
        for (int64_t p = 0; p < P; ++p) {
          const size_t i = size_t(((b * L + t) * H + h) * P + p);
          double out = 0.0, scale = 0.0;
          for (int64_t n = 0; n < N; ++n) {
            const size_t k = size_t(((b * L + t) * G + g) * N + n), j = size_t(p * N + n);
            st[j] = std::exp(delta * A[size_t(h)]) * st[j] + delta * x[i] * B[k];
            out += C[k] * st[j];
            scale += std::abs(C[k]) * sum_abs[j];
            sum_abs[j] += std::abs(st[j]);
          }
          if (!D.empty()) out += (D.size() == size_t(H) ? D[size_t(h)] : D[size_t(h * P + p)]) * x[i];
          const double gate = z.empty() ? 1.0 : z[i] / (1.0 + std::exp(-z[i]));
          r.y[i] = out * gate;
          r.y_scale[i] = scale * std::abs(gate);
        }
      }
      std::copy(st.begin(), st.end(), r.final_state.begin() + base);
      std::copy(sum_abs.begin(), sum_abs.end(), r.state_scale.begin() + base);
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

TEST_CASE("ssd_step stepped through a sequence reproduces ssd in float64") {
  uint64_t seed = 100;
  for (int64_t N : {1, 4, 16})
    for (int64_t groups : {1, 2, 4})
      for (int mask = 0; mask < 24; ++mask) {
        const Config c = with_mask({.batch = 2, .L = 6, .heads = 4, .headdim = 3, .N = N, .groups = groups}, mask);
        CAPTURE(N); CAPTURE(groups); CAPTURE(mask);
        const Seq s = make_seq(c, seed += 20);
        auto [y, state] = run_steps(s);
        CHECK(state.dtype() == DType::f64);
        const Reference ref = reference(s);
        check_close(from_vector<double>(y, s.x.shape()), ref.y, 1e-12);
        check_close(state, ref.final_state, 1e-12);
        for (int64_t chunk : {1, 4, 256}) {  // the chunk size does not change ssd's result
          CAPTURE(chunk);
          const SsdResult full = run_full(s, chunk);
          check_close(from_vector<double>(y, s.x.shape()), full.y.to_double_vector(), 1e-12);
          check_close(state, full.final_state.to_double_vector(), 1e-12);
        }
      }
}

TEST_CASE("ssd_step in f32 and bf16 matches ssd to the rounding of an f32 state") {
  // The full op keeps the state in double; the steps round it to f32 after every token. Both see
  // the same (rounded) inputs, so their difference is bounded by 2^-24 per step and state (decays
  // are <= 1), plus each side's rounding of y; the bounds below allow twice that.
  constexpr double kEps32 = 0x1p-24, kEps16 = 0x1p-8;
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t groups : {1, 2, 8})
      for (int mask = 0; mask < 24; ++mask) {
        const Config c =
            with_mask({.batch = 2, .L = 12, .heads = 8, .headdim = 5, .N = 16, .groups = groups}, mask);
        CAPTURE(dtype); CAPTURE(groups); CAPTURE(mask);
        const Seq s = cast_seq(make_seq(c, seed += 20), dtype);
        const SsdResult full = run_full(s, 4);
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

TEST_CASE("one f32 or bf16 ssd_step is the float64 step on the same values, rounded once") {
  uint64_t seed = 2000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int mask = 0; mask < 24; ++mask) {
      const Config c = with_mask({.batch = 3, .L = 1, .heads = 6, .headdim = 4, .N = 5, .groups = 3}, mask);
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

TEST_CASE("ssd_step results do not depend on the thread count") {
  const Seq s = cast_seq(
      make_seq({.batch = 3, .L = 5, .heads = 24, .headdim = 16, .N = 32, .groups = 2}, 3000), DType::f32);
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

TEST_CASE("ssd_step handles an empty batch") {
  const Seq s = make_seq({.batch = 0, .L = 1, .heads = 4, .headdim = 3, .N = 3, .groups = 2}, 4000);
  Tensor state = clone(s.h0);
  NoGradGuard no_grad;
  const Tensor y = run_step(state, s, 0);
  CHECK(y.shape() == Shape{0, 4, 3});
}

TEST_CASE("ssd_step is for inference: inputs requiring grad need NoGradGuard") {
  const Seq s = make_seq({.batch = 2, .L = 1, .heads = 4, .headdim = 3, .N = 3}, 5000);
  Tensor state = clone(s.h0);
  Tensor x = select(s.x, 1, 0).detach().set_requires_grad(true);
  auto call = [&] { return ssd_step(state, x, select(s.dt, 1, 0), s.A, select(s.B, 1, 0), select(s.C, 1, 0)); };
  CHECK_THROWS_WITH_AS(call(), doctest::Contains("ssd_step: the step op is for inference and has no gradient, but x "
                                                 "f64[2, 4, 3] on cpu requires grad; run it under NoGradGuard"),
                       Error);
  Tensor A = s.A.detach().set_requires_grad(true);
  CHECK_THROWS_WITH_AS(ssd_step(state, select(s.x, 1, 0), select(s.dt, 1, 0), A, select(s.B, 1, 0), select(s.C, 1, 0)),
                       doctest::Contains("but A f64[4] on cpu requires grad"), Error);
  Tensor grad_state = clone(s.h0).set_requires_grad(true);
  CHECK_THROWS_WITH_AS(ssd_step(grad_state, select(s.x, 1, 0), select(s.dt, 1, 0), s.A, select(s.B, 1, 0),
                                select(s.C, 1, 0)),
                       doctest::Contains("but state f64[2, 4, 3, 3] on cpu requires grad"), Error);
  CHECK(state.to_double_vector() == s.h0.to_double_vector());  // a rejected call leaves the state alone
  NoGradGuard no_grad;
  const Tensor y = call();
  CHECK(!y.requires_grad());
  CHECK(state.to_double_vector() != s.h0.to_double_vector());
}

TEST_CASE("ssd_step rejects bad inputs naming the tensor and the shapes") {
  const Tensor state = zeros({2, 4, 3, 8}), x = zeros({2, 4, 3}), dt = zeros({2, 4}), A = zeros({4});
  const Tensor B = zeros({2, 1, 8}), C = zeros({2, 1, 8});
  auto fails = [](auto&& call, const std::string& message) {
    CHECK_THROWS_WITH_AS(call(), doctest::Contains(("ssd_step: " + message).c_str()), Error);
  };
  fails([&] { ssd_step(state, zeros({2, 12}), dt, A, B, C); },
        "expected x of shape (batch, heads, headdim) but found f32[2, 12]");
  fails([&] { ssd_step(state, Tensor(), dt, A, B, C); }, "x is an undefined tensor");
  fails([&] { ssd_step(state, x, zeros({2, 5}), A, B, C); },
        "expected dt of shape (batch, heads) = [2, 4] but found f32[2, 5] on cpu");
  fails([&] { ssd_step(state, x, dt, A, B, C, Tensor(), zeros({2, 3, 4})); },
        "expected z of shape (batch, heads, headdim) = [2, 4, 3] but found f32[2, 3, 4] on cpu");
  fails([&] { ssd_step(state, x, dt, zeros({4, 1}), B, C); },
        "expected A of shape (heads) = [4] but found f32[4, 1] on cpu");
  fails([&] { ssd_step(state, x, dt, A, zeros({2, 1, 8, 1}), C); },
        "expected B of shape (batch, ngroups, N) = [2, ngroups, N] with N >= 1 but found f32[2, 1, 8, 1] on cpu");
  fails([&] { ssd_step(state, x, dt, A, zeros({2, 3, 8}), zeros({2, 3, 8})); },
        "the ngroups = 3 of B f32[2, 3, 8] on cpu must divide heads = 4 of x f32[2, 4, 3] on cpu");
  fails([&] { ssd_step(state, x, dt, A, B, zeros({2, 2, 8})); },
        "expected C of shape (batch, ngroups, N) = [2, 1, 8] but found f32[2, 2, 8] on cpu");
  fails([&] { ssd_step(state, x, dt, A, B, C, zeros({3})); },
        "expected D of shape (heads) = [4] or (heads, headdim) = [4, 3] but found f32[3] on cpu");
  fails([&] { ssd_step(state, x, dt, A, B, C, Tensor(), Tensor(), zeros({4, 1})); },
        "expected dt_bias of shape (heads) = [4] but found f32[4, 1] on cpu");
  fails([&] { ssd_step(zeros({2, 4, 3, 7}), x, dt, A, B, C); },
        "expected state of shape (batch, heads, headdim, N) = [2, 4, 3, 8] but found f32[2, 4, 3, 7] on cpu");
  fails([&] { ssd_step(Tensor(), x, dt, A, B, C); }, "state is an undefined tensor");
  // dtypes: f16 or integer inputs, a mix of input dtypes, parameters or state not f32.
  fails([&] { ssd_step(state, zeros({2, 4, 3}, {.dtype = DType::f16}), dt, A, B, C); },
        "expected x to be f32, bf16 or f64 but found f16[2, 4, 3] on cpu");
  fails([&] { ssd_step(state, x, dt, A, zeros({2, 1, 8}, {.dtype = DType::bf16}), C); },
        "expected B of x's dtype f32 but found bf16[2, 1, 8] on cpu");
  fails([&] { ssd_step(state, x, dt, A, B, C, zeros({4}, {.dtype = DType::f64})); },
        "expected D to be f32 (the parameter dtype for f32 inputs) but found f64[4] on cpu");
  const TensorOptions bf16{.dtype = DType::bf16};
  fails([&] { ssd_step(zeros({2, 4, 3, 8}, bf16), zeros({2, 4, 3}, bf16), zeros({2, 4}, bf16), A,
                       zeros({2, 1, 8}, bf16), zeros({2, 1, 8}, bf16)); },
        "expected state to be f32 (the parameter dtype for bf16 inputs) but found bf16[2, 4, 3, 8] on cpu");
  const TensorOptions f64{.dtype = DType::f64};
  fails([&] { ssd_step(state, zeros({2, 4, 3}, f64), zeros({2, 4}, f64), zeros({4}, f64), zeros({2, 1, 8}, f64),
                       zeros({2, 1, 8}, f64)); },
        "expected state to be f64 (the parameter dtype for f64 inputs) but found f32[2, 4, 3, 8] on cpu");
  // The state is written in place: a strided view of it is refused.
  const Tensor strided_state = transpose(zeros({2, 4, 8, 3}), 2, 3);
  fails([&] { ssd_step(strided_state, x, dt, A, B, C); },
        "state is updated in place and must be contiguous, but found f32[2, 4, 3, 8] on cpu with strides [96, 24, 1, 3]");
}
