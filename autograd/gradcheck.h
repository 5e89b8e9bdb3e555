#pragma once
// gradcheck: compares the analytic gradient from backward() with central finite differences, all
// in float64. Each check projects the output on a random direction v and differentiates the
// scalar <v, f(inputs)> with respect to every element of every input that requires grad.
#include <functional>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace scanline::autograd {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-7;
  double rtol = 1e-6;
  int projections = 2;  // random output directions checked
  uint64_t seed = 1234;
};

struct GradcheckResult {
  bool ok = true;
  double max_abs_error = 0.0;
  std::string message;  // where the first mismatch was, with both values
};

using GradcheckFn = std::function<Tensor(const std::vector<Tensor>&)>;

// inputs must be f64 CPU tensors (views allowed); those with requires_grad are checked.
GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                          const GradcheckOptions& options = {});

}  // namespace scanline::autograd
