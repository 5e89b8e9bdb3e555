#include "ops/matmul.h"

#include <algorithm>

#include "autograd/grad_mode.h"
#include "ops/dispatch.h"
#include "ops/matmul_cpu.h"
#include "ops/matmul_options.h"
#include "ops/reduce.h"
#include "ops/views.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/matmul.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

Tensor transpose_last(const Tensor& t) { return transpose(t, -2, -1); }

// A stack of column-major matrices (last two strides (1, not 1)), as transpose_last of a
// contiguous tensor makes. Such an operand's gradient is built as the transpose of a contiguous
// product, in the operand's own layout, so the transpose's backward hands its input a contiguous
// gradient without a copy. A matrix with a size-1 dim is a vector: both layouts are one memory.
bool column_major(const Tensor& t) {
  return t.dim() >= 2 && t.size(-2) > 1 && t.size(-1) > 1 && t.stride(-2) == 1 && t.stride(-1) != 1;
}

// Whether operand t of a product with gradient g was used at its own shape (not broadcast over
// g's batch dims), so its gradient needs no sum_to.
bool same_batch(const Tensor& t, const Tensor& g) {
  return t.dim() == g.dim() && std::equal(t.shape().begin(), t.shape().end() - 2, g.shape().begin());
}

void check_operands(const char* op, const Tensor& a, const Tensor& b) {
  ops_detail::check_floating(op, a, "a");
  ops_detail::check_floating(op, b, "b");
  ops_detail::check_same_device(op, {a, b});
  ops_detail::check_same_dtype(op, {a, b});
}

// Both operands have >= 2 dims and matching inner sizes: broadcasts the batch dims, runs the
// product and records the backward. `op` names the node and the errors.
Tensor matmul_nd(const char* op, const Tensor& a, const Tensor& b) {
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2);
  const Shape b_batch(b.shape().begin(), b.shape().end() - 2);
  Shape batch(std::max(a_batch.size(), b_batch.size()));
  for (size_t i = 0; i < batch.size(); ++i) {
    // Align from the right; a missing dim counts as 1.
    const int64_t da = i + a_batch.size() >= batch.size() ? a_batch[i + a_batch.size() - batch.size()] : 1;
    const int64_t db = i + b_batch.size() >= batch.size() ? b_batch[i + b_batch.size() - batch.size()] : 1;
    SCANLINE_CHECK(da == db || da == 1 || db == 1, op, ": batch dimensions ", a_batch, " and ", b_batch,
                   " do not broadcast, for ", describe(a), " @ ", describe(b));
    batch[i] = da == 1 ? db : da;
  }
  Shape a_shape = batch, b_shape = batch;
  a_shape.insert(a_shape.end(), {a.size(-2), a.size(-1)});
  b_shape.insert(b_shape.end(), {b.size(-2), b.size(-1)});
  // Raw stride-0 views for the kernel; autograd sees only a and b.
  Tensor a_view = as_strided(a, a_shape, broadcast_strides(a.shape(), a.strides(), a_shape), a.offset());
  Tensor b_view = as_strided(b, b_shape, broadcast_strides(b.shape(), b.strides(), b_shape), b.offset());
  Tensor out;
  if (a.device().is_cpu()) out = cpu::matmul(a_view, b_view);
#ifdef SCANLINE_HAVE_CUDA
  else out = cuda::gemm(a_view, b_view, Tensor(), allow_tf32());  // transposed views go in as flags, no copy
#else
  else ops_detail::no_cuda_kernel(op, a);
