// models/mamba_mixer.h: the Mamba-1 mixer, selective and LTI. Parameter names, order, counts
// (against the published definition's formula) and decay flags; the published init; forward
// against a float64 loop of the definition; gradcheck w.r.t. the input and every parameter;
// step() token by token and prefill + step against the full forward, with the final states;
// the channel-major forward against the earlier channels-last one (outputs, states, gradients).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "models/mamba_mixer.h"
#include "ops/causal_conv1d.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "ops/selective_scan.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

double silu_of(double v) { return v / (1.0 + std::exp(-v)); }
double softplus_of(double v) { return v > 20.0 ? v : std::log1p(std::exp(v)); }

struct Reference {
  std::vector<double> out;         // (batch, L, d)
  std::vector<double> conv_state;  // (batch, E, k - 1)
  std::vector<double> ssm_state;   // (batch, E, N)
};

// The mixer's definition (models/mamba_mixer.h) as plain float64 loops over the parameters.
Reference reference_forward(const MambaMixer& m, const Tensor& x_in) {
  const MambaConfig& c = m.config();
  const int64_t batch = x_in.size(0), L = x_in.size(1), d = c.d_model, E = c.d_inner(), N = c.d_state,
                k = c.d_conv, R = c.resolved_dt_rank();
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const std::vector<double> x = values(x_in), w_in = values(m.in_proj.weight), b_in = values(m.in_proj.bias),
                            w_conv = values(m.conv1d.weight), b_conv = values(m.conv1d.bias),
                            a_log = values(m.A_log), D = values(m.D), w_out = values(m.out_proj.weight),
                            b_out = values(m.out_proj.bias);
  const bool sel = c.selective;
  const std::vector<double> w_x = sel ? values(m.x_proj->weight) : std::vector<double>(),
                            w_dt = sel ? values(m.dt_proj->weight) : std::vector<double>(),
                            dt_bias = values(sel ? m.dt_proj->bias : m.dt_bias), B = values(m.B), C = values(m.C);
  Reference ref;
  ref.out.assign(size_t(batch * L * d), 0.0);
  ref.conv_state.assign(size_t(batch * E * (k - 1)), 0.0);
  ref.ssm_state.assign(size_t(batch * E * N), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    // in_proj: xz[t][j], j < E is x, j >= E is z.
    std::vector<std::vector<double>> xz(size_t(L), std::vector<double>(size_t(2 * E)));
    for (int64_t t = 0; t < L; ++t)
      for (int64_t j = 0; j < 2 * E; ++j) {
        double s = b_in.empty() ? 0.0 : b_in[size_t(j)];
        for (int64_t i = 0; i < d; ++i) s += w_in[size_t(j * d + i)] * x[size_t((b * L + t) * d + i)];
        xz[size_t(t)][size_t(j)] = s;
      }
    std::vector<std::vector<double>> u(size_t(L), std::vector<double>(size_t(E), 0.0)), y = u;
    for (int64_t t = 0; t < L; ++t)
      for (int64_t e = 0; e < E; ++e) {
        double s = b_conv.empty() ? 0.0 : b_conv[size_t(e)];
        for (int64_t j = 0; j < k; ++j) {
          const int64_t src = t - (k - 1) + j;
          if (src >= 0) s += w_conv[size_t(e * k + j)] * xz[size_t(src)][size_t(e)];
        }
        u[size_t(t)][size_t(e)] = silu_of(s);
      }
    for (int64_t e = 0; e < E; ++e)
      for (int64_t j = 0; j < k - 1; ++j) {
        const int64_t src = L - (k - 1) + j;
        ref.conv_state[size_t((b * E + e) * (k - 1) + j)] = src >= 0 ? xz[size_t(src)][size_t(e)] : 0.0;
      }
    std::vector<double> h(size_t(E * N), 0.0);
    for (int64_t t = 0; t < L; ++t) {
      const std::vector<double>& ut = u[size_t(t)];
      std::vector<double> dbl(size_t(R + 2 * N), 0.0);
      if (sel)
        for (int64_t m2 = 0; m2 < R + 2 * N; ++m2)
          for (int64_t e = 0; e < E; ++e) dbl[size_t(m2)] += w_x[size_t(m2 * E + e)] * ut[size_t(e)];
      for (int64_t e = 0; e < E; ++e) {
        double dt = dt_bias[size_t(e)];
        if (sel)
          for (int64_t r = 0; r < R; ++r) dt += w_dt[size_t(e * R + r)] * dbl[size_t(r)];
        const double delta = softplus_of(dt);
        double ye = D[size_t(e)] * ut[size_t(e)];
        for (int64_t n = 0; n < N; ++n) {
          const double Bn = sel ? dbl[size_t(R + n)] : B[size_t(e * N + n)];
          const double Cn = sel ? dbl[size_t(R + N + n)] : C[size_t(e * N + n)];
          const double A = -std::exp(a_log[size_t(e * N + n)]);
          double& hn = h[size_t(e * N + n)];
          hn = std::exp(delta * A) * hn + delta * Bn * ut[size_t(e)];
          ye += Cn * hn;
        }
        y[size_t(t)][size_t(e)] = ye * silu_of(xz[size_t(t)][size_t(E + e)]);
      }
    }
    std::copy(h.begin(), h.end(), ref.ssm_state.begin() + b * E * N);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t o = 0; o < d; ++o) {
        double s = b_out.empty() ? 0.0 : b_out[size_t(o)];
        for (int64_t e = 0; e < E; ++e) s += w_out[size_t(o * E + e)] * y[size_t(t)][size_t(e)];
        ref.out[size_t((b * L + t) * d + o)] = s;
      }
  }
  return ref;
}

