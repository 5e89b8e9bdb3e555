#include <cmath>

#include "core/parallel.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/selective_scan.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Config {
  int64_t batch = 2, d_inner = 4, L = 5, N = 3, groups = 1;
  bool D = true, z = true, bias = true, softplus = true, h0 = true;
};

// The scan's inputs in argument order; the optional ones undefined when the config leaves them out.
struct Inputs {
  Tensor u, delta, A, B, C, D, z, bias, h0;
  bool softplus = false;
  std::vector<Tensor> list() const { return {u, delta, A, B, C, D, z, bias, h0}; }
};

SelectiveScanResult run(const std::vector<Tensor>& in, bool softplus) {
  return selective_scan(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], softplus, in[8]);
}
SelectiveScanResult run(const Inputs& in) { return run(in.list(), in.softplus); }

// Random f64 inputs in the ranges a Mamba layer sees: A < 0, Δ > 0 without softplus. `leaf`
// makes them leaves requiring grad; `transposed` makes them non-contiguous views.
Inputs make_inputs(const Config& c, uint64_t seed, bool leaf = false, bool transposed = false) {
  auto make = [&](const Shape& shape, double low, double high) {
    ++seed;
    if (transposed) {  // a transposed view (2-d and up) or every other element (1-d)
      Tensor t = shape.size() >= 2 ? transposed_leaf(shape, seed).detach()
                                   : as_strided(zeros({2 * shape[0]}, {.dtype = DType::f64}), shape, {2}, 1);
      copy_into(t, random_tensor(shape, seed, DType::f64, low, high));
      return leaf ? t.set_requires_grad(true) : t;
    }
    return leaf ? random_leaf(shape, seed, low, high) : random_tensor(shape, seed, DType::f64, low, high);
  };
  const Shape rows{c.batch, c.d_inner, c.L}, bc{c.batch, c.groups, c.N, c.L};
  Inputs in;
  in.softplus = c.softplus;
  in.u = make(rows, -1.0, 1.0);
  in.delta = c.softplus ? make(rows, -2.0, 1.0) : make(rows, 0.05, 1.0);
  in.A = make({c.d_inner, c.N}, -2.0, -0.1);
  in.B = make(bc, -1.0, 1.0);
  in.C = make(bc, -1.0, 1.0);
  if (c.D) in.D = make({c.d_inner}, -1.0, 1.0);
  if (c.z) in.z = make(rows, -2.0, 2.0);
  if (c.bias) in.bias = c.softplus ? make({c.d_inner}, -1.0, 1.0) : make({c.d_inner}, 0.0, 0.2);
  if (c.h0) in.h0 = make({c.batch, c.d_inner, c.N}, -1.0, 1.0);
  return in;
}

// Naive float64 loop of the definition in ops/selective_scan.h; returns {y, final_state}.
std::pair<std::vector<double>, std::vector<double>> reference(const Inputs& in) {
  const int64_t Bn = in.u.shape()[0], Dn = in.u.shape()[1], L = in.u.shape()[2];
  const int64_t N = in.A.shape()[1], G = in.B.shape()[1];
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const auto u = values(in.u), delta = values(in.delta), A = values(in.A), B = values(in.B), C = values(in.C);
  const auto D = values(in.D), z = values(in.z), bias = values(in.bias), h0 = values(in.h0);
  std::vector<double> y(size_t(Bn * Dn * L)), final_state(size_t(Bn * Dn * N));
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t d = 0; d < Dn; ++d) {
      const int64_t g = d / (Dn / G);
      std::vector<double> h(size_t(N), 0.0);
      for (int64_t n = 0; n < N; ++n) h[n] = h0.empty() ? 0.0 : h0[(b * Dn + d) * N + n];
      for (int64_t t = 0; t < L; ++t) {
        const size_t i = size_t((b * Dn + d) * L + t);
        double dt = delta[i] + (bias.empty() ? 0.0 : bias[d]);
        if (in.softplus) dt = std::log1p(std::exp(dt));
        double out = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          const size_t bc = size_t(((b * G + g) * N + n) * L + t);
          h[n] = std::exp(dt * A[d * N + n]) * h[n] + dt * B[bc] * u[i];
          out += C[bc] * h[n];
        }
        if (!D.empty()) out += D[d] * u[i];
        if (!z.empty()) out *= z[i] / (1.0 + std::exp(-z[i]));
        y[i] = out;
      }
      for (int64_t n = 0; n < N; ++n) final_state[(b * Dn + d) * N + n] = h[n];
    }
  return {y, final_state};
}

