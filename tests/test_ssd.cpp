#include <cmath>

#include "core/parallel.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/ssd.h"
#include "ops/ssd_cpu.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

enum class Skip { none, per_head, per_channel };  // D absent, (heads), (heads, headdim)

struct Config {
  int64_t batch = 2, L = 5, heads = 4, headdim = 3, N = 4, groups = 1;
  Skip D = Skip::per_head;
  bool z = true, bias = true, softplus = true, h0 = true;
};

// The layer's inputs in argument order; the optional ones undefined when the config leaves them out.
struct Inputs {
  Tensor x, dt, A, B, C, D, z, bias, h0;
  bool softplus = false;
  std::vector<Tensor> list() const { return {x, dt, A, B, C, D, z, bias, h0}; }
  cpu::SsdArgs args() const { return {x, dt, A, B, C, D, z, bias, h0, softplus}; }
};

SsdResult run(const std::vector<Tensor>& in, bool softplus, int64_t chunk = 256) {
  return ssd(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], softplus, chunk, in[8]);
}
SsdResult run(const Inputs& in) { return run(in.list(), in.softplus); }

// Random f64 inputs in the ranges a Mamba-2 layer sees: A < 0, Δ > 0 without softplus. `leaf`
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
  const Shape xs{c.batch, c.L, c.heads, c.headdim}, dts{c.batch, c.L, c.heads}, bc{c.batch, c.L, c.groups, c.N};
  Inputs in;
  in.softplus = c.softplus;
  in.x = make(xs, -1.0, 1.0);
  in.dt = c.softplus ? make(dts, -2.0, 1.0) : make(dts, 0.05, 1.0);
  in.A = make({c.heads}, -2.0, -0.1);
  in.B = make(bc, -1.0, 1.0);
  in.C = make(bc, -1.0, 1.0);
  if (c.D == Skip::per_head) in.D = make({c.heads}, -1.0, 1.0);
  if (c.D == Skip::per_channel) in.D = make({c.heads, c.headdim}, -1.0, 1.0);
  if (c.z) in.z = make(xs, -2.0, 2.0);
  if (c.bias) in.bias = c.softplus ? make({c.heads}, -1.0, 1.0) : make({c.heads}, 0.0, 0.2);
  if (c.h0) in.h0 = make({c.batch, c.heads, c.headdim, c.N}, -1.0, 1.0);
  return in;
}

// Naive float64 loop of the definition in ops/ssd.h. Returns y, the final state and the state
// after every step (batch, L, heads, headdim, N).
struct Reference {
  std::vector<double> y, final_state, states;
};
Reference reference(const Inputs& in) {
  const int64_t Bn = in.x.shape()[0], L = in.x.shape()[1], H = in.x.shape()[2], P = in.x.shape()[3];
  const int64_t G = in.B.shape()[2], N = in.B.shape()[3];
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const auto x = values(in.x), dt = values(in.dt), A = values(in.A), B = values(in.B), C = values(in.C);
  const auto D = values(in.D), z = values(in.z), bias = values(in.bias), h0 = values(in.h0);
  Reference r{std::vector<double>(x.size()), std::vector<double>(size_t(Bn * H * P * N)),
              std::vector<double>(size_t(Bn * L * H * P * N))};
  for (int64_t b = 0; b < Bn; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t g = h / (H / G);
      std::vector<double> s(size_t(P * N));
      for (int64_t i = 0; i < P * N; ++i) s[i] = h0.empty() ? 0.0 : h0[(b * H + h) * P * N + i];
      for (int64_t t = 0; t < L; ++t) {
        double delta = dt[(b * L + t) * H + h] + (bias.empty() ? 0.0 : bias[h]);
        if (in.softplus) delta = std::log1p(std::exp(delta));
        for (int64_t p = 0; p < P; ++p) {
          const size_t i = size_t(((b * L + t) * H + h) * P + p);
          double out = 0.0;
          for (int64_t n = 0; n < N; ++n) {
            const size_t k = size_t(((b * L + t) * G + g) * N + n);
            s[p * N + n] = std::exp(delta * A[h]) * s[p * N + n] + delta * x[i] * B[k];
            out += C[k] * s[p * N + n];
          }
          if (!D.empty()) out += (D.size() == size_t(H) ? D[h] : D[h * P + p]) * x[i];
          if (!z.empty()) out *= z[i] / (1.0 + std::exp(-z[i]));
          r.y[i] = out;
        }
        std::copy(s.begin(), s.end(), r.states.begin() + ((b * L + t) * H + h) * P * N);
      }
      std::copy(s.begin(), s.end(), r.final_state.begin() + (b * H + h) * P * N);
    }
  return r;
}

