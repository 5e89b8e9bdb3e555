// models/module.h and the thin modules over the ops: Linear, Embedding, RMSNorm, CausalConv1d.
// Registry names, order, counts and decay flags; in-place dtype moves; PyTorch's default inits
// (bounds and statistics, seeded and reproducible); forwards against float64 loops; gradients
// reaching f32 parameters through the cast to the activations' dtype.
#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "autograd/engine.h"
#include "models/conv1d.h"
#include "models/embedding.h"
#include "models/linear.h"
#include "models/module.h"
#include "models/rms_norm.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// A small tree: a norm, then numbered blocks each holding a Linear and an optional bias-free
// Linear, then a parameter of the root itself.
struct Block : Module {
  Linear proj;
  std::unique_ptr<Linear> extra;
  Block(Generator& gen, bool with_extra) : proj(3, 4, true, gen) {
    register_module("proj", proj);
    if (with_extra) {
      extra = std::make_unique<Linear>(4, 2, false, gen);
      register_module("extra", *extra);
    }
  }
};

struct Tree : Module {
  RMSNorm norm{3};
  std::vector<std::unique_ptr<Block>> layers;
  Tensor scale;
  explicit Tree(Generator& gen) {
    register_module("norm", norm);
    for (int i = 0; i < 2; ++i) {
      layers.push_back(std::make_unique<Block>(gen, i == 1));
      register_module("layers." + std::to_string(i), *layers.back());
    }
    register_parameter("scale", scale, full({2}, 0.5), false);
  }
};

std::vector<std::string> names_of(const Module& m) {
  std::vector<std::string> names;
  for (const NamedParameter& p : m.named_parameters()) names.push_back(p.name);
  return names;
}

double max_abs(const Tensor& t) {
  double m = 0.0;
  for (double v : t.to_double_vector()) m = std::max(m, std::abs(v));
  return m;
}

}  // namespace

TEST_CASE("Module names parameters by dotted path in registration order, with decay flags") {
  Generator gen(1);
  Tree tree(gen);
  const std::vector<std::string> expected{"norm.weight",          "layers.0.proj.weight", "layers.0.proj.bias",
                                          "layers.1.proj.weight", "layers.1.proj.bias",   "layers.1.extra.weight",
                                          "scale"};
  CHECK(names_of(tree) == expected);
  const std::vector<bool> decay{false, true, false, true, false, true, false};
  std::vector<NamedParameter> params = tree.named_parameters();
  for (size_t i = 0; i < params.size(); ++i) {
    INFO(params[i].name);
    CHECK(params[i].weight_decay == decay[i]);
    CHECK(params[i].tensor.requires_grad());
    CHECK(params[i].tensor.is_leaf());
  }
  CHECK(tree.parameter_count() == 3 + 2 * (12 + 4) + 8 + 2);
  CHECK(tree.parameters().size() == expected.size());
  // The registry hands out the members themselves, not copies.
  CHECK(params[1].tensor.is_same(tree.layers[0]->proj.weight));
  CHECK(params[6].tensor.is_same(tree.scale));
  CHECK(names_of(tree.layers[1]->proj) == std::vector<std::string>{"weight", "bias"});
}

TEST_CASE("Module rejects duplicate, empty and non-leaf registrations") {
  struct Bad : Module {
    Tensor a, b;
    Linear child;
    explicit Bad(Generator& gen) : child(2, 2, false, gen) { register_parameter("a", a, zeros({2}), true); }
    void again() { register_parameter("a", b, zeros({2}), true); }
    void child_again() { register_module("a", child); }
    void empty_name() { register_parameter("", b, zeros({2}), true); }
    void computed() { register_parameter("b", b, add(ones({2}, {.requires_grad = true}), 1.0), true); }
    void integer() { register_parameter("b", b, zeros({2}, {.dtype = DType::i64}), true); }
  };
  Generator gen(2);
  Bad bad(gen);
  CHECK_THROWS_WITH_AS(bad.again(), doctest::Contains("'a' is already registered"), Error);
  CHECK_THROWS_WITH_AS(bad.child_again(), doctest::Contains("'a' is already registered"), Error);
  CHECK_THROWS_WITH_AS(bad.empty_name(), doctest::Contains("non-empty name"), Error);
  CHECK_THROWS_WITH_AS(bad.computed(), doctest::Contains("must be a leaf"), Error);
  CHECK_THROWS_WITH_AS(bad.integer(), doctest::Contains("must be a floating tensor"), Error);
}

