// trainer/fixed_batch_steps.h: the loop `scanline bench train` times, and its loss check (issue
// 10: the bf16 loss after the benchmark's steps matches an f32 run within bf16 tolerance). Here on
// the CPU, on small models of each block kind; and its data-parallel form on 2 thread-ranks (each
// half of the batch, gradients averaged by a GradReducer, with and without overlap) against 1
// rank on the whole batch (issue 8: within 1e-6 in f32).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/random.h"
#include "models/language_model.h"
#include "ops/views.h"
#include "trainer/fixed_batch_steps.h"
#include "trainer/grad_reducer.h"
#include "trainer/thread_communicator.h"
#include "tests/support/testing.h"

using namespace scanline;
using scanline::testing::worst_relative;

namespace {

// d_model 32: Mamba-1 or Mamba-2 mixers, attention with 2 GQA heads of 16 (rotary), SwiGLU.
LanguageModelConfig small(const std::string& ssm, const std::string& pattern) {
  LanguageModelConfig c;
  c.vocab_size = 40;
  c.pattern = pattern;
  c.ssm = ssm;
  c.mamba.d_model = 32;
  c.mamba.d_state = 8;
  c.mamba2.d_state = 8;
  c.mamba2.headdim = 16;
  c.mamba2.chunk_size = 8;
  c.attention.n_heads = 2;
  c.attention.n_kv_heads = 1;
  c.attention.rope = true;
  c.mlp.hidden = 64;
  return c;
}

std::vector<double> curve(const LanguageModelConfig& config, DType compute, const Tensor& inputs,
                          const Tensor& targets, int64_t steps) {
  Generator gen(3);
  LanguageModel model(config, gen);
  OptimConfig optim;
  optim.lr = 1e-2;
  return train_on_fixed_batch(model, optim, inputs, targets, compute, steps);
}

// One rank's steps: its losses, its final parameters and the step points its hook saw.
struct RankRun {
  std::vector<double> losses;
  std::vector<std::vector<double>> params;
  std::vector<StepPoint> points;
};

constexpr int64_t kSteps = 8;

// kSteps f32 steps of a d_model 16 hybrid (the width of the trainer's data-parallel test; at 32,
// AdamW's first update of a weight whose gradient is mostly rounding already differs by 2e-5 of
// its tensor) on `world` thread-ranks, rank r on its 1 / world of the batch's sequences (world 1:
// no reducer, the whole batch); the default grad_clip 1 makes the clipped norm the global one.
std::vector<RankRun> run_ranks(int world, bool overlap, const Tensor& inputs, const Tensor& targets) {
  auto group = std::make_shared<ThreadGroup>(world);
  std::vector<RankRun> runs(static_cast<size_t>(world));
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r)
    threads.emplace_back([&, r] {
      RankRun& run = runs[size_t(r)];
      ThreadCommunicator comm(group, r);
      Generator gen(3);
      LanguageModelConfig config = small("mamba2", "M*-M");
      config.mamba.d_model = 16;
      config.mamba2.headdim = 8;
      config.mlp.hidden = 32;
      LanguageModel model(config, gen);
      GradReducer reducer(model.parameters(), comm, {.bucket_mb = 0.01});  // several buckets
      OptimConfig optim;
      optim.lr = 3e-3;
      const int64_t share = inputs.size(0) / world;
      run.losses = train_on_fixed_batch(model, optim, contiguous(narrow(inputs, 0, r * share, share)),
                                        contiguous(narrow(targets, 0, r * share, share)), DType::f32, kSteps,
                                        [&](int64_t, StepPoint p) { run.points.push_back(p); },
                                        {.reducer = world > 1 ? &reducer : nullptr, .overlap = overlap});
      for (const Tensor& p : model.parameters()) run.params.push_back(p.to_double_vector());
    });
  for (std::thread& t : threads) t.join();
  return runs;
}

}  // namespace

