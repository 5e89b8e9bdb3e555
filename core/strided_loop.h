#pragma once
// Walks K operands of one shape with their own strides (in elements), one innermost row at a
// time, splitting rows across threads. fn(offsets, n, inner_strides) handles a row of n elements
// starting at offsets[k] with step inner_strides[k] for operand k.
#include <array>
#include <cstdint>

#include "core/parallel.h"
#include "core/shape.h"

namespace scanline {

template <size_t K, typename Fn>
void strided_loop(const Shape& shape, const std::array<const int64_t*, K>& strides,
                  const std::array<int64_t, K>& base, Fn&& fn, int64_t grain_elements = 32768) {
  const int64_t ndim = int64_t(shape.size());
  if (numel_of(shape) == 0) return;
  if (ndim == 0) {
    std::array<int64_t, K> zero{};
    fn(base, int64_t(1), zero);
    return;
  }
  const int64_t inner = shape[ndim - 1];
  std::array<int64_t, K> inner_strides;
  for (size_t k = 0; k < K; ++k) inner_strides[k] = strides[k][ndim - 1];
  const int64_t rows = numel_of(shape) / inner;
  const int64_t grain_rows = std::max<int64_t>(1, grain_elements / std::max<int64_t>(inner, 1));
  parallel_for(rows, grain_rows, [&](int64_t row_begin, int64_t row_end) {
    // Unravel row_begin into an index over the outer dimensions, then count up.
    Shape index(ndim > 1 ? ndim - 1 : 0);
    int64_t r = row_begin;
    for (int64_t d = ndim - 2; d >= 0; --d) {
      index[d] = r % shape[d];
      r /= shape[d];
    }
    std::array<int64_t, K> offsets = base;
    for (size_t k = 0; k < K; ++k)
      for (int64_t d = 0; d < ndim - 1; ++d) offsets[k] += index[d] * strides[k][d];
    for (int64_t row = row_begin; row < row_end; ++row) {
      fn(offsets, inner, inner_strides);
      for (int64_t d = ndim - 2; d >= 0; --d) {  // odometer step
        for (size_t k = 0; k < K; ++k) offsets[k] += strides[k][d];
        if (++index[d] < shape[d]) break;
        for (size_t k = 0; k < K; ++k) offsets[k] -= index[d] * strides[k][d];
        index[d] = 0;
      }
    }
  });
}

}  // namespace scanline
