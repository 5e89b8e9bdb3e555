#pragma once
// A 2-layer MLP trained with SGD on a fixed synthetic regression: the end-to-end check that
// tensors, ops, autograd and the optimizer fit together (used by `scanline demo-mlp` and a test).
#include <cstdint>
#include <functional>

namespace scanline {

struct MlpDemoOptions {
  int64_t steps = 400;
  int64_t samples = 512;
  int64_t in_features = 8;
  int64_t hidden = 64;
  double lr = 0.05;
  double momentum = 0.9;
  uint64_t seed = 0;
  int64_t log_every = 50;
};

struct MlpDemoResult {
  double initial_loss = 0.0;
  double final_loss = 0.0;
  double target_variance = 0.0;  // the loss of the best constant predictor
};

// on_progress(step, loss) is called every log_every steps and at the last step.
MlpDemoResult train_mlp_demo(const MlpDemoOptions& options,
                             const std::function<void(int64_t, double)>& on_progress = {});

}  // namespace scanline
