#pragma once
// Embedding: a (num_embeddings, dim) table of rows picked by token ids.
#include "core/random.h"
#include "models/module.h"

namespace scanline {

class Embedding : public Module {
 public:
  // Rows drawn from N(0, std^2). The default 0.02 is the GPT-2 / mamba_ssm language-model init
  // (PyTorch's nn.Embedding alone would use std 1).
  Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, TensorOptions options = {}, double std = 0.02);

  // indices (i32/i64, any shape) -> (*indices.shape, dim) in the table's dtype.
  Tensor forward(const Tensor& indices) const;

  int64_t num_embeddings() const { return weight.size(0); }
  int64_t dim() const { return weight.size(1); }

  Tensor weight;  // (num_embeddings, dim), decays
};

}  // namespace scanline
