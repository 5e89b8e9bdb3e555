#pragma once
// AdamW (Loshchilov & Hutter 2019) with torch.optim.AdamW's numerics: decoupled weight decay
// applied to the parameter before the Adam step, bias-corrected moments, eps added after the
// square root:
//   p <- p * (1 - lr * weight_decay)              (only parameters flagged for decay)
//   m <- beta1 * m + (1 - beta1) * g
//   v <- beta2 * v + (1 - beta2) * g^2
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Parameters are updated in place (their storage is written; the Tensor objects stay). The CPU
// path computes in double and stores in the parameter's dtype; CUDA parameters go through the
// fused multi-tensor kernel (cuda/adamw.h), f32 math.
#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "models/module.h"

namespace scanline {

struct AdamWOptions {
  double lr = 1e-3;  // the base rate; step(lr) takes the scheduled one
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;  // applied to parameters whose NamedParameter::weight_decay is true
};

// One parameter's moments, by name (the checkpoint's /optim/<name>/{m,v}).
struct AdamWMoments {
  std::string name;
  Tensor m;
  Tensor v;
};

class AdamW {
 public:
  // Parameters: floating leaves requiring grad, distinct tensors with unique, non-empty names.
  // Moments start at zero on each parameter's device, f32 (f64 for f64 parameters).
  AdamW(std::vector<NamedParameter> params, AdamWOptions options = {});

  // One update of every parameter that has a gradient (others are skipped, their moments kept)
  // at learning rate `lr` (>= 0; the schedule's value for this step). Advances the step count by
  // one. Gradients are read as they are (clip or scale them first).
  void step(double lr);
  void step() { step(options_.lr); }
  void zero_grad();  // drops every parameter's gradient

  const AdamWOptions& options() const { return options_; }
  const std::vector<NamedParameter>& parameters() const { return params_; }
  // Updates done so far (the t of the bias corrections of the last update; 0 before the first).
  int64_t step_count() const { return step_count_; }

  // The live moments, in parameter order (the tensors themselves, not copies: save them as they are).
  std::vector<AdamWMoments> named_state() const;
  // Restores a saved state: every parameter's name exactly once, shapes equal, floating dtypes;
  // values are copied into the live moments (converted to their device and dtype), so a state
  // saved on one device loads on another. Nothing is changed when a check fails.
  void load_state(int64_t step_count, const std::vector<AdamWMoments>& state);

 private:
  std::vector<NamedParameter> params_;
  std::vector<Tensor> m_, v_;
  AdamWOptions options_;
  int64_t step_count_ = 0;
};

// The CPU reference update of one parameter (AdamW::step's CPU path, public for tests and for
// callers without a NamedParameter list): param (any floating dtype, any strides), grad of its
// shape (any floating dtype), m and v of its shape (both f32 or both f64); double math, each
// element updated by one thread, so the result does not depend on the thread count.
struct AdamWHyper {
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;  // 1-based t of this update
};
void adamw_update_cpu(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                      const AdamWHyper& hyper);

}  // namespace scanline
