#include "ops/reduce.h"

#include <algorithm>

#include "autograd/grad_mode.h"
#include "ops/dispatch.h"
#include "ops/elementwise.h"
#include "ops/reduce_cpu.h"
#include "ops/views.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/reduce.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

// Sorted unique dims; empty means all.
std::vector<int64_t> normalize_dims(const Tensor& x, const std::vector<int64_t>& dims, const char* op) {
  std::vector<int64_t> out;
  if (dims.empty()) {
    for (int64_t d = 0; d < x.dim(); ++d) out.push_back(d);
    return out;
  }
  for (int64_t d : dims) out.push_back(wrap_dim(d, x.dim(), op));
  std::sort(out.begin(), out.end());
  SCANLINE_CHECK(std::adjacent_find(out.begin(), out.end()) == out.end(), op,
                 ": a dimension is listed twice in the reduction dims");
  return out;
}

Shape drop_dims(const Shape& kept, const std::vector<int64_t>& dims) {
  Shape out;
  for (size_t d = 0, k = 0; d < kept.size(); ++d) {
    if (k < dims.size() && dims[k] == int64_t(d)) { ++k; continue; }
    out.push_back(kept[d]);
  }
  return out;
}

// Runs the reduction without recording; the output keeps reduced dims as size 1.
Tensor reduce_raw(cpu::ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims, const char* name) {
  if (x.device().is_cpu()) return cpu::reduce(op, x, dims);
#ifdef SCANLINE_HAVE_CUDA
  (void)name;
  return op == cpu::ReduceOp::sum ? cuda::sum_dims(x, dims) : cuda::amax_dims(x, dims);
#else
  ops_detail::no_cuda_kernel(name, x);
#endif
}

// Removes the size-1 reduced dims of a fresh contiguous result (a raw view: the op records
// its node on the returned tensor itself).
Tensor drop_reduced(const Tensor& kept, const std::vector<int64_t>& dims, bool keepdim) {
  if (keepdim) return kept;
  Shape shape = drop_dims(kept.shape(), dims);
  return as_strided(kept, shape, contiguous_strides(shape), 0);
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  ops_detail::check_defined("sum", x, "input");
  auto dims = normalize_dims(x, dims_in, "sum");
  Tensor kept = reduce_raw(cpu::ReduceOp::sum, x, dims, "sum");
  Tensor out = drop_reduced(kept, dims, keepdim);
  Shape in_shape = x.shape(), kept_shape = kept.shape();
  record("sum", {x}, {out}, [in_shape, kept_shape](const BackwardContext& ctx) {
    return Grads{expand(reshape(ctx.grad(), kept_shape), in_shape)};
  });
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  ops_detail::check_floating("mean", x, "input");
  auto dims = normalize_dims(x, dims_in, "mean");
  int64_t count = 1;
  for (int64_t d : dims) count *= x.shape()[d];
  SCANLINE_CHECK(count > 0, "mean: reducing over an empty dimension of ", describe(x));
  return div(sum(x, dims, keepdim), double(count));
}

Tensor amax(const Tensor& x, const std::vector<int64_t>& dims_in, bool keepdim) {
  ops_detail::check_defined("amax", x, "input");
  auto dims = normalize_dims(x, dims_in, "amax");
  Tensor kept = reduce_raw(cpu::ReduceOp::amax, x, dims, "amax");
  Tensor out = drop_reduced(kept, dims, keepdim);
  record("amax", {x}, {out}, [x = x.detach(), kept = kept.detach(), dims](const BackwardContext& ctx) {
    // Ties share the gradient equally, so the sum of the input gradients equals the output's.
    Tensor mask = to_dtype(eq(x, kept), x.dtype());
    Tensor count = sum(mask, dims, true);
    Tensor g = reshape(ctx.grad(), kept.shape());
    return Grads{mul(mask, div(g, count))};
  });
  return out;
}

std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  ops_detail::check_defined("max", x, "input");
  int64_t d = wrap_dim(dim, x.dim(), "max");
  auto [values, indices] = [&] {
    if (x.device().is_cpu()) return cpu::max_along(x, d);
#ifdef SCANLINE_HAVE_CUDA
    return cuda::max_along(x, d);
#else
    ops_detail::no_cuda_kernel("max", x);
#endif
  }();
  values = drop_reduced(values, {d}, keepdim);
  indices = drop_reduced(indices, {d}, keepdim);
  record("max", {x}, {values}, [in_shape = x.shape(), idx = indices.detach(), d](const BackwardContext& ctx) {
    // Scatter the gradient to the selected index along d: one-hot mask from an arange compare.
    Shape kshape = in_shape;
    kshape[d] = 1;
    Tensor index = reshape(idx, kshape);
    Shape ashape(in_shape.size(), 1);
    ashape[d] = in_shape[d];
    Tensor positions = reshape(arange(0, in_shape[d], 1, {.dtype = DType::i64, .device = ctx.grad().device()}), ashape);
    Tensor onehot = to_dtype(eq(positions, index), ctx.grad().dtype());
    return Grads{mul(onehot, reshape(ctx.grad(), kshape))};
  });
  return {values, indices};
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  NoGradGuard no_grad;
  return max(x, dim, keepdim).second;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  SCANLINE_CHECK(x.dim() >= int64_t(shape.size()), "sum_to: cannot reduce ", describe(x), " to ", shape);
  size_t lead = size_t(x.dim()) - shape.size();
  std::vector<int64_t> dims;
  for (size_t d = 0; d < size_t(x.dim()); ++d) {
    if (d < lead || (shape[d - lead] == 1 && x.shape()[d] != 1)) dims.push_back(int64_t(d));
    else SCANLINE_CHECK(shape[d - lead] == x.shape()[d], "sum_to: cannot reduce ", describe(x), " to ", shape);
  }
  Tensor reduced = dims.empty() ? x : sum(x, dims, true);
  return reshape(reduced, shape);
}

}  // namespace scanline