MambaConfig tiny_config(bool selective) {
  MambaConfig c;
  c.d_model = 4;
  c.d_state = 3;
  c.selective = selective;
  return c;
}

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> names;
  for (const NamedParameter& p : m.named_parameters()) names.push_back(p.name);
  return names;
}

// The published parameter count: in_proj d·2E (+2E), conv E·k (+E), x_proj E·(R+2N), dt_proj
// R·E + E, A_log E·N, D E, out_proj E·d (+d); LTI: dt_bias E, B and C E·N instead of x_proj, dt_proj.
int64_t published_count(const MambaConfig& c) {
  const int64_t d = c.d_model, E = c.d_inner(), N = c.d_state, R = c.resolved_dt_rank(), k = c.d_conv;
  int64_t n = d * 2 * E + E * k + E * N + E + E * d;
  if (c.bias) n += 2 * E + d;
  if (c.conv_bias) n += E;
  n += c.selective ? E * (R + 2 * N) + R * E + E : E + 2 * E * N;
  return n;
}

// Steps x (batch, L, d) through step() one token at a time; returns the (batch, L, d) outputs.
Tensor step_through(const MambaMixer& m, const Tensor& x, MambaState& state, int64_t start = 0) {
  std::vector<Tensor> outs;
  for (int64_t t = start; t < x.size(1); ++t) outs.push_back(unsqueeze(m.step(select(x, 1, t), state), 1));
  return cat(outs, 1);
}

void check_states(const MambaState& s, const Reference& ref, double tol) {
  check_close(s.conv_state, ref.conv_state, tol);
  check_close(s.ssm_state, ref.ssm_state, tol);
}