// Loss using both outputs: sum(y * wy) + sum(final_state * wf), built from ops.
Tensor combined_loss(const SelectiveScanResult& r, const Tensor& wy, const Tensor& wf) {
  return sum(r.y * wy) + sum(r.final_state * wf);
}

// Casts the f64 inputs to the input dtype (u, delta, B, C, z) and f32 parameters.
Inputs cast_inputs(const Inputs& in, DType input) {
  auto cast = [](const Tensor& t, DType d) {
    return t.defined() ? to_dtype(t.detach(), d).set_requires_grad(true) : Tensor();
  };
  return {cast(in.u, input),  cast(in.delta, input), cast(in.A, DType::f32),
          cast(in.B, input),  cast(in.C, input),     cast(in.D, DType::f32),
          cast(in.z, input),  cast(in.bias, DType::f32), cast(in.h0, DType::f32), in.softplus};
}

Inputs to_f64_leaves(const Inputs& in) {
  auto cast = [](const Tensor& t) {
    return t.defined() ? to_dtype(t.detach(), DType::f64).set_requires_grad(true) : Tensor();
  };
  return {cast(in.u), cast(in.delta), cast(in.A), cast(in.B), cast(in.C),
          cast(in.D), cast(in.z), cast(in.bias), cast(in.h0), in.softplus};
}

}  // namespace

TEST_CASE("selective_scan matches a float64 loop for every length, state size, group count and option") {
  uint64_t seed = 1000;
  for (int64_t L : {1, 2, 7, 33})
    for (int64_t N : {1, 4, 16})
      for (int64_t groups : {1, 2})
        for (int mask = 0; mask < 32; ++mask) {
          Config c{.batch = 2, .d_inner = 4, .L = L, .N = N, .groups = groups, .D = bool(mask & 1),
                   .z = bool(mask & 2), .bias = bool(mask & 4), .softplus = bool(mask & 8), .h0 = bool(mask & 16)};
          CAPTURE(L); CAPTURE(N); CAPTURE(groups); CAPTURE(mask);
          Inputs in = make_inputs(c, seed += 20);
          SelectiveScanResult r = run(in);
          CHECK(r.y.shape() == Shape{2, 4, L});
          CHECK(r.final_state.shape() == Shape{2, 4, N});
          CHECK(r.y.dtype() == DType::f64);
          CHECK(r.final_state.dtype() == DType::f64);
          auto [y, final_state] = reference(in);
          check_close(r.y, y, 1e-12);
          check_close(r.final_state, final_state, 1e-12);
        }
}

TEST_CASE("selective_scan reads non-contiguous inputs through their strides") {
  for (bool softplus : {false, true}) {
    CAPTURE(softplus);
    Inputs in = make_inputs({.batch = 2, .d_inner = 6, .L = 9, .N = 5, .groups = 3, .softplus = softplus}, 2000,
                            false, true);
    REQUIRE(!in.u.is_contiguous());
    REQUIRE(!in.B.is_contiguous());
    auto [y, final_state] = reference(in);
    SelectiveScanResult r = run(in);
    check_close(r.y, y, 1e-12);
    check_close(r.final_state, final_state, 1e-12);
  }
}

