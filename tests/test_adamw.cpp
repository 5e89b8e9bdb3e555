// trainer/adamw: the CPU AdamW against a hand-written float64 AdamW (the paper's form with
// bias-corrected m_hat and v_hat) over several steps with changing rates, f64 parameters (1e-12)
// and f32 parameters (reference rounding its state to float after each step); decay flags;
// skipped parameters; strided parameters; thread-count independence; the state round trip
// through named_state/load_state continuing bit-exactly; a Linear module fitting a target; errors.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "core/parallel.h"
#include "models/linear.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"
#include "trainer/adamw.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Float64 AdamW of one parameter, written independently of trainer/adamw.cpp:
//   p <- p - lr * wd * p;  m_hat = m / (1 - b1^t);  v_hat = v / (1 - b2^t);
//   p <- p - lr * m_hat / (sqrt(v_hat) + eps)
// round_to_float: the parameter and moments are stored as f32 between steps.
struct Reference {
  std::vector<double> p, m, v;
  bool decay;
  void step(const std::vector<double>& g, const AdamWOptions& o, double lr, int64_t t, bool round_to_float) {
    const double wd = decay ? o.weight_decay : 0.0;
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] -= lr * wd * p[i];
      m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      const double m_hat = m[i] / (1 - std::pow(o.beta1, double(t)));
      const double v_hat = v[i] / (1 - std::pow(o.beta2, double(t)));
      p[i] -= lr * m_hat / (std::sqrt(v_hat) + o.eps);
      if (round_to_float) {
        p[i] = double(float(p[i]));
        m[i] = double(float(m[i]));
        v[i] = double(float(v[i]));
      }
    }
  }
};

Tensor leaf(const Shape& shape, uint64_t seed, DType dtype) {
  Tensor t = random_tensor(shape, seed, dtype);
  t.set_requires_grad(true);
  return t;
}

std::vector<NamedParameter> make_params(DType dtype, uint64_t seed) {
  return {{"embed.weight", leaf({7, 5}, seed, dtype), true},
          {"norm.weight", leaf({5}, seed + 1, dtype), false},
          {"proj.weight", leaf({3, 5}, seed + 2, dtype), true},
          {"proj.bias", leaf({3}, seed + 3, dtype), false}};
}

// Relative closeness judged against the tensor's scale (moments pass through zero).
void check_values(const Tensor& actual, const std::vector<double>& expected, double rtol, const std::string& what) {
  std::vector<double> a = actual.to_double_vector();
  REQUIRE(a.size() == expected.size());
  double scale = 0.0;
  for (double e : expected) scale = std::max(scale, std::abs(e));
  int bad = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(std::abs(a[i] - expected[i]) <= rtol * std::max(std::abs(expected[i]), scale))) ++bad;
  INFO(what, ": ", bad, " elements off");
  CHECK(bad == 0);
}

// Runs `steps` updates of AdamW and of the float64 reference on the same gradients and rates.
void check_against_reference(DType dtype, double rtol, int steps) {
  CAPTURE(dtype);
  AdamWOptions o{.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1};
  std::vector<NamedParameter> params = make_params(dtype, 100);
  std::vector<Reference> ref;
  for (const NamedParameter& np : params)
    ref.push_back({np.tensor.to_double_vector(), std::vector<double>(size_t(np.tensor.numel()), 0.0),
                   std::vector<double>(size_t(np.tensor.numel()), 0.0), np.weight_decay});
  AdamW opt(params, o);
  const bool round = dtype != DType::f64;
  for (int t = 1; t <= steps; ++t) {
    const double lr = o.lr * (1.0 - 0.15 * t);  // a changing rate, as a schedule gives
    for (size_t k = 0; k < params.size(); ++k) {
      // Gradients of mixed magnitudes, so the update is not just lr * sign(g).
      Tensor g = random_tensor(params[k].tensor.shape(), 1000 * t + k, dtype, -2.0, 2.0);
      params[k].tensor.set_grad(g);
      ref[k].step(g.to_double_vector(), o, lr, t, round);
    }
    opt.step(lr);
    CHECK(opt.step_count() == t);
  }
  std::vector<AdamWMoments> state = opt.named_state();
  REQUIRE(state.size() == params.size());
  for (size_t k = 0; k < params.size(); ++k) {
    CHECK(state[k].name == params[k].name);
    check_values(params[k].tensor, ref[k].p, rtol, params[k].name + " param");
    check_values(state[k].m, ref[k].m, rtol, params[k].name + " m");
    check_values(state[k].v, ref[k].v, rtol, params[k].name + " v");
  }
}

}  // namespace

