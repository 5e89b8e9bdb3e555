#pragma once
// Fused cross-entropy of CUDA logits against integer targets. The forward reads each logits row
// once (online max and rescaled sum of exp) and keeps only the per-row logsumexp and loss; the
// backward reads the row once more and writes (softmax - onehot) * g / count, never storing
// probabilities. fp32 math (f64 for f64 logits); deterministic.
#include <cstdint>

#include "core/tensor.h"

namespace scanline::cuda {

struct CrossEntropyForward {
  Tensor losses;      // (rows) lse - logit[target] per row, 0 for ignored rows: f32 (f64 for f64 logits)
  Tensor lse;         // (rows) logsumexp per row, same dtype
  int64_t count = 0;  // rows whose target is not ignore_index
};

// logits (..., C) floating, any strides; targets i64 or i32 holding one value per row (any shape
// and strides). A target outside [0, C) that is not ignore_index is the CPU path's Error (the
// check runs on the device; one small copy brings back its result and the count).
CrossEntropyForward cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index);

// scale * sum(losses) as a 0-dim tensor of `dtype` (a deterministic reduction).
Tensor cross_entropy_total(const Tensor& losses, double scale, DType dtype);

// d loss / d logits = scale * g_r * (exp(logit - lse) - onehot(target)), 0 for ignored rows; grad
// holds one element or one per row, of any floating dtype (the loss's, which need not be the
// logits': an f32 loss of bf16 logits), read as f32 (f64 for f64 logits). Returns a contiguous
// tensor of logits' shape and dtype.
Tensor cross_entropy_backward(const Tensor& grad, const Tensor& logits, const Tensor& targets, const Tensor& lse,
                              int64_t ignore_index, double scale);

}  // namespace scanline::cuda
