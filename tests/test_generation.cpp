// Generation (models/generation.h): greedy generation for prompts of different lengths equals a
// naive reference that re-runs the whole forward on prompt + generated-so-far (Mamba-1, Mamba-2,
// Transformer and hybrid patterns: prefill + teacher-forced steps exactly); top_k 1 is greedy at
// any temperature; seeds reproduce; top-k / top-p keep exact sets on hand-made distributions; the
// inverse CDF and its frequencies; stop tokens end one sequence while the others go on; bad
// options throw naming the option.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "models/generation.h"
#include "ops/ops.h"
#include "support/tiny_language_model.h"

using namespace scanline;

namespace {

LanguageModelConfig tiny(const std::string& pattern, const std::string& ssm) {
  return testing::tiny_untied_config(pattern, ssm, /*rope=*/true);
}

struct Case {
  std::string pattern, ssm;
};
const std::vector<Case> kCases = {{"MM", "mamba1"}, {"MM", "mamba2"}, {"*-*-", "mamba1"}, {"M-M*", "mamba2"},
                                  {"M-M*", "mamba1"}};

// Lengths 5, 2, 7, 2: the prefill covers 2 tokens, then up to 5 teacher-forced steps.
const std::vector<std::vector<int64_t>> kPrompts = {
    {3, 14, 15, 9, 26}, {5, 35}, {8, 9, 7, 9, 3, 2, 3}, {36, 0}};

// Greedy continuation of one prompt by re-running the full forward each token.
std::vector<int64_t> naive_greedy(const LanguageModel& lm, std::vector<int64_t> seq, int64_t n, DType compute) {
  NoGradGuard no_grad;
  const int64_t vocab = lm.config().vocab_size;
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i) {
    const Tensor logits = lm.forward(from_vector(seq, {1, int64_t(seq.size())}), compute);
    const Tensor last = narrow(select(select(logits, 0, 0), 0, int64_t(seq.size()) - 1), 0, 0, vocab);
    const std::vector<double> row = last.to_vector<double>();
    out.push_back(greedy_token(row));
    seq.push_back(out.back());
  }
  return out;
}

GenerationOptions greedy(int64_t n, DType compute = DType::f64) {
  GenerationOptions o;
  o.max_new_tokens = n;
  o.sampling.temperature = 0;
  o.compute = compute;
  return o;
}

}  // namespace

TEST_CASE("greedy generation equals re-running the full forward on prompt + generated tokens") {
  for (const Case& c : kCases) {
    for (DType compute : {DType::f64, DType::f32}) {
      INFO(c.ssm, " \"", c.pattern, "\" compute ", compute);
      Generator gen(7);
      LanguageModel lm(tiny(c.pattern, c.ssm), gen, {.dtype = compute});
      const int64_t n = 6;
      const GenerationResult result = generate(lm, kPrompts, greedy(n, compute));
      REQUIRE(result.tokens.size() == kPrompts.size());
      CHECK(result.prefill_tokens == 4 * 2);
      CHECK(result.steps == 7 - 2 + n - 1);  // the longest prompt's tail, then all but the last token
      std::vector<int64_t> all;
      for (size_t b = 0; b < kPrompts.size(); ++b) {
        CAPTURE(b);
        CHECK(result.tokens[b] == naive_greedy(lm, kPrompts[b], n, compute));
        CHECK_FALSE(result.stopped[b]);
        all.insert(all.end(), result.tokens[b].begin(), result.tokens[b].end());
      }
      // The check means something only if the model does not emit one token for everything.
      std::sort(all.begin(), all.end());
      CHECK(std::unique(all.begin(), all.end()) - all.begin() >= 4);
    }
  }
}

TEST_CASE("top_k 1 is greedy at any temperature and top_p") {
  Generator gen(8);
  LanguageModel lm(tiny("M-M*", "mamba2"), gen, {.dtype = DType::f64});
  const GenerationResult expected = generate(lm, kPrompts, greedy(5));
  for (double temperature : {0.25, 1.0, 4.0}) {
    CAPTURE(temperature);
    GenerationOptions o = greedy(5);
    o.sampling = {.temperature = temperature, .top_k = 1, .top_p = 0.5};
    o.seed = 1234;
    CHECK(generate(lm, kPrompts, o).tokens == expected.tokens);
  }
}

TEST_CASE("a seed reproduces its samples; other seeds draw others") {
  Generator gen(9);
  LanguageModel lm(tiny("MM", "mamba1"), gen, {.dtype = DType::f64});
  GenerationOptions o = greedy(12);
  o.sampling.temperature = 1.0;
  o.seed = 5;
  const GenerationResult a = generate(lm, kPrompts, o), b = generate(lm, kPrompts, o);
  CHECK(a.tokens == b.tokens);
  o.seed = 6;
  const GenerationResult c = generate(lm, kPrompts, o);
  for (size_t s = 0; s < kPrompts.size(); ++s) {
    CAPTURE(s);
    CHECK(c.tokens[s].size() == 12);
    CHECK(c.tokens[s] != a.tokens[s]);  // 37 near-uniform tokens a draw: equal by chance ~37^-12
  }
  // A sequence's draws depend on (seed, sequence, index) only: the same prompt alone in a batch of
  // one samples what it sampled as sequence 0 of the batch.
  o.seed = 5;
  const GenerationResult alone = generate(lm, {kPrompts[0]}, o);
  CHECK(alone.tokens[0] == a.tokens[0]);
}

