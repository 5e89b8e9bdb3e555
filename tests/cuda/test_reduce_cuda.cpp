// CUDA reductions (cuda/reduce.cu) against the CPU path on the same values: sum and amax over
// every dim set with and without keepdim, max with first-index argmax, forward and backward,
// f32 and bf16, contiguous and strided inputs, the rows / columns / general kernels and their
// two-pass splits, integer and bool sums, NaN, empty and one-element cases. A sum's error is
// judged against the sum of |terms| of its element (computed by the CPU path on |x|).
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

using ViewFn = std::function<Tensor(const Tensor&)>;
const ViewFn kSame = [](const Tensor& t) { return t; };

enum class Kind { sum, amax };

Tensor reduce_with(Kind kind, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return kind == Kind::sum ? sum(x, dims, keepdim) : amax(x, dims, keepdim);
}

// |t| in f64 on the CPU.
Tensor abs_f64(const Tensor& t) {
  std::vector<double> v = t.to_double_vector();
  for (double& x : v) x = std::abs(x);
  return from_vector(v, t.shape());
}

// Every element: |actual - expected| <= rtol * max(magnitude, tiny); NaN fails unless both are NaN.
void check_bounded(const Tensor& actual, const Tensor& expected, const Tensor& magnitude, double rtol,
                   const std::string& what) {
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector(),
                            m = magnitude.to_double_vector();
  int64_t bad = 0, first_bad = -1;
  for (size_t i = 0; i < a.size(); ++i) {
    const bool ok = (std::isnan(a[i]) && std::isnan(e[i])) ||
                    std::abs(a[i] - e[i]) <= rtol * std::max(m[i], 1e-30);
    if (!ok && first_bad < 0) first_bad = int64_t(i);
    bad += ok ? 0 : 1;
  }
  INFO(what, ": ", bad, " of ", a.size(), " elements off",
       first_bad >= 0 ? "; first at " + std::to_string(first_bad) + ": " + std::to_string(a[size_t(first_bad)]) +
                            " vs " + std::to_string(e[size_t(first_bad)])
                      : std::string());
  CHECK(bad == 0);
}

std::string dims_str(const std::vector<int64_t>& dims) {
  std::string s = "{";
  for (int64_t d : dims) s += std::to_string(d) + ",";
  return s + "}";
}

// Runs the reduction on view(base) on both devices, then backward with one random upstream
// gradient, and compares the outputs and the base's gradients.
void check_reduction(Kind kind, const Tensor& base, const ViewFn& view, const std::vector<int64_t>& dims,
                     bool keepdim, const std::string& label) {
  const std::string what = label + (kind == Kind::sum ? " sum " : " amax ") + dims_str(dims) +
                           (keepdim ? " keepdim" : "");
  CAPTURE(what);
  const double tol = tolerance_for(base.dtype());
  Tensor bc = cpu_leaf(base), bg = on_gpu(base, true);
  Tensor yc = reduce_with(kind, view(bc), dims, keepdim);
  Tensor yg = reduce_with(kind, view(bg), dims, keepdim);
  REQUIRE(yg.device().is_cuda());
  REQUIRE(yg.shape() == yc.shape());
  REQUIRE(yg.dtype() == yc.dtype());
  if (kind == Kind::sum) {
    Tensor magnitude;
    {
      NoGradGuard no_grad;
      magnitude = sum(view(abs_f64(base)), dims, keepdim);
    }
    check_bounded(yg, yc, magnitude, tol, what + " forward");
  } else {
    check_relative(yg, yc, tol, 1e-30, what + " forward");  // a max is one of the inputs: exact
  }
  Tensor g = random_cpu(yc.shape(), 977, base.dtype(), 0.5, 1.5);
  backward(yc, g);
  backward(yg, on_gpu(g));
  REQUIRE(bg.grad().defined());
  check_relative(bg.grad(), bc.grad(), tol, 1.0, what + " backward");
}

