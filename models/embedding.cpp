#include "models/embedding.h"

#include "ops/embedding.h"

namespace scanline {

Embedding::Embedding(int64_t num_embeddings, int64_t dim, Generator& gen, TensorOptions options, double std) {
  SCANLINE_CHECK(num_embeddings > 0 && dim > 0, "Embedding: expected positive num_embeddings and dim, found ",
                 num_embeddings, " and ", dim);
  SCANLINE_CHECK(std > 0.0, "Embedding: expected a positive init std, found ", std);
  options.requires_grad = false;
  register_parameter("weight", weight, randn({num_embeddings, dim}, gen, options, 0.0, std), true);
}

Tensor Embedding::forward(const Tensor& indices) const { return embedding(weight, indices); }

}  // namespace scanline
