#pragma once
// CPU reference of rope (ops/rope.h): angles, sines and cosines and the rotation in double,
// rounded once to x's dtype. One token position a task, so results do not depend on the thread
// count.
#include <cstdint>

#include "core/tensor.h"

namespace scanline::cpu {

// x: (batch, L, heads, headdim), headdim even, any strides. inverse: rotate by the negative
// angles (the backward). Returns a contiguous tensor of x's shape and dtype.
Tensor rope(const Tensor& x, int64_t position_offset, double theta, bool inverse);

}  // namespace scanline::cpu
