// trainer/fixed_batch_steps.h: the loop `scanline bench train` times, and its loss check (issue
// 10: the bf16 loss after the benchmark's steps matches an f32 run within bf16 tolerance). Here on
// the CPU, on small models of each block kind.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/random.h"
#include "models/language_model.h"
#include "ops/views.h"
#include "trainer/fixed_batch_steps.h"

using namespace scanline;

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
