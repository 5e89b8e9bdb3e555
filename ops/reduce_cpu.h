#pragma once
// CPU reference reductions. Every output element is reduced by one thread in a fixed order, in
// double precision, so results do not depend on the thread count.
#include <vector>

#include "core/tensor.h"

namespace scanline::cpu {

enum class ReduceOp : uint8_t { sum, amax };

// dims must be sorted, unique and in range; the output keeps reduced dims as size 1.
Tensor reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims);
// Max and first argmax along one dim (kept as size 1).
std::pair<Tensor, Tensor> max_along(const Tensor& x, int64_t dim);

}  // namespace scanline::cpu