// Every subset of {0, .., n-1} (the empty one means "all dims" to the op).
std::vector<std::vector<int64_t>> dim_sets(int64_t n) {
  std::vector<std::vector<int64_t>> sets;
  for (int64_t mask = 0; mask < (int64_t(1) << n); ++mask) {
    std::vector<int64_t> dims;
    for (int64_t d = 0; d < n; ++d)
      if (mask & (int64_t(1) << d)) dims.push_back(d);
    sets.push_back(dims);
  }
  return sets;
}

void check_every_dim_set(const Tensor& base, const ViewFn& view, int64_t ndim, const std::string& label) {
  for (const auto& dims : dim_sets(ndim))
    for (bool keepdim : {false, true})
      for (Kind kind : {Kind::sum, Kind::amax}) check_reduction(kind, base, view, dims, keepdim, label);
}

void check_max(const Tensor& base, const ViewFn& view, int64_t dim, bool keepdim, const std::string& label) {
  const std::string what = label + " max dim " + std::to_string(dim) + (keepdim ? " keepdim" : "");
  CAPTURE(what);
  Tensor bc = cpu_leaf(base), bg = on_gpu(base, true);
  auto [vc, ic] = max(view(bc), dim, keepdim);
  auto [vg, ig] = max(view(bg), dim, keepdim);
  REQUIRE(vg.shape() == vc.shape());
  REQUIRE(ig.shape() == ic.shape());
  CHECK(ig.dtype() == DType::i64);
  check_relative(vg, vc, 0.0, 1e-30, what + " values");
  CHECK(ig.to_vector<int64_t>() == ic.to_vector<int64_t>());
  Tensor g = random_cpu(vc.shape(), 978, base.dtype(), 0.5, 1.5);
  backward(vc, g);
  backward(vg, on_gpu(g));
  check_relative(bg.grad(), bc.grad(), tolerance_for(base.dtype()), 1.0, what + " backward");
}

// Values from a few levels, so maxima tie and the first index must win.
Tensor tied_values(const Shape& shape, DType dtype, uint64_t seed) {
  Tensor r = random_cpu(shape, seed, DType::f64, 0.0, 4.0);
  std::vector<double> v = r.to_double_vector();
  for (double& x : v) x = std::floor(x) - 1.5;
  return contiguous_copy(from_vector(v, shape), dtype, Device::cpu());
}

}  // namespace

TEST_CASE("cuda sum and amax match the CPU over every dim set, keepdim or not (f32, bf16)") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    check_every_dim_set(random_cpu({7, 13, 33}, 1, dtype), kSame, 3, "contiguous");
    check_every_dim_set(random_cpu({3, 5, 2, 17}, 2, dtype), kSame, 4, "4-d");
  }
}

TEST_CASE("cuda sum and amax read strided inputs: transposed, permuted, sliced, expanded") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    check_every_dim_set(random_cpu({33, 13, 7}, 3, dtype), [](const Tensor& t) { return transpose(t, 0, 2); }, 3,
                        "transposed");
    check_every_dim_set(random_cpu({6, 9, 40}, 4, dtype), [](const Tensor& t) { return permute(t, {2, 0, 1}); }, 3,
                        "permuted");
    check_every_dim_set(random_cpu({9, 40, 5}, 5, dtype), [](const Tensor& t) { return slice(t, 1, 3, 37, 2); }, 3,
                        "sliced");
    check_every_dim_set(random_cpu({1, 7, 1}, 6, dtype), [](const Tensor& t) { return expand(t, {5, 7, 3}); }, 3,
                        "expanded");
    // Rows that are not 16-byte aligned (odd row length, offset view) for the vector path.
    check_every_dim_set(random_cpu({5, 67}, 7, dtype), [](const Tensor& t) { return slice(t, 1, 1, 66); }, 2,
                        "unaligned rows");
  }
}

