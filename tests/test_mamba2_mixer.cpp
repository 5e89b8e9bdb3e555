// models/mamba2_mixer.h: the Mamba-2 mixer. Parameter names, order, counts (against the
// published definition's formula) and decay flags; the published init; forward against a float64
// loop of the definition (ngroups 1 and 2, grouped gated norm); gradcheck w.r.t. the input and
// every parameter; step() token by token and prefill + step against the full forward, with the
// final states; f32 parameters under f64 and bf16 activations; bad configs, inputs and states.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "models/mamba2_mixer.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

double silu_of(double v) { return v / (1.0 + std::exp(-v)); }
double softplus_of(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

struct Reference {
  std::vector<double> out;         // (batch, L, d)
  std::vector<double> conv_state;  // (batch, conv_dim, k - 1)
  std::vector<double> ssm_state;   // (batch, H, P, N)
};

// The mixer's definition (models/mamba2_mixer.h, mamba_ssm's Mamba2) as plain float64 loops.
Reference reference_forward(const Mamba2Mixer& m, const Tensor& x_in) {
  const Mamba2Config& c = m.config();
  const int64_t batch = x_in.size(0), L = x_in.size(1), d = c.d_model, E = c.d_inner(), H = c.nheads(),
                P = c.headdim, G = c.ngroups, N = c.d_state, k = c.d_conv, CD = c.conv_dim(), DI = c.d_in_proj();
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const std::vector<double> x = values(x_in), w_in = values(m.in_proj.weight), b_in = values(m.in_proj.bias),
                            w_conv = values(m.conv1d.weight), b_conv = values(m.conv1d.bias),
                            dt_bias = values(m.dt_bias), a_log = values(m.A_log), D = values(m.D),
                            w_norm = values(m.norm.weight), w_out = values(m.out_proj.weight),
                            b_out = values(m.out_proj.bias);
  Reference ref;
  ref.out.assign(size_t(batch * L * d), 0.0);
  ref.conv_state.assign(size_t(batch * CD * (k - 1)), 0.0);
  ref.ssm_state.assign(size_t(batch * H * P * N), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    // in_proj: proj[t][j] with j in [0, E) z, [E, E + CD) xBC, [E + CD, DI) dt.
    std::vector<std::vector<double>> proj(static_cast<size_t>(L), std::vector<double>(static_cast<size_t>(DI)));
    for (int64_t t = 0; t < L; ++t)
      for (int64_t j = 0; j < DI; ++j) {
        double s = b_in.empty() ? 0.0 : b_in[size_t(j)];
        for (int64_t i = 0; i < d; ++i) s += w_in[size_t(j * d + i)] * x[size_t((b * L + t) * d + i)];
        proj[size_t(t)][size_t(j)] = s;
      }
    std::vector<std::vector<double>> xbc(static_cast<size_t>(L), std::vector<double>(static_cast<size_t>(CD)));
    for (int64_t t = 0; t < L; ++t)
      for (int64_t ch = 0; ch < CD; ++ch) {
        double s = b_conv.empty() ? 0.0 : b_conv[size_t(ch)];
        for (int64_t j = 0; j < k; ++j) {
          const int64_t src = t - (k - 1) + j;
          if (src >= 0) s += w_conv[size_t(ch * k + j)] * proj[size_t(src)][size_t(E + ch)];
        }
        xbc[size_t(t)][size_t(ch)] = silu_of(s);
      }
    for (int64_t ch = 0; ch < CD; ++ch)
      for (int64_t j = 0; j < k - 1; ++j) {
        const int64_t src = L - (k - 1) + j;
        ref.conv_state[size_t((b * CD + ch) * (k - 1) + j)] = src >= 0 ? proj[size_t(src)][size_t(E + ch)] : 0.0;
      }
    std::vector<double> h(size_t(H * P * N), 0.0);
    for (int64_t t = 0; t < L; ++t) {
      const std::vector<double>& v = xbc[size_t(t)];
      std::vector<double> y(static_cast<size_t>(E));
      for (int64_t hd = 0; hd < H; ++hd) {
        const int64_t g = hd / (H / G);
        const double delta = softplus_of(proj[size_t(t)][size_t(E + CD + hd)] + dt_bias[size_t(hd)]);
        const double decay = std::exp(-delta * std::exp(a_log[size_t(hd)]));
        for (int64_t p = 0; p < P; ++p) {
          const double xv = v[size_t(hd * P + p)];
          double out = D[size_t(hd)] * xv;
          for (int64_t n = 0; n < N; ++n) {
            const double Bn = v[size_t(E + g * N + n)], Cn = v[size_t(E + G * N + g * N + n)];
            double& s = h[size_t((hd * P + p) * N + n)];
            s = decay * s + delta * xv * Bn;
            out += Cn * s;
          }
          y[size_t(hd * P + p)] = out;
        }
      }
      // Gated RMSNorm, norm_before_gate = false, one RMS per group of E / G channels.
      const int64_t gs = E / G;
      std::vector<double> gated(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) gated[size_t(e)] = y[size_t(e)] * silu_of(proj[size_t(t)][size_t(e)]);
      for (int64_t g = 0; g < G; ++g) {
        double ms = 0.0;
        for (int64_t i = 0; i < gs; ++i) ms += gated[size_t(g * gs + i)] * gated[size_t(g * gs + i)];
        const double inv = 1.0 / std::sqrt(ms / double(gs) + c.norm_eps);
        for (int64_t i = 0; i < gs; ++i) gated[size_t(g * gs + i)] *= inv * w_norm[size_t(g * gs + i)];
      }
      for (int64_t o = 0; o < d; ++o) {
        double s = b_out.empty() ? 0.0 : b_out[size_t(o)];
        for (int64_t e = 0; e < E; ++e) s += w_out[size_t(o * E + e)] * gated[size_t(e)];
        ref.out[size_t((b * L + t) * d + o)] = s;
      }
    }
    std::copy(h.begin(), h.end(), ref.ssm_state.begin() + b * H * P * N);
  }
  return ref;
}

// d_model 8, E 16, headdim 4 (4 heads), N 3, chunk 4.
Mamba2Config tiny_config(int64_t ngroups) {
  Mamba2Config c;
  c.d_model = 8;
  c.d_state = 3;
  c.headdim = 4;
  c.ngroups = ngroups;
  c.chunk_size = 4;
  return c;
}

// Random values for the parameters the init leaves constant or tiny (D = 1, norm weight 1, Δ ~
// 1e-2, -A up to 16, so a state barely carries), so that every path matters in a short sequence.
void randomize(Mamba2Mixer& m, uint64_t seed) {
  NoGradGuard no_grad;
  const DType dtype = m.A_log.dtype();
  const int64_t H = m.config().nheads(), E = m.config().d_inner();
  copy_into(m.dt_bias, random_tensor({H}, seed, dtype, -1.0, 1.0));
  copy_into(m.A_log, random_tensor({H}, seed + 1, dtype, -1.0, 0.5));
  copy_into(m.D, random_tensor({H}, seed + 2, dtype, -1.0, 1.0));
  copy_into(m.norm.weight, random_tensor({E}, seed + 3, dtype, 0.5, 1.5));
}

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> names;
  for (const NamedParameter& p : m.named_parameters()) names.push_back(p.name);
  return names;
}