#endif
  record(op, {a, b}, {out}, [a = a.detach(), b = b.detach()](const BackwardContext& ctx) {
    // d(a @ b) = g @ b^T for a and a^T @ g for b, summed over the batch dims each broadcast. A
    // column-major operand used at its own shape gets the transpose of the transposed product:
    // (g b^T)^T = b g^T and (a^T g)^T = g^T a, contiguous, returned as transposed views.
    const Tensor& g = ctx.grad();
    Tensor ga, gb;
    if (ctx.needs(0))
      ga = column_major(a) && same_batch(a, g) ? transpose_last(matmul(b, transpose_last(g)))
                                               : sum_to(matmul(g, transpose_last(b)), a.shape());
    if (ctx.needs(1))
      gb = column_major(b) && same_batch(b, g) ? transpose_last(matmul(transpose_last(g), a))
                                               : sum_to(matmul(transpose_last(a), g), b.shape());
    return Grads{ga, gb};
  });
  return out;
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  check_operands("matmul", a, b);
  SCANLINE_CHECK(a.dim() >= 1 && b.dim() >= 1,
                 "matmul: expected operands with at least one dimension but found ", describe(a),
                 " and ", describe(b));
  const int64_t k_b = b.dim() == 1 ? b.size(0) : b.size(-2);
  SCANLINE_CHECK(a.size(-1) == k_b, "matmul: inner dimensions differ: ", describe(a), " @ ", describe(b),
                 " (a's last dimension ", a.size(-1), " must equal b's ",
                 b.dim() == 1 ? "only" : "second-to-last", " dimension ", k_b, ")");
  // Vectors become matrices (a row for a, a column for b); the added dims are then removed.
  if (a.dim() == 1 && b.dim() == 1)
    return squeeze(squeeze(matmul_nd("matmul", unsqueeze(a, 0), unsqueeze(b, 1)), -1), -1);
  if (a.dim() == 1) return squeeze(matmul_nd("matmul", unsqueeze(a, 0), b), -2);
  if (b.dim() == 1) return squeeze(matmul_nd("matmul", a, unsqueeze(b, 1)), -1);
  return matmul_nd("matmul", a, b);
}

Tensor bmm(const Tensor& a, const Tensor& b) {
  check_operands("bmm", a, b);
  ops_detail::check_dim("bmm", a, "a", 3);
  ops_detail::check_dim("bmm", b, "b", 3);
  SCANLINE_CHECK(a.size(0) == b.size(0), "bmm: batch sizes differ: ", describe(a), " @ ", describe(b));
  SCANLINE_CHECK(a.size(2) == b.size(1), "bmm: inner dimensions differ: ", describe(a), " @ ", describe(b),
                 " (a's last dimension ", a.size(2), " must equal b's dimension 1, ", b.size(1), ")");
  return matmul_nd("bmm", a, b);
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  ops_detail::check_floating("linear", x, "input");
  ops_detail::check_floating("linear", weight, "weight");
  ops_detail::check_dim("linear", weight, "weight", 2);
  const int64_t out_features = weight.size(0), in_features = weight.size(1);
  if (bias.defined()) {
    ops_detail::check_floating("linear", bias, "bias");
    SCANLINE_CHECK(bias.dim() == 1 && bias.size(0) == out_features, "linear: expected bias of shape [",
                   out_features, "] for weight ", describe(weight), " but found ", describe(bias));
  }
  ops_detail::check_same_device("linear", {x, weight, bias});
  ops_detail::check_same_dtype("linear", {x, weight, bias});
  SCANLINE_CHECK(x.dim() >= 1 && x.size(-1) == in_features, "linear: expected input with last dimension ",
                 in_features, " for weight ", describe(weight), " but found ", describe(x));

  // The kernel sees x as a matrix of rows (a view when possible, else a copy).
  const Shape x_shape = x.shape();
  const int64_t rows = numel_of(Shape(x_shape.begin(), x_shape.end() - 1));
  Tensor x2;
  {
    NoGradGuard no_grad;
    x2 = reshape(x.detach(), {rows, in_features});
  }
  Tensor out2;
  if (x.device().is_cpu()) out2 = cpu::linear(x2, weight, bias);
#ifdef SCANLINE_HAVE_CUDA
  else out2 = cuda::linear(x2, weight, bias, allow_tf32());  // bias fused as a cuBLASLt epilogue
#else
  else ops_detail::no_cuda_kernel("linear", x);
#endif
  Shape out_shape = x_shape;
  out_shape.back() = out_features;
  Tensor out = as_strided(out2, out_shape, contiguous_strides(out_shape), 0);

  record("linear", {x, weight, bias}, {out},
         [x2 = x2.detach(), w = weight.detach(), x_shape, rows, out_features](const BackwardContext& ctx) {
           Tensor g2 = reshape(ctx.grad(), {rows, out_features});
           Tensor gx, gw, gb;
           // A column-major 2-D x (x2 is x then) gets its gradient in its layout, as in matmul:
           // (g w)^T = w^T g^T, contiguous, returned transposed.
           if (ctx.needs(0) && x_shape.size() == 2 && column_major(x2))
             gx = transpose_last(matmul(transpose_last(w), transpose_last(g2)));
           else if (ctx.needs(0))
             gx = reshape(matmul(g2, w), x_shape);
           if (ctx.needs(1)) gw = matmul(transpose_last(g2), x2);
           if (ctx.needs(2)) gb = sum(g2, {0});  // the bias is added to every row
           return Grads{gx, gw, gb};
         });
  return out;
}

}  // namespace scanline
