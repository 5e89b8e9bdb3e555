#include <algorithm>
#include <cmath>
#include <string>

#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 per-row losses (0 for ignored rows) of logits read as (rows, C).
std::vector<double> row_losses(const Tensor& logits, const std::vector<int64_t>& targets, int64_t ignore_index) {
  const std::vector<double> v = logits.to_double_vector();
  const int64_t classes = logits.size(-1);
  std::vector<double> out;
  for (size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] == ignore_index) {
      out.push_back(0.0);
      continue;
    }
    double m = -INFINITY, s = 0.0;
    for (int64_t c = 0; c < classes; ++c) m = std::max(m, v[r * size_t(classes) + size_t(c)]);
    for (int64_t c = 0; c < classes; ++c) s += std::exp(v[r * size_t(classes) + size_t(c)] - m);
    out.push_back(m + std::log(s) - v[r * size_t(classes) + size_t(targets[r])]);
  }
  return out;
}

double total_of(const std::vector<double>& losses) {
  double t = 0.0;
  for (double l : losses) t += l;
  return t;
}

Tensor targets_of(const std::vector<int64_t>& values, const Shape& shape, DType dtype = DType::i64) {
  return contiguous_copy(from_vector<int64_t>(values, shape), dtype, Device::cpu());
}

// Naive float64 d loss / d logits: coef[r] * (softmax - onehot) per row (coef of one element for
// every row, or one a row), 0 for ignored rows; logits read as (rows, C).
std::vector<double> row_gradients(const Tensor& logits, const std::vector<int64_t>& targets, int64_t ignore_index,
                                  const std::vector<double>& coef) {
  const std::vector<double> v = logits.to_double_vector();
  const size_t classes = size_t(logits.size(-1));
  std::vector<double> out(v.size(), 0.0);
  for (size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] == ignore_index) continue;
    const double* row = v.data() + r * classes;
    double m = -INFINITY, s = 0.0;
    for (size_t c = 0; c < classes; ++c) m = std::max(m, row[c]);
    for (size_t c = 0; c < classes; ++c) s += std::exp(row[c] - m);
    const double k = coef[coef.size() == 1 ? 0 : r];
    for (size_t c = 0; c < classes; ++c)
      out[r * classes + c] = k * (std::exp(row[c] - m) / s - (int64_t(c) == targets[r] ? 1.0 : 0.0));
  }
  return out;
}

// Every element: |actual - expected| <= rtol * |expected| (expected 0 must be exactly 0).
void check_relative_each(const std::vector<double>& actual, const std::vector<double>& expected, double rtol,
                         const std::string& what) {
  REQUIRE(actual.size() == expected.size());
  int64_t bad = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (std::abs(actual[i] - expected[i]) <= rtol * std::abs(expected[i])) continue;
    if (bad++ >= 5) continue;  // the first few are reported
    INFO(what, " element ", i, ": ", actual[i], " vs expected ", expected[i]);
    CHECK(std::abs(actual[i] - expected[i]) <= rtol * std::abs(expected[i]));
  }
  INFO(what, ": ", bad, " of ", actual.size(), " elements off");
  CHECK(bad == 0);
}

// The values of t rounded to `dtype`, as doubles.
std::vector<double> rounded_to(const std::vector<double>& values, DType dtype) {
  return contiguous_copy(from_vector<double>(values, {int64_t(values.size())}), dtype, Device::cpu())
      .to_double_vector();
}

const char* reduction_name(Reduction r) {
  return r == Reduction::none ? "none" : (r == Reduction::mean ? "mean" : "sum");
}

// A fresh CPU leaf holding t's values (its own storage, so its gradient is its own).
Tensor cpu_leaf_of(const Tensor& t) {
  Tensor out = contiguous_copy(t, t.dtype(), Device::cpu());
  out.set_requires_grad(true);
  return out;
}

}  // namespace

TEST_CASE("cross_entropy matches a float64 loop for every reduction, with ignored targets") {
  Tensor logits = random_tensor({6, 5}, 1, DType::f64, -3.0, 3.0);
  std::vector<int64_t> t{0, 4, -100, 2, 1, 3};
  Tensor targets = targets_of(t, {6});
  std::vector<double> losses = row_losses(logits, t, -100);
  check_close(cross_entropy(logits, targets, -100, Reduction::none), losses, 1e-12);
  check_close(cross_entropy(logits, targets, -100, Reduction::sum), {total_of(losses)}, 1e-12);
  check_close(cross_entropy(logits, targets), {total_of(losses) / 5.0}, 1e-12);
  CHECK(cross_entropy(logits, targets).dim() == 0);

  // A custom ignore_index inside the class range (padding token 0) and i32 targets.
  Tensor t32 = targets_of(t, {6}, DType::i32);
  std::vector<int64_t> t_pad{0, 4, 0, 2, 1, 3};
  check_close(cross_entropy(logits, targets_of(t_pad, {6}, DType::i32), 0),
              {total_of(row_losses(logits, t_pad, 0)) / 4.0}, 1e-12);
  check_close(cross_entropy(logits, t32, -100, Reduction::none), losses, 1e-12);
}