// Loss using both outputs: sum(y * wy) + sum(final_state * wf), built from ops.
Tensor combined_loss(const SsdResult& r, const Tensor& wy, const Tensor& wf) {
  return sum(r.y * wy) + sum(r.final_state * wf);
}

// Casts the f64 inputs to the input dtype (x, dt, B, C, z) and f32 parameters.
Inputs cast_inputs(const Inputs& in, DType input) {
  auto cast = [](const Tensor& t, DType d) {
    return t.defined() ? to_dtype(t.detach(), d).set_requires_grad(true) : Tensor();
  };
  return {cast(in.x, input), cast(in.dt, input), cast(in.A, DType::f32),    cast(in.B, input),
          cast(in.C, input), cast(in.D, DType::f32), cast(in.z, input),     cast(in.bias, DType::f32),
          cast(in.h0, DType::f32), in.softplus};
}

Inputs to_f64_leaves(const Inputs& in) {
  auto cast = [](const Tensor& t) {
    return t.defined() ? to_dtype(t.detach(), DType::f64).set_requires_grad(true) : Tensor();
  };
  return {cast(in.x), cast(in.dt), cast(in.A), cast(in.B),    cast(in.C),
          cast(in.D), cast(in.z),  cast(in.bias), cast(in.h0), in.softplus};
}

Config options(int mask, Config c) {
  c.D = mask & 1 ? (mask & 32 ? Skip::per_channel : Skip::per_head) : Skip::none;
  c.z = mask & 2;
  c.bias = mask & 4;
  c.softplus = mask & 8;
  c.h0 = mask & 16;
  return c;
}

}  // namespace

TEST_CASE("ssd matches a float64 loop for every length, group count and option") {
  uint64_t seed = 1000;
  for (int64_t L : {1, 2, 7, 33})
    for (int64_t groups : {1, 2, 4})
      for (int mask = 0; mask < 64; ++mask) {
        if ((mask & 32) && !(mask & 1)) continue;  // the D shape bit only matters with D
        const Config c = options(mask, {.batch = 2, .L = L, .heads = 4, .headdim = 3, .N = 5, .groups = groups});
        CAPTURE(L); CAPTURE(groups); CAPTURE(mask);
        Inputs in = make_inputs(c, seed += 20);
        SsdResult r = run(in);
        CHECK(r.y.shape() == Shape{2, L, 4, 3});
        CHECK(r.final_state.shape() == Shape{2, 4, 3, 5});
        CHECK(r.y.dtype() == DType::f64);
        CHECK(r.final_state.dtype() == DType::f64);
        const Reference ref = reference(in);
        check_close(r.y, ref.y, 1e-12);
        check_close(r.final_state, ref.final_state, 1e-12);
      }
}

TEST_CASE("ssd reads non-contiguous inputs through their strides") {
  for (int mask : {63, 30, 1}) {
    CAPTURE(mask);
    const Config c = options(mask, {.batch = 2, .L = 9, .heads = 6, .headdim = 4, .N = 5, .groups = 3});
    Inputs in = make_inputs(c, 2000 + uint64_t(mask), false, true);
    REQUIRE(!in.x.is_contiguous());
    REQUIRE(!in.B.is_contiguous());
    REQUIRE(!in.A.is_contiguous());
    const Reference ref = reference(in);
    SsdResult r = run(in);
    check_close(r.y, ref.y, 1e-12);
    check_close(r.final_state, ref.final_state, 1e-12);
  }
}

