#pragma once
// Test helpers: seeded random inputs, gradcheck assertions and float64 reference comparison.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/engine.h"
#include "autograd/gradcheck.h"
#include "core/random.h"
#include "core/tensor.h"

namespace scanline::testing {

// f64 CPU tensor with values uniform in [low, high), from a fixed seed; a leaf requiring grad.
inline Tensor random_leaf(const Shape& shape, uint64_t seed, double low = -1.0, double high = 1.0) {
  Generator gen(seed);
  return rand(shape, gen, {.dtype = DType::f64, .requires_grad = true}, low, high);
}

inline Tensor random_tensor(const Shape& shape, uint64_t seed, DType dtype = DType::f64,
                            double low = -1.0, double high = 1.0) {
  Generator gen(seed);
  return rand(shape, gen, {.dtype = dtype}, low, high);
}

// A non-contiguous leaf with the given (logical) shape: the transpose of a random tensor whose
// last two dims are swapped.
inline Tensor transposed_leaf(const Shape& shape, uint64_t seed) {
  Shape swapped = shape;
  std::swap(swapped[swapped.size() - 1], swapped[swapped.size() - 2]);
  Tensor base = random_tensor(swapped, seed);
  Shape strides = base.strides();
  std::swap(strides[strides.size() - 1], strides[strides.size() - 2]);
  Tensor view = as_strided(base, shape, strides, 0);
  view.set_requires_grad(true);
  return view;
}

// The largest over parameter tensors of ||a - b|| / ||b|| (Euclidean norms): how far two runs'
// parameters (each tensor flattened to doubles) drifted apart.
inline double worst_relative(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t k = 0; k < a.size(); ++k) {
    REQUIRE(a[k].size() == b[k].size());
    double diff = 0, norm = 1e-300;
    for (size_t i = 0; i < a[k].size(); ++i) diff += (a[k][i] - b[k][i]) * (a[k][i] - b[k][i]), norm += b[k][i] * b[k][i];
    worst = std::max(worst, std::sqrt(diff / norm));
  }
  return worst;
}

// Asserts that fn's analytic gradients match finite differences.
inline void check_gradients(const autograd::GradcheckFn& fn, const std::vector<Tensor>& inputs,
                            autograd::GradcheckOptions options = {}) {
  autograd::GradcheckResult result = autograd::gradcheck(fn, inputs, options);
  INFO(result.message);
  CHECK(result.ok);
}

// Asserts every element of actual is within tol (absolute, plus relative to |expected|).
inline void check_close(const Tensor& actual, const std::vector<double>& expected, double tol) {
  std::vector<double> a = actual.to_double_vector();
  REQUIRE(a.size() == expected.size());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("element ", i, ": ", a[i], " vs expected ", expected[i]);
    CHECK(std::abs(a[i] - expected[i]) <= tol * (1.0 + std::abs(expected[i])));
  }
}

}  // namespace scanline::testing