// The published parameter count: in_proj d·(2E + 2GN + H) (+ that many biases), conv
// conv_dim·k (+ conv_dim), dt_bias, A_log, D H each, norm E, out_proj E·d (+ d).
int64_t published_count(const Mamba2Config& c) {
  const int64_t d = c.d_model, E = c.d_inner(), G = c.ngroups, N = c.d_state, H = E / c.headdim, k = c.d_conv;
  const int64_t in = 2 * E + 2 * G * N + H, conv_dim = E + 2 * G * N;
  int64_t n = d * in + conv_dim * k + 3 * H + E + E * d;
  if (c.bias) n += in + d;
  if (c.conv_bias) n += conv_dim;
  return n;
}

// Steps x (batch, L, d) through step() one token at a time; returns the (batch, L, d) outputs.
Tensor step_through(const Mamba2Mixer& m, const Tensor& x, Mamba2State& state, int64_t start = 0) {
  std::vector<Tensor> outs;
  for (int64_t t = start; t < x.size(1); ++t) outs.push_back(unsqueeze(m.step(select(x, 1, t), state), 1));
  return cat(outs, 1);
}

void check_states(const Mamba2State& s, const Reference& ref, double tol) {
  check_close(s.conv_state, ref.conv_state, tol);
  check_close(s.ssm_state, ref.ssm_state, tol);
}

}  // namespace