TEST_CASE("the chunked SSD algorithm equals the recurrence in float64 for any length and chunk size") {
  uint64_t seed = 3000;
  int variant = 0;
  for (int64_t L : {1, 63, 64, 65, 200})
    for (int64_t chunk : {16, 32, 64})
      for (int64_t groups : {1, 2, 8})
        // Every option on, then a rotating subset (each bit pattern comes up across the loop).
        for (int mask : {63, (variant++ * 7) % 64}) {
          const Config c =
              options(mask, {.batch = 2, .L = L, .heads = 8, .headdim = 3, .N = 4, .groups = groups});
          CAPTURE(L); CAPTURE(chunk); CAPTURE(groups); CAPTURE(mask);
          const Inputs in = make_inputs(c, seed += 20, false, mask % 3 == 0);
          const cpu::SsdChunkedResult k = cpu::ssd_chunked_forward(in.args(), chunk);
          const Reference ref = reference(in);
          const int64_t n_chunks = (L + chunk - 1) / chunk;
          REQUIRE(k.y.shape() == in.x.shape());
          REQUIRE(k.chunk_states.shape() == Shape{2, n_chunks, 8, 3, 4});
          REQUIRE(k.decay_cumsum.shape() == Shape{2, 8, n_chunks, chunk});
          check_close(k.y, ref.y, 1e-10);
          check_close(k.final_state, ref.final_state, 1e-10);
          check_close(k.y, run(in).y.to_double_vector(), 1e-10);
          // The state entering chunk c is the recurrence's state after step c·chunk − 1.
          const std::vector<double> entering = k.chunk_states.to_double_vector();
          const std::vector<double> h0 = in.h0.defined() ? in.h0.to_double_vector() : std::vector<double>();
          for (int64_t b = 0; b < 2; ++b)
            for (int64_t c = 0; c < n_chunks; ++c)
              for (int64_t h = 0; h < 8; ++h)
                for (int64_t i = 0; i < 12; ++i) {
                  const double got = entering[size_t(((b * n_chunks + c) * 8 + h) * 12 + i)];
                  const double want = c == 0 ? (h0.empty() ? 0.0 : h0[size_t((b * 8 + h) * 12 + i)])
                                             : ref.states[size_t(((b * L + c * chunk - 1) * 8 + h) * 12 + i)];
                  CHECK(std::abs(got - want) <= 1e-10 * (1.0 + std::abs(want)));
                }
        }
}

TEST_CASE("the chunked SSD cumulative decay restarts every chunk and stays flat past the end") {
  Config c{.batch = 1, .L = 5, .heads = 2, .headdim = 1, .N = 1, .groups = 1};
  const Inputs in = make_inputs(c, 3500);
  const cpu::SsdChunkedResult k = cpu::ssd_chunked_forward(in.args(), 3);
  const std::vector<double> dt = in.dt.to_double_vector(), A = in.A.to_double_vector();
  const std::vector<double> bias = in.bias.to_double_vector();
  std::vector<double> want;
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t chunk = 0; chunk < 2; ++chunk) {
      double acc = 0.0;
      for (int64_t i = 0; i < 3; ++i) {
        const int64_t t = chunk * 3 + i;
        if (t < 5) acc += std::log1p(std::exp(dt[size_t(t * 2 + h)] + bias[size_t(h)])) * A[size_t(h)];
        want.push_back(acc);
      }
    }
  check_close(k.decay_cumsum, want, 1e-12);
}

TEST_CASE("the chunked SSD algorithm keeps the input dtypes") {
  const Config c{.batch = 2, .L = 37, .heads = 4, .headdim = 8, .N = 16, .groups = 2, .D = Skip::per_channel};
  const Inputs low = cast_inputs(make_inputs(c, 3600), DType::bf16);
  const cpu::SsdChunkedResult k = cpu::ssd_chunked_forward(low.args(), 16);
  CHECK(k.y.dtype() == DType::bf16);
  CHECK(k.final_state.dtype() == DType::f32);
  CHECK(k.chunk_states.dtype() == DType::f32);
  const SsdResult r = run(to_f64_leaves(low));  // the same rounded values through the f64 recurrence
  check_close(k.y, r.y.to_double_vector(), 4e-3);
  check_close(k.final_state, r.final_state.to_double_vector(), 1e-6);
}

