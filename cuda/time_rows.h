#pragma once
// Host helpers of the kernels that read (batch, channels, length)-style rows in place whenever
// their time steps are adjacent, whatever the order of the rows (the selective scan and the
// channels-first causal conv, fed the Mamba-1 mixer's channel-major rows): which tensors need a
// copy, and how aligned every row start is for whole-word loads.
#include <cstdint>
#include <initializer_list>

#include "core/tensor.h"

namespace scanline::cuda {

// Whether t's time steps (its last dim) are adjacent in memory (a length-1 row has none to step).
inline bool time_adjacent(const Tensor& t) { return t.shape().back() <= 1 || t.strides().back() == 1; }

// t itself when its time steps are adjacent, whatever its other strides (the kernels address
// rows through them); else a contiguous copy. An undefined t stays undefined.
inline Tensor time_contiguous(const Tensor& t) { return !t.defined() || time_adjacent(t) ? t : as_contiguous(t); }

// The largest power of two up to 16 that divides every row start of the given tensors, in
// bytes: their base addresses and the strides of every dim but time (dims of size 1 never
// step). Undefined tensors do not count.
inline int64_t row_alignment(std::initializer_list<Tensor> tensors) {
  uint64_t bits = 16;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    bits |= uint64_t(reinterpret_cast<uintptr_t>(t.raw_data()));
    const int64_t elem = int64_t(dtype_size(t.dtype()));
    for (int64_t i = 0; i + 1 < t.dim(); ++i)
      if (t.shape()[size_t(i)] > 1) bits |= uint64_t(t.stride(i) * elem);
  }
  return int64_t(bits & (~bits + 1));
}

}  // namespace scanline::cuda
