#include "ops/ssd.h"

#include <array>
#include <tuple>

#include "autograd/node.h"
#include "ops/dispatch.h"
#include "ops/ssd_cpu.h"

namespace scanline {

using autograd::BackwardContext;
using Grads = std::vector<Tensor>;

namespace {

constexpr const char* kOp = "ssd";

// "(batch, L, heads) = [2, 7, 4]": the symbolic layout and the sizes expected from x and B.
void check_shape(const Tensor& t, const char* name, const char* layout, const Shape& expected) {
  ops_detail::check_defined(kOp, t, name);
  SCANLINE_CHECK(t.shape() == expected, kOp, ": expected ", name, " of shape ", layout, " = ", expected,
                 " but found ", describe(t));
}

// x, dt, B, C, z share the input dtype (f32, bf16, or f64 for references and gradcheck).
void check_input_dtype(const Tensor& t, const char* name, DType input) {
  if (!t.defined()) return;
  SCANLINE_CHECK(t.dtype() == input, kOp, ": expected ", name, " of x's dtype ", input, " but found ",
                 describe(t));
}

// A, D, dt_bias, initial_state: f32 parameters (f64 with f64 inputs), like final_state.
void check_param_dtype(const Tensor& t, const char* name, DType input) {
  if (!t.defined()) return;
  const DType param = input == DType::f64 ? DType::f64 : DType::f32;
  SCANLINE_CHECK(t.dtype() == param, kOp, ": expected ", name, " to be ", param, " (the parameter dtype for ",
                 input, " inputs) but found ", describe(t));
}

void check_inputs(const cpu::SsdArgs& a, int64_t chunk_size) {
  ops_detail::check_defined(kOp, a.x, "x");
  SCANLINE_CHECK(a.x.dim() == 4 && a.x.shape()[1] >= 1, kOp,
                 ": expected x of shape (batch, L, heads, headdim) with L >= 1 but found ", describe(a.x));
  const DType input = a.x.dtype();
  SCANLINE_CHECK(input == DType::f32 || input == DType::bf16 || input == DType::f64, kOp,
                 ": expected x to be f32, bf16 or f64 but found ", describe(a.x));
  const int64_t batch = a.x.shape()[0], L = a.x.shape()[1], heads = a.x.shape()[2], headdim = a.x.shape()[3];
  check_shape(a.dt, "dt", "(batch, L, heads)", {batch, L, heads});
  if (a.z.defined()) check_shape(a.z, "z", "(batch, L, heads, headdim)", a.x.shape());
  check_shape(a.A, "A", "(heads)", {heads});

  ops_detail::check_defined(kOp, a.B, "B");
  SCANLINE_CHECK(a.B.dim() == 4 && a.B.shape()[0] == batch && a.B.shape()[1] == L && a.B.shape()[3] >= 1, kOp,
                 ": expected B of shape (batch, L, ngroups, N) = [", batch, ", ", L,
                 ", ngroups, N] with N >= 1 but found ", describe(a.B));
  const int64_t ngroups = a.B.shape()[2], N = a.B.shape()[3];
  SCANLINE_CHECK(ngroups >= 1 && heads % ngroups == 0, kOp, ": the ngroups = ", ngroups, " of B ", describe(a.B),
                 " must divide heads = ", heads, " of x ", describe(a.x));
  check_shape(a.C, "C", "(batch, L, ngroups, N)", a.B.shape());
  if (a.D.defined()) {
    const bool per_head = a.D.shape() == Shape{heads}, per_channel = a.D.shape() == Shape{heads, headdim};
    SCANLINE_CHECK(per_head || per_channel, kOp,
                   ": expected D of shape (heads) = [", heads, "] or (heads, headdim) = [", heads, ", ", headdim,
                   "] but found ", describe(a.D));
  }
  if (a.dt_bias.defined()) check_shape(a.dt_bias, "dt_bias", "(heads)", {heads});
  if (a.initial_state.defined())
    check_shape(a.initial_state, "initial_state", "(batch, heads, headdim, N)", {batch, heads, headdim, N});
  SCANLINE_CHECK(chunk_size >= 1, kOp, ": expected chunk_size >= 1 but found ", chunk_size);

  check_input_dtype(a.dt, "dt", input);
  check_input_dtype(a.B, "B", input);
  check_input_dtype(a.C, "C", input);
  check_input_dtype(a.z, "z", input);
  check_param_dtype(a.A, "A", input);
  check_param_dtype(a.D, "D", input);
  check_param_dtype(a.dt_bias, "dt_bias", input);
  check_param_dtype(a.initial_state, "initial_state", input);
  ops_detail::check_same_device(kOp, {a.x, a.dt, a.A, a.B, a.C, a.D, a.z, a.dt_bias, a.initial_state});
}

Tensor detached(const Tensor& t) { return t.defined() ? t.detach() : Tensor(); }

}  // namespace

SsdResult ssd(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& z, const Tensor& dt_bias, bool dt_softplus, int64_t chunk_size,
              const Tensor& initial_state) {
  const cpu::SsdArgs args{x, dt, A, B, C, D, z, dt_bias, initial_state, dt_softplus};
  check_inputs(args, chunk_size);
  // The chunked CUDA kernels hang here; on CPU the recurrence runs (chunk_size does not change
  // the result, only how a chunked kernel computes it).
  if (!x.device().is_cpu()) ops_detail::no_cuda_kernel(kOp, x);
  Tensor y, final_state;
  std::tie(y, final_state) = cpu::ssd_forward(args);

  // One node for the whole layer. Only the inputs are saved: the backward recomputes the states
  // (from checkpoints every cpu::kSsdSegment steps) instead of keeping (batch, L, heads, headdim, N).
  const cpu::SsdArgs saved{detached(x),       detached(dt), detached(A),       detached(B),
                           detached(C),       detached(D),  detached(z),       detached(dt_bias),
                           detached(initial_state), dt_softplus};
  autograd::record(kOp, {x, dt, A, B, C, D, z, dt_bias, initial_state}, {y, final_state},
                   [saved](const BackwardContext& ctx) {
                     const Tensor& grad_y = ctx.grad(0);
                     if (!grad_y.device().is_cpu()) ops_detail::no_cuda_kernel("ssd backward", grad_y);
                     std::array<bool, 9> needs{};
                     for (size_t i = 0; i < needs.size(); ++i) needs[i] = ctx.needs(i);
                     cpu::SsdGrads g = cpu::ssd_backward(saved, grad_y, ctx.grad(1), needs);
                     return Grads{g.x, g.dt, g.A, g.B, g.C, g.D, g.z, g.dt_bias, g.initial_state};
                   });
  return {y, final_state};
}

}  // namespace scanline
