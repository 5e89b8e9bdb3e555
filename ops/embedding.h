#pragma once
// Embedding lookup: rows of a (num_embeddings, dim) table picked by integer indices.
#include "core/tensor.h"

namespace scanline {

// weight (num, dim) floating, indices i32/i64 of any shape -> (*indices.shape, dim). An index
// outside [0, num) is an Error naming the index, its position and the table size. The gradient
// goes to weight only: each row receives the sum of the output gradients that read it.
Tensor embedding(const Tensor& weight, const Tensor& indices);

}  // namespace scanline
