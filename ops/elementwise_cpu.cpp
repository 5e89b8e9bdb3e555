#include "ops/elementwise_cpu.h"

#include <cmath>
#include <numbers>

#include "core/strided_loop.h"

namespace scanline::cpu {
namespace {

template <typename A>
A binary_value(BinaryOp op, A x, A y) {
  switch (op) {
    case BinaryOp::add: return x + y;
    case BinaryOp::sub: return x - y;
    case BinaryOp::mul: return x * y;
    case BinaryOp::div:
      if constexpr (std::is_integral_v<A>) SCANLINE_CHECK(y != 0, "div: integer division by zero");
      return x / y;
    case BinaryOp::maximum: return (x >= y || x != x) ? x : y;  // NaN propagates
    case BinaryOp::minimum: return (x <= y || x != x) ? x : y;
    case BinaryOp::pow: return A(std::pow(x, y));
  }
  return x;
}

template <typename A>
A unary_value(UnaryOp op, A x) {
  using std::exp, std::log, std::sqrt, std::tanh, std::log1p, std::erf, std::abs;
  switch (op) {
    case UnaryOp::neg: return -x;
    case UnaryOp::exp: return exp(x);
    case UnaryOp::log: return log(x);
    case UnaryOp::sqrt: return sqrt(x);
    case UnaryOp::rsqrt: return A(1) / sqrt(x);
    case UnaryOp::square: return x * x;
    case UnaryOp::sigmoid: return A(1) / (A(1) + exp(-x));
    case UnaryOp::silu: return x / (A(1) + exp(-x));
    case UnaryOp::softplus: return x > A(0) ? x + log1p(exp(-x)) : log1p(exp(x));
    case UnaryOp::gelu: return A(0.5) * x * (A(1) + erf(x * A(std::numbers::sqrt2 / 2)));
    case UnaryOp::gelu_tanh: {
      const A k = A(std::sqrt(2.0 / std::numbers::pi));
      return A(0.5) * x * (A(1) + tanh(k * (x + A(0.044715) * x * x * x)));
    }
    case UnaryOp::relu: return x > A(0) ? x : A(0);
    case UnaryOp::tanh: return tanh(x);
    case UnaryOp::abs: return abs(x);
  }
  return x;
}

// dy/dx for input x and output y.
template <typename A>
A unary_derivative(UnaryOp op, A x, A y) {
  using std::exp, std::tanh, std::erf;
  switch (op) {
    case UnaryOp::neg: return A(-1);
    case UnaryOp::exp: return y;
    case UnaryOp::log: return A(1) / x;
    case UnaryOp::sqrt: return A(0.5) / y;
    case UnaryOp::rsqrt: return A(-0.5) * y * y * y;
    case UnaryOp::square: return A(2) * x;
    case UnaryOp::sigmoid: return y * (A(1) - y);
    case UnaryOp::silu: {
      A s = A(1) / (A(1) + exp(-x));
      return s * (A(1) + x * (A(1) - s));
    }
    case UnaryOp::softplus: return A(1) / (A(1) + exp(-x));
    case UnaryOp::gelu: {
      A cdf = A(0.5) * (A(1) + erf(x * A(std::numbers::sqrt2 / 2)));
      A pdf = exp(A(-0.5) * x * x) * A(0.5 * std::numbers::inv_sqrtpi * std::numbers::sqrt2);
      return cdf + x * pdf;
    }
    case UnaryOp::gelu_tanh: {
      const A k = A(std::sqrt(2.0 / std::numbers::pi));
      A inner = k * (x + A(0.044715) * x * x * x);
      A t = tanh(inner);
      return A(0.5) * (A(1) + t) + A(0.5) * x * (A(1) - t * t) * k * (A(1) + A(3 * 0.044715) * x * x);
    }
    case UnaryOp::relu: return x > A(0) ? A(1) : A(0);
    case UnaryOp::tanh: return A(1) - y * y;
    case UnaryOp::abs: return x > A(0) ? A(1) : (x < A(0) ? A(-1) : A(0));
  }
  return A(0);
}

// Kernels index storage directly with (offset + strides), so they start from the storage base.
template <typename T>
const T* base_ptr(const Tensor& t) { return static_cast<const T*>(t.impl()->storage->data()); }

}  // namespace

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), "binary op");
  Tensor out = empty(shape, a.options());
  auto sa = broadcast_strides(a.shape(), a.strides(), shape);
  auto sb = broadcast_strides(b.shape(), b.strides(), shape);
  dispatch_all(a.dtype(), "binary op", [&]<typename T>() {
    if constexpr (std::is_same_v<T, bool>) {
      SCANLINE_FAIL("binary op: arithmetic on bool tensors is not supported");
    } else {
      using A = acc_t<T>;
      T* o = out.data_ptr<T>();
      const T* pa = base_ptr<T>(a);
      const T* pb = base_ptr<T>(b);
      strided_loop<3>(shape, {out.strides().data(), sa.data(), sb.data()}, {0, a.offset(), b.offset()},
                      [&](std::array<int64_t, 3> off, int64_t n, std::array<int64_t, 3> s) {
                        for (int64_t i = 0; i < n; ++i)
                          o[off[0] + i * s[0]] = T(binary_value<A>(op, A(pa[off[1] + i * s[1]]),
                                                                   A(pb[off[2] + i * s[2]])));
                      });
    }
  });
  return out;
}