TEST_CASE("Mamba2Config derives the mixer's sizes and rejects impossible values") {
  Mamba2Config c;
  c.d_model = 96;
  CHECK(c.d_inner() == 192);
  CHECK(c.nheads() == 3);
  CHECK(c.conv_dim() == 192 + 256);
  CHECK(c.d_in_proj() == 2 * 192 + 256 + 3);
  c.validate();
  auto rejects = [](const Mamba2Config& bad, const char* message) {
    CHECK_THROWS_WITH_AS(bad.validate(), doctest::Contains(message), Error);
  };
  Mamba2Config bad = c;
  bad.headdim = 50;
  rejects(bad, "Mamba2Config: headdim must be positive and divide d_inner = expand * d_model = 192, found headdim 50");
  bad = c;
  bad.ngroups = 2;
  rejects(bad, "Mamba2Config: ngroups must be positive and divide nheads = d_inner / headdim = 3, found ngroups 2");
  bad = c;
  bad.ngroups = 0;
  rejects(bad, "ngroups must be positive");
  bad = c;
  bad.d_conv = 1;
  rejects(bad, "d_conv must be in [2, 8], found 1");
  bad = c;
  bad.d_state = 0;
  rejects(bad, "d_state must be positive, found 0");
  bad = c;
  bad.chunk_size = 0;
  rejects(bad, "chunk_size must be positive, found 0");
  bad = c;
  bad.A_init_min = 0.0;
  rejects(bad, "need 0 < A_init_min <= A_init_max");
  bad = c;
  bad.A_init_max = 0.5;
  rejects(bad, "need 0 < A_init_min <= A_init_max, found 1 and 0.5");
  bad = c;
  bad.dt_max = 1e-4;
  rejects(bad, "need 0 < dt_min <= dt_max");
  bad = c;
  bad.dt_init_floor = -1.0;
  rejects(bad, "dt_init_floor must be >= 0");
  bad = c;
  bad.norm_eps = 0.0;
  rejects(bad, "norm_eps must be positive");
  bad = c;
  bad.expand = 0;
  rejects(bad, "expand must be positive");
  Generator gen(1);
  CHECK_THROWS_WITH_AS(Mamba2Mixer(Mamba2Config{}, gen), doctest::Contains("Mamba2Config: d_model must be positive"),
                       Error);
}

TEST_CASE("Mamba2Mixer parameters: mamba_ssm's names and order, the published count, decay flags") {
  Generator gen(2);
  Mamba2Config c;
  c.d_model = 64;  // E 128, 2 heads of 64, N 128, conv_dim 384, in_proj 128 + 384 + 2 = 514
  Mamba2Mixer m(c, gen);
  CHECK(names_of(m) == std::vector<std::string>{"in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log",
                                                "D", "norm.weight", "out_proj.weight"});
  CHECK(m.parameter_count() == published_count(c));
  CHECK(m.parameter_count() == 64 * 514 + 384 * 4 + 384 + 3 * 2 + 128 + 128 * 64);
  for (const NamedParameter& p : m.named_parameters()) {
    INFO(p.name);
    const bool decays = p.name == "in_proj.weight" || p.name == "conv1d.weight" || p.name == "out_proj.weight";
    CHECK(p.weight_decay == decays);
  }
  CHECK(m.in_proj.weight.shape() == Shape{514, 64});
  CHECK(m.conv1d.weight.shape() == Shape{384, 4});
  CHECK(m.A_log.shape() == Shape{2});
  CHECK(m.D.shape() == Shape{2});
  CHECK(m.norm.weight.shape() == Shape{128});
  CHECK(m.out_proj.weight.shape() == Shape{64, 128});

  c.bias = true;
  c.conv_bias = false;
  c.d_state = 16;
  c.headdim = 16;
  c.ngroups = 4;
  Mamba2Mixer biased(c, gen);
  CHECK(names_of(biased) == std::vector<std::string>{"in_proj.weight", "in_proj.bias", "conv1d.weight", "dt_bias",
                                                     "A_log", "D", "norm.weight", "out_proj.weight", "out_proj.bias"});
  CHECK(biased.parameter_count() == published_count(c));
  for (const NamedParameter& p : biased.named_parameters())
    if (p.name.find("bias") != std::string::npos) CHECK_FALSE(p.weight_decay);
}