TEST_CASE("selective_scan passes gradcheck of every input through y and final_state") {
  uint64_t seed = 3000;
  const std::vector<Config> configs{
      {.batch = 2, .d_inner = 4, .L = 5, .N = 3, .groups = 2},
      {.batch = 2, .d_inner = 3, .L = 5, .N = 3, .groups = 1, .softplus = false},
      {.batch = 2, .d_inner = 4, .L = 5, .N = 3, .groups = 4, .z = false, .h0 = false},
      {.batch = 1, .d_inner = 4, .L = 5, .N = 2, .groups = 1, .D = false, .bias = false, .softplus = false},
      {.batch = 2, .d_inner = 2, .L = 1, .N = 3, .groups = 2},
  };
  for (const Config& c : configs)
    for (bool transposed : {false, true}) {
      CAPTURE(c.d_inner); CAPTURE(c.L); CAPTURE(c.groups); CAPTURE(c.softplus); CAPTURE(transposed);
      Inputs in = make_inputs(c, seed += 20, true, transposed);
      Tensor wy = random_tensor({c.batch, c.d_inner, c.L}, seed + 11);
      Tensor wf = random_tensor({c.batch, c.d_inner, c.N}, seed + 12);
      const bool sp = c.softplus;
      check_gradients([=](const std::vector<Tensor>& x) { return combined_loss(run(x, sp), wy, wf); }, in.list());
      // Each output alone: the other's gradient reaches the node as zeros.
      check_gradients([=](const std::vector<Tensor>& x) { return run(x, sp).y; }, in.list());
      check_gradients([=](const std::vector<Tensor>& x) { return run(x, sp).final_state; }, in.list());
    }
}

TEST_CASE("selective_scan gradcheck with some inputs constant and a non-contiguous output gradient") {
  Config c{.batch = 2, .d_inner = 4, .L = 4, .N = 3, .groups = 2};
  Inputs in = make_inputs(c, 4000, true);
  std::vector<Tensor> only_A_B = in.list();
  for (size_t i : {0, 1, 4, 5, 6, 7, 8}) only_A_B[i] = only_A_B[i].detach();
  check_gradients([&](const std::vector<Tensor>& x) { return run(x, true).y; }, only_A_B);
  // The y gradient arrives transposed, the final_state gradient broadcast (zero strides).
  check_gradients([&](const std::vector<Tensor>& x) {
    SelectiveScanResult r = run(x, true);
    return transpose(r.y, 0, 2) + sum(r.final_state);
  }, in.list());
}

TEST_CASE("selective_scan dB and dC sum over many channels of a group (several backward tasks)") {
  // 130 channels in one group: three tasks' partials (64 + 64 + 2 channels) meet in dB and dC.
  for (int64_t groups : {1, 2}) {
    CAPTURE(groups);
    Inputs in = make_inputs({.batch = 1, .d_inner = 130, .L = 2, .N = 1, .groups = groups}, 5000 + groups, true);
    std::vector<Tensor> x = in.list();
    for (size_t i : {0, 1, 2, 5, 6, 7, 8}) x[i] = x[i].detach();  // B and C only: few elements
    check_gradients([](const std::vector<Tensor>& v) { return run(v, true).y; }, x);
  }
}

TEST_CASE("selective_scan in f32 and bf16 matches the float64 reference, forward and backward") {
  Config c{.batch = 2, .d_inner = 8, .L = 33, .N = 16, .groups = 2};
  Inputs in64 = make_inputs(c, 6000);
  for (auto [dtype, tol] : {std::pair{DType::f32, 1e-6}, std::pair{DType::bf16, 4e-3}}) {
    CAPTURE(dtype);
    Inputs low = cast_inputs(in64, dtype);
    Inputs ref = to_f64_leaves(low);  // the same (rounded) values in f64: only the output rounding differs
    SelectiveScanResult r = run(low), r64 = run(ref);
    CHECK(r.y.dtype() == dtype);
    CHECK(r.final_state.dtype() == DType::f32);
    check_close(r.y, r64.y.to_double_vector(), tol);
    check_close(r.final_state, r64.final_state.to_double_vector(), 1e-6);
    // y's weight holds bf16-representable values, so both runs receive the same y gradient.
    Tensor wy = to_dtype(to_dtype(random_tensor(r.y.shape(), 6001), DType::bf16), DType::f32);
    Tensor wf = random_tensor(r.final_state.shape(), 6002, DType::f32);
    backward(sum(to_dtype(r.y, DType::f32) * wy) + sum(r.final_state * wf));
    backward(combined_loss(r64, to_dtype(wy, DType::f64), to_dtype(wf, DType::f64)));
    const std::vector<Tensor> a = low.list(), b = ref.list();
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(i);
      CHECK(a[i].grad().dtype() == a[i].dtype());
      // Input-dtype gradients are rounded to dtype, parameter gradients to f32.
      check_close(a[i].grad(), b[i].grad().to_double_vector(), a[i].dtype() == DType::f32 ? 1e-6 : tol);
    }
  }
}

