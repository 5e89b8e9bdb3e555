#pragma once
// Global gradient-norm clipping (torch.nn.utils.clip_grad_norm_ with the 2-norm): the norm of
// every parameter's gradient taken together, and a uniform rescale when it exceeds a bound.
// Parameters without a gradient are skipped.
#include <vector>

#include "core/tensor.h"

namespace scanline {

// sqrt(sum over parameters and elements of grad^2). CPU gradients: squares summed in double over
// fixed blocks, so the result is thread-count independent. CUDA gradients: one f32 (f64 for f64)
// sum of squares per tensor on the device, then a single host read per device for all of them,
// added in double. A non-finite gradient gives a non-finite norm (an f32 square overflows past
// |g| ~ 1.8e19, which also reads as non-finite). 0 when no parameter has a gradient.
double global_grad_norm(const std::vector<Tensor>& params);

// Computes the global norm; when max_norm / (norm + 1e-6) < 1 multiplies every gradient in place
// by that factor (torch's coefficient). Returns the norm before clipping. A non-finite norm is
// returned as it is and nothing is scaled, so the caller can stop or skip the step.
// max_norm must be positive.
double clip_grad_norm(const std::vector<Tensor>& params, double max_norm);

}  // namespace scanline
