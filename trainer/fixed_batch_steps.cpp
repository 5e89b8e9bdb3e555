#include "trainer/fixed_batch_steps.h"

#include <algorithm>
#include <cmath>

#include "autograd/engine.h"
#include "core/error.h"
#include "data/batch_source.h"
#include "ops/cross_entropy.h"
#include "ops/views.h"
#include "trainer/adamw.h"
#include "trainer/grad_clip.h"

namespace scanline {

std::vector<double> train_on_fixed_batch(LanguageModel& model, const OptimConfig& o, const Tensor& inputs,
                                         const Tensor& targets, DType compute, int64_t steps, const StepHook& hook,
                                         GradReduction reduction) {
  AdamW optimizer(model.named_parameters(), {.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = o.eps,
                                             .weight_decay = o.weight_decay});
  const std::vector<Tensor> params = model.parameters();
  auto at = [&](int64_t s, StepPoint p) {
    if (hook) hook(s, p);
  };
  std::vector<double> losses;
  for (int64_t s = 0; s < steps; ++s) {
    at(s, StepPoint::start);
    optimizer.zero_grad();
    Tensor logits = model.forward(inputs, compute);
    // An f32 loss of the logits as they come (bf16 under bf16 compute): no f32 copy of them.
    const Tensor loss = cross_entropy(reshape(logits, {-1, logits.size(-1)}), reshape(targets, {-1}), kIgnoreIndex,
                                      Reduction::mean, DType::f32);
    logits = Tensor();  // the graph keeps what the backward needs
    at(s, StepPoint::forward);
    if (reduction.reducer && reduction.overlap) backward(loss, Tensor(), false, reduction.reducer->hook());
    else backward(loss);
    at(s, StepPoint::backward);
    if (reduction.reducer) reduction.reducer->finish();
    at(s, StepPoint::reduced);
    if (o.grad_clip > 0) clip_grad_norm(params, o.grad_clip);
    optimizer.step(o.lr);
    at(s, StepPoint::optimizer);
    losses.push_back(loss.item<double>());
  }
  return losses;
}

LossAgreement compare_loss_curves(const std::vector<double>& losses, const std::vector<double>& reference,
                                  double rtol) {
  SCANLINE_CHECK(losses.size() == reference.size() && !losses.empty(),
                 "compare_loss_curves: expected two curves of the same, non-zero length, found ", losses.size(),
                 " and ", reference.size(), " steps");
  LossAgreement a;
  for (size_t s = 0; s < losses.size(); ++s) {
    const double allowed = rtol * std::max(std::abs(reference[s]), 1.0);
    // A non-finite loss on either side never agrees.
    const double ratio = std::isfinite(losses[s]) && std::isfinite(reference[s])
                             ? std::abs(losses[s] - reference[s]) / allowed
                             : INFINITY;
    if (s == 0 || ratio > a.worst_ratio) a.worst_ratio = ratio, a.worst_step = int64_t(s);
  }
  a.ok = a.worst_ratio <= 1.0;
  return a;
}

}  // namespace scanline
