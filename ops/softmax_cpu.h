#pragma once
// CPU reference kernels of softmax and log_softmax. Each row along `dim` is handled by one thread
// in a fixed order with double row sums, so results do not depend on the thread count.
#include <cstdint>

#include "core/tensor.h"

namespace scanline::cpu {

// dim must be in range; x may have any strides. Returns a contiguous tensor of x's shape.
Tensor softmax(const Tensor& x, int64_t dim, bool log);
// The input gradient from the output gradient and the saved output y:
// softmax: y * (g - sum(g * y)); log_softmax: g - exp(y) * sum(g).
Tensor softmax_backward(const Tensor& grad, const Tensor& y, int64_t dim, bool log);

}  // namespace scanline::cpu
