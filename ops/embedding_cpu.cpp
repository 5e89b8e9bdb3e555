#include "ops/embedding_cpu.h"

#include <algorithm>
#include <vector>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// Multi-index of flat (row-major) position `flat` in `shape`.
Shape unravel(int64_t flat, const Shape& shape) {
  Shape index(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return index;
}

// Rows per parallel chunk so a chunk moves roughly 32k elements.
int64_t row_grain(int64_t dim) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(dim, 1)); }

}  // namespace

void check_indices(const char* op, const Tensor& indices, int64_t num_embeddings) {
  const std::vector<int64_t> idx = indices.to_vector<int64_t>();
  for (size_t i = 0; i < idx.size(); ++i) {
    SCANLINE_CHECK(idx[i] >= 0 && idx[i] < num_embeddings, op, ": index ", idx[i], " at position ",
                   unravel(int64_t(i), indices.shape()), " of indices ", describe(indices),
                   " is out of range for a table of ", num_embeddings, " rows (valid indices are 0 to ",
                   num_embeddings - 1, ")");
  }
}

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  const int64_t dim = weight.shape()[1];
  const int64_t rs = weight.strides()[0], cs = weight.strides()[1];
  const std::vector<int64_t> idx = indices.to_vector<int64_t>();
  Shape out_shape = indices.shape();
  out_shape.push_back(dim);
  Tensor out = empty(out_shape, weight.options());
  dispatch_floating(weight.dtype(), "embedding", [&]<typename T>() {
    const T* w = static_cast<const T*>(weight.impl()->storage->data()) + weight.offset();
    T* o = out.data_ptr<T>();
    parallel_for(int64_t(idx.size()), row_grain(dim), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const T* row = w + idx[size_t(i)] * rs;
        for (int64_t j = 0; j < dim; ++j) o[i * dim + j] = row[j * cs];
      }
    });
  });
  return out;
}

Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_embeddings) {
  const int64_t dim = grad.shape().back();
  const Tensor g = grad.is_contiguous() ? grad : contiguous_copy(grad, grad.dtype(), grad.device());
  const std::vector<int64_t> idx = indices.to_vector<int64_t>();
  // Positions grouped by the row they read (a counting sort keeps each group in position order).
  std::vector<int64_t> starts(size_t(num_embeddings) + 1, 0);
  for (int64_t r : idx) ++starts[size_t(r) + 1];
  for (size_t r = 0; r < size_t(num_embeddings); ++r) starts[r + 1] += starts[r];
  std::vector<int64_t> positions(idx.size());
  {
    std::vector<int64_t> fill(starts.begin(), starts.end() - 1);
    for (size_t i = 0; i < idx.size(); ++i) positions[size_t(fill[size_t(idx[i])]++)] = int64_t(i);
  }
  Tensor out = empty({num_embeddings, dim}, grad.options());
  dispatch_floating(grad.dtype(), "embedding backward", [&]<typename T>() {
    const T* pg = g.data_ptr<T>();
    T* o = out.data_ptr<T>();
    parallel_for(num_embeddings, row_grain(dim), [&](int64_t begin, int64_t end) {
      std::vector<double> row_sum(static_cast<size_t>(dim));
      for (int64_t r = begin; r < end; ++r) {
        std::fill(row_sum.begin(), row_sum.end(), 0.0);
        for (int64_t p = starts[size_t(r)]; p < starts[size_t(r) + 1]; ++p) {
          const T* src = pg + positions[size_t(p)] * dim;
          for (int64_t j = 0; j < dim; ++j) row_sum[size_t(j)] += double(src[j]);
        }
        for (int64_t j = 0; j < dim; ++j) o[r * dim + j] = T(row_sum[size_t(j)]);
      }
    });
  });
  return out;
}

}  // namespace scanline::cpu