TEST_CASE("AdamW matches a float64 AdamW over several steps") {
  check_against_reference(DType::f64, 1e-12, 6);
  // f32 storage: both sides round to float at the same points, so they agree to float precision.
  check_against_reference(DType::f32, 1e-6, 6);
}

TEST_CASE("AdamW's first step moves each parameter by about lr against its gradient") {
  // m_hat = g and v_hat = g^2 at t = 1, so the update is lr * g / (|g| + eps).
  Tensor p = leaf({4, 9}, 1, DType::f64);
  const std::vector<double> before = p.to_double_vector();
  Tensor g = random_tensor({4, 9}, 2, DType::f64, 0.1, 1.0);
  p.set_grad(mul(g, -1.0));
  AdamW opt({{"w", p, false}}, {.lr = 0.5, .eps = 1e-8});
  opt.step(1e-3);
  std::vector<double> after = p.to_double_vector(), gv = g.to_double_vector();
  for (size_t i = 0; i < after.size(); ++i)
    CHECK(std::abs((after[i] - before[i]) - 1e-3 * gv[i] / (gv[i] + 1e-8)) <= 1e-15);
}

TEST_CASE("AdamW applies weight decay only to flagged parameters") {
  // Two copies of one tensor with one gradient: the decayed copy ends lower by exactly the
  // decoupled shrink p * lr * wd of the first step (its Adam step is identical).
  Tensor a = leaf({6}, 3, DType::f64), b = clone(a).detach();
  b.set_requires_grad(true);
  Tensor g = random_tensor({6}, 4, DType::f64);
  a.set_grad(g);
  b.set_grad(clone(g));
  const std::vector<double> p0 = a.to_double_vector();
  AdamW opt({{"decayed", a, true}, {"plain", b, false}}, {.lr = 1e-2, .weight_decay = 0.3});
  opt.step(0.02);
  std::vector<double> pa = a.to_double_vector(), pb = b.to_double_vector();
  // Absolute: the difference of two values near p0 carries their rounding (~1e-16).
  for (size_t i = 0; i < p0.size(); ++i) CHECK(std::abs((pb[i] - pa[i]) - p0[i] * 0.02 * 0.3) <= 1e-15);
  // With zero decay both copies follow one path.
  Tensor c = leaf({6}, 3, DType::f64), d = leaf({6}, 3, DType::f64);
  c.set_grad(g);
  d.set_grad(clone(g));
  AdamW no_decay({{"c", c, true}, {"d", d, false}}, {.lr = 1e-2, .weight_decay = 0.0});
  no_decay.step();
  CHECK(c.to_double_vector() == d.to_double_vector());
}

TEST_CASE("AdamW skips parameters without a gradient and keeps their moments") {
  std::vector<NamedParameter> params = make_params(DType::f32, 7);
  AdamW opt(params, {});
  params[0].tensor.set_grad(random_tensor(params[0].tensor.shape(), 8, DType::f32));
  const std::vector<double> untouched = params[1].tensor.to_double_vector();
  opt.step(1e-3);
  CHECK(params[1].tensor.to_double_vector() == untouched);
  std::vector<AdamWMoments> state = opt.named_state();
  CHECK(state[1].m.to_double_vector() == std::vector<double>(5, 0.0));
  CHECK(state[0].v.to_double_vector() != std::vector<double>(35, 0.0));
  CHECK(opt.step_count() == 1);
  opt.zero_grad();
  CHECK_FALSE(params[0].tensor.grad().defined());
  opt.step(1e-3);  // nothing has a gradient: no change but the count
  CHECK(opt.step_count() == 2);
}