Tensor unary(UnaryOp op, const Tensor& x) {
  Tensor out = empty(x.shape(), x.options());
  dispatch_floating(x.dtype(), "unary op", [&]<typename T>() {
    using A = acc_t<T>;
    T* o = out.data_ptr<T>();
    const T* px = base_ptr<T>(x);
    strided_loop<2>(x.shape(), {out.strides().data(), x.strides().data()}, {0, x.offset()},
                    [&](std::array<int64_t, 2> off, int64_t n, std::array<int64_t, 2> s) {
                      for (int64_t i = 0; i < n; ++i)
                        o[off[0] + i * s[0]] = T(unary_value<A>(op, A(px[off[1] + i * s[1]])));
                    });
  });
  return out;
}

Tensor unary_backward(UnaryOp op, const Tensor& grad, const Tensor& x, const Tensor& y) {
  Tensor out = empty(x.shape(), x.options());
  dispatch_floating(x.dtype(), "unary op backward", [&]<typename T>() {
    using A = acc_t<T>;
    T* o = out.data_ptr<T>();
    const T* pg = base_ptr<T>(grad);
    const T* px = base_ptr<T>(x);
    const T* py = base_ptr<T>(y);
    strided_loop<4>(x.shape(), {out.strides().data(), grad.strides().data(), x.strides().data(), y.strides().data()},
                    {0, grad.offset(), x.offset(), y.offset()},
                    [&](std::array<int64_t, 4> off, int64_t n, std::array<int64_t, 4> s) {
                      for (int64_t i = 0; i < n; ++i) {
                        A d = unary_derivative<A>(op, A(px[off[2] + i * s[2]]), A(py[off[3] + i * s[3]]));
                        o[off[0] + i * s[0]] = T(A(pg[off[1] + i * s[1]]) * d);
                      }
                    });
  });
  return out;
}

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  Shape shape = broadcast_shapes(a.shape(), b.shape(), "compare");
  Tensor out = empty(shape, a.options().with_dtype(DType::b8));
  auto sa = broadcast_strides(a.shape(), a.strides(), shape);
  auto sb = broadcast_strides(b.shape(), b.strides(), shape);
  dispatch_all(a.dtype(), "compare", [&]<typename T>() {
    using A = acc_t<T>;
    bool* o = out.data_ptr<bool>();
    const T* pa = base_ptr<T>(a);
    const T* pb = base_ptr<T>(b);
    strided_loop<3>(shape, {out.strides().data(), sa.data(), sb.data()}, {0, a.offset(), b.offset()},
                    [&](std::array<int64_t, 3> off, int64_t n, std::array<int64_t, 3> s) {
                      for (int64_t i = 0; i < n; ++i) {
                        A x = A(pa[off[1] + i * s[1]]), y = A(pb[off[2] + i * s[2]]);
                        bool r = false;
                        switch (op) {
                          case CompareOp::eq: r = x == y; break;
                          case CompareOp::ne: r = x != y; break;
                          case CompareOp::lt: r = x < y; break;
                          case CompareOp::le: r = x <= y; break;
                          case CompareOp::gt: r = x > y; break;
                          case CompareOp::ge: r = x >= y; break;
                        }
                        o[off[0] + i * s[0]] = r;
                      }
                    });
  });
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  Shape shape = broadcast_shapes(broadcast_shapes(cond.shape(), a.shape(), "where"), b.shape(), "where");
  Tensor out = empty(shape, a.options());
  auto sc = broadcast_strides(cond.shape(), cond.strides(), shape);
  auto sa = broadcast_strides(a.shape(), a.strides(), shape);
  auto sb = broadcast_strides(b.shape(), b.strides(), shape);
  dispatch_all(a.dtype(), "where", [&]<typename T>() {
    T* o = out.data_ptr<T>();
    const bool* pc = base_ptr<bool>(cond);
    const T* pa = base_ptr<T>(a);
    const T* pb = base_ptr<T>(b);
    strided_loop<4>(shape, {out.strides().data(), sc.data(), sa.data(), sb.data()},
                    {0, cond.offset(), a.offset(), b.offset()},
                    [&](std::array<int64_t, 4> off, int64_t n, std::array<int64_t, 4> s) {
                      for (int64_t i = 0; i < n; ++i)
                        o[off[0] + i * s[0]] = pc[off[1] + i * s[1]] ? pa[off[2] + i * s[2]] : pb[off[3] + i * s[3]];
                    });
  });
  return out;
}

}  // namespace scanline::cpu