// The mixer's forward as it was computed before the channel-major layout: channels-last
// (batch, L, ·) activations from Linear::forward, the channels-last conv, transposed views into
// the scan, out_proj on the transposed y. Built from the same public ops and parameters, so the
// new forward must reproduce its output, states and every gradient.
Tensor channels_last_forward(const MambaMixer& m, const Tensor& x, MambaState* state) {
  const MambaConfig& c = m.config();
  const int64_t E = c.d_inner(), N = c.d_state, k = c.d_conv, batch = x.size(0), L = x.size(1);
  std::vector<Tensor> xz = split(m.in_proj.forward(x), E, 2);
  Tensor conv_in = xz[0];
  const bool continues = state && state->conv_state.defined();
  if (continues) conv_in = cat({transpose(state->conv_state, 1, 2), conv_in}, 1);
  Tensor u = m.conv1d.forward_channels_last(conv_in, true);
  if (continues) u = narrow(u, 1, k - 1, L);
  Tensor delta, B_in, C_in;
  if (c.selective) {
    std::vector<Tensor> dbc = split(m.x_proj->forward(u), std::vector<int64_t>{c.resolved_dt_rank(), N, N}, 2);
    delta = transpose(linear(dbc[0], to_dtype(m.dt_proj->weight, x.dtype())), 1, 2);
    B_in = unsqueeze(transpose(dbc[1], 1, 2), 1);
    C_in = unsqueeze(transpose(dbc[2], 1, 2), 1);
  } else {
    delta = expand(zeros({1, 1, 1}, x.options()), {batch, E, L});
    B_in = expand(reshape(to_dtype(m.B, x.dtype()), {1, E, N, 1}), {batch, E, N, L});
    C_in = expand(reshape(to_dtype(m.C, x.dtype()), {1, E, N, 1}), {batch, E, N, L});
  }
  const DType p = x.dtype() == DType::f64 ? DType::f64 : DType::f32;
  const Tensor A = neg(exp(to_dtype(m.A_log, p))), D = to_dtype(m.D, p);
  const Tensor bias = to_dtype(c.selective ? m.dt_proj->bias : m.dt_bias, p);
  SelectiveScanResult scan = selective_scan(transpose(u, 1, 2), delta, A, B_in, C_in, D, transpose(xz[1], 1, 2),
                                            bias, true, state ? state->ssm_state : Tensor());
  if (state) {
    NoGradGuard no_grad;
    // The last k - 1 conv inputs, zero-padded on the left: (batch, E, k - 1).
    const int64_t T = conv_in.size(1), n = std::min(T, k - 1);
    Tensor last = zeros({batch, E, k - 1}, x.options());
    copy_into(narrow(last, 2, k - 1 - n, n), transpose(narrow(conv_in.detach(), 1, T - n, n), 1, 2));
    state->conv_state = last;
    state->ssm_state = scan.final_state.detach();
  }
  return m.out_proj.forward(transpose(scan.y, 1, 2));
}

// An identity node that records the strides of the gradient arriving at x.
Tensor stride_probe(const Tensor& x, Shape* grad_strides) {
  Tensor out = as_strided(x, x.shape(), x.strides(), x.offset());
  autograd::record("stride_probe", {x}, {out}, [grad_strides](const autograd::BackwardContext& ctx) {
    *grad_strides = ctx.grad().strides();
    return std::vector<Tensor>{ctx.grad()};
  });
  return out;
}

// max |a - b| <= tol · max(1, max |b|), elementwise over two equally shaped tensors.
void check_same(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  INFO(what);
  REQUIRE(actual.defined());
  REQUIRE(expected.defined());
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  double scale = 1.0, err = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(e[i]));
    err = std::max(err, std::abs(a[i] - e[i]));
  }
  INFO("max error ", err, " at scale ", scale);
  CHECK(err <= tol * scale);
}
}  // namespace

TEST_CASE("MambaConfig resolves dt_rank and rejects impossible values") {
  MambaConfig c;
  c.d_model = 33;
  CHECK(c.d_inner() == 66);
  CHECK(c.resolved_dt_rank() == 3);
  c.dt_rank = 5;
  CHECK(c.resolved_dt_rank() == 5);
  c.d_conv = 1;
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("d_conv must be in [2, 8], found 1"), Error);
  c.d_conv = 4;
  c.dt_min = 0.5;
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("dt_min"), Error);
  Generator gen(1);
  CHECK_THROWS_WITH_AS(MambaMixer(MambaConfig{}, gen), doctest::Contains("d_model must be positive"), Error);
}

