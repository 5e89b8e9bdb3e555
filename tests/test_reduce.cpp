// Reductions against naive float64 loops, on contiguous and strided inputs; their gradients
// (gradcheck, plus exact values where maxima tie); sum_to; integer sums; error messages.
#include <cmath>
#include <cstring>
#include <limits>

#include "core/parallel.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

enum class Ref { sum, mean, amax };

// Naive reduction of x's row-major values over dims (empty = all): visits every input element
// and folds it into the output whose index has the reduced coordinates set to 0.
std::vector<double> reduce_reference(const Tensor& x, std::vector<int64_t> dims, Ref op) {
  const Shape& shape = x.shape();
  const int64_t nd = x.dim();
  if (dims.empty())
    for (int64_t d = 0; d < nd; ++d) dims.push_back(d);
  std::vector<bool> reduced(size_t(nd), false);
  int64_t count = 1;
  for (int64_t d : dims) {
    d = d < 0 ? d + nd : d;
    reduced[size_t(d)] = true;
    count *= shape[size_t(d)];
  }
  Shape kept = shape;
  for (int64_t d = 0; d < nd; ++d)
    if (reduced[size_t(d)]) kept[size_t(d)] = 1;
  std::vector<double> values = x.to_vector<double>();
  double init = op == Ref::amax ? -std::numeric_limits<double>::infinity() : 0.0;
  std::vector<double> out(size_t(numel_of(kept)), init);
  for (int64_t i = 0; i < int64_t(values.size()); ++i) {
    int64_t rem = i, o = 0, stride = 1;
    for (int64_t d = nd - 1; d >= 0; --d) {
      int64_t c = rem % shape[size_t(d)];
      rem /= shape[size_t(d)];
      o += (reduced[size_t(d)] ? 0 : c) * stride;
      stride *= kept[size_t(d)];
    }
    double& acc = out[size_t(o)];
    acc = op == Ref::amax ? std::max(acc, values[size_t(i)]) : acc + values[size_t(i)];
  }
  if (op == Ref::mean)
    for (double& v : out) v /= double(count);
  return out;
}

// The shape a reduction returns.
Shape reduced_shape(const Shape& shape, std::vector<int64_t> dims, bool keepdim) {
  const int64_t nd = int64_t(shape.size());
  if (dims.empty())
    for (int64_t d = 0; d < nd; ++d) dims.push_back(d);
  Shape out;
  for (int64_t d = 0; d < nd; ++d) {
    bool r = false;
    for (int64_t e : dims) r = r || (e < 0 ? e + nd : e) == d;
    if (!r) out.push_back(shape[size_t(d)]);
    else if (keepdim) out.push_back(1);
  }
  return out;
}

using DimsList = std::vector<std::vector<int64_t>>;
const DimsList kDims{{}, {0}, {1}, {2}, {-1}, {0, 2}, {2, 0}, {1, 2}, {0, 1, 2}};

void check_all_reductions(const Tensor& x, const DimsList& dims_list) {
  for (const auto& dims : dims_list) {
    for (bool keepdim : {false, true}) {
      CAPTURE(shape_str(dims));
      CAPTURE(keepdim);
      CAPTURE(describe(x));
      Shape want_shape = reduced_shape(x.shape(), dims, keepdim);
      Tensor s = sum(x, dims, keepdim), m = mean(x, dims, keepdim), a = amax(x, dims, keepdim);
      CHECK(s.shape() == want_shape);
      CHECK(m.shape() == want_shape);
      CHECK(a.shape() == want_shape);
      check_close(s, reduce_reference(x, dims, Ref::sum), 1e-12);
      check_close(m, reduce_reference(x, dims, Ref::mean), 1e-12);
      check_close(a, reduce_reference(x, dims, Ref::amax), 0.0);
    }
  }
}

}  // namespace

TEST_CASE("sum, mean and amax match float64 loops over every dim set") {
  check_all_reductions(random_tensor({2, 3, 4}, 1), kDims);
  check_all_reductions(random_tensor({7}, 2), {{}, {0}, {-1}});
  check_all_reductions(random_tensor({1, 5, 1}, 3), kDims);
  Tensor s = scalar_tensor(2.5, {.dtype = DType::f64});
  CHECK(sum(s).item<double>() == 2.5);
  CHECK(amax(s).item<double>() == 2.5);
  CHECK(sum(s).dim() == 0);
}

