#pragma once
// CPU reference kernels of cross_entropy. Each row is handled by one thread with double sums;
// totals over rows are summed afterwards in row order, so results do not depend on thread count.
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace scanline::cpu {

struct CrossEntropyForward {
  std::vector<double> losses;  // per row: lse - logit[target], 0 for ignored rows
  Tensor lse;                  // (rows) logsumexp per row: f64 for f64 logits, else f32
  int64_t count = 0;           // rows whose target is not ignore_index
};

// logits is read as (rows, C) with C = its last dim (any strides); targets holds rows values
// (any shape, any strides). Checks every target first and throws on the first bad one.
CrossEntropyForward cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index);

// d loss / d logits = scale_r * (exp(logit - lse) - onehot(target)) per row r, with
// scale_r = scale * grad[r] (grad has one element per row) or scale * grad (one element);
// 0 for ignored rows. Returns a contiguous tensor of logits' shape.
Tensor cross_entropy_backward(const Tensor& grad, const Tensor& logits, const Tensor& targets,
                              const Tensor& lse, int64_t ignore_index, double scale);

}  // namespace scanline::cpu