TEST_CASE("Module::to(DType) converts every parameter in place and keeps names, flags and values") {
  Generator gen(3);
  Tree tree(gen);
  const std::vector<NamedParameter> before = tree.named_parameters();
  backward(sum(tree.layers[0]->proj.forward(ones({1, 3}))));
  CHECK(tree.layers[0]->proj.weight.grad().defined());

  tree.to(DType::f64);
  const std::vector<NamedParameter> after = tree.named_parameters();
  REQUIRE(after.size() == before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    INFO(after[i].name);
    CHECK(after[i].name == before[i].name);
    CHECK(after[i].weight_decay == before[i].weight_decay);
    CHECK(after[i].tensor.dtype() == DType::f64);
    CHECK(after[i].tensor.requires_grad());
    CHECK(!after[i].tensor.grad().defined());  // gradients are dropped
    CHECK(after[i].tensor.to_double_vector() == before[i].tensor.to_double_vector());  // f32 -> f64 is exact
  }
  CHECK(tree.layers[1]->extra->weight.dtype() == DType::f64);  // the members themselves were replaced
  tree.to(Device::cpu());  // already there: nothing changes
  CHECK(tree.scale.is_same(after.back().tensor));
  CHECK_THROWS_WITH_AS(tree.to(DType::i32), doctest::Contains("floating dtype"), Error);
}

TEST_CASE("Module::zero_grad drops every gradient") {
  Generator gen(4);
  Tree tree(gen);
  Tensor x = random_tensor({2, 3}, 5, DType::f32);
  backward(sum(tree.layers[1]->extra->forward(tree.layers[1]->proj.forward(tree.norm.forward(x)))));
  CHECK(tree.norm.weight.grad().defined());
  CHECK(tree.layers[1]->extra->weight.grad().defined());
  tree.zero_grad();
  for (const NamedParameter& p : tree.named_parameters()) CHECK(!p.tensor.grad().defined());
}

TEST_CASE("Linear: PyTorch's default init, seeded, and x W^T + b") {
  Generator gen(6);
  Linear layer(64, 32, true, gen);
  CHECK(names_of(layer) == std::vector<std::string>{"weight", "bias"});
  CHECK(layer.parameter_count() == 64 * 32 + 32);
  CHECK(layer.weight.shape() == Shape{32, 64});
  const double bound = 1.0 / 8.0;
  for (const Tensor& t : {layer.weight, layer.bias}) {
    std::vector<double> v = t.to_double_vector();
    CHECK(max_abs(t) <= bound);
    double mean_v = 0.0, var = 0.0;
    for (double e : v) mean_v += e / double(v.size());
    for (double e : v) var += (e - mean_v) * (e - mean_v) / double(v.size());
    // U(-b, b): mean 0, variance b^2 / 3 (loose: 32 bias values).
    CHECK(std::abs(mean_v) < 0.35 * bound);
    CHECK(std::abs(var / (bound * bound / 3.0) - 1.0) < 0.4);
  }
  Generator same(6), other(7);
  Linear again(64, 32, true, same), different(64, 32, true, other);
  CHECK(again.weight.to_double_vector() == layer.weight.to_double_vector());
  CHECK(again.bias.to_double_vector() == layer.bias.to_double_vector());
  CHECK(different.weight.to_double_vector() != layer.weight.to_double_vector());

  Linear no_bias(5, 3, false, gen, {.dtype = DType::f64});
  CHECK(names_of(no_bias) == std::vector<std::string>{"weight"});
  CHECK(!no_bias.bias.defined());
  Tensor x = random_tensor({2, 4, 5}, 8);
  std::vector<double> xv = x.to_double_vector(), w = no_bias.weight.to_double_vector(), expected(2 * 4 * 3);
  for (size_t r = 0; r < 8; ++r)
    for (size_t o = 0; o < 3; ++o)
      for (size_t i = 0; i < 5; ++i) expected[r * 3 + o] += xv[r * 5 + i] * w[o * 5 + i];
  check_close(no_bias.forward(x), expected, 1e-12);
}

TEST_CASE("Linear with f32 parameters takes f64 (or bf16) activations; gradients arrive in f32") {
  Generator gen(9);
  Linear layer(4, 3, true, gen);
  Tensor x = random_tensor({5, 4}, 10);  // f64
  Tensor y = layer.forward(x);
  CHECK(y.dtype() == DType::f64);
  backward(sum(y));
  REQUIRE(layer.weight.grad().defined());
  CHECK(layer.weight.grad().dtype() == DType::f32);
  // d sum(x W^T + b) / dW[o, i] = sum over rows of x[:, i]; / db[o] = rows.
  std::vector<double> xv = x.to_double_vector(), col(4), expected;
  for (size_t r = 0; r < 5; ++r)
    for (size_t i = 0; i < 4; ++i) col[i] += xv[r * 4 + i];
  for (int o = 0; o < 3; ++o) expected.insert(expected.end(), col.begin(), col.end());
  check_close(layer.weight.grad(), expected, 1e-6);
  check_close(layer.bias.grad(), {5.0, 5.0, 5.0}, 0.0);
  CHECK(layer.forward(to_dtype(x, DType::bf16)).dtype() == DType::bf16);
}