TEST_CASE("reductions read strided inputs through their strides") {
  check_all_reductions(transposed_leaf({3, 5, 4}, 4).detach(), kDims);
  check_all_reductions(slice(random_tensor({4, 6, 5}, 5), 1, 1, 6, 2), kDims);  // stepped, offset
  check_all_reductions(expand(random_tensor({3, 1}, 6), {2, 3, 4}), kDims);     // zero strides
  check_all_reductions(permute(random_tensor({2, 3, 4}, 7), {2, 0, 1}), kDims);
}

TEST_CASE("narrow dtypes accumulate in double and round once") {
  Tensor x = random_tensor({300, 1000}, 8, DType::f32, 0.0, 1e-3);
  std::vector<float> v = x.to_vector<float>();
  double all = 0.0;
  for (float e : v) all += double(e);
  CHECK(sum(x).item<float>() == float(all));
  std::vector<float> rows = sum(x, {1}).to_vector<float>();
  for (int64_t r = 0; r < 300; ++r) {
    double acc = 0.0;
    for (int64_t c = 0; c < 1000; ++c) acc += double(v[size_t(r * 1000 + c)]);
    if (rows[size_t(r)] != float(acc)) FAIL_CHECK("row ", r, ": ", rows[size_t(r)], " vs ", float(acc));
  }
  Tensor b = to_dtype(x, DType::bf16);
  CHECK(sum(b).dtype() == DType::bf16);
  CHECK(amax(b).item<float>() == float(BFloat16(float(amax(x).item<float>()))));
}

TEST_CASE("reductions give the same bits on any thread count") {
  struct Guard {
    int saved = num_threads();
    ~Guard() { set_num_threads(saved); }
  } guard;
  Tensor x = random_tensor({64, 300, 17}, 9, DType::f32);
  std::vector<std::vector<float>> results[2];
  int threads[2] = {1, 3};
  for (int k = 0; k < 2; ++k) {
    set_num_threads(threads[k]);
    for (const auto& dims : DimsList{{}, {0}, {1}, {2}, {0, 2}}) {
      results[k].push_back(sum(x, dims).to_vector<float>());
      results[k].push_back(amax(x, dims).to_vector<float>());
    }
    results[k].push_back(to_dtype(argmax(x, 1), DType::f32).to_vector<float>());
  }
  for (size_t i = 0; i < results[0].size(); ++i) CHECK(results[0][i] == results[1][i]);
}

TEST_CASE("sum, mean, amax and max pass gradcheck") {
  using In = const std::vector<Tensor>&;
  for (const Tensor& x : {random_leaf({2, 3, 4}, 11), transposed_leaf({2, 4, 3}, 12)}) {
    for (const auto& dims : kDims) {
      for (bool keepdim : {false, true}) {
        CAPTURE(describe(x));
        CAPTURE(shape_str(dims));
        CAPTURE(keepdim);
        check_gradients([&](In v) { return sum(v[0], dims, keepdim); }, {x});
        check_gradients([&](In v) { return mean(v[0], dims, keepdim); }, {x});
        check_gradients([&](In v) { return amax(v[0], dims, keepdim); }, {x});  // random: no ties
      }
    }
    for (int64_t d : {0, 1, 2, -1}) {
      for (bool keepdim : {false, true}) {
        CAPTURE(d);
        check_gradients([&](In v) { return max(v[0], d, keepdim).first; }, {x});
      }
    }
  }
  // A reduction inside a longer expression, the result feeding back into the input.
  Tensor y = random_leaf({3, 4}, 13);
  check_gradients([](In v) { return div(v[0], sum(exp(v[0]), {1}, true)); }, {y});
  check_gradients([](In v) { return sub(v[0], amax(v[0], {0}, true)); }, {y});
}

TEST_CASE("amax shares the gradient equally among tied maxima") {
  Tensor x = from_vector<double>({1, 3, 3, 2, 2, 2, 5, 4, 0}, {3, 3});
  x.set_requires_grad(true);
  Tensor a = amax(x, {1});
  CHECK(a.to_vector<double>() == std::vector<double>{3, 2, 5});
  backward(a, from_vector<double>({1, 6, 7}, {3}));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 0.5, 0.5, 2, 2, 2, 7, 0, 0});
  Tensor z = from_vector<double>({3, 1, 3, 3}, {4});
  z.set_requires_grad(true);
  backward(amax(z));
  CHECK(z.grad().to_vector<double>() == std::vector<double>{1.0 / 3.0, 0, 1.0 / 3.0, 1.0 / 3.0});
}

