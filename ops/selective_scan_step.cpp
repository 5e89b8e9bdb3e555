#include "ops/selective_scan_step.h"

#include "autograd/grad_mode.h"
#include "ops/dispatch.h"
#include "ops/selective_scan_step_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/selective_scan_step.h"
#endif

namespace scanline {
namespace {

constexpr const char* kOp = "selective_scan_step";

void check_inputs(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                  const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias) {
  ops_detail::check_defined(kOp, u, "u");
  SCANLINE_CHECK(u.dim() == 2, kOp, ": expected u of shape (batch, d_inner) but found ", describe(u));
  const DType input = u.dtype();
  SCANLINE_CHECK(input == DType::f32 || input == DType::bf16 || input == DType::f64, kOp,
                 ": expected u to be f32, bf16 or f64 but found ", describe(u));
  const int64_t batch = u.shape()[0], d_inner = u.shape()[1];
  ops_detail::check_shape(kOp, delta, "delta", "(batch, d_inner)", u.shape());
  if (z.defined()) ops_detail::check_shape(kOp, z, "z", "(batch, d_inner)", u.shape());

  ops_detail::check_defined(kOp, A, "A");
  SCANLINE_CHECK(A.dim() == 2 && A.shape()[0] == d_inner && A.shape()[1] >= 1, kOp,
                 ": expected A of shape (d_inner, N) = [", d_inner, ", N] with N >= 1 but found ", describe(A));
  const int64_t N = A.shape()[1];

  ops_detail::check_defined(kOp, B, "B");
  SCANLINE_CHECK(B.dim() == 3 && B.shape()[0] == batch && B.shape()[2] == N, kOp,
                 ": expected B of shape (batch, groups, N) = [", batch, ", groups, ", N, "] but found ", describe(B));
  const int64_t groups = B.shape()[1];
  SCANLINE_CHECK(groups >= 1 && d_inner % groups == 0, kOp, ": the groups = ", groups, " of B ", describe(B),
                 " must divide d_inner = ", d_inner, " of u ", describe(u));
  ops_detail::check_shape(kOp, C, "C", "(batch, groups, N)", B.shape());
  if (D.defined()) ops_detail::check_shape(kOp, D, "D", "(d_inner)", {d_inner});
  if (bias.defined()) ops_detail::check_shape(kOp, bias, "delta_bias", "(d_inner)", {d_inner});
  ops_detail::check_shape(kOp, state, "state", "(batch, d_inner, N)", {batch, d_inner, N});

  ops_detail::check_input_dtype(kOp, delta, "delta", input, "u");
  ops_detail::check_input_dtype(kOp, B, "B", input, "u");
  ops_detail::check_input_dtype(kOp, C, "C", input, "u");
  ops_detail::check_input_dtype(kOp, z, "z", input, "u");
  ops_detail::check_param_dtype(kOp, A, "A", input);
  ops_detail::check_param_dtype(kOp, D, "D", input);
  ops_detail::check_param_dtype(kOp, bias, "delta_bias", input);
  ops_detail::check_param_dtype(kOp, state, "state", input);
  ops_detail::check_same_device(kOp, {state, u, delta, A, B, C, D, z, bias});
  // Written in place by one linear pass: a view with gaps or overlaps cannot be.
  SCANLINE_CHECK(state.numel() == 0 || state.is_contiguous(), kOp,
                 ": state is updated in place and must be contiguous, but found ", describe(state), " with strides ",
                 state.strides());

  ops_detail::check_inference_only(kOp, {{state, "state"}, {u, "u"}, {delta, "delta"}, {A, "A"}, {B, "B"}, {C, "C"},
                                         {D, "D"}, {z, "z"}, {bias, "delta_bias"}});
}

}  // namespace

Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A,
                           const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                           const Tensor& delta_bias, bool delta_softplus) {
  check_inputs(state, u, delta, A, B, C, D, z, delta_bias);
  NoGradGuard no_grad;  // nothing below records a graph
#ifdef SCANLINE_HAVE_CUDA
  if (u.device().is_cuda())
    return cuda::selective_scan_step(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus);
#endif
  if (!u.device().is_cpu()) ops_detail::no_cuda_kernel(kOp, u);
  return cpu::selective_scan_step(state, u, delta, A, B, C, D, z, delta_bias, delta_softplus);
}

}  // namespace scanline