TEST_CASE("ssd passes gradcheck of every input through y and final_state") {
  uint64_t seed = 4000;
  const std::vector<Config> configs{
      {.batch = 2, .L = 5, .heads = 4, .headdim = 2, .N = 3, .groups = 2},
      {.batch = 2, .L = 5, .heads = 2, .headdim = 3, .N = 2, .groups = 1, .D = Skip::per_channel, .softplus = false},
      {.batch = 2, .L = 4, .heads = 4, .headdim = 2, .N = 3, .groups = 4, .z = false, .h0 = false},
      {.batch = 1, .L = 5, .heads = 2, .headdim = 2, .N = 2, .groups = 1, .D = Skip::none, .bias = false,
       .softplus = false},
      {.batch = 2, .L = 1, .heads = 2, .headdim = 2, .N = 3, .groups = 2, .D = Skip::per_channel},
  };
  for (const Config& c : configs)
    for (bool transposed : {false, true}) {
      CAPTURE(c.heads); CAPTURE(c.L); CAPTURE(c.groups); CAPTURE(c.softplus); CAPTURE(transposed);
      Inputs in = make_inputs(c, seed += 20, true, transposed);
      Tensor wy = random_tensor(in.x.shape(), seed + 11);
      Tensor wf = random_tensor({c.batch, c.heads, c.headdim, c.N}, seed + 12);
      const bool sp = c.softplus;
      check_gradients([=](const std::vector<Tensor>& v) { return combined_loss(run(v, sp, 2), wy, wf); },
                      in.list());
      // Each output alone: the other's gradient reaches the node as zeros.
      check_gradients([=](const std::vector<Tensor>& v) { return run(v, sp).y; }, in.list());
      check_gradients([=](const std::vector<Tensor>& v) { return run(v, sp).final_state; }, in.list());
    }
}

TEST_CASE("ssd gradcheck across several backward segments and head tasks") {
  // L = 2·kSsdSegment + 3: the backward recomputes three segments from their checkpoints.
  Config c{.batch = 1, .L = 2 * cpu::kSsdSegment + 3, .heads = 2, .headdim = 1, .N = 2, .groups = 1};
  Inputs in = make_inputs(c, 5000, true);
  std::vector<Tensor> v = in.list();
  v[3] = v[3].detach();  // B and C: long, and covered by the other cases
  v[4] = v[4].detach();
  check_gradients([](const std::vector<Tensor>& x) { return run(x, true).final_state; }, v);
  check_gradients([](const std::vector<Tensor>& x) { return sum(run(x, true).y); }, v);
  // 18 heads in one group: three tasks' dB/dC partials (8 + 8 + 2 heads) meet; with two groups,
  // 9 heads each (8 + 1).
  for (int64_t groups : {1, 2}) {
    CAPTURE(groups);
    Inputs wide = make_inputs({.batch = 1, .L = 2, .heads = 18, .headdim = 2, .N = 1, .groups = groups},
                              5100 + uint64_t(groups), true);
    std::vector<Tensor> x = wide.list();
    for (size_t i : {0, 1, 2, 5, 6, 7, 8}) x[i] = x[i].detach();  // B and C only: few elements
    check_gradients([](const std::vector<Tensor>& v2) { return run(v2, true).y; }, x);
  }
}

TEST_CASE("ssd gradcheck with some inputs constant and a non-contiguous output gradient") {
  Config c{.batch = 2, .L = 4, .heads = 4, .headdim = 2, .N = 3, .groups = 2};
  Inputs in = make_inputs(c, 6000, true);
  std::vector<Tensor> only_A_B = in.list();
  for (size_t i : {0, 1, 4, 5, 6, 7, 8}) only_A_B[i] = only_A_B[i].detach();
  check_gradients([&](const std::vector<Tensor>& x) { return run(x, true).y; }, only_A_B);
  // The y gradient arrives transposed, the final_state gradient broadcast (zero strides).
  check_gradients([&](const std::vector<Tensor>& x) {
    SsdResult r = run(x, true);
    return transpose(r.y, 1, 3) + sum(r.final_state);
  }, in.list());
}