TEST_CASE("MambaMixer parameters: mamba_ssm's names and order, the published count, decay flags") {
  Generator gen(2);
  MambaConfig c;
  c.d_model = 40;  // E 80, R 3, N 16
  MambaMixer m(c, gen);
  CHECK(names_of(m) == std::vector<std::string>{"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                                                "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"});
  CHECK(m.parameter_count() == published_count(c));
  CHECK(m.parameter_count() == 40 * 160 + 80 * 4 + 80 + 80 * 35 + 3 * 80 + 80 + 80 * 16 + 80 + 80 * 40);
  for (const NamedParameter& p : m.named_parameters()) {
    INFO(p.name);
    const bool decays = p.name == "in_proj.weight" || p.name == "conv1d.weight" || p.name == "x_proj.weight" ||
                        p.name == "dt_proj.weight" || p.name == "out_proj.weight";
    CHECK(p.weight_decay == decays);
  }
  CHECK(m.x_proj->weight.shape() == Shape{35, 80});
  CHECK(m.dt_proj->weight.shape() == Shape{80, 3});
  CHECK(m.A_log.shape() == Shape{80, 16});

  c.bias = true;
  c.conv_bias = false;
  MambaMixer biased(c, gen);
  CHECK(names_of(biased) == std::vector<std::string>{"in_proj.weight", "in_proj.bias", "conv1d.weight",
                                                     "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D",
                                                     "out_proj.weight", "out_proj.bias"});
  CHECK(biased.parameter_count() == published_count(c));

  c.selective = false;
  MambaMixer lti(c, gen);
  CHECK(names_of(lti) == std::vector<std::string>{"in_proj.weight", "in_proj.bias", "conv1d.weight", "dt_bias", "B",
                                                  "C", "A_log", "D", "out_proj.weight", "out_proj.bias"});
  CHECK(lti.parameter_count() == published_count(c));
  CHECK(!lti.x_proj);
  for (const NamedParameter& p : lti.named_parameters())
    if (p.name == "dt_bias" || p.name == "B" || p.name == "C") CHECK(p.weight_decay == (p.name == "C"));
}

TEST_CASE("MambaMixer init: A_log = log(n+1), D = 1, softplus(dt bias) log-uniform in [dt_min, dt_max]") {
  Generator gen(3);
  MambaConfig c;
  c.d_model = 64;  // E 128, R 4
  MambaMixer m(c, gen);
  const int64_t E = 128, N = 16, R = 4;
  std::vector<double> a_log = m.A_log.to_double_vector();
  for (int64_t e = 0; e < E; ++e)
    for (int64_t n = 0; n < N; ++n) CHECK(a_log[size_t(e * N + n)] == double(float(std::log(double(n + 1)))));
  CHECK(m.D.to_double_vector() == std::vector<double>(size_t(E), 1.0));

  std::vector<double> dt = softplus(to_dtype(m.dt_proj->bias, DType::f64)).to_double_vector();
  double log_mean = 0.0;
  for (double v : dt) {
    CHECK(v >= 1e-3 * (1 - 1e-5));
    CHECK(v <= 0.1 * (1 + 1e-5));
    log_mean += std::log(v) / double(E);
  }
  // log Δ is uniform on [log 1e-3, log 0.1]: mean log(1e-2), std 1.33 / sqrt(128) = 0.12.
  CHECK(std::abs(log_mean - std::log(1e-2)) < 0.4);
  CHECK(*std::max_element(dt.begin(), dt.end()) > 0.05);
  CHECK(*std::min_element(dt.begin(), dt.end()) < 2e-3);

  auto max_abs = [](const Tensor& t) {
    double r = 0.0;
    for (double v : t.to_double_vector()) r = std::max(r, std::abs(v));
    return r;
  };
  const double dt_bound = 1.0 / std::sqrt(double(R));
  CHECK(max_abs(m.dt_proj->weight) <= dt_bound);
  CHECK(max_abs(m.dt_proj->weight) > 0.9 * dt_bound);
  CHECK(max_abs(m.in_proj.weight) <= 1.0 / 8.0);
  CHECK(max_abs(m.x_proj->weight) <= 1.0 / std::sqrt(double(E)));
  CHECK(max_abs(m.out_proj.weight) <= 1.0 / std::sqrt(double(E)));
  CHECK(max_abs(m.conv1d.weight) <= 0.5);

  // dt_init_floor clamps Δ from below.
  c.dt_min = 1e-5;
  c.dt_max = 1e-4;
  c.dt_init_floor = 1e-3;
  MambaMixer floored(c, gen);
  for (double v : softplus(to_dtype(floored.dt_proj->bias, DType::f64)).to_double_vector())
    CHECK(std::abs(v - 1e-3) < 1e-8);

  // Seeded: the same seed gives the same mixer; the LTI variant shares in_proj, conv1d, out_proj.
  Generator g1(4), g2(4), g3(4);
  c = MambaConfig{};
  c.d_model = 8;
  MambaMixer a(c, g1), b(c, g2);
  c.selective = false;
  MambaMixer lti(c, g3);
  std::vector<NamedParameter> pa = a.named_parameters(), pb = b.named_parameters();
  for (size_t i = 0; i < pa.size(); ++i) CHECK(pa[i].tensor.to_double_vector() == pb[i].tensor.to_double_vector());
  CHECK(lti.in_proj.weight.to_double_vector() == a.in_proj.weight.to_double_vector());
  CHECK(lti.conv1d.weight.to_double_vector() == a.conv1d.weight.to_double_vector());
  CHECK(lti.out_proj.weight.to_double_vector() == a.out_proj.weight.to_double_vector());
  CHECK(lti.B.to_double_vector() == std::vector<double>(size_t(16 * 16), 1.0));
  for (double v : softplus(to_dtype(lti.dt_bias, DType::f64)).to_double_vector()) {
    CHECK(v >= 1e-3 * (1 - 1e-5));
    CHECK(v <= 0.1 * (1 + 1e-5));
  }
}

TEST_CASE("MambaMixer forward matches a float64 loop of the definition (selective and LTI)") {
  for (bool selective : {true, false}) {
    for (bool biases : {false, true}) {
      INFO("selective ", selective, " biases ", biases);
      MambaConfig c = tiny_config(selective);
      c.bias = biases;
      c.conv_bias = !biases;
      c.dt_rank = 2;
      Generator gen(5);
      MambaMixer m(c, gen, {.dtype = DType::f64});
      Tensor x = random_tensor({2, 7, 4}, 6, DType::f64, -2.0, 2.0);
      Tensor out = m.forward(x);
      CHECK(out.shape() == Shape{2, 7, 4});
      CHECK(out.dtype() == DType::f64);
      Reference ref = reference_forward(m, x);
      check_close(out, ref.out, 1e-12);
      MambaState state;
      check_close(m.forward(x, &state), ref.out, 1e-12);
      check_states(state, ref, 1e-12);
    }
  }
}

TEST_CASE("MambaMixer passes gradcheck w.r.t. its input and every parameter") {
  for (bool selective : {true, false}) {
    INFO("selective ", selective);
    Generator gen(7);
    MambaMixer m(tiny_config(selective), gen, {.dtype = DType::f64});
    // Larger dt biases than the init so that Δ (and with it every path) matters at L = 5.
    const Tensor& dt_bias = selective ? m.dt_proj->bias : m.dt_bias;
    copy_into(dt_bias, random_tensor({8}, 8, DType::f64, -1.0, 1.0));
    Tensor x = random_leaf({2, 5, 4}, 9);
    std::vector<Tensor> inputs{x};
    for (const NamedParameter& p : m.named_parameters()) inputs.push_back(p.tensor);
    check_gradients([&](const std::vector<Tensor>& in) { return m.forward(in[0]); }, inputs);
  }
}

TEST_CASE("MambaMixer step() from a zero state reproduces forward() and its final states") {
  for (bool selective : {true, false}) {
    for (DType dtype : {DType::f64, DType::f32}) {
      INFO("selective ", selective, " dtype ", dtype);
      const double tol = dtype == DType::f64 ? 1e-12 : 1e-5;
      MambaConfig c = tiny_config(selective);
      Generator gen(10);
      MambaMixer m(c, gen, {.dtype = dtype});
      Tensor x = random_tensor({3, 6, 4}, 11, dtype, -2.0, 2.0);
      MambaState full;
      Tensor expected;
      {
        NoGradGuard no_grad;
        expected = m.forward(x, &full);
      }
      MambaState stepped;  // undefined tensors: zeros
      Tensor out = step_through(m, x, stepped);
      check_close(out, expected.to_double_vector(), tol);
      check_close(stepped.conv_state, full.conv_state.to_double_vector(), tol);
      check_close(stepped.ssm_state, full.ssm_state.to_double_vector(), tol);
      CHECK(stepped.ssm_state.dtype() == (dtype == DType::f64 ? DType::f64 : DType::f32));
      CHECK(stepped.conv_state.shape() == Shape{3, 8, 3});

      // Explicit zero states behave the same, and step() records no graph.
      MambaState zeros_state = m.initial_state(3, dtype);
      Tensor first = m.step(select(x, 1, 0), zeros_state);
      CHECK(!first.requires_grad());
      check_close(first, select(expected, 1, 0).to_double_vector(), tol);
    }
  }
}

TEST_CASE("MambaMixer prefill then step() equals the full forward; a forward continues from a state") {
  for (bool selective : {true, false}) {
    Generator gen(12);
    MambaMixer m(tiny_config(selective), gen, {.dtype = DType::f64});
    Tensor x = random_tensor({2, 9, 4}, 13, DType::f64, -2.0, 2.0);
    const Reference ref = reference_forward(m, x);
    for (int64_t prefix : {1, 2, 3, 5}) {  // shorter and longer than d_conv - 1 = 3
      INFO("selective ", selective, " prefix ", prefix);
      NoGradGuard no_grad;
      MambaState state;
      Tensor head = m.forward(narrow(x, 1, 0, prefix), &state);
      Tensor tail = step_through(m, x, state, prefix);
      check_close(cat({head, tail}, 1), ref.out, 1e-12);
      check_states(state, ref, 1e-12);

      // The same split with a second forward instead of steps: the conv continues from conv_state.
      MambaState state2;
      Tensor a = m.forward(narrow(x, 1, 0, prefix), &state2);
      Tensor b = m.forward(narrow(x, 1, prefix, 9 - prefix), &state2);
      check_close(cat({a, b}, 1), ref.out, 1e-12);
      check_states(state2, ref, 1e-12);
    }
  }
}

TEST_CASE("MambaMixer's channel-major forward equals the channels-last one: outputs, states, gradients") {
  enum class Mode { none, prefill, continued };
  struct Case {
    bool selective, biases;
    int64_t batch, L, dt_rank;
  };
  const std::vector<Case> cases{{true, false, 3, 7, 2}, {true, true, 3, 7, 0}, {false, false, 3, 7, 0},
                                {false, true, 2, 6, 0}, {true, false, 1, 5, 2}, {true, true, 2, 1, 0},
                                {false, false, 1, 4, 0}};
  for (const Case& cs : cases)
    for (DType dtype : {DType::f64, DType::f32})
      for (Mode mode : {Mode::none, Mode::prefill, Mode::continued}) {
        INFO("selective ", cs.selective, " biases ", cs.biases, " batch ", cs.batch, " L ", cs.L, " dtype ", dtype,
             " mode ", int(mode));
        const double tol = dtype == DType::f64 ? 1e-12 : 1e-5;
        MambaConfig c = tiny_config(cs.selective);
        c.bias = cs.biases;
        c.conv_bias = !cs.biases;
        c.dt_rank = cs.dt_rank;
        Generator g1(21), g2(21);
        MambaMixer a(c, g1, {.dtype = dtype}), b(c, g2, {.dtype = dtype});
        // Larger dt biases than the init, so that Δ (and every path through it) matters.
        for (MambaMixer* m : {&a, &b})
          copy_into(cs.selective ? m->dt_proj->bias : m->dt_bias, random_tensor({8}, 22, dtype, -1.0, 1.0));

        // A state to continue from: the first 3 tokens of another sequence, run through forward.
        MambaState start;
        if (mode == Mode::continued) {
          NoGradGuard no_grad;
          a.forward(random_tensor({cs.batch, 3, 4}, 23, dtype, -2.0, 2.0), &start);
        }
        const Tensor x_values = random_tensor({cs.batch, cs.L, 4}, 24, dtype, -2.0, 2.0);
        const Tensor upstream = random_tensor({cs.batch, cs.L, 4}, 25, dtype, -1.0, 1.0);
        Tensor xa = contiguous_copy(x_values, dtype, x_values.device());
        Tensor xb = contiguous_copy(x_values, dtype, x_values.device());
        xa.set_requires_grad(true);
        xb.set_requires_grad(true);

        MambaState sa = start, sb = start;
        Shape grad_strides;
        Tensor out = a.forward(stride_probe(xa, &grad_strides), mode == Mode::none ? nullptr : &sa);
        Tensor ref = channels_last_forward(b, xb, mode == Mode::none ? nullptr : &sb);
        REQUIRE(out.shape() == Shape{cs.batch, cs.L, 4});
        CHECK(out.dtype() == dtype);
        CHECK(out.is_contiguous());
        check_same(out, ref, tol, "out");
        if (mode != Mode::none) {
          check_same(sa.conv_state, sb.conv_state, 0.0, "conv_state");  // a copy of the same inputs
          CHECK(sa.conv_state.is_contiguous());
          check_same(sa.ssm_state, sb.ssm_state, tol, "ssm_state");
          CHECK(sa.ssm_state.dtype() == sb.ssm_state.dtype());
        }

        backward(sum(mul(out, upstream)));
        backward(sum(mul(ref, upstream)));
        // The gradient reaches x contiguous: in_proj's backward builds it as one (batch·L, d) GEMM.
        CHECK(grad_strides == xa.strides());
        check_same(xa.grad(), xb.grad(), tol, "x");
        std::vector<NamedParameter> pa = a.named_parameters(), pb = b.named_parameters();
        REQUIRE(pa.size() == pb.size());
        for (size_t i = 0; i < pa.size(); ++i) {
          REQUIRE(pa[i].name == pb[i].name);
          CHECK(pa[i].tensor.grad().dtype() == dtype);
          check_same(pa[i].tensor.grad(), pb[i].tensor.grad(), tol, pa[i].name);
        }
      }
}

TEST_CASE("MambaMixer's channel-major forward with f32 parameters and bf16 activations") {
  // bf16 rounds each stage, and the two layouts round the same values: equal within bf16's
  // precision relative to the output's scale; the f32 parameters get f32 gradients.
  Generator g1(26), g2(26);
  MambaConfig c = tiny_config(true);
  c.bias = true;
  MambaMixer a(c, g1), b(c, g2);
  Tensor x = random_tensor({2, 6, 4}, 27, DType::bf16, -2.0, 2.0);
  Tensor out = a.forward(x), ref = channels_last_forward(b, x, nullptr);
  CHECK(out.dtype() == DType::bf16);
  check_same(out, ref, 1e-2, "out");
  backward(sum(out));
  backward(sum(ref));
  std::vector<NamedParameter> pa = a.named_parameters(), pb = b.named_parameters();
  for (size_t i = 0; i < pa.size(); ++i) {
    CHECK(pa[i].tensor.grad().dtype() == DType::f32);
    check_same(pa[i].tensor.grad(), pb[i].tensor.grad(), 1e-2, pa[i].name);
  }
}

TEST_CASE("MambaMixer LTI mode trains its dt_bias, B and C") {
  Generator gen(14);
  MambaMixer m(tiny_config(false), gen);
  Tensor x = random_tensor({2, 6, 4}, 15, DType::f32, -1.0, 1.0);
  backward(sum(square(m.forward(x))));
  for (const NamedParameter& p : m.named_parameters()) {
    INFO(p.name);
    REQUIRE(p.tensor.grad().defined());
    std::vector<double> g = p.tensor.grad().to_double_vector();
    CHECK(std::any_of(g.begin(), g.end(), [](double v) { return v != 0.0 && std::isfinite(v); }));
  }
}

TEST_CASE("MambaMixer with f32 parameters runs f64 and bf16 activations") {
  Generator gen(16);
  MambaMixer m(tiny_config(true), gen);
  Tensor x = random_tensor({2, 5, 4}, 17, DType::f64);
  Tensor out = m.forward(x);
  CHECK(out.dtype() == DType::f64);
  backward(sum(out));
  CHECK(m.A_log.grad().dtype() == DType::f32);
  CHECK(m.in_proj.weight.grad().dtype() == DType::f32);
  Tensor out_bf16 = m.forward(to_dtype(x, DType::bf16));
  CHECK(out_bf16.dtype() == DType::bf16);
  // bf16 rounding of the activations and weights: within 2e-2 of the f64 result, relative to its max.
  std::vector<double> a = out_bf16.to_double_vector(), e = out.to_double_vector();
  double scale = 0.0, err = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(e[i]));
    err = std::max(err, std::abs(a[i] - e[i]));
  }
  CHECK(err <= 2e-2 * scale);
}