TEST_CASE("Linear passes gradcheck through its parameters") {
  Generator gen(11);
  Linear layer(4, 3, true, gen, {.dtype = DType::f64});
  Tensor x = random_leaf({2, 4}, 12);
  check_gradients([&](const std::vector<Tensor>& in) { return layer.forward(in[0]); },
                  {x, layer.weight, layer.bias});
}

TEST_CASE("Embedding: N(0, 0.02^2) rows, picked by index") {
  Generator gen(13);
  Embedding table(256, 64, gen);
  CHECK(names_of(table) == std::vector<std::string>{"weight"});
  CHECK(table.named_parameters()[0].weight_decay);
  std::vector<double> v = table.weight.to_double_vector();
  double mean_v = 0.0, var = 0.0;
  for (double e : v) mean_v += e / double(v.size());
  for (double e : v) var += (e - mean_v) * (e - mean_v) / double(v.size());
  CHECK(std::abs(mean_v) < 1e-3);  // 16384 draws: the mean's std is 1.6e-4
  CHECK(std::abs(std::sqrt(var) / 0.02 - 1.0) < 0.03);

  Embedding small(5, 3, gen, {.dtype = DType::f64}, 1.0);
  Tensor ids = from_vector<int64_t>({4, 0, 4, 2}, {2, 2});
  Tensor out = small.forward(ids);
  CHECK(out.shape() == Shape{2, 2, 3});
  std::vector<double> w = small.weight.to_double_vector(), expected;
  for (int64_t id : {4, 0, 4, 2}) expected.insert(expected.end(), w.begin() + id * 3, w.begin() + id * 3 + 3);
  check_close(out, expected, 0.0);
}

TEST_CASE("RMSNorm: weight ones, eps 1e-5, no decay; forward and forward_residual") {
  RMSNorm norm(6, 1e-5, {.dtype = DType::f64});
  CHECK(names_of(norm) == std::vector<std::string>{"weight"});
  CHECK(!norm.named_parameters()[0].weight_decay);
  CHECK(norm.weight.to_double_vector() == std::vector<double>(6, 1.0));
  CHECK(norm.eps() == 1e-5);
  copy_into(norm.weight, random_tensor({6}, 14, DType::f64, 0.5, 1.5));
  Tensor x = random_tensor({3, 6}, 15, DType::f64, -2.0, 2.0);
  std::vector<double> xv = x.to_double_vector(), w = norm.weight.to_double_vector(), expected(18);
  for (size_t r = 0; r < 3; ++r) {
    double squares = 0.0;
    for (size_t j = 0; j < 6; ++j) squares += xv[r * 6 + j] * xv[r * 6 + j];
    for (size_t j = 0; j < 6; ++j) expected[r * 6 + j] = xv[r * 6 + j] / std::sqrt(squares / 6.0 + 1e-5) * w[j];
  }
  check_close(norm.forward(x), expected, 1e-12);
  auto [y, residual] = norm.forward_residual(x, Tensor());
  check_close(y, expected, 1e-12);
  check_close(residual, xv, 0.0);

  Tensor x_leaf = random_leaf({2, 6}, 16);
  check_gradients([&](const std::vector<Tensor>& in) { return norm.forward(in[0]); }, {x_leaf, norm.weight});
}

TEST_CASE("CausalConv1d: init bounds 1/sqrt(k), names, forward with SiLU") {
  Generator gen(17);
  CausalConv1d conv(128, 4, true, gen);
  CHECK(names_of(conv) == std::vector<std::string>{"weight", "bias"});
  CHECK(conv.named_parameters()[0].weight_decay);
  CHECK(!conv.named_parameters()[1].weight_decay);
  CHECK(conv.weight.shape() == Shape{128, 4});
  CHECK(max_abs(conv.weight) <= 0.5);
  CHECK(max_abs(conv.weight) > 0.45);  // 512 draws reach near the bound
  CHECK(max_abs(conv.bias) <= 0.5);

  CausalConv1d small(3, 2, true, gen, {.dtype = DType::f64});
  Tensor x = random_tensor({1, 4, 3}, 18);  // (batch, length, channels)
  std::vector<double> xv = x.to_double_vector(), w = small.weight.to_double_vector(),
                      b = small.bias.to_double_vector(), expected(12);
  for (size_t t = 0; t < 4; ++t)
    for (size_t c = 0; c < 3; ++c) {
      double s = b[c] + w[c * 2 + 1] * xv[t * 3 + c] + (t > 0 ? w[c * 2] * xv[(t - 1) * 3 + c] : 0.0);
      expected[t * 3 + c] = s / (1.0 + std::exp(-s));
    }
  check_close(small.forward_channels_last(x, true), expected, 1e-12);
  // The channels-first forward on the transposed view gives the transposed result.
  Tensor first = small.forward(transpose(x, 1, 2), true);
  CHECK(first.shape() == Shape{1, 3, 4});
  check_close(transpose(first, 1, 2), expected, 1e-12);
  CHECK_THROWS_WITH_AS(CausalConv1d(3, 9, true, gen), doctest::Contains("kernel_size 9"), Error);
}
