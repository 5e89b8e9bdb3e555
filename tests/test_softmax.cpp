#include <cmath>
#include <limits>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/softmax.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 softmax (or log_softmax) of x's values along dim, in row-major order.
std::vector<double> softmax_reference(const Tensor& x, int64_t dim, bool log) {
  const std::vector<double> v = x.to_double_vector();
  const Shape& shape = x.shape();
  if (dim < 0) dim += x.dim();
  int64_t outer = 1, len = shape[size_t(dim)], inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= shape[size_t(d)];
  for (int64_t d = dim + 1; d < x.dim(); ++d) inner *= shape[size_t(d)];
  std::vector<double> out(v.size());
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < inner; ++i) {
      auto at = [&](int64_t k) { return size_t((o * len + k) * inner + i); };
      double m = -INFINITY, s = 0.0;
      for (int64_t k = 0; k < len; ++k) m = std::max(m, v[at(k)]);
      for (int64_t k = 0; k < len; ++k) s += std::exp(v[at(k)] - m);
      for (int64_t k = 0; k < len; ++k)
        out[at(k)] = log ? v[at(k)] - m - std::log(s) : std::exp(v[at(k)] - m) / s;
    }
  return out;
}

}  // namespace

TEST_CASE("softmax and log_softmax match a float64 loop along every dim") {
  Tensor x = random_tensor({2, 3, 5}, 1, DType::f64, -3.0, 3.0);
  for (int64_t dim : {0, 1, 2, -1, -2, -3}) {
    CAPTURE(dim);
    check_close(softmax(x, dim), softmax_reference(x, dim, false), 1e-12);
    check_close(log_softmax(x, dim), softmax_reference(x, dim, true), 1e-12);
  }
  Tensor t = transposed_leaf({4, 6}, 2).detach();  // non-contiguous input
  for (int64_t dim : {0, 1}) {
    CAPTURE(dim);
    check_close(softmax(t, dim), softmax_reference(t, dim, false), 1e-12);
    check_close(log_softmax(t, dim), softmax_reference(t, dim, true), 1e-12);
  }
  Tensor v = random_tensor({7}, 3, DType::f64, -3.0, 3.0);
  check_close(softmax(v), softmax_reference(v, 0, false), 1e-12);
  // Rows sum to one and exp(log_softmax) is the softmax.
  check_close(sum(softmax(x, 1), {1}), std::vector<double>(10, 1.0), 1e-12);
  check_close(exp(log_softmax(x, 1)), softmax(x, 1).to_double_vector(), 1e-12);
}

TEST_CASE("softmax and log_softmax pass gradcheck") {
  for (bool log : {false, true}) {
    CAPTURE(log);
    auto op = [log](const Tensor& x, int64_t dim) { return log ? log_softmax(x, dim) : softmax(x, dim); };
    Tensor x2 = random_leaf({3, 5}, 11, -2.0, 2.0);
    Tensor x3 = random_leaf({2, 3, 4}, 12, -2.0, 2.0);
    Tensor t = transposed_leaf({4, 5}, 13);
    for (int64_t dim : {-1, 0})
      check_gradients([&, dim](const std::vector<Tensor>& in) { return op(in[0], dim); }, {x2});
    for (int64_t dim : {0, 1, 2})
      check_gradients([&, dim](const std::vector<Tensor>& in) { return op(in[0], dim); }, {x3});
    for (int64_t dim : {0, 1})
      check_gradients([&, dim](const std::vector<Tensor>& in) { return op(in[0], dim); }, {t});
    // A non-contiguous output gradient (through transpose) and an expanded one (through sum).
    check_gradients([&](const std::vector<Tensor>& in) { return transpose(op(in[0], 1), 0, 2); }, {x3});
    check_gradients([&](const std::vector<Tensor>& in) { return sum(mul(op(in[0], -1), in[0])); }, {x2});
  }
}

TEST_CASE("softmax stays finite and shift-invariant for logits near 1e4") {
  for (DType dtype : {DType::f64, DType::f32}) {
    CAPTURE(dtype);
    Tensor small = random_tensor({3, 6}, 21, dtype, -1.0, 1.0);
    Tensor large = add(small, 1e4);
    Tensor shifted = sub(large, 1e4);  // exact: both operands lie within a factor of two
    for (bool log : {false, true}) {
      Tensor a = log ? log_softmax(large) : softmax(large);
      Tensor b = log ? log_softmax(shifted) : softmax(shifted);
      for (double value : a.to_double_vector()) CHECK(std::isfinite(value));
      check_close(a, b.to_double_vector(), dtype == DType::f64 ? 1e-12 : 1e-6);
    }
    Tensor very_negative = sub(small, 1e4);
    for (double value : log_softmax(very_negative).to_double_vector()) CHECK(std::isfinite(value));
  }
}

TEST_CASE("softmax in f32 and bf16 matches the float64 reference") {
  Tensor x64 = random_tensor({5, 33}, 31, DType::f64, -4.0, 4.0);
  for (auto [dtype, tol] : {std::pair{DType::f32, 1e-6}, std::pair{DType::bf16, 4e-3}}) {
    CAPTURE(dtype);
    Tensor x = to_dtype(x64, dtype);
    Tensor rounded = to_dtype(x, DType::f64);  // the reference sees the same rounded inputs
    for (int64_t dim : {0, 1}) {
      CHECK(softmax(x, dim).dtype() == dtype);
      check_close(softmax(x, dim), softmax_reference(rounded, dim, false), tol);
      check_close(log_softmax(x, dim), softmax_reference(rounded, dim, true), tol);
    }
  }
}

TEST_CASE("softmax rejects bad inputs with the op's name and shape") {
  CHECK_THROWS_WITH_AS(softmax(zeros({2, 3}, {.dtype = DType::i64})),
                       doctest::Contains("softmax: expected input to be floating but found i64[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(log_softmax(zeros({2, 3}), 2),
                       doctest::Contains("log_softmax: dim 2 is out of range for input f32[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(softmax(zeros({2, 3}), -3),
                       doctest::Contains("softmax: dim -3 is out of range for input f32[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(softmax(scalar_tensor(1.0)),
                       doctest::Contains("softmax: expected an input with at least one dimension but found f32[]"),
                       Error);
}