TEST_CASE("MambaMixer rejects wrong input shapes and mismatched states") {
  Generator gen(18);
  MambaMixer m(tiny_config(true), gen);
  CHECK_THROWS_WITH_AS(m.forward(zeros({2, 5, 3})), doctest::Contains("expected x of shape (batch, L, 4)"), Error);
  CHECK_THROWS_WITH_AS(m.forward(zeros({5, 4})), doctest::Contains("f32[5, 4]"), Error);
  MambaState state;
  CHECK_THROWS_WITH_AS(m.step(zeros({2, 3}), state), doctest::Contains("expected x of shape (batch, 4)"), Error);
  state = m.initial_state(2, DType::f32);
  CHECK_THROWS_WITH_AS(m.step(zeros({3, 4}), state), doctest::Contains("state.conv_state"), Error);
  state.conv_state = zeros({2, 8, 3}, {.dtype = DType::f64});
  CHECK_THROWS_WITH_AS(m.forward(zeros({2, 5, 4}), &state), doctest::Contains("f64[2, 8, 3]"), Error);
  state = m.initial_state(2, DType::f32);
  state.ssm_state = zeros({2, 8, 4});
  CHECK_THROWS_WITH_AS(m.step(zeros({2, 4}), state), doctest::Contains("state.ssm_state (batch, E, N)"), Error);
}
