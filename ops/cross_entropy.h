#pragma once
// Cross-entropy of logits against integer class targets, one fused node. The forward computes
// each row's logsumexp (max-shifted, summed in double) and saves it, not the probabilities; the
// backward rebuilds softmax - onehot from the logits and that logsumexp.
#include <cstdint>

#include "core/tensor.h"

namespace scanline {

enum class Reduction : uint8_t {
  none,  // per-row losses in the targets' shape (0 where the target is ignored)
  mean,  // sum over non-ignored rows / their count; 0 (and zero gradients) when all are ignored
  sum,   // sum over non-ignored rows
};

// logits (..., C) floating; targets (...) i64 or i32 with values in [0, C) or ignore_index.
// Rows whose target equals ignore_index add nothing to the loss and get a zero gradient. A
// target outside [0, C) that is not ignore_index is an Error naming its value and position.
// The loss has the logits' dtype.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index = -100,
                     Reduction reduction = Reduction::mean);

// The same with the loss in `loss_dtype` (floating): bf16 logits with an f32 loss give the f32
// value of the f32/f64 total, never rounded through bf16, while the gradient w.r.t. the logits
// is written directly in the logits' dtype (no f32 copy of the logits or of their gradient).
// The incoming gradient has loss_dtype. A loss_dtype that is not floating is an Error.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, int64_t ignore_index, Reduction reduction,
                     DType loss_dtype);

}  // namespace scanline
