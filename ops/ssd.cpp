#include "ops/ssd.h"

#include <array>
#include <tuple>

#include "autograd/node.h"
#include "ops/dispatch.h"
#include "ops/ssd_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/ssd.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using Grads = std::vector<Tensor>;

namespace {

constexpr const char* kOp = "ssd";

void check_inputs(const cpu::SsdArgs& a, int64_t chunk_size) {
  ops_detail::check_defined(kOp, a.x, "x");
  SCANLINE_CHECK(a.x.dim() == 4 && a.x.shape()[1] >= 1, kOp,
                 ": expected x of shape (batch, L, heads, headdim) with L >= 1 but found ", describe(a.x));
  const DType input = a.x.dtype();
  SCANLINE_CHECK(input == DType::f32 || input == DType::bf16 || input == DType::f64, kOp,
                 ": expected x to be f32, bf16 or f64 but found ", describe(a.x));
  const int64_t batch = a.x.shape()[0], L = a.x.shape()[1], heads = a.x.shape()[2], headdim = a.x.shape()[3];
  ops_detail::check_shape(kOp, a.dt, "dt", "(batch, L, heads)", {batch, L, heads});
  if (a.z.defined()) ops_detail::check_shape(kOp, a.z, "z", "(batch, L, heads, headdim)", a.x.shape());
  ops_detail::check_shape(kOp, a.A, "A", "(heads)", {heads});

  ops_detail::check_defined(kOp, a.B, "B");
  SCANLINE_CHECK(a.B.dim() == 4 && a.B.shape()[0] == batch && a.B.shape()[1] == L && a.B.shape()[3] >= 1, kOp,
                 ": expected B of shape (batch, L, ngroups, N) = [", batch, ", ", L,
                 ", ngroups, N] with N >= 1 but found ", describe(a.B));
  const int64_t ngroups = a.B.shape()[2], N = a.B.shape()[3];
  SCANLINE_CHECK(ngroups >= 1 && heads % ngroups == 0, kOp, ": the ngroups = ", ngroups, " of B ", describe(a.B),
                 " must divide heads = ", heads, " of x ", describe(a.x));
  ops_detail::check_shape(kOp, a.C, "C", "(batch, L, ngroups, N)", a.B.shape());
  if (a.D.defined()) {
    const bool per_head = a.D.shape() == Shape{heads}, per_channel = a.D.shape() == Shape{heads, headdim};
    SCANLINE_CHECK(per_head || per_channel, kOp,
                   ": expected D of shape (heads) = [", heads, "] or (heads, headdim) = [", heads, ", ", headdim,
                   "] but found ", describe(a.D));
  }
  if (a.dt_bias.defined()) ops_detail::check_shape(kOp, a.dt_bias, "dt_bias", "(heads)", {heads});
  if (a.initial_state.defined())
    ops_detail::check_shape(kOp, a.initial_state, "initial_state", "(batch, heads, headdim, N)",
                            {batch, heads, headdim, N});
  SCANLINE_CHECK(chunk_size >= 1, kOp, ": expected chunk_size >= 1 but found ", chunk_size);

  ops_detail::check_input_dtype(kOp, a.dt, "dt", input, "x");
  ops_detail::check_input_dtype(kOp, a.B, "B", input, "x");
  ops_detail::check_input_dtype(kOp, a.C, "C", input, "x");
  ops_detail::check_input_dtype(kOp, a.z, "z", input, "x");
  ops_detail::check_param_dtype(kOp, a.A, "A", input);
  ops_detail::check_param_dtype(kOp, a.D, "D", input);
  ops_detail::check_param_dtype(kOp, a.dt_bias, "dt_bias", input);
  ops_detail::check_param_dtype(kOp, a.initial_state, "initial_state", input);
  ops_detail::check_same_device(kOp, {a.x, a.dt, a.A, a.B, a.C, a.D, a.z, a.dt_bias, a.initial_state});
}

Tensor detached(const Tensor& t) { return t.defined() ? t.detach() : Tensor(); }

}  // namespace

SsdResult ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& z, const Tensor& dt_bias, bool dt_softplus, int64_t chunk_size,
              const Tensor& initial_state) {
  const cpu::SsdArgs args{x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus};
  check_inputs(args, chunk_size);
  Tensor y, final_state, chunk_states, y_ungated;
#ifdef SCANLINE_HAVE_CUDA
  if (x.device().is_cuda()) {
    SCANLINE_CHECK(x.dtype() != DType::f64, kOp, ": the CUDA kernels take f32 or bf16 inputs but found ",
                   describe(x), " (f64 runs on CPU)");
    const char* why = "";
    SCANLINE_CHECK(cuda::ssd_supports(x.shape()[3], B.shape()[3], chunk_size, &why), kOp, ": x ", describe(x),
                   ", B ", describe(B), ", chunk_size ", chunk_size, ": ", why);
    cuda::SsdForwardResult r = cuda::ssd_fwd(x, dt, A, B, C, D, z, dt_bias, dt_softplus, chunk_size, initial_state);
    y = r.y;
    final_state = r.final_state;
    chunk_states = r.chunk_states;
    y_ungated = r.y_ungated;
  } else
#endif
  {
    // On CPU the recurrence runs: chunk_size does not change the result, only how a chunked
    // kernel computes it.
    if (!x.device().is_cpu()) ops_detail::no_cuda_kernel(kOp, x);
    std::tie(y, final_state) = cpu::ssd_forward(args);
  }

  // One node for the whole layer. Saved: the inputs, plus on CUDA the state entering every chunk
  // (L / chunk_size states a head) and, with a gate, y before it. The backward recomputes
  // everything else instead of keeping (batch, L, heads, headdim, N) alive (on CPU from
  // checkpoints every cpu::kSsdSegment steps).
  const cpu::SsdArgs saved{detached(x),       detached(dt), detached(A),       detached(B),
                           detached(C),       detached(D),  detached(z),       detached(dt_bias),
                           detached(initial_state), dt_softplus};
  autograd::record(kOp, {x, dt, A, B, C, D, z, dt_bias, initial_state}, {y, final_state},
                   [saved, chunk_size, chunk_states, y_ungated](const BackwardContext& ctx) {
                     const Tensor& grad_y = ctx.grad(0);
                     std::array<bool, 9> needs{};
                     for (size_t i = 0; i < needs.size(); ++i) needs[i] = ctx.needs(i);
#ifdef SCANLINE_HAVE_CUDA
                     if (grad_y.device().is_cuda()) {
                       const cpu::SsdArgs& s = saved;
                       cuda::SsdBackwardResult g =
                           cuda::ssd_bwd(s.x, s.dt, s.A, s.B, s.C, s.D, s.z, s.dt_bias, s.dt_softplus, chunk_size,
                                         s.initial_state, chunk_states, y_ungated, grad_y, ctx.grad(1), needs);
                       return Grads{g.x, g.dt, g.A, g.B, g.C, g.D, g.z, g.dt_bias, g.initial_state};
                     }
#endif
                     if (!grad_y.device().is_cpu()) ops_detail::no_cuda_kernel("ssd backward", grad_y);
                     cpu::SsdGrads g = cpu::ssd_backward(saved, grad_y, ctx.grad(1), needs);
                     return Grads{g.x, g.dt, g.A, g.B, g.C, g.D, g.z, g.dt_bias, g.initial_state};
                   });
  return {y, final_state};
}

}  // namespace scanline
