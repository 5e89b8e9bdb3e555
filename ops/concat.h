#pragma once
// Joining and splitting along one dimension. cat copies into a new tensor (one graph node);
// split and chunk return views of their input (narrow), so they cost no copy.
#include <vector>

#include "core/tensor.h"

namespace scanline {

// Concatenates along `dim`; all tensors share dtype, device, rank and every size but `dim`.
Tensor cat(const std::vector<Tensor>& tensors, int64_t dim = 0);

// Pieces of split_size along dim; the last may be smaller (PyTorch semantics).
std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim = 0);
// Pieces of the given sizes, which must sum to x.size(dim). Note that split(x, {2}, d) picks the
// overload above (a braced single value converts to int64_t); pass std::vector<int64_t>{2}.
std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim = 0);
// ceil(n / chunks)-sized pieces, so fewer than `chunks` pieces are possible (PyTorch semantics).
std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim = 0);

}  // namespace scanline
