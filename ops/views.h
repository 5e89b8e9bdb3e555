#pragma once
// Differentiable views and copies. Views share storage with their input; their backward maps
// the gradient back to the input's shape.
#include <vector>

#include "core/tensor.h"

namespace scanline {

Tensor reshape(const Tensor& x, Shape shape);  // one -1 allowed; copies only if x isn't viewable
Tensor view(const Tensor& x, Shape shape);     // like reshape, but an Error instead of a copy
Tensor flatten(const Tensor& x, int64_t start_dim = 0, int64_t end_dim = -1);
Tensor permute(const Tensor& x, const std::vector<int64_t>& dims);
Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1);
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);
Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step = 1);
Tensor select(const Tensor& x, int64_t dim, int64_t index);  // removes dim
Tensor unsqueeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x, int64_t dim);
Tensor squeeze(const Tensor& x);  // every size-1 dimension
Tensor expand(const Tensor& x, const Shape& shape);  // broadcast; -1 keeps a dimension

Tensor contiguous(const Tensor& x);  // x itself when already contiguous
Tensor clone(const Tensor& x);
Tensor to_dtype(const Tensor& x, DType dtype);
Tensor to_device(const Tensor& x, Device device);

}  // namespace scanline
