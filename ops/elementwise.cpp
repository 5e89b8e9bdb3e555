#include "ops/elementwise.h"

#include "autograd/grad_mode.h"
#include "ops/dispatch.h"
#include "ops/elementwise_cpu.h"
#include "ops/reduce.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/elementwise.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

Tensor scalar_like(double value, const Tensor& t) { return scalar_tensor(value, t.options()); }

// Backward of a broadcasting binary op: each operand's gradient summed back to its shape.
Grads binary_backward(BinaryOp op, const BackwardContext& ctx, const Tensor& a, const Tensor& b,
                      const Tensor& out) {
  const Tensor& g = ctx.grad();
  Tensor ga, gb;
  switch (op) {
    case BinaryOp::add:
      if (ctx.needs(0)) ga = g;
      if (ctx.needs(1)) gb = g;
      break;
    case BinaryOp::sub:
      if (ctx.needs(0)) ga = g;
      if (ctx.needs(1)) gb = neg(g);
      break;
    case BinaryOp::mul:
      if (ctx.needs(0)) ga = mul(g, b);
      if (ctx.needs(1)) gb = mul(g, a);
      break;
    case BinaryOp::div:
      if (ctx.needs(0)) ga = div(g, b);
      if (ctx.needs(1)) gb = neg(div(mul(g, out), b));  // d(a/b)/db = -(a/b)/b
      break;
    case BinaryOp::maximum:
    case BinaryOp::minimum: {
      // The gradient follows the selected operand; a takes it on ties.
      Tensor a_wins = compare(op == BinaryOp::maximum ? CompareOp::ge : CompareOp::le, a, b);
      Tensor zero = scalar_like(0.0, g);
      if (ctx.needs(0)) ga = where(a_wins, g, zero);
      if (ctx.needs(1)) gb = where(a_wins, zero, g);
      break;
    }
    case BinaryOp::pow:
      if (ctx.needs(0)) ga = mul(g, mul(b, pow(a, sub(b, scalar_like(1.0, b)))));
      if (ctx.needs(1)) gb = mul(g, mul(out, log(a)));
      break;
  }
  return {ga.defined() ? sum_to(ga, a.shape()) : ga, gb.defined() ? sum_to(gb, b.shape()) : gb};
}

}  // namespace

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = op_name(op);
  ops_detail::check_defined(name, a, "a");
  ops_detail::check_defined(name, b, "b");
  ops_detail::check_same_device(name, {a, b});
  ops_detail::check_same_dtype(name, {a, b});
  broadcast_shapes(a.shape(), b.shape(), name);  // names this op in a shape error
  Tensor out;
  if (a.device().is_cpu()) out = cpu::binary(op, a, b);
#ifdef SCANLINE_HAVE_CUDA
  else out = cuda::binary(op, a, b);
#else
  else ops_detail::no_cuda_kernel(name, a);
#endif
  if (autograd::needs_grad({a, b})) {
    record(name, {a, b}, {out},
           [op, a = a.detach(), b = b.detach(), o = out.detach()](const BackwardContext& ctx) {
             return binary_backward(op, ctx, a, b, o);
           });
  }
  return out;
}

Tensor add(const Tensor& a, const Tensor& b) { return binary(BinaryOp::add, a, b); }
Tensor sub(const Tensor& a, const Tensor& b) { return binary(BinaryOp::sub, a, b); }
Tensor mul(const Tensor& a, const Tensor& b) { return binary(BinaryOp::mul, a, b); }
Tensor div(const Tensor& a, const Tensor& b) { return binary(BinaryOp::div, a, b); }
Tensor maximum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return binary(BinaryOp::minimum, a, b); }
Tensor pow(const Tensor& a, const Tensor& b) { return binary(BinaryOp::pow, a, b); }
Tensor add(const Tensor& a, double b) { return add(a, scalar_like(b, a)); }
Tensor sub(const Tensor& a, double b) { return sub(a, scalar_like(b, a)); }
Tensor mul(const Tensor& a, double b) { return mul(a, scalar_like(b, a)); }
Tensor div(const Tensor& a, double b) { return div(a, scalar_like(b, a)); }

