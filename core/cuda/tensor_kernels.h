#pragma once
// The data-movement kernels Tensor itself needs on a CUDA device: strided copy with dtype
// conversion, fill, and the autograd engine's gradient accumulation.
#include "core/tensor.h"

namespace scanline::cuda {

void copy_tensor(const Tensor& dst, const Tensor& src);  // same device, same shape, any strides/dtypes
void fill_tensor(const Tensor& t, double value);
void accumulate_tensor(const Tensor& dst, const Tensor& src);  // dst += src

}  // namespace scanline::cuda
