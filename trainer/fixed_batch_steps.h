#pragma once
// Optimizer steps of a language model on one fixed batch, as `scanline bench train` times them
// (forward in `compute` with f32 parameters, mean cross-entropy in f32, backward, in a
// data-parallel run the gradient averaging, the config's global-norm clipping, AdamW at the
// config's base rate), and the check that makes a fast run also a right one: its loss curve
// against the same steps in f32 (issue 10, acceptance 2).
#include <cstdint>
#include <functional>
#include <vector>

#include "core/dtype.h"
#include "core/tensor.h"
#include "models/language_model.h"
#include "trainer/grad_reducer.h"
#include "trainer/run_config.h"

namespace scanline {

// Where a step is when the hook runs: before its forward, after it (loss computed), after the
// backward, after the gradients are averaged over the ranks (right after the backward when there
// is no reducer), after the optimizer (before the loss is read back).
enum class StepPoint { start, forward, backward, reduced, optimizer };
using StepHook = std::function<void(int64_t step, StepPoint point)>;

// Data parallel: the reducer (trainer/grad_reducer.h) of this rank's parameters averages the
// gradients before the clipping, during the backward (overlap: its hook goes to backward()) or
// all after it; finish() ends either. Null: one process, no reduction.
struct GradReduction {
  GradReducer* reducer = nullptr;
  bool overlap = true;
};

// `steps` steps on (inputs, targets) (batch, L) token ids; returns each step's loss on this
// batch (before its update; with a reducer, this rank's share: the ranks' mean is the global
// loss). Builds its own AdamW over the model's parameters (weight decay as named_parameters say).
std::vector<double> train_on_fixed_batch(LanguageModel& model, const OptimConfig& optim, const Tensor& inputs,
                                         const Tensor& targets, DType compute, int64_t steps,
                                         const StepHook& hook = {}, GradReduction reduction = {});

// A loss curve against a reference one of the same steps: step s agrees when
// |loss_s - reference_s| <= rtol * max(|reference_s|, 1) (relative above one nat, absolute below,
// where a memorised batch's loss heads to 0 and relative differences stop meaning anything).
struct LossAgreement {
  bool ok = true;
  int64_t worst_step = 0;     // the step with the largest difference over its allowance
  double worst_ratio = 0.0;   // that difference / its allowance (<= 1 when ok)
};
LossAgreement compare_loss_curves(const std::vector<double>& losses, const std::vector<double>& reference,
                                  double rtol);

}  // namespace scanline