TEST_CASE("selective_scan results do not depend on the thread count") {
  Inputs in = cast_inputs(make_inputs({.batch = 3, .d_inner = 130, .L = 20, .N = 8, .groups = 2}, 7000), DType::f32);
  auto grads = [&](int threads) {
    set_num_threads(threads);
    Inputs x = cast_inputs(in, DType::f32);
    SelectiveScanResult r = run(x);
    backward(sum(r.y * r.y) + sum(r.final_state));
    std::vector<std::vector<float>> out{r.y.to_vector<float>(), r.final_state.to_vector<float>()};
    for (const Tensor& t : x.list()) out.push_back(t.grad().to_vector<float>());
    return out;
  };
  const int previous = num_threads();
  auto one = grads(1);
  auto many = grads(4);
  set_num_threads(previous);
  CHECK(one == many);
}

TEST_CASE("selective_scan handles an empty batch") {
  Inputs in = make_inputs({.batch = 0, .d_inner = 4, .L = 3, .N = 2, .groups = 2}, 8000, true);
  SelectiveScanResult r = run(in);
  CHECK(r.y.shape() == Shape{0, 4, 3});
  CHECK(r.final_state.shape() == Shape{0, 4, 2});
  backward(sum(r.y) + sum(r.final_state));
  check_close(in.A.grad(), std::vector<double>(8, 0.0), 0.0);
}

