#include "ops/ssd_step.h"

#include "autograd/grad_mode.h"
#include "ops/dispatch.h"
#include "ops/ssd_step_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/ssd_step.h"
#endif

namespace scanline {
namespace {

constexpr const char* kOp = "ssd_step";

void check_shape(const Tensor& t, const char* name, const char* layout, const Shape& expected) {
  ops_detail::check_defined(kOp, t, name);
  SCANLINE_CHECK(t.shape() == expected, kOp, ": expected ", name, " of shape ", layout, " = ", expected,
                 " but found ", describe(t));
}

// x, dt, B, C, z share the input dtype.
void check_input_dtype(const Tensor& t, const char* name, DType input) {
  if (!t.defined()) return;
  SCANLINE_CHECK(t.dtype() == input, kOp, ": expected ", name, " of x's dtype ", input, " but found ",
                 describe(t));
}

// A, D, dt_bias and state: f32 (f64 with f64 inputs), as in ssd.
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

void check_inputs(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                  const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias) {
  ops_detail::check_defined(kOp, x, "x");
  SCANLINE_CHECK(x.dim() == 3, kOp, ": expected x of shape (batch, heads, headdim) but found ", describe(x));
  const DType input = x.dtype();
  SCANLINE_CHECK(input == DType::f32 || input == DType::bf16 || input == DType::f64, kOp,
                 ": expected x to be f32, bf16 or f64 but found ", describe(x));
  const int64_t batch = x.shape()[0], heads = x.shape()[1], headdim = x.shape()[2];
  check_shape(dt, "dt", "(batch, heads)", {batch, heads});
  if (z.defined()) check_shape(z, "z", "(batch, heads, headdim)", x.shape());
  check_shape(A, "A", "(heads)", {heads});

  ops_detail::check_defined(kOp, B, "B");
  SCANLINE_CHECK(B.dim() == 3 && B.shape()[0] == batch && B.shape()[2] >= 1, kOp,
                 ": expected B of shape (batch, ngroups, N) = [", batch, ", ngroups, N] with N >= 1 but found ",
                 describe(B));
  const int64_t ngroups = B.shape()[1], N = B.shape()[2];
  SCANLINE_CHECK(ngroups >= 1 && heads % ngroups == 0, kOp, ": the ngroups = ", ngroups, " of B ", describe(B),
                 " must divide heads = ", heads, " of x ", describe(x));
  check_shape(C, "C", "(batch, ngroups, N)", B.shape());
  if (D.defined()) {
    const bool per_head = D.shape() == Shape{heads}, per_channel = D.shape() == Shape{heads, headdim};
    SCANLINE_CHECK(per_head || per_channel, kOp, ": expected D of shape (heads) = [", heads,
                   "] or (heads, headdim) = [", heads, ", ", headdim, "] but found ", describe(D));
  }
  if (bias.defined()) check_shape(bias, "dt_bias", "(heads)", {heads});
  check_shape(state, "state", "(batch, heads, headdim, N)", {batch, heads, headdim, N});

  check_input_dtype(dt, "dt", input);
  check_input_dtype(B, "B", input);
  check_input_dtype(C, "C", input);
  check_input_dtype(z, "z", input);
  check_param_dtype(A, "A", input);
  check_param_dtype(D, "D", input);
  check_param_dtype(bias, "dt_bias", input);
  check_param_dtype(state, "state", input);
  ops_detail::check_same_device(kOp, {state, x, dt, A, B, C, D, z, bias});
  // Written in place by one linear pass: a view with gaps or overlaps cannot be.
  SCANLINE_CHECK(state.numel() == 0 || state.is_contiguous(), kOp,
                 ": state is updated in place and must be contiguous, but found ", describe(state), " with strides ",
                 state.strides());

  // No node is recorded and state is overwritten: a gradient could only be silently wrong.
  if (autograd::is_grad_enabled())
    for (const Named& in : {Named{state, "state"}, Named{x, "x"}, Named{dt, "dt"}, Named{A, "A"}, Named{B, "B"},
                            Named{C, "C"}, Named{D, "D"}, Named{z, "z"}, Named{bias, "dt_bias"}})
      SCANLINE_CHECK(!in.t.defined() || !in.t.requires_grad(), kOp,
                     ": the step op is for inference and has no gradient, but ", in.name, " ", describe(in.t),
                     " requires grad; run it under NoGradGuard");
}

}  // namespace

Tensor ssd_step(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus) {
  check_inputs(state, x, dt, A, B, C, D, z, dt_bias);
  NoGradGuard no_grad;  // nothing below records a graph
#ifdef SCANLINE_HAVE_CUDA
  if (x.device().is_cuda()) return cuda::ssd_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus);
#endif
  if (!x.device().is_cpu()) ops_detail::no_cuda_kernel(kOp, x);
  return cpu::ssd_step(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus);
}

}  // namespace scanline
