#include "ops/rope.h"

#include <cmath>

#include "ops/dispatch.h"
#include "ops/rope_cpu.h"

#ifdef SCANLINE_HAVE_CUDA
#include "cuda/attention.h"
#endif

namespace scanline {

using autograd::BackwardContext;
using autograd::record;
using Grads = std::vector<Tensor>;

namespace {

constexpr const char* kOp = "rope";

// Rotation by the angles (inverse: their negatives) on x's device.
Tensor rotate(const Tensor& x, int64_t position_offset, double theta, bool inverse) {
  if (x.device().is_cpu()) return cpu::rope(x, position_offset, theta, inverse);
#ifdef SCANLINE_HAVE_CUDA
  return cuda::rope(x, position_offset, theta, inverse);
#else
  ops_detail::no_cuda_kernel(inverse ? "rope backward" : kOp, x);
#endif
}

}  // namespace

Tensor rope(const Tensor& x, int64_t position_offset, double theta) {
  ops_detail::check_floating(kOp, x, "x");
  SCANLINE_CHECK(x.dim() == 4 && x.size(3) % 2 == 0, kOp,
                 ": expected x of shape (batch, L, heads, headdim) with an even headdim but found ", describe(x));
  SCANLINE_CHECK(position_offset >= 0, kOp, ": expected position_offset >= 0 but found ", position_offset);
  SCANLINE_CHECK(std::isfinite(theta) && theta > 0.0, kOp, ": expected a finite theta > 0 but found ", theta);
  Tensor out = rotate(x, position_offset, theta, false);
  // A rotation is orthogonal: the gradient is the output gradient rotated back.
  record(kOp, {x}, {out}, [position_offset, theta](const BackwardContext& ctx) {
    return Grads{rotate(ctx.grad(), position_offset, theta, true)};
  });
  return out;
}

}  // namespace scanline
