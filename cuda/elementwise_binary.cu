// Broadcasting binary arithmetic: add, sub, mul, div, maximum, minimum, pow.
#include "cuda/elementwise.h"
#include "cuda/elementwise_kernels.cuh"

namespace scanline::cuda {
namespace {

using namespace elementwise;

// The CPU reference's binary_value: maximum/minimum propagate a NaN in either operand (x when x
// is NaN, else the comparison fails and y, possibly NaN, is taken).
template <BinaryOp Op, typename M>
__device__ __forceinline__ M binary_value(M x, M y) {
  if constexpr (Op == BinaryOp::add) return x + y;
  else if constexpr (Op == BinaryOp::sub) return x - y;
  else if constexpr (Op == BinaryOp::mul) return x * y;
  else if constexpr (Op == BinaryOp::div) return x / y;
  else if constexpr (Op == BinaryOp::maximum) return (x >= y || x != x) ? x : y;
  else if constexpr (Op == BinaryOp::minimum) return (x <= y || x != x) ? x : y;
  else return m_pow(x, y);
}

template <BinaryOp Op, typename T>
struct BinaryFn {
  __device__ __forceinline__ T operator()(T a, T b) const {
    return from_math_value<T>(binary_value<Op>(to_math(a), to_math(b)));
  }
};

template <typename Fn>
void with_binary_op(BinaryOp op, Fn&& fn) {
  switch (op) {
    case BinaryOp::add: return fn.template operator()<BinaryOp::add>();
    case BinaryOp::sub: return fn.template operator()<BinaryOp::sub>();
    case BinaryOp::mul: return fn.template operator()<BinaryOp::mul>();
    case BinaryOp::div: return fn.template operator()<BinaryOp::div>();
    case BinaryOp::maximum: return fn.template operator()<BinaryOp::maximum>();
    case BinaryOp::minimum: return fn.template operator()<BinaryOp::minimum>();
    case BinaryOp::pow: return fn.template operator()<BinaryOp::pow>();
  }
  SCANLINE_FAIL("binary: unknown op");
}

}  // namespace

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = op_name(op);
  check_operands(name, {{&a, "a"}, {&b, "b"}});
  SCANLINE_CHECK(a.dtype() == b.dtype(), name, ": expected one dtype but found ", describe(a), " and ",
                 describe(b));
  Shape shape = broadcast_shapes(a.shape(), b.shape(), name);
  Tensor out = empty(shape, a.options());
  dispatch_all(a.dtype(), name, [&]<typename S>() {
    using T = device_t<S>;
    if constexpr (std::is_same_v<T, bool>) {
      SCANLINE_FAIL(name, ": arithmetic on bool tensors is not supported, found ", describe(a));
    } else {
      with_binary_op(op, [&]<BinaryOp Op>() {
        if constexpr (std::is_integral_v<T> && (Op == BinaryOp::div || Op == BinaryOp::pow)) {
          SCANLINE_FAIL(name, ": integer tensors are supported on CUDA for add, sub, mul, maximum and minimum "
                              "only, found ", describe(a), " (convert with to_dtype)");
        } else {
          launch<T, T, T, char, 2>(name, out, BinaryFn<Op, T>{}, a, b);
        }
      });
    }
  });
  return out;
}

}  // namespace scanline::cuda