TEST_CASE("Mamba2Mixer init: A_log = log U[1, 16], D = 1, norm 1, softplus(dt_bias) log-uniform in [dt_min, dt_max]") {
  Generator gen(3);
  Mamba2Config c;
  c.d_model = 256;
  c.headdim = 2;  // 256 heads, for the statistics
  c.d_state = 8;
  Mamba2Mixer m(c, gen);
  const int64_t H = 256, E = 512;
  double a_mean = 0.0, a_min = 1e9, a_max = 0.0;
  for (double v : m.A_log.to_double_vector()) {
    const double a = std::exp(v);
    CHECK(a >= 1.0 - 1e-6);
    CHECK(a <= 16.0 + 1e-5);
    a_mean += a / double(H);
    a_min = std::min(a_min, a);
    a_max = std::max(a_max, a);
  }
  // U[1, 16]: mean 8.5, std 4.33 / sqrt(256) = 0.27.
  CHECK(std::abs(a_mean - 8.5) < 1.2);
  CHECK(a_min < 1.5);
  CHECK(a_max > 15.0);
  CHECK(m.D.to_double_vector() == std::vector<double>(size_t(H), 1.0));
  CHECK(m.norm.weight.to_double_vector() == std::vector<double>(size_t(E), 1.0));

  const std::vector<double> dt = softplus(to_dtype(m.dt_bias, DType::f64)).to_double_vector();
  double log_mean = 0.0;
  for (double v : dt) {
    CHECK(v >= 1e-3 * (1 - 1e-5));
    CHECK(v <= 0.1 * (1 + 1e-5));
    log_mean += std::log(v) / double(H);
  }
  // log Δ is uniform on [log 1e-3, log 0.1]: mean log(1e-2), std 1.33 / sqrt(256) = 0.08.
  CHECK(std::abs(log_mean - std::log(1e-2)) < 0.4);
  CHECK(*std::max_element(dt.begin(), dt.end()) > 0.05);
  CHECK(*std::min_element(dt.begin(), dt.end()) < 2e-3);

  auto max_abs = [](const Tensor& t) {
    double r = 0.0;
    for (double v : t.to_double_vector()) r = std::max(r, std::abs(v));
    return r;
  };
  CHECK(max_abs(m.in_proj.weight) <= 1.0 / 16.0);
  CHECK(max_abs(m.in_proj.weight) > 0.9 / 16.0);
  CHECK(max_abs(m.out_proj.weight) <= 1.0 / std::sqrt(double(E)));
  CHECK(max_abs(m.conv1d.weight) <= 0.5);
  CHECK(max_abs(m.conv1d.bias) <= 0.5);

  // dt_init_floor clamps Δ from below.
  c.dt_min = 1e-5;
  c.dt_max = 1e-4;
  c.dt_init_floor = 1e-3;
  Mamba2Mixer floored(c, gen);
  for (double v : softplus(to_dtype(floored.dt_bias, DType::f64)).to_double_vector())
    CHECK(std::abs(v - 1e-3) < 1e-8);

  // Seeded: the same seed gives the same mixer.
  Generator g1(4), g2(4);
  Mamba2Mixer a(tiny_config(2), g1), b(tiny_config(2), g2);
  const std::vector<NamedParameter> pa = a.named_parameters(), pb = b.named_parameters();
  for (size_t i = 0; i < pa.size(); ++i) CHECK(pa[i].tensor.to_double_vector() == pb[i].tensor.to_double_vector());
}

