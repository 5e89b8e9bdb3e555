// Unary ops (UnaryOp) and their backward, grad * d(op)/dx from the input x and the output y.
// The formulas are the CPU reference's (ops/elementwise_cpu.cpp), in fp32 (f64 for f64).
#include <numbers>

#include "cuda/elementwise.h"
#include "cuda/elementwise_kernels.cuh"

namespace scanline::cuda {
namespace {

using namespace elementwise;

constexpr double kInvSqrt2 = std::numbers::sqrt2 / 2;                                // gelu's erf argument
constexpr double kInvSqrt2Pi = 0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2;  // standard normal pdf at 0
constexpr double kTwoOverPi = 2.0 / std::numbers::pi;                                 // gelu_tanh: k = sqrt(2/pi)

template <UnaryOp Op, typename A>
__device__ __forceinline__ A unary_value(A x) {
  if constexpr (Op == UnaryOp::neg) return -x;
  else if constexpr (Op == UnaryOp::exp) return m_exp(x);
  else if constexpr (Op == UnaryOp::log) return m_log(x);
  else if constexpr (Op == UnaryOp::sqrt) return m_sqrt(x);
  else if constexpr (Op == UnaryOp::rsqrt) return A(1) / m_sqrt(x);
  else if constexpr (Op == UnaryOp::square) return x * x;
  else if constexpr (Op == UnaryOp::sigmoid) return A(1) / (A(1) + m_exp(-x));
  else if constexpr (Op == UnaryOp::silu) return x / (A(1) + m_exp(-x));
  // log(1 + e^x) without overflow: x + log1p(e^-x) for positive x.
  else if constexpr (Op == UnaryOp::softplus) return x > A(0) ? x + m_log1p(m_exp(-x)) : m_log1p(m_exp(x));
  else if constexpr (Op == UnaryOp::gelu) return A(0.5) * x * (A(1) + m_erf(x * A(kInvSqrt2)));
  else if constexpr (Op == UnaryOp::gelu_tanh) {
    const A k = A(::sqrt(kTwoOverPi));
    return A(0.5) * x * (A(1) + m_tanh(k * (x + A(0.044715) * x * x * x)));
  } else if constexpr (Op == UnaryOp::relu) return x > A(0) ? x : A(0);
  else if constexpr (Op == UnaryOp::tanh) return m_tanh(x);
  else return m_abs(x);
}

// dy/dx from the input x and the output y.
template <UnaryOp Op, typename A>
__device__ __forceinline__ A unary_derivative(A x, A y) {
  if constexpr (Op == UnaryOp::neg) return A(-1);
  else if constexpr (Op == UnaryOp::exp) return y;
  else if constexpr (Op == UnaryOp::log) return A(1) / x;
  else if constexpr (Op == UnaryOp::sqrt) return A(0.5) / y;
  else if constexpr (Op == UnaryOp::rsqrt) return A(-0.5) * y * y * y;
  else if constexpr (Op == UnaryOp::square) return A(2) * x;
  else if constexpr (Op == UnaryOp::sigmoid) return y * (A(1) - y);
  else if constexpr (Op == UnaryOp::silu) {
    const A s = A(1) / (A(1) + m_exp(-x));
    return s * (A(1) + x * (A(1) - s));
  } else if constexpr (Op == UnaryOp::softplus) return A(1) / (A(1) + m_exp(-x));
  else if constexpr (Op == UnaryOp::gelu) {
    const A cdf = A(0.5) * (A(1) + m_erf(x * A(kInvSqrt2)));
    const A pdf = m_exp(A(-0.5) * x * x) * A(kInvSqrt2Pi);
    return cdf + x * pdf;
  } else if constexpr (Op == UnaryOp::gelu_tanh) {
    const A k = A(::sqrt(kTwoOverPi));
    const A t = m_tanh(k * (x + A(0.044715) * x * x * x));
    return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * k * (A(1) + A(3 * 0.044715) * x * x);
  } else if constexpr (Op == UnaryOp::relu) return x > A(0) ? A(1) : A(0);
  else if constexpr (Op == UnaryOp::tanh) return A(1) - y * y;
  else return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
}

template <UnaryOp Op, typename T>
struct UnaryFn {
  __device__ __forceinline__ T operator()(T x) const { return from_math<T>(unary_value<Op>(to_math(x))); }
};

// Output y is read only by the ops whose derivative uses it.
template <UnaryOp Op>
constexpr bool derivative_uses_y = Op == UnaryOp::exp || Op == UnaryOp::sqrt || Op == UnaryOp::rsqrt ||
                                   Op == UnaryOp::sigmoid || Op == UnaryOp::tanh;

template <UnaryOp Op, typename T>
struct UnaryBackwardFn {  // (grad, x) or (grad, y)
  __device__ __forceinline__ T operator()(T grad, T v) const {
    const math_t<T> d = derivative_uses_y<Op> ? unary_derivative<Op>(math_t<T>(0), to_math(v))
                                               : unary_derivative<Op>(to_math(v), math_t<T>(0));
    return from_math<T>(to_math(grad) * d);
  }
};

template <typename Fn>
void with_unary_op(UnaryOp op, Fn&& fn) {
  switch (op) {
    case UnaryOp::neg: return fn.template operator()<UnaryOp::neg>();
    case UnaryOp::exp: return fn.template operator()<UnaryOp::exp>();
    case UnaryOp::log: return fn.template operator()<UnaryOp::log>();
    case UnaryOp::sqrt: return fn.template operator()<UnaryOp::sqrt>();
    case UnaryOp::rsqrt: return fn.template operator()<UnaryOp::rsqrt>();
    case UnaryOp::square: return fn.template operator()<UnaryOp::square>();
    case UnaryOp::sigmoid: return fn.template operator()<UnaryOp::sigmoid>();
    case UnaryOp::silu: return fn.template operator()<UnaryOp::silu>();
    case UnaryOp::softplus: return fn.template operator()<UnaryOp::softplus>();
    case UnaryOp::gelu: return fn.template operator()<UnaryOp::gelu>();
    case UnaryOp::gelu_tanh: return fn.template operator()<UnaryOp::gelu_tanh>();
    case UnaryOp::relu: return fn.template operator()<UnaryOp::relu>();
    case UnaryOp::tanh: return fn.template operator()<UnaryOp::tanh>();
    case UnaryOp::abs: return fn.template operator()<UnaryOp::abs>();
  }
  SCANLINE_FAIL("unary: unknown op");
}

}  // namespace

Tensor unary(UnaryOp op, const Tensor& x) {
  const char* name = op_name(op);
  check_operands(name, {{&x, "input"}});
  Tensor out = empty(x.shape(), x.options());
  dispatch_floating_device(x.dtype(), name, [&]<typename T>() {
    with_unary_op(op, [&]<UnaryOp Op>() { launch<T, T, char, char, 1>(name, out, UnaryFn<Op, T>{}, x); });
  });
  return out;
}

Tensor unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y) {
  const char* name = op_name(op);
  check_operands(name, {{&grad, "grad"}, {&x, "input"}, {&y, "output"}});
  SCANLINE_CHECK(grad.shape() == x.shape() && y.shape() == x.shape() && grad.dtype() == x.dtype() &&
                     y.dtype() == x.dtype(),
                 name, " backward: expected grad, input and output of one shape and dtype but found ",
                 describe(grad), ", ", describe(x), " and ", describe(y));
  Tensor out = empty(x.shape(), x.options());
  dispatch_floating_device(x.dtype(), name, [&]<typename T>() {
    with_unary_op(op, [&]<UnaryOp Op>() {
      // Two operands, not three: each derivative needs x or y, never both.
      launch<T, T, T, char, 2, Operands::same_shape>(name, out, UnaryBackwardFn<Op, T>{}, grad,
                                                      derivative_uses_y<Op> ? y : x);
    });
  });
  return out;
}

}  // namespace scanline::cuda
