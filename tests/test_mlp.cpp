// models/mlp.h: the MLP block in its three kinds. Parameter names and shapes, the default hidden
// widths, forward against a float64 loop of each definition, step() equal to forward on one token,
// float64 gradcheck w.r.t. the input and every parameter, bad configs and inputs.
#include <cmath>
#include <string>
#include <vector>

#include "models/mlp.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

MlpConfig small(const std::string& kind, bool bias = false) {
  MlpConfig c;
  c.d_model = 6;
  c.hidden = 5;
  c.kind = kind;
  c.bias = bias;
  return c;
}

double act(const std::string& kind, double v) {
  if (kind == "gelu") return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
  if (kind == "relu2") return v > 0 ? v * v : 0.0;
  return v / (1.0 + std::exp(-v));  // SiLU of the swiglu gate
}

// The definition as float64 loops: x (rows, d) -> (rows, d).
std::vector<double> reference_forward(const Mlp& m, const Tensor& x_in) {
  const MlpConfig& c = m.config();
  const int64_t d = c.d_model, F = c.resolved_hidden(), rows = x_in.numel() / d, F1 = m.fc1.out_features();
  auto values = [](const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>(); };
  const std::vector<double> x = values(x_in), w1 = values(m.fc1.weight), b1 = values(m.fc1.bias),
                            w2 = values(m.fc2.weight), b2 = values(m.fc2.bias);
  std::vector<double> out(size_t(rows * d));
  for (int64_t r = 0; r < rows; ++r) {
    std::vector<double> h(static_cast<size_t>(F1));
    for (int64_t p = 0; p < F1; ++p) {
      double s = b1.empty() ? 0.0 : b1[size_t(p)];
      for (int64_t i = 0; i < d; ++i) s += w1[size_t(p * d + i)] * x[size_t(r * d + i)];
      h[size_t(p)] = s;
    }
    std::vector<double> a(static_cast<size_t>(F));
    for (int64_t f = 0; f < F; ++f)
      a[size_t(f)] = c.gated() ? h[size_t(f)] * act(c.kind, h[size_t(F + f)]) : act(c.kind, h[size_t(f)]);
    for (int64_t j = 0; j < d; ++j) {
      double s = b2.empty() ? 0.0 : b2[size_t(j)];
      for (int64_t f = 0; f < F; ++f) s += w2[size_t(j * F + f)] * a[size_t(f)];
      out[size_t(r * d + j)] = s;
    }
  }
  return out;
}

}  // namespace

TEST_CASE("Mlp names fc1 and fc2 and picks the usual hidden widths") {
  Generator gen(1);
  Mlp m(small("swiglu", true), gen);
  const auto params = m.named_parameters();
  REQUIRE(params.size() == 4);
  CHECK(params[0].name == "fc1.weight");
  CHECK(params[0].tensor.shape() == Shape{10, 6});
  CHECK(params[1].name == "fc1.bias");
  CHECK_FALSE(params[1].weight_decay);
  CHECK(params[2].name == "fc2.weight");
  CHECK(params[2].tensor.shape() == Shape{6, 5});
  Mlp g(small("gelu"), gen);
  CHECK(g.fc1.weight.shape() == Shape{5, 6});

  MlpConfig c;
  c.d_model = 64;
  CHECK(c.resolved_hidden() == 192);  // 8·64/3 = 170.7, up to a multiple of 64
  c.d_model = 96;
  CHECK(c.resolved_hidden() == 256);  // exactly 8·96/3
  c.kind = "relu2";
  CHECK(c.resolved_hidden() == 384);
}

TEST_CASE("Mlp forward matches a float64 loop of each kind, and step() equals forward") {
  for (const std::string kind : {"swiglu", "gelu", "relu2"})
    for (bool bias : {false, true}) {
      INFO("kind ", kind, " bias ", bias);
      Generator gen(3);
      Mlp m(small(kind, bias), gen, {.dtype = DType::f64});
      const Tensor x = random_tensor({2, 3, 6}, 4, DType::f64, -2.0, 2.0);
      check_close(m.forward(x), reference_forward(m, x), 1e-12);
      const Tensor row = contiguous(select(x, 1, 1));
      check_close(m.step(row), reference_forward(m, row), 1e-12);
      CHECK_FALSE(m.step(row).requires_grad());
    }
}

TEST_CASE("Mlp passes float64 gradcheck w.r.t. the input and every parameter") {
  for (const std::string kind : {"swiglu", "gelu", "relu2"}) {
    INFO("kind ", kind);
    Generator gen(5);
    Mlp m(small(kind, true), gen, {.dtype = DType::f64});
    const Tensor x = random_leaf({2, 3, 6}, 6, -2.0, 2.0);
    std::vector<Tensor> inputs{x};
    for (const Tensor& p : m.parameters()) inputs.push_back(p);
    check_gradients([&](const std::vector<Tensor>& in) { return m.forward(in[0]); }, inputs);
  }
}

TEST_CASE("Mlp rejects impossible configurations and inputs") {
  Generator gen(1);
  CHECK_THROWS_WITH_AS(Mlp(small("geglu"), gen),
                       doctest::Contains("MlpConfig: kind must be \"swiglu\", \"gelu\" or \"relu2\" but is \"geglu\""),
                       Error);
  MlpConfig c = small("gelu");
  c.d_model = 0;
  CHECK_THROWS_WITH_AS(Mlp(c, gen), doctest::Contains("MlpConfig: d_model must be positive"), Error);
  Mlp m(small("gelu"), gen);
  CHECK_THROWS_WITH_AS(m.forward(zeros({2, 5})), doctest::Contains("Mlp: expected x of shape (..., 6)"), Error);
}