TEST_CASE("filter_top_k_top_p keeps exactly the top-k and nucleus sets, renormalized") {
  const std::vector<double> p = {0.1, 0.4, 0.2, 0.3};
  auto kept = [](const std::vector<double>& q) {
    std::vector<int64_t> ids;
    for (size_t i = 0; i < q.size(); ++i)
      if (q[i] > 0) ids.push_back(int64_t(i));
    return ids;
  };
  auto check = [&](int64_t k, double top_p, std::vector<int64_t> ids) {
    CAPTURE(k);
    CAPTURE(top_p);
    const std::vector<double> q = filter_top_k_top_p(p, k, top_p);
    CHECK(kept(q) == ids);
    double mass = 0;
    for (int64_t i : ids) mass += p[i];
    for (int64_t i : ids) CHECK(q[i] == doctest::Approx(p[i] / mass).epsilon(1e-15));
  };
  check(0, 1.0, {0, 1, 2, 3});  // both off
  check(9, 1.0, {0, 1, 2, 3});  // k above the vocabulary
  check(1, 1.0, {1});
  check(2, 1.0, {1, 3});
  check(3, 1.0, {1, 2, 3});
  check(0, 0.4, {1});           // 0.4 reaches 0.4: the crossing token is kept, nothing more
  check(0, 0.41, {1, 3});
  check(0, 0.7, {1, 3});        // 0.4 + 0.3 = 0.7 exactly (a rounding-level shortfall is absorbed)
  check(0, 0.75, {1, 2, 3});
  check(0, 0.9, {1, 2, 3});
  check(0, 0.95, {0, 1, 2, 3});
  check(0, 1e-9, {1});
  // top-p applies to the top-k set renormalized: of {0.4, 0.3, 0.2} / 0.9, 0.4/0.9 < 0.5 <= 0.7/0.9.
  check(3, 0.5, {1, 3});
  check(3, 0.75, {1, 3});       // 0.7/0.9 = 0.778 >= 0.75
  check(3, 0.8, {1, 2, 3});
  // Ties rank the lower id first.
  CHECK(kept(filter_top_k_top_p(std::vector<double>{0.25, 0.25, 0.25, 0.25}, 2, 1.0)) == std::vector<int64_t>{0, 1});
  CHECK(kept(filter_top_k_top_p(std::vector<double>{0.2, 0.4, 0.4}, 0, 0.5)) == std::vector<int64_t>{1, 2});
  CHECK(kept(filter_top_k_top_p(std::vector<double>{0.2, 0.4, 0.4}, 1, 1.0)) == std::vector<int64_t>{1});
}

TEST_CASE("sample_token walks the filtered distribution's CDF in id order") {
  // log-probabilities as logits: softmax at temperature 1 gives {0.5, 0.3, 0.2} back.
  const std::vector<double> logits = {std::log(0.5), std::log(0.3), std::log(0.2)};
  const SamplingOptions t1{.temperature = 1.0};
  CHECK(sample_token(logits, t1, 0.0) == 0);
  CHECK(sample_token(logits, t1, 0.49) == 0);
  CHECK(sample_token(logits, t1, 0.51) == 1);
  CHECK(sample_token(logits, t1, 0.79) == 1);
  CHECK(sample_token(logits, t1, 0.81) == 2);
  CHECK(sample_token(logits, t1, 1.0 - 0x1.0p-53) == 2);
  // top_k 2 leaves {0.5, 0.3} / 0.8: the CDF is 0.625, 1.
  const SamplingOptions k2{.temperature = 1.0, .top_k = 2};
  CHECK(sample_token(logits, k2, 0.62) == 0);
  CHECK(sample_token(logits, k2, 0.63) == 1);
  CHECK(sample_token(logits, k2, 0.99) == 1);
  // Temperature 0 and top_k 1 are argmax, the lowest id on ties.
  CHECK(sample_token(std::vector<double>{1.0, 3.0, 3.0}, {.temperature = 0}, 0.9) == 1);
  CHECK(sample_token(std::vector<double>{1.0, 3.0, 3.0}, {.temperature = 2.0, .top_k = 1}, 0.9) == 1);
  // Temperature 2 flattens: softmax(log p / 2) = sqrt(p) / sum sqrt(p).
  const std::vector<double> flat = softmax_with_temperature(logits, 2.0);
  const double z = std::sqrt(0.5) + std::sqrt(0.3) + std::sqrt(0.2);
  CHECK(flat[1] == doctest::Approx(std::sqrt(0.3) / z).epsilon(1e-14));

  // The Philox draws are uniform: frequencies of 20000 draws within 0.01 of the probabilities.
  std::vector<int> counts(3, 0);
  for (uint64_t j = 0; j < 20000; ++j) ++counts[sample_token(logits, t1, sampling_uniform(42, 3, j))];
  CHECK(std::abs(counts[0] / 20000.0 - 0.5) < 0.01);
  CHECK(std::abs(counts[1] / 20000.0 - 0.3) < 0.01);
  CHECK(std::abs(counts[2] / 20000.0 - 0.2) < 0.01);
  CHECK(sampling_uniform(42, 3, 7) == sampling_uniform(42, 3, 7));
  CHECK(sampling_uniform(42, 3, 7) != sampling_uniform(42, 4, 7));
  CHECK(sampling_uniform(42, 3, 7) != sampling_uniform(43, 3, 7));
}

