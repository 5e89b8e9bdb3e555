#include "ops/attention.h"

#include <cmath>

#include "ops/attention_cpu.h"
#include "ops/dispatch.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/attention_cudnn.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

constexpr const char* kOp = "attention";

void check_inputs(const Tensor& q, const Tensor& k, const Tensor& v, double scale) {
  ops_detail::check_floating(kOp, q, "q");
  ops_detail::check_floating(kOp, k, "k");
  ops_detail::check_floating(kOp, v, "v");
  SCANLINE_CHECK(q.dim() == 4 && q.size(3) >= 1, kOp,
                 ": expected q of shape (batch, L, heads, headdim) with headdim >= 1 but found ", describe(q));
  const int64_t batch = q.size(0), L = q.size(1), heads = q.size(2), headdim = q.size(3);
  SCANLINE_CHECK(k.dim() == 4 && k.size(0) == batch && k.size(1) == L && k.size(3) == headdim && k.size(2) >= 1, kOp,
                 ": expected k of shape (batch, L, kv_heads, headdim) = [", batch, ", ", L, ", kv_heads, ", headdim,
                 "] (batch, L and headdim of q ", describe(q), ") but found ", describe(k));
  const int64_t kv_heads = k.size(2);
  SCANLINE_CHECK(heads % kv_heads == 0, kOp, ": kv_heads = ", kv_heads, " of k ", describe(k),
                 " must divide heads = ", heads, " of q ", describe(q));
  ops_detail::check_shape(kOp, v, "v", "(batch, L, kv_heads, headdim)", k.shape());
  ops_detail::check_same_dtype(kOp, {q, k, v});
  ops_detail::check_same_device(kOp, {q, k, v});
  SCANLINE_CHECK(std::isfinite(scale) && scale >= 0.0, kOp,
                 ": expected a finite scale > 0 (or 0 for 1/sqrt(headdim)) but found ", scale);
}

}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale) {
  check_inputs(q, k, v, scale);
  const double resolved = scale == 0.0 ? 1.0 / std::sqrt(double(q.size(3))) : scale;
  Tensor out, lse;
  if (q.device().is_cpu()) {
    auto r = cpu::attention_forward(q, k, v, causal, resolved);
    out = r.out;
    lse = r.lse;
  } else {
#ifdef SCANLINE_HAVE_CUDA
    // Our kernels or cuDNN's fused attention (SCANLINE_ATTENTION_ENGINE, cuda/attention_cudnn.h).
    auto r = cuda::attention_fwd_dispatch(q, k, v, causal, resolved);
    out = r.out;
    lse = r.lse;
#else
    ops_detail::no_cuda_kernel(kOp, q);
#endif
  }
  // One node; it saves the inputs, the output (the CUDA backward's rowsum(dO ∘ O)) and the
  // log-sum-exps, from which the backward recomputes the probabilities tile by tile.
  record(kOp, {q, k, v}, {out},
         [q = q.detach(), k = k.detach(), v = v.detach(), out = out.detach(), lse, causal,
          resolved](const BackwardContext& ctx) {
           const Tensor& grad = ctx.grad();
           if (grad.device().is_cpu()) {
             auto g = cpu::attention_backward(q, k, v, lse, grad, causal, resolved);
             return Grads{g.dq, g.dk, g.dv};
           }
#ifdef SCANLINE_HAVE_CUDA
           auto g = cuda::attention_bwd_dispatch(q, k, v, out, lse, grad, causal, resolved, ctx.needs(0),
                                                 ctx.needs(1) || ctx.needs(2));
           return Grads{ctx.needs(0) ? g.dq : Tensor(), ctx.needs(1) ? g.dk : Tensor(), ctx.needs(2) ? g.dv : Tensor()};
#else
           ops_detail::no_cuda_kernel("attention backward", q);
#endif
         });
  return out;
}

}  // namespace scanline
