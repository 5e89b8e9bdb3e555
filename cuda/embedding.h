#pragma once
// CUDA embedding lookup: the device side of ops/embedding, with the CPU reference's results and
// error messages (ops/embedding_cpu.cpp).
#include "core/tensor.h"

namespace scanline::cuda {

// weight (num, dim) floating, any strides; indices i32/i64 of any shape on weight's device.
// Returns (*indices.shape, dim). Indices are range-checked on the device while the rows are
// gathered; a bad one (the first by position) is an Error naming `op`, the index, its position
// and the table size, raised after one small device-to-host copy.
Tensor embedding_forward(const char* op, const Tensor& weight, const Tensor& indices);

// grad (*indices.shape, dim), indices already range-checked -> (num_embeddings, dim).
// Deterministic: (index, position) pairs are radix-sorted (stable, so each index's positions stay
// in position order), then one warp per weight row sums its positions' gradient rows in that
// order in f32 (f64 for f64) and writes the row; rows nobody read get zeros. No atomics.
Tensor embedding_backward(const Tensor& grad, const Tensor& indices, int64_t num_embeddings);

}  // namespace scanline::cuda
