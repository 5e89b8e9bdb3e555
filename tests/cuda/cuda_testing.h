#pragma once
// Helpers for CUDA-vs-CPU tests: move inputs to the GPU, compare results with dtype-fitting
// relative tolerances. Fresh CUDA memory is poisoned with NaN bytes (tests/cuda/main.cpp), so an
// element a kernel failed to write shows up as NaN against a finite reference.
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "core/random.h"
#include "core/tensor.h"
#include "ops/views.h"

namespace scanline::testing {

inline Device gpu() { return Device::cuda(0); }

// Random CPU tensor (uniform in [low, high)) in `dtype`; never zeros.
inline Tensor random_cpu(const Shape& shape, uint64_t seed, DType dtype = DType::f32, double low = -1.0,
                         double high = 1.0) {
  Generator gen(seed);
  return rand(shape, gen, {.dtype = dtype}, low, high);
}

// A copy of t on the GPU as a fresh leaf (requires_grad as asked).
inline Tensor on_gpu(const Tensor& t, bool requires_grad = false) {
  Tensor out = contiguous_copy(t, t.dtype(), gpu());
  if (requires_grad) out.set_requires_grad(true);
  return out;
}

inline Tensor cpu_leaf(const Tensor& t, bool requires_grad = true) {
  Tensor out = contiguous_copy(t, t.dtype(), Device::cpu());
  if (requires_grad) out.set_requires_grad(true);
  return out;
}

// Relative tolerance that fits a dtype: fp32 1e-5, bf16/f16 1e-2, f64 1e-12.
inline double tolerance_for(DType dtype) {
  switch (dtype) {
    case DType::f64: return 1e-12;
    case DType::f32: return 1e-5;
    default: return 1e-2;
  }
}

// The largest |element| of t (0 for an empty tensor): the scale tolerances of sums are taken against.
inline double max_abs(const Tensor& t) {
  double m = 0.0;
  for (double v : t.to_double_vector()) m = std::max(m, std::abs(v));
  return m;
}

// Every element: |actual - expected| <= rtol * max(|expected|, floor). `floor` is the magnitude
// below which errors are judged absolutely (use the scale of the terms for sums and differences).
inline void check_relative(const Tensor& actual, const Tensor& expected, double rtol, double floor = 1.0,
                           const std::string& what = "") {
  REQUIRE(actual.shape() == expected.shape());
  std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  int64_t bad = 0, first_bad = -1;
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    double err = std::abs(a[i] - e[i]);
    double allowed = rtol * std::max(std::abs(e[i]), floor);
    bool ok = a[i] == e[i] || (std::isnan(e[i]) && std::isnan(a[i])) || err <= allowed;  // == covers infinities
    if (!ok) {
      if (first_bad < 0) first_bad = int64_t(i);
      ++bad;
    }
    if (std::isfinite(err)) worst = std::max(worst, err / std::max(std::abs(e[i]), floor));
  }
  INFO(what, ": ", bad, " of ", a.size(), " elements off; worst relative error ", worst,
       first_bad >= 0 ? " first at " + std::to_string(first_bad) + ": " + std::to_string(a[size_t(first_bad)]) +
                            " vs " + std::to_string(e[size_t(first_bad)])
                      : std::string());
  CHECK(bad == 0);
}

}  // namespace scanline::testing