TEST_CASE("compare_loss_curves: relative above one nat, absolute below, never agrees with a non-finite loss") {
  const std::vector<double> reference{10.0, 4.0, 0.5, 0.01};
  CHECK(compare_loss_curves(reference, reference, 2e-2).ok);
  CHECK(compare_loss_curves({10.19, 4.0, 0.5, 0.01}, reference, 2e-2).ok);
  const LossAgreement off = compare_loss_curves({10.0, 4.1, 0.5, 0.01}, reference, 2e-2);  // 2.5% at step 1
  CHECK_FALSE(off.ok);
  CHECK(off.worst_step == 1);
  CHECK(off.worst_ratio == doctest::Approx(0.1 / 0.08));
  CHECK(compare_loss_curves({10.0, 4.0, 0.5, 0.029}, reference, 2e-2).ok);   // 0.019 nats below 1
  CHECK_FALSE(compare_loss_curves({10.0, 4.0, 0.5, 0.031}, reference, 2e-2).ok);
  const LossAgreement nan = compare_loss_curves({10.0, NAN, 0.5, 0.01}, reference, 2e-2);
  CHECK_FALSE(nan.ok);
  CHECK(nan.worst_step == 1);
  CHECK_THROWS(compare_loss_curves({1.0}, reference, 2e-2));
}

TEST_CASE("20 steps on a fixed batch: the bf16 loss curve follows the f32 one, and the batch is being learned") {
  Generator data(11);
  const Tensor tokens = randint(0, 40, {4, 33}, data, {.dtype = DType::i64});
  const Tensor inputs = contiguous(narrow(tokens, 1, 0, 32)), targets = contiguous(narrow(tokens, 1, 1, 32));
  for (const auto& [ssm, pattern] : {std::pair<std::string, std::string>{"mamba1", "MM"}, {"mamba2", "MM"},
                                     {"mamba2", "M*-M"}}) {
    CAPTURE(ssm);
    CAPTURE(pattern);
    const LanguageModelConfig config = small(ssm, pattern);
    const std::vector<double> f32 = curve(config, DType::f32, inputs, targets, 20);
    const std::vector<double> bf16 = curve(config, DType::bf16, inputs, targets, 20);
    const LossAgreement a = compare_loss_curves(bf16, f32, 2e-2);
    MESSAGE(ssm, " ", pattern, ": f32 ", f32.front(), " -> ", f32.back(), ", bf16 ", bf16.front(), " -> ", bf16.back(),
            ", worst step ", a.worst_step, " at ", a.worst_ratio, " of the allowance");
    CHECK(a.ok);
    CHECK(f32.back() < 0.5 * f32.front());  // the steps really train: a fixed batch is memorised
  }
}

TEST_CASE("2 thread-ranks with a GradReducer: every step's points in order, 1 rank's losses and parameters") {
  Generator data(11);
  const Tensor tokens = randint(0, 40, {4, 17}, data, {.dtype = DType::i64});
  const Tensor inputs = contiguous(narrow(tokens, 1, 0, 16)), targets = contiguous(narrow(tokens, 1, 1, 16));
  std::vector<StepPoint> expected;
  for (int64_t s = 0; s < kSteps; ++s)
    expected.insert(expected.end(), {StepPoint::start, StepPoint::forward, StepPoint::backward, StepPoint::reduced,
                                     StepPoint::optimizer});
  const std::vector<RankRun> one = run_ranks(1, true, inputs, targets);
  CHECK(one[0].points == expected);  // no reducer: `reduced` right after `backward`
  std::vector<std::vector<double>> overlapped_params;
  for (const bool overlap : {true, false}) {
    CAPTURE(overlap);
    const std::vector<RankRun> two = run_ranks(2, overlap, inputs, targets);
    for (const RankRun& r : two) CHECK(r.points == expected);
    REQUIRE(two[0].losses.size() == size_t(kSteps));
    CHECK(two[1].params == two[0].params);  // every rank holds the same model
    const double worst = worst_relative(two[0].params, one[0].params);
    CAPTURE(worst);
    CHECK(worst <= 1e-6);
    for (int64_t s = 0; s < kSteps; ++s) {  // equal halves: the ranks' mean loss is the batch's
      const double mean = 0.5 * (two[0].losses[size_t(s)] + two[1].losses[size_t(s)]);
      CHECK(mean == doctest::Approx(one[0].losses[size_t(s)]).epsilon(1e-6));
    }
    if (overlap) overlapped_params = two[0].params;
    else CHECK(two[0].params == overlapped_params);  // the reduction's bits do not depend on when it runs
  }
}
