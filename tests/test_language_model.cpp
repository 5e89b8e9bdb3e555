// LanguageModel (models/language_model.h): parameter names and the published init rescaling,
// logits of the full forward equal prefill + token-by-token step(), a prefix prefill continued
// by forward() equals the whole forward, float64 gradcheck of a whole tiny model, bad configs.
#include <doctest/doctest.h>

#include <cmath>

#include "autograd/grad_mode.h"
#include "models/language_model.h"
#include "ops/ops.h"
#include "tests/support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

LanguageModelConfig tiny(const std::string& pattern = "MM") {
  LanguageModelConfig c;
  c.vocab_size = 11;
  c.pad_vocab_multiple = 8;
  c.pattern = pattern;
  c.mamba.d_model = 4;
  c.mamba.d_state = 3;
  c.mamba.expand = 2;
  return c;
}

Tensor tokens_of(const std::vector<int64_t>& values, int64_t batch) {
  const int64_t L = int64_t(values.size()) / batch;
  return from_vector(values, {batch, L});
}

double max_abs_diff(const Tensor& a, const Tensor& b) {
  const std::vector<double> x = a.to_double_vector(), y = b.to_double_vector();
  REQUIRE(x.size() == y.size());
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

}  // namespace

TEST_CASE("LanguageModel names its parameters by layer and pads the vocabulary") {
  Generator gen(1);
  LanguageModel lm(tiny("MMM"), gen);
  const auto params = lm.named_parameters();
  CHECK(params.front().name == "embedding.weight");
  CHECK(params.front().tensor.shape() == Shape{16, 4});
  CHECK(params.back().name == "norm_f.weight");
  bool saw = false;
  for (const NamedParameter& p : params)
    if (p.name == "layers.2.mixer.A_log") {
      saw = true;
      CHECK_FALSE(p.weight_decay);
    }
  CHECK(saw);
  CHECK(lm.summary().find("3 blocks") != std::string::npos);
  Tensor logits = lm.forward(tokens_of({1, 2, 3, 4, 5, 6}, 2));
  CHECK(logits.shape() == Shape{2, 3, 16});
}

TEST_CASE("LanguageModel rescales each out_proj by 1/sqrt(n_layers) at init") {
  // The same seed draws the same mixers; a 4-layer model's first out_proj is the 1-layer one / 2.
  LanguageModelConfig one = tiny("M"), four = tiny("MMMM");
  Generator g1(5), g4(5);
  LanguageModel a(one, g1), b(four, g4);
  const std::vector<double> wa = a.layers[0]->mixer.out_proj.weight.to_double_vector();
  const std::vector<double> wb = b.layers[0]->mixer.out_proj.weight.to_double_vector();
  REQUIRE(wa.size() == wb.size());
  for (size_t i = 0; i < wa.size(); ++i) CHECK(wb[i] == doctest::Approx(wa[i] / 2.0).epsilon(1e-6));
}

TEST_CASE("LanguageModel step() after a prefill reproduces the full-sequence logits") {
  for (DType dtype : {DType::f64, DType::f32}) {
    for (bool selective : {true, false}) {
      INFO("dtype ", dtype, " selective ", selective);
      LanguageModelConfig c = tiny("MM");
      c.mamba.selective = selective;
      Generator gen(3);
      LanguageModel lm(c, gen, {.dtype = dtype == DType::f64 ? DType::f64 : DType::f32});
      NoGradGuard no_grad;
      const int64_t batch = 2, L = 9, prefix = 4;
      std::vector<int64_t> ids;
      for (int64_t i = 0; i < batch * L; ++i) ids.push_back((i * 7 + 3) % 11);
      const Tensor tokens = tokens_of(ids, batch);
      const Tensor full = lm.forward(tokens, dtype);
      const double tol = dtype == DType::f64 ? 1e-12 : 2e-5;

      LanguageModelState state;
      const Tensor pre = lm.forward(narrow(tokens, 1, 0, prefix), dtype, &state);
      CHECK(max_abs_diff(pre, narrow(full, 1, 0, prefix)) <= tol);
      for (int64_t t = prefix; t < L; ++t) {
        CAPTURE(t);
        const Tensor step_logits = lm.step(contiguous(select(tokens, 1, t)), state, dtype);
        CHECK(max_abs_diff(step_logits, select(full, 1, t)) <= tol);
      }
      // A prefill of the prefix continued by forward() over the rest equals the whole forward.
      LanguageModelState cont;
      lm.forward(narrow(tokens, 1, 0, prefix), dtype, &cont);
      const Tensor rest = lm.forward(narrow(tokens, 1, prefix, L - prefix), dtype, &cont);
      CHECK(max_abs_diff(rest, narrow(full, 1, prefix, L - prefix)) <= tol);
    }
  }
}

TEST_CASE("a whole tiny LanguageModel passes float64 gradcheck w.r.t. every parameter") {
  Generator gen(11);
  LanguageModel lm(tiny("MM"), gen, {.dtype = DType::f64});
  std::vector<Tensor> inputs;
  for (const NamedParameter& p : lm.named_parameters()) inputs.push_back(p.tensor);
  const Tensor tokens = tokens_of({1, 4, 9, 2, 0, 10, 3, 3}, 2);
  check_gradients([&](const std::vector<Tensor>&) { return lm.forward(tokens, DType::f64); }, inputs);
}

TEST_CASE("LanguageModel rejects impossible configurations with a clear message") {
  Generator gen(1);
  CHECK_THROWS_WITH_AS(LanguageModel(tiny("M*"), gen), doctest::Contains("layer 1 of pattern \"M*\" is '*'"), Error);
  CHECK_THROWS_WITH_AS(LanguageModel(tiny(""), gen), doctest::Contains("pattern is empty"), Error);
  LanguageModelConfig c = tiny();
  c.vocab_size = 0;
  CHECK_THROWS_WITH_AS(LanguageModel(c, gen), doctest::Contains("vocab_size"), Error);
}
