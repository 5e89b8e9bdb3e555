#include "ops/embedding.h"

#include "ops/dispatch.h"
#include "ops/embedding_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/embedding.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

Tensor embedding(const Tensor& weight, const Tensor& indices) {
  ops_detail::check_floating("embedding", weight, "weight");
  ops_detail::check_dim("embedding", weight, "weight", 2);
  ops_detail::check_defined("embedding", indices, "indices");
  SCANLINE_CHECK(indices.dtype() == DType::i64 || indices.dtype() == DType::i32,
                 "embedding: expected indices of dtype i64 or i32 but found ", describe(indices));
  ops_detail::check_same_device("embedding", {weight, indices});
  const int64_t num_embeddings = weight.size(0);
  Tensor out;
  if (weight.device().is_cpu()) {
    cpu::check_indices("embedding", indices, num_embeddings);
    out = cpu::embedding(weight, indices);
  } else {
#ifdef SCANLINE_HAVE_CUDA
    out = cuda::embedding_forward("embedding", weight, indices);  // checks the indices on the device
#else
    ops_detail::no_cuda_kernel("embedding", weight);
#endif
  }
  record("embedding", {weight}, {out},
         [idx = indices.detach(), num_embeddings](const BackwardContext& ctx) {
           if (ctx.grad().device().is_cpu()) return Grads{cpu::embedding_backward(ctx.grad(), idx, num_embeddings)};
#ifdef SCANLINE_HAVE_CUDA
           return Grads{cuda::embedding_backward(ctx.grad(), idx, num_embeddings)};
#else
           ops_detail::no_cuda_kernel("embedding backward", ctx.grad());
#endif
         });
  return out;
}

}  // namespace scanline