TEST_CASE("selective_scan rejects bad inputs naming the tensor and the shapes") {
  const Tensor u = zeros({2, 4, 7}), delta = zeros({2, 4, 7}), A = zeros({4, 16});
  const Tensor B = zeros({2, 1, 16, 7}), C = zeros({2, 1, 16, 7});
  auto fails = [](auto&& call, const std::string& message) {
    CHECK_THROWS_WITH_AS(call(), doctest::Contains(("selective_scan: " + message).c_str()), Error);
  };
  fails([&] { selective_scan(zeros({4, 7}), delta, A, B, C); },
        "expected u of shape (batch, d_inner, L) with L >= 1 but found f32[4, 7]");
  fails([&] { selective_scan(zeros({2, 4, 0}), zeros({2, 4, 0}), A, zeros({2, 1, 16, 0}), zeros({2, 1, 16, 0})); },
        "expected u of shape (batch, d_inner, L) with L >= 1 but found f32[2, 4, 0]");
  fails([&] { selective_scan(u, zeros({2, 4, 6}), A, B, C); },
        "expected delta of shape (batch, d_inner, L) = [2, 4, 7] but found f32[2, 4, 6] on cpu");
  fails([&] { selective_scan(u, delta, A, B, C, Tensor(), zeros({2, 7, 4})); },
        "expected z of shape (batch, d_inner, L) = [2, 4, 7] but found f32[2, 7, 4] on cpu");
  fails([&] { selective_scan(u, delta, zeros({3, 16}), B, C); },
        "expected A of shape (d_inner, N) = [4, N] with N >= 1 but found f32[3, 16] on cpu");
  fails([&] { selective_scan(u, delta, zeros({4}), B, C); },
        "expected A of shape (d_inner, N) = [4, N] with N >= 1 but found f32[4] on cpu");
  fails([&] { selective_scan(u, delta, A, zeros({2, 1, 8, 7}), C); },
        "expected B of shape (batch, groups, N, L) = [2, groups, 16, 7] but found f32[2, 1, 8, 7] on cpu");
  fails([&] { selective_scan(u, delta, A, zeros({2, 16, 7}), C); },
        "expected B of shape (batch, groups, N, L) = [2, groups, 16, 7] but found f32[2, 16, 7] on cpu");
  fails([&] { selective_scan(u, delta, A, zeros({2, 3, 16, 7}), zeros({2, 3, 16, 7})); },
        "the groups = 3 of B f32[2, 3, 16, 7] on cpu must divide d_inner = 4 of u f32[2, 4, 7] on cpu");
  fails([&] { selective_scan(u, delta, A, B, zeros({2, 2, 16, 7})); },
        "expected C of shape (batch, groups, N, L) = [2, 1, 16, 7] but found f32[2, 2, 16, 7] on cpu");
  fails([&] { selective_scan(u, delta, A, B, C, zeros({5})); },
        "expected D of shape (d_inner) = [4] but found f32[5] on cpu");
  fails([&] { selective_scan(u, delta, A, B, C, Tensor(), Tensor(), zeros({4, 1})); },
        "expected delta_bias of shape (d_inner) = [4] but found f32[4, 1] on cpu");
  fails([&] { selective_scan(u, delta, A, B, C, Tensor(), Tensor(), Tensor(), true, zeros({2, 4, 8})); },
        "expected initial_state of shape (batch, d_inner, N) = [2, 4, 16] but found f32[2, 4, 8] on cpu");
  // dtypes: integers anywhere, f16 inputs, parameters not in f32, a mix of input dtypes.
  fails([&] { selective_scan(zeros({2, 4, 7}, {.dtype = DType::i64}), delta, A, B, C); },
        "expected u to be f32, bf16 or f64 but found i64[2, 4, 7] on cpu");
  fails([&] { selective_scan(zeros({2, 4, 7}, {.dtype = DType::f16}), delta, A, B, C); },
        "expected u to be f32, bf16 or f64 but found f16[2, 4, 7] on cpu");
  fails([&] { selective_scan(u, zeros({2, 4, 7}, {.dtype = DType::i32}), A, B, C); },
        "expected delta of u's dtype f32 but found i32[2, 4, 7] on cpu");
  fails([&] { selective_scan(u, delta, A, zeros({2, 1, 16, 7}, {.dtype = DType::bf16}), C); },
        "expected B of u's dtype f32 but found bf16[2, 1, 16, 7] on cpu");
  fails([&] { selective_scan(u, delta, zeros({4, 16}, {.dtype = DType::i64}), B, C); },
        "expected A to be f32 (the parameter dtype for f32 inputs) but found i64[4, 16] on cpu");
  const TensorOptions bf16{.dtype = DType::bf16};
  fails([&] { selective_scan(zeros({2, 4, 7}, bf16), zeros({2, 4, 7}, bf16), zeros({4, 16}, bf16),
                             zeros({2, 1, 16, 7}, bf16), zeros({2, 1, 16, 7}, bf16)); },
        "expected A to be f32 (the parameter dtype for bf16 inputs) but found bf16[4, 16] on cpu");
  fails([&] { selective_scan(u, delta, A, B, C, zeros({4}, {.dtype = DType::f64})); },
        "expected D to be f32 (the parameter dtype for f32 inputs) but found f64[4] on cpu");
  fails([&] { selective_scan(u, delta, A, B, C, Tensor(), Tensor(), Tensor(), false,
                             zeros({2, 4, 16}, bf16)); },
        "expected initial_state to be f32 (the parameter dtype for f32 inputs) but found bf16[2, 4, 16] on cpu");
  fails([&] { selective_scan(u, delta, Tensor(), B, C); }, "A is an undefined tensor");
  fails([&] { selective_scan(u, Tensor(), A, B, C); }, "delta is an undefined tensor");
}