TEST_CASE("AdamW updates a strided parameter in place through its view") {
  // The transposed leaf shares storage with its base: the update lands in the base's storage.
  Tensor p = transposed_leaf({5, 3}, 11);
  Tensor g = random_tensor({5, 3}, 12);
  p.set_grad(g);
  Reference ref{p.to_double_vector(), std::vector<double>(15, 0.0), std::vector<double>(15, 0.0), true};
  AdamWOptions o{.lr = 1e-2, .weight_decay = 0.05};
  AdamW opt({{"w", p, true}}, o);
  opt.step();
  ref.step(g.to_double_vector(), o, o.lr, 1, false);
  check_values(p, ref.p, 1e-12, "strided param");
}

TEST_CASE("AdamW results do not depend on the thread count") {
  const int threads = num_threads();
  auto run = [](int n) {
    set_num_threads(n);
    Tensor p = leaf({300, 700}, 21, DType::f32);  // 210000 elements: several chunks
    AdamW opt({{"w", p, true}}, {});
    for (int t = 0; t < 3; ++t) {
      p.set_grad(random_tensor({300, 700}, 22 + t, DType::f32));
      opt.step(1e-3);
    }
    return p.to_vector<float>();
  };
  std::vector<float> one = run(1), many = run(4);
  set_num_threads(threads);
  CHECK(one == many);
}

TEST_CASE("AdamW state saved by name and loaded into a fresh optimizer continues bit-exactly") {
  std::vector<NamedParameter> a_params = make_params(DType::f32, 31);
  AdamW a(a_params, {});
  auto grads_for = [&](int t) {
    std::vector<Tensor> g;
    for (size_t k = 0; k < a_params.size(); ++k)
      g.push_back(random_tensor(a_params[k].tensor.shape(), 500 + 10 * t + k, DType::f32));
    return g;
  };
  for (int t = 0; t < 3; ++t) {
    std::vector<Tensor> g = grads_for(t);
    for (size_t k = 0; k < a_params.size(); ++k) a_params[k].tensor.set_grad(g[k]);
    a.step(1e-3);
  }
  // Save: copies of the parameters and moments (as a checkpoint would), in reverse order.
  std::vector<NamedParameter> b_params;
  for (const NamedParameter& np : a_params) {
    Tensor copy = clone(np.tensor).detach();
    copy.set_requires_grad(true);
    b_params.push_back({np.name, copy, np.weight_decay});
  }
  std::vector<AdamWMoments> saved;
  for (const AdamWMoments& s : a.named_state()) saved.insert(saved.begin(), {s.name, clone(s.m), clone(s.v)});
  AdamW b(b_params, {});
  b.load_state(a.step_count(), saved);
  CHECK(b.step_count() == 3);
  for (int t = 3; t < 5; ++t) {
    std::vector<Tensor> g = grads_for(t);
    for (size_t k = 0; k < a_params.size(); ++k) {
      a_params[k].tensor.set_grad(g[k]);
      b_params[k].tensor.set_grad(clone(g[k]));
    }
    a.step(1e-3 * (t - 2));
    b.step(1e-3 * (t - 2));
  }
  for (size_t k = 0; k < a_params.size(); ++k) {
    CHECK(a_params[k].tensor.to_vector<float>() == b_params[k].tensor.to_vector<float>());
    CHECK(a.named_state()[k].v.to_vector<float>() == b.named_state()[k].v.to_vector<float>());
  }
}

