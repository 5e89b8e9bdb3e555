#include <cmath>
#include <functional>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 loop over the broadcast of two shapes (row-major), the forward reference.
std::vector<double> broadcast_reference(const Tensor& a, const Tensor& b, const Shape& out_shape,
                                        const std::function<double(double, double)>& f) {
  std::vector<double> va = a.to_double_vector(), vb = b.to_double_vector(), out;
  size_t n = out_shape.size();
  for (int64_t i = 0; i < numel_of(out_shape); ++i) {
    int64_t rem = i, ia = 0, ib = 0, sa = 1, sb = 1;
    for (size_t d = n; d-- > 0;) {
      int64_t idx = rem % out_shape[d];
      rem /= out_shape[d];
      size_t da = d + a.shape().size(), db = d + b.shape().size();
      if (da >= n) {
        int64_t size = a.shape()[da - n];
        ia += (size == 1 ? 0 : idx) * sa;
        sa *= size;
      }
      if (db >= n) {
        int64_t size = b.shape()[db - n];
        ib += (size == 1 ? 0 : idx) * sb;
        sb *= size;
      }
    }
    out.push_back(f(va[ia], vb[ib]));
  }
  return out;
}

}  // namespace

TEST_CASE("binary ops broadcast and match a float64 loop") {
  Tensor a = random_tensor({2, 3, 4}, 1);
  Tensor b = random_tensor({3, 1}, 2, DType::f64, 0.5, 2.0);
  Shape out_shape{2, 3, 4};
  check_close(add(a, b), broadcast_reference(a, b, out_shape, std::plus<>()), 1e-12);
  check_close(sub(a, b), broadcast_reference(a, b, out_shape, std::minus<>()), 1e-12);
  check_close(mul(a, b), broadcast_reference(a, b, out_shape, std::multiplies<>()), 1e-12);
  check_close(div(a, b), broadcast_reference(a, b, out_shape, std::divides<>()), 1e-12);
  check_close(maximum(a, b), broadcast_reference(a, b, out_shape, [](double x, double y) { return std::max(x, y); }), 1e-12);
  check_close(minimum(a, b), broadcast_reference(a, b, out_shape, [](double x, double y) { return std::min(x, y); }), 1e-12);
  Tensor pos = random_tensor({2, 3, 4}, 3, DType::f64, 0.5, 2.0);
  check_close(pow(pos, b), broadcast_reference(pos, b, out_shape, [](double x, double y) { return std::pow(x, y); }), 1e-12);
}

TEST_CASE("binary ops pass gradcheck with broadcasting and non-contiguous inputs") {
  Tensor a = random_leaf({2, 3, 4}, 11);
  Tensor b = random_leaf({3, 1}, 12, 0.5, 2.0);
  Tensor t = transposed_leaf({2, 3, 4}, 13);
  for (auto op : {BinaryOp::add, BinaryOp::sub, BinaryOp::mul, BinaryOp::div, BinaryOp::maximum, BinaryOp::minimum}) {
    CAPTURE(int(op));
    check_gradients([op](const std::vector<Tensor>& in) { return binary(op, in[0], in[1]); }, {a, b});
    check_gradients([op](const std::vector<Tensor>& in) { return binary(op, in[0], in[1]); }, {t, b});
  }
  Tensor base = random_leaf({2, 3, 4}, 14, 0.5, 2.0);
  check_gradients([](const std::vector<Tensor>& in) { return pow(in[0], in[1]); }, {base, b});
  check_gradients([](const std::vector<Tensor>& in) { return pow(in[0], 2.5); }, {base});
  check_gradients([](const std::vector<Tensor>& in) { return (in[0] * 3.0 - 1.0) / 2.0 + in[0]; }, {a});
}

