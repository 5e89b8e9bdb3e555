#pragma once
// CPU embedding kernels. The backward scatter-adds by destination row: each weight row sums the
// gradients of the positions that read it, in position order, in double precision, so the result
// is independent of the thread count.
#include "core/tensor.h"

namespace scanline::cpu {

// Throws scanline::Error naming `op`, the first bad index, its position and the table size.
void check_indices(const char* op, const Tensor& indices, int64_t num_embeddings);

// weight (num, dim), indices already range-checked -> (*indices.shape, dim).
Tensor embedding(const Tensor& weight, const Tensor& indices);
// grad (*indices.shape, dim) -> (num_embeddings, dim).
Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_embeddings);

}  // namespace scanline::cpu
