#include <cmath>

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
