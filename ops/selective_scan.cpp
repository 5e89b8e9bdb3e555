#include "ops/selective_scan.h"

#include <tuple>

#include "autograd/node.h"
#include "ops/dispatch.h"
#include "ops/selective_scan_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/selective_scan.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using Grads = std::vector<Tensor>;

namespace {

constexpr const char* kOp = "selective_scan";

void check_inputs(const cpu::SelectiveScanArgs& a) {
  ops_detail::check_defined(kOp, a.u, "u");
  SCANLINE_CHECK(a.u.dim() == 3 && a.u.shape()[2] >= 1, kOp,
                 ": expected u of shape (batch, d_inner, L) with L >= 1 but found ", describe(a.u));
  const DType input = a.u.dtype();
  SCANLINE_CHECK(input == DType::f32 || input == DType::bf16 || input == DType::f64, kOp,
                 ": expected u to be f32, bf16 or f64 but found ", describe(a.u));
  const int64_t batch = a.u.shape()[0], d_inner = a.u.shape()[1], L = a.u.shape()[2];
  ops_detail::check_shape(kOp, a.delta, "delta", "(batch, d_inner, L)", a.u.shape());
  if (a.z.defined()) ops_detail::check_shape(kOp, a.z, "z", "(batch, d_inner, L)", a.u.shape());

  ops_detail::check_defined(kOp, a.A, "A");
  SCANLINE_CHECK(a.A.dim() == 2 && a.A.shape()[0] == d_inner && a.A.shape()[1] >= 1, kOp,
                 ": expected A of shape (d_inner, N) = [", d_inner, ", N] with N >= 1 but found ", describe(a.A));
  const int64_t N = a.A.shape()[1];

  ops_detail::check_defined(kOp, a.B, "B");
  SCANLINE_CHECK(a.B.dim() == 4 && a.B.shape()[0] == batch && a.B.shape()[2] == N && a.B.shape()[3] == L, kOp,
                 ": expected B of shape (batch, groups, N, L) = [", batch, ", groups, ", N, ", ", L,
                 "] but found ", describe(a.B));
  const int64_t groups = a.B.shape()[1];
  SCANLINE_CHECK(groups >= 1 && d_inner % groups == 0, kOp, ": the groups = ", groups, " of B ", describe(a.B),
                 " must divide d_inner = ", d_inner, " of u ", describe(a.u));
  ops_detail::check_shape(kOp, a.C, "C", "(batch, groups, N, L)", a.B.shape());
  if (a.D.defined()) ops_detail::check_shape(kOp, a.D, "D", "(d_inner)", {d_inner});
  if (a.delta_bias.defined()) ops_detail::check_shape(kOp, a.delta_bias, "delta_bias", "(d_inner)", {d_inner});
  if (a.initial_state.defined())
    ops_detail::check_shape(kOp, a.initial_state, "initial_state", "(batch, d_inner, N)", {batch, d_inner, N});

  ops_detail::check_input_dtype(kOp, a.delta, "delta", input, "u");
  ops_detail::check_input_dtype(kOp, a.B, "B", input, "u");
  ops_detail::check_input_dtype(kOp, a.C, "C", input, "u");
  ops_detail::check_input_dtype(kOp, a.z, "z", input, "u");
  ops_detail::check_param_dtype(kOp, a.A, "A", input);
  ops_detail::check_param_dtype(kOp, a.D, "D", input);
  ops_detail::check_param_dtype(kOp, a.delta_bias, "delta_bias", input);
  ops_detail::check_param_dtype(kOp, a.initial_state, "initial_state", input);
  ops_detail::check_same_device(kOp, {a.u, a.delta, a.A, a.B, a.C, a.D, a.z, a.delta_bias, a.initial_state});
}

Tensor detached(const Tensor& t) { return t.defined() ? t.detach() : Tensor(); }

}  // namespace

SelectiveScanResult selective_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                                   const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& delta_bias,
                                   bool delta_softplus, const Tensor& initial_state) {
  const cpu::SelectiveScanArgs args{u, delta, A, B, C, D, z, delta_bias, initial_state, delta_softplus};
  check_inputs(args);
  Tensor y, final_state;
  Tensor chunk_states;  // CUDA only: the state entering each time chunk, (batch, d_inner, n_chunks, N)
#ifdef SCANLINE_HAVE_CUDA
  if (u.device().is_cuda()) {
    cuda::ScanForwardResult r =
        cuda::selective_scan_fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state);
    y = r.y;
    final_state = r.final_state;
    chunk_states = r.chunk_states;
  } else
#endif
  {
    if (!u.device().is_cpu()) ops_detail::no_cuda_kernel(kOp, u);
    std::tie(y, final_state) = cpu::selective_scan_forward(args);
  }

  // One node for the whole scan. Only the inputs are saved (plus, on CUDA, the chunk-boundary
  // states, L·N / chunk values a channel): the backward recomputes the states instead of keeping
  // (batch, d_inner, L, N) alive.
  const cpu::SelectiveScanArgs saved{detached(u),     detached(delta), detached(A),
                                     detached(B),     detached(C),     detached(D),
                                     detached(z),     detached(delta_bias), detached(initial_state),
                                     delta_softplus};
  autograd::record(kOp, {u, delta, A, B, C, D, z, delta_bias, initial_state}, {y, final_state},
                   [saved, chunk_states](const BackwardContext& ctx) {
                     const Tensor& grad_y = ctx.grad(0);
                     const Tensor& grad_final = ctx.grad(1);
                     std::array<bool, 9> needs{};
                     for (size_t i = 0; i < needs.size(); ++i) needs[i] = ctx.needs(i);
#ifdef SCANLINE_HAVE_CUDA
                     if (grad_y.device().is_cuda()) {
                       const cpu::SelectiveScanArgs& s = saved;
                       cuda::ScanBackwardResult g = cuda::selective_scan_bwd(
                           s.u, s.delta, s.A, s.B, s.C, s.D, s.z, s.delta_bias, s.delta_softplus, s.initial_state,
                           chunk_states, grad_y, grad_final, needs);
                       return Grads{g.u, g.delta, g.A, g.B, g.C, g.D, g.z, g.delta_bias, g.initial_state};
                     }
#endif
                     if (!grad_y.device().is_cpu()) ops_detail::no_cuda_kernel("selective_scan backward", grad_y);
                     cpu::SelectiveScanGrads g = cpu::selective_scan_backward(saved, grad_y, grad_final, needs);
                     return Grads{g.u, g.delta, g.A, g.B, g.C, g.D, g.z, g.delta_bias, g.initial_state};
                   });
  return {y, final_state};
}

}  // namespace scanline