TEST_CASE("AdamW load_state names what does not match") {
  std::vector<NamedParameter> params = make_params(DType::f32, 41);
  AdamW opt(params, {});
  std::vector<AdamWMoments> state;
  for (const AdamWMoments& s : opt.named_state()) state.push_back({s.name, clone(s.m), clone(s.v)});
  fill_(state[0].m, 1.0);

  std::vector<AdamWMoments> missing(state.begin(), state.begin() + 3);
  CHECK_THROWS_WITH_AS(opt.load_state(1, missing), doctest::Contains("no moments for parameter 'proj.bias'"), Error);
  std::vector<AdamWMoments> unknown = state;
  unknown.push_back({"head.weight", zeros({2}), zeros({2})});
  CHECK_THROWS_WITH_AS(opt.load_state(1, unknown), doctest::Contains("'head.weight', which is not a parameter"),
                       Error);
  std::vector<AdamWMoments> twice = state;
  twice.push_back(state[2]);
  CHECK_THROWS_WITH_AS(opt.load_state(1, twice), doctest::Contains("moments for 'proj.weight' appear twice"), Error);
  std::vector<AdamWMoments> wrong_shape = state;
  wrong_shape[2].v = zeros({5, 3});
  CHECK_THROWS_WITH_AS(opt.load_state(1, wrong_shape),
                       doctest::Contains("v of 'proj.weight' is f32[5, 3] on cpu but the parameter is f32[3, 5]"),
                       Error);
  std::vector<AdamWMoments> integer = state;
  integer[1].m = zeros({5}, {.dtype = DType::i64});
  CHECK_THROWS_WITH_AS(opt.load_state(1, integer), doctest::Contains("m of 'norm.weight' is i64[5]"), Error);
  CHECK_THROWS_WITH_AS(opt.load_state(-1, state), doctest::Contains("step count must be >= 0"), Error);
  // A failed load changed nothing.
  CHECK(opt.step_count() == 0);
  CHECK(opt.named_state()[0].m.to_double_vector() == std::vector<double>(35, 0.0));
  opt.load_state(4, state);
  CHECK(opt.step_count() == 4);
  CHECK(opt.named_state()[0].m.to_double_vector() == std::vector<double>(35, 1.0));
}

TEST_CASE("AdamW trains a Linear module towards a linear target") {
  Generator gen(5);
  Linear model(4, 2, true, gen);
  AdamW opt(model.named_parameters(), {.lr = 0.05, .weight_decay = 0.0});
  Tensor x = random_tensor({64, 4}, 6, DType::f32);
  Tensor w_true = random_tensor({4, 2}, 7, DType::f32, -2.0, 2.0);
  Tensor y = add(matmul(x, w_true), 0.5);
  double first = 0.0, last = 0.0;
  for (int t = 0; t < 200; ++t) {
    opt.zero_grad();
    Tensor loss = mean(square(sub(model.forward(x), y)));
    backward(loss);
    opt.step();
    (t == 0 ? first : last) = loss.item<double>();
  }
  MESSAGE("loss ", first, " -> ", last);
  CHECK(last < 1e-3 * first);
}

TEST_CASE("AdamW rejects bad parameters and options") {
  Tensor a = leaf({2}, 1, DType::f32);
  CHECK_THROWS_WITH_AS(AdamW({{"a", a, true}, {"a", leaf({2}, 2, DType::f32), true}}),
                       doctest::Contains("parameter name 'a' appears twice"), Error);
  CHECK_THROWS_WITH_AS(AdamW({{"a", a, true}, {"b", a, true}}),
                       doctest::Contains("'b' is the same tensor as an earlier one"), Error);
  CHECK_THROWS_WITH_AS(AdamW({{"", a, true}}), doctest::Contains("empty name"), Error);
  CHECK_THROWS_WITH_AS(AdamW({{"c", zeros({2}), true}}),
                       doctest::Contains("'c' must be a floating leaf that requires grad, found f32[2] on cpu "
                                         "(requires_grad false)"),
                       Error);
  CHECK_THROWS_WITH_AS(AdamW({{"d", mul(a, 2.0), true}}), doctest::Contains("(not a leaf)"), Error);
  CHECK_THROWS_WITH_AS(AdamW({{"a", a, true}}, {.beta2 = 1.0}), doctest::Contains("beta2 must be in [0, 1)"), Error);
  CHECK_THROWS_WITH_AS(AdamW({{"a", a, true}}, {.lr = 0.0}), doctest::Contains("base lr must be positive"), Error);
  CHECK_THROWS_WITH_AS(AdamW({{"a", a, true}}, {.weight_decay = -0.1}),
                       doctest::Contains("weight_decay must be finite and >= 0"), Error);
  AdamW opt({{"a", a, true}});
  a.set_grad(ones({2}));
  CHECK_THROWS_WITH_AS(opt.step(-1e-3), doctest::Contains("lr must be finite and >= 0, found -0.001"), Error);
  CHECK(opt.step_count() == 0);
  opt.step(0.0);  // warmup from zero: a valid rate that moves nothing but the moments
  CHECK(opt.step_count() == 1);
}
