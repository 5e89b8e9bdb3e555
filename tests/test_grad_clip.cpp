// trainer/grad_clip: the global norm against a float64 loop over f64, f32, bf16 and strided
// gradients (parameters without a gradient skipped); clipping scales every gradient by torch's
// coefficient max_norm / (norm + 1e-6) only when it is below 1 and returns the pre-clip norm;
// NaN and Inf norms are returned without scaling; thread-count independence; bad max_norm.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <vector>

#include "core/parallel.h"
#include "ops/views.h"
#include "support/testing.h"
#include "trainer/grad_clip.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

Tensor param_with_grad(const Shape& shape, uint64_t seed, DType dtype, double scale = 1.0) {
  Tensor p = zeros(shape, {.dtype = dtype, .requires_grad = true});
  p.set_grad(random_tensor(shape, seed, dtype, -scale, scale));
  return p;
}

double reference_norm(const std::vector<Tensor>& params) {
  double s = 0.0;
  for (const Tensor& p : params)
    if (p.grad().defined())
      for (double g : p.grad().to_double_vector()) s += g * g;
  return std::sqrt(s);
}

}  // namespace

TEST_CASE("global_grad_norm matches a float64 loop over mixed dtypes and layouts") {
  for (DType dtype : {DType::f64, DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    std::vector<Tensor> params = {param_with_grad({17, 9}, 1, dtype), param_with_grad({5}, 2, dtype, 3.0),
                                  zeros({4}, {.dtype = dtype, .requires_grad = true}),  // no gradient
                                  param_with_grad({1}, 3, dtype)};
    // A strided gradient (a transposed view) is read through its strides.
    Tensor base = random_tensor({6, 4}, 4, dtype);
    Tensor strided = zeros({4, 6}, {.dtype = dtype, .requires_grad = true});
    strided.set_grad(transpose(base, 0, 1));
    params.push_back(strided);
    const double expected = reference_norm(params);
    CHECK(std::abs(global_grad_norm(params) - expected) <= 1e-12 * expected);
  }
  CHECK(global_grad_norm({zeros({3}, {.requires_grad = true})}) == 0.0);
  CHECK(global_grad_norm({}) == 0.0);
}

TEST_CASE("clip_grad_norm scales by max_norm / (norm + 1e-6) only above the bound") {
  std::vector<Tensor> params = {param_with_grad({8, 3}, 11, DType::f64), param_with_grad({7}, 12, DType::f64, 2.0)};
  std::vector<std::vector<double>> before;
  for (const Tensor& p : params) before.push_back(p.grad().to_double_vector());
  const double norm = reference_norm(params);
  REQUIRE(norm > 1.0);

  // Below the bound: nothing changes, not even by rounding.
  CHECK(std::abs(clip_grad_norm(params, 2.0 * norm) - norm) <= 1e-12 * norm);
  for (size_t k = 0; k < params.size(); ++k) CHECK(params[k].grad().to_double_vector() == before[k]);

  // Above: every element scaled by torch's coefficient; the new norm is max_norm (less 1e-6's share).
  const double max_norm = 0.5;
  const double returned = clip_grad_norm(params, max_norm);
  CHECK(std::abs(returned - norm) <= 1e-12 * norm);
  const double coefficient = max_norm / (norm + 1e-6);
  for (size_t k = 0; k < params.size(); ++k) {
    std::vector<double> after = params[k].grad().to_double_vector();
    for (size_t i = 0; i < after.size(); ++i) CHECK(std::abs(after[i] - before[k][i] * coefficient) <= 1e-15);
  }
  CHECK(std::abs(global_grad_norm(params) - max_norm * norm / (norm + 1e-6)) <= 1e-12);
}

TEST_CASE("clip_grad_norm scales f32 and bf16 gradients with an f32 coefficient") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    std::vector<Tensor> params = {param_with_grad({40}, 21, dtype, 4.0)};
    const std::vector<double> before = params[0].grad().to_double_vector();
    const double norm = clip_grad_norm(params, 1.0);
    const float coefficient = float(1.0 / (norm + 1e-6));
    std::vector<double> after = params[0].grad().to_double_vector();
    for (size_t i = 0; i < after.size(); ++i) {
      const float scaled = float(before[i]) * coefficient;
      const double expected = dtype == DType::bf16 ? double(float(BFloat16(scaled))) : double(scaled);
      CHECK(after[i] == expected);
    }
  }
}

TEST_CASE("clip_grad_norm returns a non-finite norm without scaling") {
  for (double bad : {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    CAPTURE(bad);
    std::vector<Tensor> params = {param_with_grad({5}, 31, DType::f32, 10.0), param_with_grad({3}, 32, DType::f32)};
    Tensor g = params[1].grad();
    std::vector<float> values = g.to_vector<float>();
    values[1] = float(bad);
    params[1].set_grad(from_vector(values, {3}));
    const std::vector<double> first = params[0].grad().to_double_vector();
    const double norm = clip_grad_norm(params, 1.0);
    CHECK_FALSE(std::isfinite(norm));
    if (std::isnan(bad)) CHECK(std::isnan(norm));
    else CHECK(norm == std::numeric_limits<double>::infinity());
    CHECK(params[0].grad().to_double_vector() == first);
  }
}

TEST_CASE("global_grad_norm does not depend on the thread count") {
  const int threads = num_threads();
  std::vector<Tensor> params = {param_with_grad({1000, 301}, 41, DType::f32), param_with_grad({70001}, 42, DType::f32)};
  set_num_threads(1);
  const double one = global_grad_norm(params);
  set_num_threads(4);
  const double many = global_grad_norm(params);
  set_num_threads(threads);
  CHECK(one == many);
  CHECK(std::abs(one - reference_norm(params)) <= 1e-12 * one);
}

TEST_CASE("clip_grad_norm rejects a bound that is not positive") {
  std::vector<Tensor> params = {param_with_grad({2}, 51, DType::f32)};
  CHECK_THROWS_WITH_AS(clip_grad_norm(params, 0.0), doctest::Contains("clip_grad_norm: max_norm must be positive, found 0"),
                       Error);
  CHECK_THROWS_WITH_AS(clip_grad_norm(params, -1.0), doctest::Contains("found -1"), Error);
}