TEST_CASE("max along a dim returns the first maximal index and sends it the whole gradient") {
  Tensor x = from_vector<double>({1, 3, 3, 2, 2, 2, 5, 4, 0}, {3, 3});
  x.set_requires_grad(true);
  auto [values, indices] = max(x, 1);
  CHECK(values.to_vector<double>() == std::vector<double>{3, 2, 5});
  CHECK(indices.dtype() == DType::i64);
  CHECK(indices.to_vector<int64_t>() == std::vector<int64_t>{1, 0, 0});
  backward(values, from_vector<double>({1, 6, 7}, {3}));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 1, 0, 6, 0, 0, 7, 0, 0});
  auto [v0, i0] = max(x, 0, true);
  CHECK(v0.shape() == Shape{1, 3});
  CHECK(i0.to_vector<int64_t>() == std::vector<int64_t>{2, 2, 0});
  // A NaN is the maximum (and stops the search), in max and amax alike.
  double nan = std::numeric_limits<double>::quiet_NaN();
  Tensor n = from_vector<double>({1, nan, 3, nan}, {4});
  CHECK(max(n, 0).second.item<int64_t>() == 1);
  CHECK(std::isnan(max(n, 0).first.item<double>()));
  CHECK(std::isnan(amax(n).item<double>()));
}

TEST_CASE("argmax matches a naive loop on strided inputs") {
  Tensor x = transposed_leaf({4, 5, 6}, 21).detach();
  std::vector<double> v = x.to_vector<double>();
  for (int64_t d : {0, 1, 2, -1}) {
    CAPTURE(d);
    int64_t dd = d < 0 ? d + 3 : d;
    Tensor idx = argmax(x, d);
    CHECK_FALSE(idx.requires_grad());
    CHECK(argmax(x, d, true).dim() == 3);
    std::vector<int64_t> got = idx.to_vector<int64_t>();
    Shape s{4, 5, 6};
    size_t o = 0;
    for (int64_t a = 0; a < (dd == 0 ? 1 : 4); ++a)
      for (int64_t b = 0; b < (dd == 1 ? 1 : 5); ++b)
        for (int64_t c = 0; c < (dd == 2 ? 1 : 6); ++c, ++o) {
          int64_t best = 0;
          double best_v = -1e300;
          for (int64_t k = 0; k < s[size_t(dd)]; ++k) {
            int64_t i[3] = {a, b, c};
            i[dd] = k;
            double e = v[size_t(i[0] * 30 + i[1] * 6 + i[2])];
            if (e > best_v) best_v = e, best = k;
          }
          CHECK(got[o] == best);
        }
  }
}

TEST_CASE("sum_to reduces broadcast dimensions back") {
  Tensor x = random_tensor({2, 3, 4}, 31);
  CHECK(sum_to(x, {2, 3, 4}).is_same(x));
  check_close(sum_to(x, {3, 1}), reduce_reference(x, {0, 2}, Ref::sum), 1e-12);
  check_close(sum_to(x, {4}), reduce_reference(x, {0, 1}, Ref::sum), 1e-12);
  check_close(sum_to(x, {1, 1}), reduce_reference(x, {}, Ref::sum), 1e-12);
  check_close(sum_to(x, {2, 1, 4}), reduce_reference(x, {1}, Ref::sum), 1e-12);
  CHECK(sum_to(x, {3, 1}).shape() == Shape{3, 1});
  CHECK(sum_to(x, {}).dim() == 0);
  check_close(sum_to(x, {}), reduce_reference(x, {}, Ref::sum), 1e-12);
  CHECK_THROWS_WITH_AS(sum_to(x, {1, 2, 3, 4}), doctest::Contains("sum_to: cannot reduce f64[2, 3, 4] on cpu to [1, 2, 3, 4]"), Error);
  // Shapes that are not a broadcast of the target are errors, never a silent reshape.
  CHECK_THROWS_WITH_AS(sum_to(x, {6, 4}), doctest::Contains("sum_to: cannot reduce f64[2, 3, 4] on cpu to [6, 4]"), Error);
  CHECK_THROWS_WITH_AS(sum_to(x, {5}), doctest::Contains("sum_to: cannot reduce f64[2, 3, 4] on cpu to [5]"), Error);
  CHECK_THROWS_WITH_AS(sum_to(random_tensor({2, 6}, 33), {3, 4}), doctest::Contains("sum_to: cannot reduce f64[2, 6] on cpu to [3, 4]"), Error);
  using In = const std::vector<Tensor>&;
  check_gradients([](In v) { return sum_to(v[0], {3, 1}); }, {random_leaf({2, 3, 4}, 32)});
}

