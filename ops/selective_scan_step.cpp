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

void check_shape(const Tensor& t, const char* name, const char* layout, const Shape& expected) {
  ops_detail::check_defined(kOp, t, name);
  SCANLINE_CHECK(t.shape() == expected, kOp, ": expected ", name, " of shape ", layout, " = ", expected,
                 " but found ", describe(t));
}

// u, delta, B, C, z share the input dtype.
void check_input_dtype(const Tensor& t, const char* name, DType input) {
  if (!t.defined()) return;
  SCANLINE_CHECK(t.dtype() == input, kOp, ": expected ", name, " of u's dtype ", input, " but found ",
                 describe(t));
}

// A, D, delta_bias and state: f32 (f64 with f64 inputs), as in selective_scan.
void check_param_dtype(const Tensor& t, const char* name, DType input) {
  if (!t.defined()) return;
  const DType param = input == DType::f64 ? DType::f64 : DType::f32;
  SCANLINE_CHECK(t.dtype() == param, kOp, ": expected ", name, " to be ", param, " (the parameter dtype for ",
                 input, " inputs) but found ", describe(t));
}

struct Named {
  const Tensor& t;
  const char* name;
};

void check_inputs(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
                  const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias) {
  ops_detail::check_defined(kOp, u, "u");
  SCANLINE_CHECK(u.dim() == 2, kOp, ": expected u of shape (batch, d_inner) but found ", describe(u));
  const DType input = u.dtype();
  SCANLINE_CHECK(input == DType::f32 || input == DType::bf16 || input == DType::f64, kOp,
                 ": expected u to be f32, bf16 or f64 but found ", describe(u));
  const int64_t batch = u.shape()[0], d_inner = u.shape()[1];
  check_shape(delta, "delta", "(batch, d_inner)", u.shape());
  if (z.defined()) check_shape(z, "z", "(batch, d_inner)", u.shape());

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
  check_shape(C, "C", "(batch, groups, N)", B.shape());
  if (D.defined()) check_shape(D, "D", "(d_inner)", {d_inner});
  if (bias.defined()) check_shape(bias, "delta_bias", "(d_inner)", {d_inner});
  check_shape(state, "state", "(batch, d_inner, N)", {batch, d_inner, N});

  check_input_dtype(delta, "delta", input);
  check_input_dtype(B, "B", input);
  check_input_dtype(C, "C", input);
  check_input_dtype(z, "z", input);
  check_param_dtype(A, "A", input);
  check_param_dtype(D, "D", input);
  check_param_dtype(bias, "delta_bias", input);
  check_param_dtype(state, "state", input);
  ops_detail::check_same_device(kOp, {state, u, delta, A, B, C, D, z, bias});
  // Written in place by one linear pass: a view with gaps or overlaps cannot be.
  SCANLINE_CHECK(state.numel() == 0 || state.is_contiguous(), kOp,
                 ": state is updated in place and must be contiguous, but found ", describe(state), " with strides ",
                 state.strides());

  // No node is recorded and state is overwritten: a gradient could only be silently wrong.
  if (autograd::is_grad_enabled())
    for (const Named& in : {Named{state, "state"}, Named{u, "u"}, Named{delta, "delta"}, Named{A, "A"},
                            Named{B, "B"}, Named{C, "C"}, Named{D, "D"}, Named{z, "z"}, Named{bias, "delta_bias"}})
      SCANLINE_CHECK(!in.t.defined() || !in.t.requires_grad(), kOp,
                     ": the step op is for inference and has no gradient, but ", in.name, " ", describe(in.t),
                     " requires grad; run it under NoGradGuard");
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
