#pragma once
// Reductions over a set of dimensions (empty set = all dimensions).
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace scanline {

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
Tensor mean(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// Largest value; the gradient is shared equally among tied maxima.
Tensor amax(const Tensor& x, const std::vector<int64_t>& dims = {}, bool keepdim = false);
// Largest value along one dim and its (first) index as i64; the gradient goes to that index.
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);

// Sums a broadcast gradient back to `shape` (the inverse of expand); x itself if shapes match.
Tensor sum_to(const Tensor& x, const Shape& shape);

}  // namespace scanline