TEST_CASE("Mamba2Mixer forward matches a float64 loop of the definition") {
  for (int64_t ngroups : {1, 2, 4}) {
    for (bool biases : {false, true}) {
      INFO("ngroups ", ngroups, " biases ", biases);
      Mamba2Config c = tiny_config(ngroups);
      c.bias = biases;
      c.conv_bias = !biases;
      Generator gen(5);
      Mamba2Mixer m(c, gen, {.dtype = DType::f64});
      randomize(m, 50);
      const Tensor x = random_tensor({2, 7, 8}, 6, DType::f64, -2.0, 2.0);
      const Tensor out = m.forward(x);
      CHECK(out.shape() == Shape{2, 7, 8});
      CHECK(out.dtype() == DType::f64);
      const Reference ref = reference_forward(m, x);
      check_close(out, ref.out, 1e-12);
      Mamba2State state;
      check_close(m.forward(x, &state), ref.out, 1e-12);
      check_states(state, ref, 1e-12);
      CHECK(state.ssm_state.shape() == Shape{2, 4, 4, 3});
    }
  }
}

TEST_CASE("Mamba2Mixer passes gradcheck w.r.t. its input and every parameter") {
  for (int64_t ngroups : {1, 2}) {
    INFO("ngroups ", ngroups);
    Generator gen(7);
    Mamba2Mixer m(tiny_config(ngroups), gen, {.dtype = DType::f64});
    randomize(m, 70);
    const Tensor x = random_leaf({2, 6, 8}, 9);
    std::vector<Tensor> inputs{x};
    for (const NamedParameter& p : m.named_parameters()) inputs.push_back(p.tensor);
    check_gradients([&](const std::vector<Tensor>& in) { return m.forward(in[0]); }, inputs);
  }
}

TEST_CASE("Mamba2Mixer step() from a zero state reproduces forward() and its final states") {
  for (int64_t ngroups : {1, 2}) {
    for (DType dtype : {DType::f64, DType::f32}) {
      INFO("ngroups ", ngroups, " dtype ", dtype);
      const double tol = dtype == DType::f64 ? 1e-12 : 1e-5;
      Generator gen(10);
      Mamba2Mixer m(tiny_config(ngroups), gen, {.dtype = dtype});
      randomize(m, 100);
      const Tensor x = random_tensor({3, 6, 8}, 11, dtype, -2.0, 2.0);
      Mamba2State full;
      Tensor expected;
      {
        NoGradGuard no_grad;
        expected = m.forward(x, &full);
      }
      Mamba2State stepped;  // undefined tensors: zeros
      const Tensor out = step_through(m, x, stepped);
      check_close(out, expected.to_double_vector(), tol);
      check_close(stepped.conv_state, full.conv_state.to_double_vector(), tol);
      check_close(stepped.ssm_state, full.ssm_state.to_double_vector(), tol);
      CHECK(stepped.ssm_state.dtype() == (dtype == DType::f64 ? DType::f64 : DType::f32));
      CHECK(stepped.conv_state.shape() == Shape{3, 16 + 2 * ngroups * 3, 3});
      CHECK(stepped.ssm_state.shape() == Shape{3, 4, 4, 3});

      // Explicit zero states behave the same, and step() records no graph.
      Mamba2State zeros_state = m.initial_state(3, dtype);
      const Tensor first = m.step(select(x, 1, 0), zeros_state);
      CHECK(!first.requires_grad());
      check_close(first, select(expected, 1, 0).to_double_vector(), tol);
    }
  }
}

