#pragma once
// Fused AdamW update on the GPU: the device side of trainer/adamw, with the CPU reference's
// formula (torch.optim.AdamW):
//   p <- p * (1 - lr * weight_decay)
//   m <- beta1 * m + (1 - beta1) * g
//   v <- beta2 * v + (1 - beta2) * g^2
//   p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// One pass reads p, m, v, g and writes p, m, v in place; math in f32.
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace scanline::cuda {

// Hyperparameters shared by every tensor of one optimizer step. `step` is the 1-based count of
// this update (bias correction uses beta^step).
struct AdamWStep {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  int64_t step = 1;
};

// One parameter's update: param, m, v contiguous f32 of one shape on one CUDA device; grad f32 or
// bf16 of that shape on that device (any strides: a non-contiguous grad is copied first).
struct AdamWTensors {
  Tensor param, grad, m, v;
  double weight_decay = 0.0;  // 0 for parameters without decay
};

// Updates every tensor of the list in place. Tensors sharing a device and a grad dtype go in one
// multi-tensor launch (up to a fixed number of tensors a launch, more launches beyond), each
// block updating one chunk of one tensor; 16-byte loads and stores where a tensor's four buffers
// are aligned, element by element otherwise. No reductions: results do not depend on the grouping.
void adamw_update(const std::vector<AdamWTensors>& tensors, const AdamWStep& hyper);

// The same for one tensor.
void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v, double weight_decay,
                  const AdamWStep& hyper);

}  // namespace scanline::cuda
