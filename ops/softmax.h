#pragma once
// Softmax and log-softmax along one dimension. Each is one fused node: the forward subtracts the
// row maximum before exponentiating (no overflow for large logits) and sums in double; the
// backward needs only the saved output.
#include <cstdint>

#include "core/tensor.h"

namespace scanline {

// exp(x - max) / sum(exp(x - max)) along dim (negative dims count from the end).
Tensor softmax(const Tensor& x, int64_t dim = -1);
// x - max - log(sum(exp(x - max))) along dim.
Tensor log_softmax(const Tensor& x, int64_t dim = -1);

}  // namespace scanline