TEST_CASE("ssd in f32 and bf16 matches the float64 reference, forward and backward") {
  Config c{.batch = 2, .L = 33, .heads = 4, .headdim = 8, .N = 16, .groups = 2, .D = Skip::per_channel};
  Inputs in64 = make_inputs(c, 7000);
  for (auto [dtype, tol] : {std::pair{DType::f32, 1e-6}, std::pair{DType::bf16, 4e-3}}) {
    CAPTURE(dtype);
    Inputs low = cast_inputs(in64, dtype);
    Inputs ref = to_f64_leaves(low);  // the same (rounded) values in f64: only the output rounding differs
    SsdResult r = run(low), r64 = run(ref);
    CHECK(r.y.dtype() == dtype);
    CHECK(r.final_state.dtype() == DType::f32);
    check_close(r.y, r64.y.to_double_vector(), tol);
    check_close(r.final_state, r64.final_state.to_double_vector(), 1e-6);
    // y's weight holds bf16-representable values, so both runs receive the same y gradient.
    Tensor wy = to_dtype(to_dtype(random_tensor(r.y.shape(), 7001), DType::bf16), DType::f32);
    Tensor wf = random_tensor(r.final_state.shape(), 7002, DType::f32);
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

TEST_CASE("ssd results do not depend on the thread count") {
  const Config c{.batch = 3, .L = 70, .heads = 18, .headdim = 4, .N = 8, .groups = 2};
  Inputs in = cast_inputs(make_inputs(c, 8000), DType::f32);
  auto results = [&](int threads) {
    set_num_threads(threads);
    Inputs x = cast_inputs(in, DType::f32);
    SsdResult r = run(x);
    backward(sum(r.y * r.y) + sum(r.final_state));
    const cpu::SsdChunkedResult k = cpu::ssd_chunked_forward(x.args(), 16);
    std::vector<std::vector<float>> out{r.y.to_vector<float>(), r.final_state.to_vector<float>(),
                                        k.y.to_vector<float>(), k.chunk_states.to_vector<float>()};
    for (const Tensor& t : x.list()) out.push_back(t.grad().to_vector<float>());
    return out;
  };
  const int previous = num_threads();
  auto one = results(1);
  auto many = results(4);
  set_num_threads(previous);
  CHECK(one == many);
}

TEST_CASE("ssd handles an empty batch") {
  Inputs in = make_inputs({.batch = 0, .L = 3, .heads = 4, .headdim = 2, .N = 2, .groups = 2}, 9000, true);
  SsdResult r = run(in);
  CHECK(r.y.shape() == Shape{0, 3, 4, 2});
  CHECK(r.final_state.shape() == Shape{0, 4, 2, 2});
  backward(sum(r.y) + sum(r.final_state));
  check_close(in.A.grad(), std::vector<double>(4, 0.0), 0.0);
  check_close(in.D.grad(), std::vector<double>(4, 0.0), 0.0);
}

TEST_CASE("ssd rejects bad inputs naming the tensor and the shapes") {
  const Tensor x = zeros({2, 7, 4, 3}), dt = zeros({2, 7, 4}), A = zeros({4});
  const Tensor B = zeros({2, 7, 1, 16}), C = zeros({2, 7, 1, 16});
  const Tensor none;
  auto fails = [](auto&& call, const std::string& message) {
    CHECK_THROWS_WITH_AS(call(), doctest::Contains(("ssd: " + message).c_str()), Error);
  };
  fails([&] { ssd(zeros({2, 7, 4}), dt, A, B, C); },
        "expected x of shape (batch, L, heads, headdim) with L >= 1 but found f32[2, 7, 4]");
  fails([&] { ssd(zeros({2, 0, 4, 3}), zeros({2, 0, 4}), A, zeros({2, 0, 1, 16}), zeros({2, 0, 1, 16})); },
        "expected x of shape (batch, L, heads, headdim) with L >= 1 but found f32[2, 0, 4, 3]");
  fails([&] { ssd(x, zeros({2, 6, 4}), A, B, C); },
        "expected dt of shape (batch, L, heads) = [2, 7, 4] but found f32[2, 6, 4] on cpu");
  fails([&] { ssd(x, dt, A, B, C, none, zeros({2, 7, 3, 4})); },
        "expected z of shape (batch, L, heads, headdim) = [2, 7, 4, 3] but found f32[2, 7, 3, 4] on cpu");
  fails([&] { ssd(x, dt, zeros({4, 1}), B, C); }, "expected A of shape (heads) = [4] but found f32[4, 1] on cpu");
  fails([&] { ssd(x, dt, A, zeros({2, 7, 1, 0}), C); },
        "expected B of shape (batch, L, ngroups, N) = [2, 7, ngroups, N] with N >= 1 but found f32[2, 7, 1, 0]");
  fails([&] { ssd(x, dt, A, zeros({2, 16, 7}), C); },
        "expected B of shape (batch, L, ngroups, N) = [2, 7, ngroups, N] with N >= 1 but found f32[2, 16, 7]");
  fails([&] { ssd(x, dt, A, zeros({2, 7, 3, 16}), zeros({2, 7, 3, 16})); },
        "the ngroups = 3 of B f32[2, 7, 3, 16] on cpu must divide heads = 4 of x f32[2, 7, 4, 3] on cpu");
  fails([&] { ssd(x, dt, A, B, zeros({2, 7, 2, 16})); },
        "expected C of shape (batch, L, ngroups, N) = [2, 7, 1, 16] but found f32[2, 7, 2, 16] on cpu");
  fails([&] { ssd(x, dt, A, B, C, zeros({3, 4})); },
        "expected D of shape (heads) = [4] or (heads, headdim) = [4, 3] but found f32[3, 4] on cpu");
  fails([&] { ssd(x, dt, A, B, C, none, none, zeros({5})); },
        "expected dt_bias of shape (heads) = [4] but found f32[5] on cpu");
  fails([&] { ssd(x, dt, A, B, C, none, none, none, true, 256, zeros({2, 4, 16, 3})); },
        "expected initial_state of shape (batch, heads, headdim, N) = [2, 4, 3, 16] but found f32[2, 4, 16, 3]");
  fails([&] { ssd(x, dt, A, B, C, none, none, none, true, 0); }, "expected chunk_size >= 1 but found 0");
  // dtypes: integers anywhere, f16 inputs, parameters not in f32, a mix of input dtypes.
  fails([&] { ssd(zeros({2, 7, 4, 3}, {.dtype = DType::i64}), dt, A, B, C); },
        "expected x to be f32, bf16 or f64 but found i64[2, 7, 4, 3] on cpu");
  fails([&] { ssd(zeros({2, 7, 4, 3}, {.dtype = DType::f16}), dt, A, B, C); },
        "expected x to be f32, bf16 or f64 but found f16[2, 7, 4, 3] on cpu");
  fails([&] { ssd(x, zeros({2, 7, 4}, {.dtype = DType::i32}), A, B, C); },
        "expected dt of x's dtype f32 but found i32[2, 7, 4] on cpu");
  fails([&] { ssd(x, dt, A, zeros({2, 7, 1, 16}, {.dtype = DType::bf16}), C); },
        "expected B of x's dtype f32 but found bf16[2, 7, 1, 16] on cpu");
  fails([&] { ssd(x, dt, A, B, C, none, zeros({2, 7, 4, 3}, {.dtype = DType::f64})); },
        "expected z of x's dtype f32 but found f64[2, 7, 4, 3] on cpu");
  fails([&] { ssd(x, dt, zeros({4}, {.dtype = DType::i64}), B, C); },
        "expected A to be f32 (the parameter dtype for f32 inputs) but found i64[4] on cpu");
  const TensorOptions bf16{.dtype = DType::bf16};
  fails([&] { ssd(zeros({2, 7, 4, 3}, bf16), zeros({2, 7, 4}, bf16), zeros({4}, bf16), zeros({2, 7, 1, 16}, bf16),
                  zeros({2, 7, 1, 16}, bf16)); },
        "expected A to be f32 (the parameter dtype for bf16 inputs) but found bf16[4] on cpu");
  fails([&] { ssd(x, dt, A, B, C, zeros({4, 3}, {.dtype = DType::f64})); },
        "expected D to be f32 (the parameter dtype for f32 inputs) but found f64[4, 3] on cpu");
  fails([&] { ssd(x, dt, A, B, C, none, none, zeros({4}, bf16)); },
        "expected dt_bias to be f32 (the parameter dtype for f32 inputs) but found bf16[4] on cpu");
  fails([&] { ssd(x, dt, A, B, C, none, none, none, false, 256, zeros({2, 4, 3, 16}, bf16)); },
        "expected initial_state to be f32 (the parameter dtype for f32 inputs) but found bf16[2, 4, 3, 16] on cpu");
  fails([&] { ssd(x, dt, none, B, C); }, "A is an undefined tensor");
  fails([&] { ssd(x, none, A, B, C); }, "dt is an undefined tensor");
  fails([&] { ssd(none, dt, A, B, C); }, "x is an undefined tensor");
}