TEST_CASE("cuda reductions of one element, scalars and empty dims") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    check_every_dim_set(random_cpu({1}, 8, dtype), kSame, 1, "one element");
    check_every_dim_set(random_cpu({1, 1, 1}, 9, dtype), kSame, 3, "one element 3-d");
    check_every_dim_set(random_cpu({4, 1, 6}, 10, dtype), kSame, 3, "size-1 middle");
    check_reduction(Kind::sum, random_cpu({}, 11, dtype), kSame, {}, false, "scalar");
    check_reduction(Kind::amax, random_cpu({}, 11, dtype), kSame, {}, false, "scalar");
  }
  // A sum over an empty dim is zeros; amax and max over one are errors, as on the CPU.
  Tensor empty_gpu = on_gpu(random_cpu({3, 0, 2}, 12));
  Tensor s = sum(empty_gpu, {1});
  CHECK(s.shape() == Shape{3, 2});
  CHECK(s.to_vector<float>() == std::vector<float>(6, 0.0f));
  CHECK(sum(empty_gpu, {0}).shape() == Shape{0, 2});
  CHECK_THROWS_AS(amax(empty_gpu, {1}), Error);
  CHECK_THROWS_AS(max(empty_gpu, 1), Error);
}

TEST_CASE("cuda full reductions of large odd sizes take the two-pass split") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    const Tensor x = random_cpu({1000003}, 13, dtype);
    check_reduction(Kind::sum, x, kSame, {}, false, "1000003");
    check_reduction(Kind::amax, x, kSame, {}, false, "1000003");
    // Misaligned start: a slice beginning at element 1.
    check_reduction(Kind::sum, x, [](const Tensor& t) { return slice(t, 0, 1, 1000003); }, {}, false, "offset");
    check_reduction(Kind::sum, random_cpu({3, 333337}, 14, dtype), kSame, {1}, false, "few long rows");
    check_reduction(Kind::sum, random_cpu({3, 333337}, 14, dtype), kSame, {}, true, "all, keepdim");
    check_reduction(Kind::amax, random_cpu({3, 333337}, 14, dtype), kSame, {1}, true, "few long rows");
  }
  // An i64 full sum of 4M elements is exact.
  std::vector<int64_t> ints(4 << 20);
  for (size_t i = 0; i < ints.size(); ++i) ints[i] = int64_t(i) - 1000000;
  Tensor xi = on_gpu(from_vector(ints, {int64_t(ints.size())}));
  int64_t expected = 0;
  for (int64_t v : ints) expected += v;
  CHECK(sum(xi).item<int64_t>() == expected);
}

TEST_CASE("cuda column reductions (leading dims reduced) split long columns over blocks") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    // Bias-gradient shape: many rows, a few hundred columns; vector and scalar column widths.
    check_reduction(Kind::sum, random_cpu({8191, 96}, 15, dtype), kSame, {0}, false, "(8191, 96)");
    check_reduction(Kind::sum, random_cpu({4099, 3, 37}, 16, dtype), kSame, {0}, true, "(4099, 3, 37)");
    check_reduction(Kind::amax, random_cpu({4099, 3, 37}, 16, dtype), kSame, {0}, false, "(4099, 3, 37)");
    check_reduction(Kind::sum, random_cpu({65537, 2}, 17, dtype), kSame, {0}, false, "two columns");
    check_reduction(Kind::sum, random_cpu({5, 20001, 64}, 18, dtype), kSame, {1}, false, "middle dim");
    check_reduction(Kind::sum, random_cpu({5, 20001, 64}, 18, dtype), kSame, {0, 1}, false, "leading dims");
  }
}

TEST_CASE("cuda max returns the first index of the maximum along each dim") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    for (bool keepdim : {false, true}) {
      for (int64_t d = 0; d < 3; ++d) {
        check_max(tied_values({6, 35, 9}, dtype, 19), kSame, d, keepdim, "ties");
        check_max(random_cpu({6, 35, 9}, 20, dtype), kSame, d, keepdim, "random");
        check_max(random_cpu({9, 35, 6}, 21, dtype), [](const Tensor& t) { return transpose(t, 0, 2); }, d, keepdim,
                  "transposed");
      }
    }
    check_max(tied_values({1000003}, dtype, 22), kSame, 0, false, "long ties");
    check_max(tied_values({20001, 40}, dtype, 23), kSame, 0, false, "long columns");
    check_max(random_cpu({1}, 24, dtype), kSame, 0, false, "one element");
    check_max(random_cpu({3, 1}, 25, dtype), kSame, 1, true, "size-1 dim");
  }
}