TEST_CASE("integer sums are exact and keep the dtype") {
  std::vector<int64_t> big{int64_t(1) << 53, 1, 1, -(int64_t(1) << 40), 7, 9};
  Tensor x = from_vector<int64_t>(big, {2, 3});
  CHECK(sum(x).dtype() == DType::i64);
  CHECK(sum(x).item<int64_t>() == (int64_t(1) << 53) + 2 - (int64_t(1) << 40) + 16);
  CHECK(sum(x, {1}).to_vector<int64_t>() == std::vector<int64_t>{(int64_t(1) << 53) + 2, 16 - (int64_t(1) << 40)});
  CHECK(amax(x, {0}).to_vector<int64_t>() == std::vector<int64_t>{int64_t(1) << 53, 7, 9});
  Tensor y = from_vector<int32_t>({2000000000, 2000000000, -1, 5}, {2, 2});
  CHECK(sum(y, {0}).dtype() == DType::i32);
  CHECK(sum(y, {1}).to_vector<int32_t>() == std::vector<int32_t>{int32_t(4000000000ll - (1ll << 32)), 4});
  CHECK(sum(y, {0}).to_vector<int32_t>() == std::vector<int32_t>{1999999999, 2000000005});
  CHECK(argmax(y, 1).to_vector<int64_t>() == std::vector<int64_t>{0, 1});
  CHECK_FALSE(sum(x).requires_grad());
}

TEST_CASE("empty reductions") {
  Tensor e = zeros({0, 3}, {.dtype = DType::f64});
  CHECK(sum(e, {0}).to_vector<double>() == std::vector<double>{0, 0, 0});
  CHECK(sum(e, {1}).shape() == Shape{0});
  CHECK(sum(e).item<double>() == 0.0);
  CHECK(amax(e, {1}).shape() == Shape{0});  // nothing to reduce per output: fine
  CHECK_THROWS_WITH_AS(amax(e, {0}), doctest::Contains("amax: cannot reduce over an empty dimension of f64[0, 3] on cpu"), Error);
  CHECK_THROWS_WITH_AS(mean(e, {0}), doctest::Contains("mean: reducing over an empty dimension of f64[0, 3] on cpu"), Error);
  CHECK_THROWS_WITH_AS(max(e, 0), doctest::Contains("max: cannot reduce over an empty dimension of f64[0, 3] on cpu"), Error);
}

TEST_CASE("reductions reject bad dims and dtypes naming the op") {
  Tensor x = zeros({2, 3, 4});
  CHECK_THROWS_WITH_AS(sum(x, {3}), doctest::Contains("sum: dimension 3 is out of range for a tensor of 3 dimensions"), Error);
  CHECK_THROWS_WITH_AS(sum(x, {-4}), doctest::Contains("sum: dimension -4 is out of range"), Error);
  CHECK_THROWS_WITH_AS(mean(x, {5}), doctest::Contains("mean: dimension 5 is out of range"), Error);
  CHECK_THROWS_WITH_AS(amax(x, {0, 7}), doctest::Contains("amax: dimension 7 is out of range"), Error);
  CHECK_THROWS_WITH_AS(sum(x, {0, -3}), doctest::Contains("sum: a dimension is listed twice in the reduction dims"), Error);
  CHECK_THROWS_WITH_AS(amax(x, {1, 1}), doctest::Contains("amax: a dimension is listed twice"), Error);
  CHECK_THROWS_WITH_AS(max(x, 3), doctest::Contains("max: dimension 3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(argmax(x, -4), doctest::Contains("max: dimension -4 is out of range"), Error);
  CHECK_THROWS_WITH_AS(mean(zeros({2}, {.dtype = DType::i64})),
                       doctest::Contains("mean: expected input to be floating but found i64[2] on cpu"), Error);
  CHECK_THROWS_WITH_AS(sum(Tensor()), doctest::Contains("sum: input is an undefined tensor"), Error);
}