TEST_CASE("Mamba2Mixer prefill then step() equals the full forward; a forward continues from a state") {
  for (int64_t ngroups : {1, 2}) {
    Generator gen(12);
    Mamba2Mixer m(tiny_config(ngroups), gen, {.dtype = DType::f64});
    randomize(m, 120);
    const Tensor x = random_tensor({2, 9, 8}, 13, DType::f64, -2.0, 2.0);
    const Reference ref = reference_forward(m, x);
    for (int64_t prefix : {1, 2, 3, 5}) {  // shorter and longer than d_conv - 1 = 3
      INFO("ngroups ", ngroups, " prefix ", prefix);
      NoGradGuard no_grad;
      Mamba2State state;
      const Tensor head = m.forward(narrow(x, 1, 0, prefix), &state);
      const Tensor tail = step_through(m, x, state, prefix);
      check_close(cat({head, tail}, 1), ref.out, 1e-12);
      check_states(state, ref, 1e-12);

      // The same split with a second forward instead of steps: conv and SSD continue from the state.
      Mamba2State state2;
      const Tensor a = m.forward(narrow(x, 1, 0, prefix), &state2);
      const Tensor b = m.forward(narrow(x, 1, prefix, 9 - prefix), &state2);
      check_close(cat({a, b}, 1), ref.out, 1e-12);
      check_states(state2, ref, 1e-12);
    }
  }
}

TEST_CASE("Mamba2Mixer with f32 parameters runs f64 and bf16 activations; gradients arrive in f32") {
  Generator gen(16);
  Mamba2Mixer m(tiny_config(2), gen);
  randomize(m, 160);
  const Tensor x = random_tensor({2, 5, 8}, 17, DType::f64);
  const Tensor out = m.forward(x);
  CHECK(out.dtype() == DType::f64);
  backward(sum(out));
  for (const NamedParameter& p : m.named_parameters()) {
    INFO(p.name);
    REQUIRE(p.tensor.grad().defined());
    CHECK(p.tensor.grad().dtype() == DType::f32);
    const std::vector<double> g = p.tensor.grad().to_double_vector();
    CHECK(std::any_of(g.begin(), g.end(), [](double v) { return v != 0.0 && std::isfinite(v); }));
  }
  NoGradGuard no_grad;
  const Tensor out_bf16 = m.forward(to_dtype(x, DType::bf16));
  CHECK(out_bf16.dtype() == DType::bf16);
  // bf16 rounding of the activations and weights: within 3e-2 of the f64 result, relative to its max.
  const std::vector<double> a = out_bf16.to_double_vector(), e = out.to_double_vector();
  double scale = 0.0, err = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(e[i]));
    err = std::max(err, std::abs(a[i] - e[i]));
  }
  CHECK(err <= 3e-2 * scale);
  // bf16 steps keep an f32 SSM state and a bf16 conv state.
  Mamba2State state;
  const Tensor y = m.step(to_dtype(select(x, 1, 0), DType::bf16), state);
  CHECK(y.dtype() == DType::bf16);
  CHECK(state.conv_state.dtype() == DType::bf16);
  CHECK(state.ssm_state.dtype() == DType::f32);
}

TEST_CASE("Mamba2Mixer rejects wrong input shapes and mismatched states") {
  Generator gen(18);
  Mamba2Mixer m(tiny_config(1), gen);
  CHECK_THROWS_WITH_AS(m.forward(zeros({2, 5, 3})),
                       doctest::Contains("Mamba2Mixer: expected x of shape (batch, L, 8) but found f32[2, 5, 3]"),
                       Error);
  CHECK_THROWS_WITH_AS(m.forward(zeros({5, 8})), doctest::Contains("f32[5, 8]"), Error);
  Mamba2State state;
  CHECK_THROWS_WITH_AS(m.step(zeros({2, 3}), state),
                       doctest::Contains("Mamba2Mixer::step: expected x of shape (batch, 8)"), Error);
  state = m.initial_state(2, DType::f32);
  CHECK_THROWS_WITH_AS(m.step(zeros({3, 8}), state), doctest::Contains("state.conv_state"), Error);
  state.conv_state = zeros({2, 22, 3}, {.dtype = DType::f64});
  CHECK_THROWS_WITH_AS(m.forward(zeros({2, 5, 8}), &state), doctest::Contains("f64[2, 22, 3]"), Error);
  state = m.initial_state(2, DType::f32);
  state.ssm_state = zeros({2, 4, 4, 4});
  CHECK_THROWS_WITH_AS(m.step(zeros({2, 8}), state),
                       doctest::Contains("state.ssm_state (batch, nheads, headdim, d_state)"), Error);
}