TEST_CASE("cross_entropy accepts (B, L, C) logits with (B, L) targets") {
  Tensor logits = random_tensor({2, 3, 4}, 2, DType::f64, -3.0, 3.0);
  std::vector<int64_t> t{3, 0, -100, 1, 2, 2};
  Tensor targets = targets_of(t, {2, 3});
  std::vector<double> losses = row_losses(logits, t, -100);
  Tensor none = cross_entropy(logits, targets, -100, Reduction::none);
  CHECK(none.shape() == Shape{2, 3});
  check_close(none, losses, 1e-12);
  check_close(cross_entropy(logits, targets), {total_of(losses) / 5.0}, 1e-12);
  // A single row: logits (C), targets of shape [].
  Tensor row = random_tensor({4}, 3, DType::f64, -3.0, 3.0);
  check_close(cross_entropy(row, targets_of({2}, {})), row_losses(row, {2}, -100), 1e-12);
}

TEST_CASE("cross_entropy passes gradcheck") {
  Tensor logits = random_leaf({6, 5}, 11, -2.0, 2.0);
  Tensor targets = targets_of({0, 4, -100, 2, 1, 3}, {6});
  for (Reduction reduction : {Reduction::mean, Reduction::sum, Reduction::none}) {
    CAPTURE(int(reduction));
    auto fn = [&, reduction](const std::vector<Tensor>& in) { return cross_entropy(in[0], targets, -100, reduction); };
    check_gradients(fn, {logits});
  }
  Tensor logits3 = random_leaf({2, 3, 4}, 12, -2.0, 2.0);
  Tensor targets3 = targets_of({3, 0, -100, 1, 2, 2}, {2, 3}, DType::i32);
  check_gradients([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], targets3); }, {logits3});
  check_gradients([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], targets3, -100, Reduction::none); },
                  {logits3});
  Tensor transposed = transposed_leaf({5, 4}, 13);  // non-contiguous logits
  Tensor targets5 = targets_of({1, 3, 0, 2, 3}, {5});
  check_gradients([&](const std::vector<Tensor>& in) { return cross_entropy(in[0], targets5); }, {transposed});
  // Gradient through an upstream op: the loss of a scaled input.
  check_gradients([&](const std::vector<Tensor>& in) { return cross_entropy(mul(in[0], in[0]), targets5, 1); },
                  {transposed});
}

TEST_CASE("cross_entropy with every target ignored gives 0 and zero gradients") {
  Tensor logits = random_leaf({3, 4}, 21);
  Tensor targets = targets_of({-100, -100, -100}, {3});
  Tensor loss = cross_entropy(logits, targets);
  CHECK(loss.item<double>() == 0.0);
  backward(loss);
  REQUIRE(logits.grad().defined());
  for (double g : logits.grad().to_double_vector()) CHECK(g == 0.0);
  CHECK(cross_entropy(logits, targets, -100, Reduction::sum).item<double>() == 0.0);
}

TEST_CASE("cross_entropy stays finite for logits near 1e4 and equals the shifted loss") {
  for (DType dtype : {DType::f64, DType::f32}) {
    CAPTURE(dtype);
    Tensor small = random_tensor({4, 7}, 31, dtype, -1.0, 1.0);
    Tensor large = add(small, 1e4), shifted = sub(large, 1e4);
    Tensor targets = targets_of({6, 0, 3, 2}, {4});
    Tensor a = cross_entropy(large, targets, -100, Reduction::none);
    Tensor b = cross_entropy(shifted, targets, -100, Reduction::none);
    for (double v : a.to_double_vector()) CHECK(std::isfinite(v));
    // x - max is exact in float for both, and the loss is formed in double from lse and x[t].
    check_close(a, b.to_double_vector(), dtype == DType::f64 ? 1e-12 : 1e-6);
  }
}

TEST_CASE("cross_entropy in f32 and bf16 matches the float64 reference") {
  Tensor logits64 = random_tensor({8, 50}, 41, DType::f64, -4.0, 4.0);
  std::vector<int64_t> t{0, 49, 7, -100, 25, 3, 3, 11};
  Tensor targets = targets_of(t, {8});
  for (auto [dtype, tol] : {std::pair{DType::f32, 1e-6}, std::pair{DType::bf16, 4e-3}}) {
    CAPTURE(dtype);
    Tensor logits = to_dtype(logits64, dtype);
    std::vector<double> losses = row_losses(to_dtype(logits, DType::f64), t, -100);
    Tensor none = cross_entropy(logits, targets, -100, Reduction::none);
    CHECK(none.dtype() == dtype);
    check_close(none, losses, tol);
    check_close(cross_entropy(logits, targets), {total_of(losses) / 7.0}, tol);
  }
}