Tensor pow(const Tensor& a, double exponent) {
  ops_detail::check_floating("pow", a, "base");
  Tensor out;
  Tensor e = scalar_like(exponent, a);
  {
    NoGradGuard no_grad;
    out = pow(a, e);
  }
  record("pow", {a}, {out}, [a = a.detach(), exponent](const BackwardContext& ctx) {
    return Grads{mul(ctx.grad(), mul(pow(a, exponent - 1.0), exponent))};
  });
  return out;
}

Tensor unary(UnaryOp op, const Tensor& x) {
  const char* name = op_name(op);
  ops_detail::check_floating(name, x, "input");
  Tensor out;
  if (x.device().is_cpu()) out = cpu::unary(op, x);
#ifdef SCANLINE_HAVE_CUDA
  else out = cuda::unary(op, x);
#else
  else ops_detail::no_cuda_kernel(name, x);
#endif
  record(name, {x}, {out}, [op, x = x.detach(), y = out.detach()](const BackwardContext& ctx) {
    if (!ctx.grad().device().is_cpu()) {
#ifdef SCANLINE_HAVE_CUDA
      return Grads{cuda::unary_backward(op, ctx.grad(), x, y)};
#else
      ops_detail::no_cuda_kernel("unary backward", x);
#endif
    }
    return Grads{cpu::unary_backward(op, ctx.grad(), x, y)};
  });
  return out;
}

Tensor neg(const Tensor& x) { return unary(UnaryOp::neg, x); }
Tensor exp(const Tensor& x) { return unary(UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::log, x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary(UnaryOp::rsqrt, x); }
Tensor square(const Tensor& x) { return unary(UnaryOp::square, x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::sigmoid, x); }
Tensor silu(const Tensor& x) { return unary(UnaryOp::silu, x); }
Tensor softplus(const Tensor& x) { return unary(UnaryOp::softplus, x); }
Tensor gelu(const Tensor& x) { return unary(UnaryOp::gelu, x); }
Tensor gelu_tanh(const Tensor& x) { return unary(UnaryOp::gelu_tanh, x); }
Tensor relu(const Tensor& x) { return unary(UnaryOp::relu, x); }
Tensor tanh(const Tensor& x) { return unary(UnaryOp::tanh, x); }
Tensor abs(const Tensor& x) { return unary(UnaryOp::abs, x); }

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  ops_detail::check_defined("compare", a, "a");
  ops_detail::check_defined("compare", b, "b");
  ops_detail::check_same_device("compare", {a, b});
  ops_detail::check_same_dtype("compare", {a, b});
  if (!a.device().is_cpu()) {
#ifdef SCANLINE_HAVE_CUDA
    return cuda::compare(op, a, b);
#else
    ops_detail::no_cuda_kernel("compare", a);
#endif
  }
  return cpu::compare(op, a, b);
}

Tensor eq(const Tensor& a, const Tensor& b) { return compare(CompareOp::eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return compare(CompareOp::ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return compare(CompareOp::lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return compare(CompareOp::le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return compare(CompareOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return compare(CompareOp::ge, a, b); }

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  ops_detail::check_defined("where", cond, "cond");
  ops_detail::check_defined("where", a, "a");
  ops_detail::check_defined("where", b, "b");
  SCANLINE_CHECK(cond.dtype() == DType::b8, "where: expected cond to be bool but found ", describe(cond));
  ops_detail::check_same_device("where", {cond, a, b});
  ops_detail::check_same_dtype("where", {a, b});
  Tensor out;
  if (a.device().is_cpu()) out = cpu::where(cond, a, b);
#ifdef SCANLINE_HAVE_CUDA
  else out = cuda::where(cond, a, b);
#else
  else ops_detail::no_cuda_kernel("where", a);
#endif
  record("where", {a, b}, {out}, [c = cond.detach(), a_shape = a.shape(), b_shape = b.shape()](const BackwardContext& ctx) {
    Tensor zero = scalar_tensor(0.0, ctx.grad().options());
    Tensor ga, gb;
    if (ctx.needs(0)) ga = sum_to(where(c, ctx.grad(), zero), a_shape);
    if (ctx.needs(1)) gb = sum_to(where(c, zero, ctx.grad()), b_shape);
    return Grads{ga, gb};
  });
  return out;
}

}  // namespace scanline
