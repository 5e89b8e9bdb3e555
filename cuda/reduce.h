#pragma once
// Reductions of CUDA tensors over a set of dims, deterministic (fixed partitions and orders, no
// atomics): fp32 accumulation for f32/bf16/f16, f64 for f64, i64 for integer and bool sums.
// Results are contiguous and keep the reduced dims as size 1 (like scanline::cpu::reduce).
#include <cstdint>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace scanline::cuda {

// dims sorted, unique and in range (an empty list reduces nothing: a copy). Any strides.
Tensor sum_dims(const Tensor& x, const std::vector<int64_t>& dims);
// Largest value (NaN if any is NaN); an Error when a reduced dim is empty.
Tensor amax_dims(const Tensor& x, const std::vector<int64_t>& dims);
// Max along one dim and its first index (i64; a NaN wins at its first position), both kept as size 1.
std::pair<Tensor, Tensor> max_along(const Tensor& x, int64_t dim);

}  // namespace scanline::cuda