TEST_CASE("a stop token ends its sequence (kept as the last token) while the others continue") {
  Generator gen(10);
  LanguageModel lm(tiny("M-M*", "mamba2"), gen, {.dtype = DType::f64});
  const int64_t n = 8;
  const GenerationResult free_run = generate(lm, kPrompts, greedy(n));
  // Stop on a token that some sequence s emits first at j >= 1 and another never emits.
  auto emits = [](const std::vector<int64_t>& seq, int64_t token) {
    return std::find(seq.begin(), seq.end(), token) != seq.end();
  };
  size_t s = 0;
  int64_t at = -1;
  for (size_t c = 0; c < kPrompts.size() && at < 0; ++c) {
    const std::vector<int64_t>& t = free_run.tokens[c];
    for (int64_t j = 1; j + 1 < n && at < 0; ++j) {
      if (std::find(t.begin(), t.begin() + j, t[j]) != t.begin() + j) continue;
      for (size_t b = 0; b < kPrompts.size(); ++b)
        if (!emits(free_run.tokens[b], t[j])) s = c, at = j;
    }
  }
  REQUIRE(at > 0);
  const std::vector<int64_t>& stopping = free_run.tokens[s];
  const int64_t stop = stopping[at];
  GenerationOptions o = greedy(n);
  o.stop_tokens = {stop};
  const GenerationResult result = generate(lm, kPrompts, o);
  CHECK(result.tokens[s] == std::vector<int64_t>(stopping.begin(), stopping.begin() + at + 1));
  CHECK(result.stopped[s]);
  int64_t full_length = 0;
  for (size_t b = 0; b < kPrompts.size(); ++b) {
    CAPTURE(b);
    const std::vector<int64_t>& all = free_run.tokens[b];
    const auto at = std::find(all.begin(), all.end(), stop);
    const std::vector<int64_t> expected(all.begin(), at == all.end() ? all.end() : at + 1);
    CHECK(result.tokens[b] == expected);
    CHECK(result.stopped[b] == (at != all.end()));
    full_length += int64_t(result.tokens[b].size()) == n;
  }
  CHECK(full_length >= 1);  // some sequence ran on to max_new_tokens past sequence 0's stop
}

TEST_CASE("generate rejects bad prompts and options naming what is wrong") {
  Generator gen(11);
  LanguageModel lm(tiny("MM", "mamba1"), gen);
  const std::vector<std::vector<int64_t>> prompts = {{1, 2}};
  auto with = [](auto change) {
    GenerationOptions o;
    change(o);
    return o;
  };
  CHECK_THROWS_WITH_AS(generate(lm, prompts, with([](auto& o) { o.sampling.temperature = -0.5; })),
                       doctest::Contains("temperature must be >= 0 (0 = greedy), found -0.5"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, prompts, with([](auto& o) { o.sampling.temperature = NAN; })),
                       doctest::Contains("temperature must be >= 0"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, prompts, with([](auto& o) { o.sampling.top_k = -1; })),
                       doctest::Contains("top_k must be >= 0 (0 = off), found -1"), Error);
  for (double top_p : {0.0, -0.1, 1.5, double(NAN)}) {
    CAPTURE(top_p);
    CHECK_THROWS_WITH_AS(generate(lm, prompts, with([&](auto& o) { o.sampling.top_p = top_p; })),
                         doctest::Contains("top_p must be in (0, 1] (1 = off)"), Error);
  }
  CHECK_THROWS_WITH_AS(generate(lm, prompts, with([](auto& o) { o.max_new_tokens = 0; })),
                       doctest::Contains("max_new_tokens must be at least 1, found 0"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, prompts, with([](auto& o) { o.stop_tokens = {3, 37}; })),
                       doctest::Contains("stop token 37 is outside the vocabulary [0, 37)"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, prompts, with([](auto& o) { o.compute = DType::i64; })),
                       doctest::Contains("compute dtype must be a floating type"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, {}, GenerationOptions{}), doctest::Contains("no prompts"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, {{1}, {}}, GenerationOptions{}),
                       doctest::Contains("prompt 1 is empty"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, {{1, 40}}, GenerationOptions{}),
                       doctest::Contains("prompt 0 token 1 is 40, outside the vocabulary [0, 37)"), Error);
  CHECK_THROWS_WITH_AS(generate(lm, {{-1}}, GenerationOptions{}),
                       doctest::Contains("prompt 0 token 0 is -1"), Error);
}
