#include "core/cuda/launch.h"

namespace scanline::cuda {

StridedLayout layout_of(const Tensor& t, const Shape& shape) {
  SCANLINE_CHECK(int(shape.size()) <= kMaxDims, "cuda: tensors of more than ", kMaxDims,
                 " dimensions are not supported, found ", describe(t));
  return layout_of_dims(shape, broadcast_strides(t.shape(), t.strides(), shape));
}

StridedLayout layout_of_dims(const Shape& shape, const std::vector<int64_t>& strides) {
  SCANLINE_CHECK(int(shape.size()) <= kMaxDims && strides.size() == shape.size(), "cuda: expected at most ",
                 kMaxDims, " dims with a stride each, found ", shape.size(), " sizes and ", strides.size(),
                 " strides");
  StridedLayout l;
  // Drop size-1 dims and merge dims that are contiguous with each other: fewer divisions per element.
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    if (l.ndim > 0 && l.strides[l.ndim - 1] == strides[d] * shape[d]) {
      l.sizes[l.ndim - 1] *= shape[d];
      l.strides[l.ndim - 1] = strides[d];
      continue;
    }
    l.sizes[l.ndim] = shape[d];
    l.strides[l.ndim] = strides[d];
    ++l.ndim;
  }
  return l;
}

void check_cuda_tensor(const char* op, const Tensor& t, const char* name) {
  SCANLINE_CHECK(t.defined() && t.device().is_cuda(), op, ": expected ", name, " on a CUDA device but found ",
                 describe(t));
}

}  // namespace scanline::cuda
