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

void check_inputs(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                  const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias) {
  ops_detail::check_defined(kOp, x, "x");
  SCANLINE_CHECK(x.dim() == 3, kOp, ": expected x of shape (batch, heads, headdim) but found ", describe(x));
  const DType input = x.dtype();
  SCANLINE_CHECK(input == DType::f32 || input == DType::bf16 || input == DType::f64, kOp,
                 ": expected x to be f32, bf16 or f64 but found ", describe(x));
  const int64_t batch = x.shape()[0], heads = x.shape()[1], headdim = x.shape()[2];
  ops_detail::check_shape(kOp, dt, "dt", "(batch, heads)", {batch, heads});
  if (z.defined()) ops_detail::check_shape(kOp, z, "z", "(batch, heads, headdim)", x.shape());
  ops_detail::check_shape(kOp, A, "A", "(heads)", {heads});

  ops_detail::check_defined(kOp, B, "B");
  SCANLINE_CHECK(B.dim() == 3 && B.shape()[0] == batch && B.shape()[2] >= 1, kOp,
                 ": expected B of shape (batch, ngroups, N) = [", batch, ", ngroups, N] with N >= 1 but found ",
                 describe(B));
  const int64_t ngroups = B.shape()[1], N = B.shape()[2];
  SCANLINE_CHECK(ngroups >= 1 && heads % ngroups == 0, kOp, ": the ngroups = ", ngroups, " of B ", describe(B),
                 " must divide heads = ", heads, " of x ", describe(x));
  ops_detail::check_shape(kOp, C, "C", "(batch, ngroups, N)", B.shape());
  if (D.defined()) {
    const bool per_head = D.shape() == Shape{heads}, per_channel = D.shape() == Shape{heads, headdim};
    SCANLINE_CHECK(per_head || per_channel, kOp, ": expected D of shape (heads) = [", heads,
                   "] or (heads, headdim) = [", heads, ", ", headdim, "] but found ", describe(D));
  }
  if (bias.defined()) ops_detail::check_shape(kOp, bias, "dt_bias", "(heads)", {heads});
  ops_detail::check_shape(kOp, state, "state", "(batch, heads, headdim, N)", {batch, heads, headdim, N});

  ops_detail::check_input_dtype(kOp, dt, "dt", input, "x");
  ops_detail::check_input_dtype(kOp, B, "B", input, "x");
  ops_detail::check_input_dtype(kOp, C, "C", input, "x");
  ops_detail::check_input_dtype(kOp, z, "z", input, "x");
  ops_detail::check_param_dtype(kOp, A, "A", input);
  ops_detail::check_param_dtype(kOp, D, "D", input);
  ops_detail::check_param_dtype(kOp, bias, "dt_bias", input);
  ops_detail::check_param_dtype(kOp, state, "state", input);
  ops_detail::check_same_device(kOp, {state, x, dt, A, B, C, D, z, bias});
  // Written in place by one linear pass: a view with gaps or overlaps cannot be.
  SCANLINE_CHECK(state.numel() == 0 || state.is_contiguous(), kOp,
                 ": state is updated in place and must be contiguous, but found ", describe(state), " with strides ",
                 state.strides());

  ops_detail::check_inference_only(kOp, {{state, "state"}, {x, "x"}, {dt, "dt"}, {A, "A"}, {B, "B"}, {C, "C"},
                                         {D, "D"}, {z, "z"}, {bias, "dt_bias"}});
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