TEST_CASE("cuda reductions propagate NaN like the CPU") {
  std::vector<float> v(3000, 0.25f);
  v[17] = 2.0f;
  v[1500] = std::numeric_limits<float>::quiet_NaN();
  v[2500] = std::numeric_limits<float>::quiet_NaN();
  Tensor x = from_vector(v, {3000});
  Tensor xg = on_gpu(x);
  CHECK(std::isnan(amax(xg).item<float>()));
  CHECK(std::isnan(sum(xg).item<float>()));
  auto [value, index] = max(xg, 0);
  CHECK(std::isnan(value.item<float>()));
  CHECK(index.item<int64_t>() == max(x, 0).second.item<int64_t>());
  CHECK(index.item<int64_t>() == 1500);
  // Per row: only the rows holding a NaN become NaN.
  Tensor x2 = on_gpu(from_vector(v, {30, 100}));
  check_relative(amax(x2, {1}), amax(from_vector(v, {30, 100}), {1}), 0.0, 1e-30, "row amax with NaN");
  CHECK(max(x2, 1).second.to_vector<int64_t>() == max(from_vector(v, {30, 100}), 1).second.to_vector<int64_t>());
}

TEST_CASE("cuda integer and bool sums are exact, in the input's dtype") {
  std::vector<int64_t> values(7 * 301);
  for (size_t i = 0; i < values.size(); ++i) values[i] = int64_t((i * 7919) % 2001) - 1000;
  for (DType dtype : {DType::i64, DType::i32}) {
    CAPTURE(dtype);
    Tensor x = contiguous_copy(from_vector(values, {7, 301}), dtype, Device::cpu());
    Tensor xg = on_gpu(x);
    for (const auto& dims : dim_sets(2)) {
      CAPTURE(dims_str(dims));
      Tensor sc = sum(x, dims), sg = sum(xg, dims);
      CHECK(sg.dtype() == dtype);
      CHECK(sg.to_vector<int64_t>() == sc.to_vector<int64_t>());
      CHECK(amax(xg, dims).to_vector<int64_t>() == amax(x, dims).to_vector<int64_t>());
    }
    CHECK(max(xg, 1).second.to_vector<int64_t>() == max(x, 1).second.to_vector<int64_t>());
  }
  Tensor mask = contiguous_copy(from_vector(values, {7, 301}), DType::b8, Device::cpu());
  CHECK(sum(on_gpu(mask), {1}).to_vector<int64_t>() == sum(mask, {1}).to_vector<int64_t>());
  CHECK(amax(on_gpu(mask), {0}).to_vector<int64_t>() == amax(mask, {0}).to_vector<int64_t>());
}

TEST_CASE("cuda mean and sum_to follow the CUDA sum") {
  const Tensor x = random_cpu({64, 3, 48}, 26);
  Tensor xc = cpu_leaf(x), xg = on_gpu(x, true);
  check_relative(mean(xg, {0, 2}), mean(xc, {0, 2}), 1e-5, 1.0, "mean");
  check_relative(sum_to(xg, {3, 1}), sum_to(xc, {3, 1}), 1e-5, 64.0 * 48.0, "sum_to");
}

TEST_CASE("cuda reductions are deterministic: repeated runs are bit-identical") {
  const Tensor x = on_gpu(random_cpu({3000017}, 27));
  const std::vector<float> first = sum(x).to_vector<float>();
  for (int i = 0; i < 3; ++i) CHECK(sum(x).to_vector<float>() == first);
  const Tensor y = on_gpu(random_cpu({30001, 33}, 28));
  const std::vector<float> columns = sum(y, {0}).to_vector<float>();
  CHECK(sum(y, {0}).to_vector<float>() == columns);
}