TEST_CASE("cross_entropy rejects bad inputs with the op's name, values and shapes") {
  Tensor logits = zeros({4, 5});
  CHECK_THROWS_WITH_AS(cross_entropy(logits, targets_of({0, 1, 2}, {3})),
                       doctest::Contains("cross_entropy: expected targets of shape [4] to match logits f32[4, 5] "
                                         "on cpu without its last (class) dim, but found i64[3]"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({2, 3, 5}), targets_of({0, 1, 2, 3, 4, 0}, {6})),
                       doctest::Contains("expected targets of shape [2, 3] to match logits f32[2, 3, 5]"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, zeros({4})),
                       doctest::Contains("cross_entropy: expected targets to be class indices (i64 or i32) but found f32[4]"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(logits, targets_of({0, 1, 5, 2}, {4})),
                       doctest::Contains("cross_entropy: target 5 at position [2] of targets [4] is out of range for 5 classes"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({2, 2, 5}), targets_of({0, 1, 2, -1}, {2, 2}, DType::i32)),
                       doctest::Contains("cross_entropy: target -1 at position [1, 1] of targets [2, 2] is out of range for 5 classes"),
                       Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({4, 5}, {.dtype = DType::i64}), targets_of({0, 1, 2, 3}, {4})),
                       doctest::Contains("cross_entropy: expected logits to be floating but found i64[4, 5]"), Error);
  CHECK_THROWS_WITH_AS(cross_entropy(zeros({4, 0}), targets_of({-100, -100, -100, -100}, {4})),
                       doctest::Contains("cross_entropy: expected at least one class but found logits f32[4, 0]"), Error);
}

TEST_CASE("cross_entropy of bf16 and f16 logits with an f32 loss: the f64 total in f32, the gradient in the logits' dtype") {
  // Logits (2, 3, 50) and (5, 1000) with ignored rows; the reference is float64 on the same
  // (rounded) logit values.
  struct Case {
    Shape shape;
    std::vector<int64_t> targets;
  };
  std::vector<int64_t> wide_t{999, 0, -100, 512, 3};
  const Case cases[] = {{{2, 3, 50}, {0, 49, -100, 25, 3, 3}}, {{5, 1000}, wide_t}};
  uint64_t seed = 51;
  for (const Case& c : cases) {
    for (DType dtype : {DType::bf16, DType::f16}) {
      const Tensor values = to_dtype(random_tensor(c.shape, seed++, DType::f64, -4.0, 4.0), dtype);
      const Tensor reference_logits = to_dtype(values, DType::f64);
      const Shape lead(c.shape.begin(), c.shape.end() - 1);
      const Tensor targets = targets_of(c.targets, lead);
      const std::vector<double> losses = row_losses(reference_logits, c.targets, -100);
      const double count = double(std::count_if(c.targets.begin(), c.targets.end(), [](int64_t t) { return t != -100; }));
      for (Reduction reduction : {Reduction::none, Reduction::mean, Reduction::sum}) {
        const std::string shape = shape_str(c.shape);
        CAPTURE(shape);
        CAPTURE(dtype);
        CAPTURE(reduction_name(reduction));
        Tensor logits = contiguous_copy(values, dtype, Device::cpu());
        logits.set_requires_grad(true);
        Tensor loss = cross_entropy(logits, targets, -100, reduction, DType::f32);
        REQUIRE(loss.dtype() == DType::f32);
        // Upstream gradients that are not bf16 values (an f32 grad must not be rounded to bf16).
        Tensor upstream;
        std::vector<double> coef;
        std::vector<double> expected_loss;
        switch (reduction) {
          case Reduction::none: {
            CHECK(loss.shape() == lead);
            expected_loss = losses;
            upstream = random_tensor(lead, seed++, DType::f32, 0.5, 1.5);
            coef = upstream.to_double_vector();
            break;
          }
          case Reduction::sum:
            CHECK(loss.dim() == 0);
            expected_loss = {total_of(losses)};
            upstream = full({}, 1.0 + 0.99 / 256.0, {.dtype = DType::f32});
            coef = upstream.to_double_vector();
            break;
          case Reduction::mean:
            CHECK(loss.dim() == 0);
            expected_loss = {total_of(losses) / count};
            upstream = full({}, 0.7 + 1.0 / 1024.0, {.dtype = DType::f32});
            coef = {upstream.item<double>() / count};
            break;
        }
        // Within f32 rounding of the float64 value; a bf16 or f16 rounding would be ~1e-3 off.
        check_relative_each(loss.to_double_vector(), expected_loss, 1e-6, "loss");
        backward(loss, upstream);
        REQUIRE(logits.grad().defined());
        CHECK(logits.grad().dtype() == dtype);
        CHECK(logits.grad().shape() == c.shape);
        // The reference gradient rounded to the logits' dtype, to within one unit in the last place
        // (the kernel's f32 math can round the other way near a tie): < 1e-2 relative.
        const std::vector<double> expected = rounded_to(row_gradients(reference_logits, c.targets, -100, coef), dtype);
        check_relative_each(logits.grad().to_double_vector(), expected, 1e-2, "gradient");
      }
    }
  }
}