TEST_CASE("unary ops match float64 formulas and pass gradcheck") {
  Tensor x = random_leaf({3, 5}, 21, -2.0, 2.0);
  Tensor p = random_leaf({3, 5}, 22, 0.2, 3.0);
  std::vector<double> vx = x.to_double_vector(), vp = p.to_double_vector();
  auto ref = [](const std::vector<double>& v, double (*f)(double)) {
    std::vector<double> out;
    for (double e : v) out.push_back(f(e));
    return out;
  };
  check_close(exp(x), ref(vx, [](double v) { return std::exp(v); }), 1e-12);
  check_close(log(p), ref(vp, [](double v) { return std::log(v); }), 1e-12);
  check_close(sqrt(p), ref(vp, [](double v) { return std::sqrt(v); }), 1e-12);
  check_close(rsqrt(p), ref(vp, [](double v) { return 1.0 / std::sqrt(v); }), 1e-12);
  check_close(sigmoid(x), ref(vx, [](double v) { return 1.0 / (1.0 + std::exp(-v)); }), 1e-12);
  check_close(silu(x), ref(vx, [](double v) { return v / (1.0 + std::exp(-v)); }), 1e-12);
  check_close(softplus(x), ref(vx, [](double v) { return std::log(1.0 + std::exp(v)); }), 1e-12);
  check_close(gelu(x), ref(vx, [](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }), 1e-12);
  check_close(relu(x), ref(vx, [](double v) { return v > 0 ? v : 0.0; }), 1e-12);
  check_close(square(x), ref(vx, [](double v) { return v * v; }), 1e-12);
  check_close(neg(x), ref(vx, [](double v) { return -v; }), 1e-12);
  for (auto op : {UnaryOp::neg, UnaryOp::exp, UnaryOp::square, UnaryOp::sigmoid, UnaryOp::silu,
                  UnaryOp::softplus, UnaryOp::gelu, UnaryOp::gelu_tanh, UnaryOp::relu, UnaryOp::tanh,
                  UnaryOp::abs}) {
    CAPTURE(int(op));
    check_gradients([op](const std::vector<Tensor>& in) { return unary(op, in[0]); }, {x});
  }
  for (auto op : {UnaryOp::log, UnaryOp::sqrt, UnaryOp::rsqrt}) {
    CAPTURE(int(op));
    check_gradients([op](const std::vector<Tensor>& in) { return unary(op, in[0]); }, {p});
  }
  check_gradients([](const std::vector<Tensor>& in) { return silu(in[0]); }, {transposed_leaf({4, 3}, 23)});
}

TEST_CASE("softplus stays finite for large inputs") {
  Tensor x = from_vector<float>({-100.0f, 100.0f, 0.0f}, {3});
  std::vector<float> y = softplus(x).to_vector<float>();
  CHECK(y[0] >= 0.0f);
  CHECK(y[0] < 1e-30f);
  CHECK(y[1] == doctest::Approx(100.0f));
  CHECK(y[2] == doctest::Approx(std::log(2.0f)));
}

TEST_CASE("where and comparisons") {
  Tensor a = random_leaf({2, 3}, 31);
  Tensor b = random_leaf({3}, 32);
  Tensor cond = gt(a.detach(), scalar_tensor(0.0, {.dtype = DType::f64}));
  CHECK(cond.dtype() == DType::b8);
  std::vector<double> va = a.to_double_vector(), vb = b.to_double_vector(), expected;
  std::vector<bool> vc = cond.to_vector<bool>();
  for (size_t i = 0; i < 6; ++i) expected.push_back(vc[i] ? va[i] : vb[i % 3]);
  check_close(where(cond, a, b), expected, 0.0);
  check_gradients([cond](const std::vector<Tensor>& in) { return where(cond, in[0], in[1]); }, {a, b});
}

TEST_CASE("elementwise ops reject mismatched shapes, dtypes and devices with the op's name") {
  Tensor a = zeros({2, 3});
  CHECK_THROWS_WITH_AS(add(a, zeros({4})), doctest::Contains("add: shapes [2, 3] and [4] cannot be broadcast"), Error);
  CHECK_THROWS_WITH_AS(mul(a, zeros({2, 3}, {.dtype = DType::f64})),
                       doctest::Contains("mul: expected one dtype but found f32[2, 3] on cpu and f64[2, 3] on cpu"), Error);
  CHECK_THROWS_WITH_AS(exp(zeros({2}, {.dtype = DType::i64})),
                       doctest::Contains("exp: expected input to be floating but found i64[2]"), Error);
  CHECK_THROWS_WITH_AS(where(a, a, a), doctest::Contains("where: expected cond to be bool"), Error);
}