TEST_CASE("cross_entropy with an f32 loss of f32 logits is the default op, bit for bit") {
  Tensor values = random_tensor({7, 33}, 61, DType::f32, -5.0, 5.0);
  const Tensor targets = targets_of({0, 32, -100, 5, 5, 17, 1}, {7});
  for (Reduction reduction : {Reduction::none, Reduction::mean, Reduction::sum}) {
    CAPTURE(reduction_name(reduction));
    Tensor a = cpu_leaf_of(values), b = cpu_leaf_of(values);
    Tensor la = cross_entropy(a, targets, -100, reduction), lb = cross_entropy(b, targets, -100, reduction, DType::f32);
    CHECK(la.to_double_vector() == lb.to_double_vector());
    Tensor g = random_tensor(la.shape(), 62, DType::f32, 0.5, 1.5);
    backward(la, g);
    backward(lb, g);
    CHECK(a.grad().to_double_vector() == b.grad().to_double_vector());
  }
}

TEST_CASE("cross_entropy with a loss dtype other than the logits' passes gradcheck and reads any grad dtype") {
  Tensor logits = random_leaf({6, 5}, 71, -2.0, 2.0);
  Tensor targets = targets_of({0, 4, -100, 2, 1, 3}, {6});
  for (Reduction reduction : {Reduction::mean, Reduction::sum, Reduction::none}) {
    CAPTURE(reduction_name(reduction));
    auto fn = [&, reduction](const std::vector<Tensor>& in) {
      return cross_entropy(in[0], targets, -100, reduction, DType::f64);
    };
    check_gradients(fn, {logits});
    // f64 logits, f32 loss: the f32 value of the f64 loss; the gradient is f64 from an f32 grad.
    Tensor a = cpu_leaf_of(logits), b = cpu_leaf_of(logits);
    Tensor l64 = cross_entropy(a, targets, -100, reduction), l32 = cross_entropy(b, targets, -100, reduction, DType::f32);
    CHECK(l32.dtype() == DType::f32);
    CHECK(l32.to_double_vector() == rounded_to(l64.to_double_vector(), DType::f32));
    Tensor g32 = random_tensor(l32.shape(), 72, DType::f32, 0.5, 1.5);
    backward(l64, to_dtype(g32, DType::f64));
    backward(l32, g32);
    CHECK(b.grad().dtype() == DType::f64);
    CHECK(b.grad().to_double_vector() == a.grad().to_double_vector());
  }
  // bf16 logits with every target ignored and an f32 loss: 0 and zero bf16 gradients.
  Tensor ignored = to_dtype(random_tensor({3, 4}, 73), DType::bf16);
  ignored.set_requires_grad(true);
  Tensor loss = cross_entropy(ignored, targets_of({-100, -100, -100}, {3}), -100, Reduction::mean, DType::f32);
  CHECK(loss.dtype() == DType::f32);
  CHECK(loss.item<double>() == 0.0);
  backward(loss);
  CHECK(ignored.grad().dtype() == DType::bf16);
  for (double g : ignored.grad().to_double_vector()) CHECK(g == 0.0);
}

TEST_CASE("cross_entropy rejects a loss dtype that is not floating, naming it") {
  Tensor logits = zeros({4, 5}, {.dtype = DType::bf16});
  Tensor targets = targets_of({0, 1, 2, 3}, {4});
  for (DType bad : {DType::i64, DType::i32, DType::b8}) {
    CAPTURE(bad);
    const std::string expected =
        std::string("cross_entropy: expected loss_dtype to be floating (f64, f32, bf16 or f16) but found ") +
        dtype_name(bad);
    CHECK_THROWS_WITH_AS(cross_entropy(logits, targets, -100, Reduction::mean, bad),
                         doctest::Contains(expected.c_str()), Error);
  }
}
