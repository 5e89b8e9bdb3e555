// View ops: values against the base element each position should read, storage sharing,
// gradients in float64 (single ops and chains) and the messages bad arguments produce.
#include <functional>
#include <numeric>

#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

using Index = std::vector<int64_t>;

// f64 tensor whose element at flat position i holds i: a value names its base position.
Tensor iota(const Shape& shape) {
  std::vector<double> v(size_t(numel_of(shape)));
  std::iota(v.begin(), v.end(), 0.0);
  return from_vector<double>(v, shape);
}

// Checks y's values in row-major order against base_index(position in y).
void expect_values(const Tensor& y, const std::function<int64_t(const Index&)>& base_index) {
  std::vector<double> v = y.to_vector<double>();
  Index idx(size_t(y.dim()), 0);
  for (size_t n = 0; n < v.size(); ++n) {
    int64_t want = base_index(idx);
    if (v[n] != double(want)) {
      FAIL_CHECK("element ", n, " of ", describe(y), " is ", v[n], ", expected ", want);
      return;
    }
    for (int64_t d = y.dim() - 1; d >= 0; --d) {
      if (++idx[size_t(d)] < y.shape()[size_t(d)]) break;
      idx[size_t(d)] = 0;
    }
  }
}

// A view shares base's storage and starts `offset` elements into it.
void expect_shares(const Tensor& view, const Tensor& base, int64_t offset) {
  CHECK(view.impl()->storage == base.impl()->storage);
  CHECK(static_cast<char*>(view.raw_data()) ==
        static_cast<char*>(base.raw_data()) + offset * int64_t(dtype_size(base.dtype())));
}

}  // namespace

TEST_CASE("view and reshape keep row-major order and share storage when they can") {
  Tensor x = iota({2, 3, 4});
  for (Shape s : {Shape{6, 4}, Shape{-1, 4}, Shape{2, -1}, Shape{24}, Shape{-1}, Shape{4, 1, 3, 2},
                  Shape{1, 24, 1}}) {
    CAPTURE(shape_str(s));
    Tensor v = view(x, s);
    Tensor r = reshape(x, s);
    CHECK(v.numel() == 24);
    expect_shares(v, x, 0);
    expect_shares(r, x, 0);
    CHECK(v.to_vector<double>() == x.to_vector<double>());
  }
  CHECK(view(x, {-1, 4}).shape() == Shape{6, 4});
  CHECK(view(x, {4, -1, 3}).shape() == Shape{4, 2, 3});
  CHECK(reshape(iota({1}), {}).dim() == 0);  // to a scalar and back
  CHECK(reshape(reshape(iota({1}), {}), {-1}).shape() == Shape{1});

  // A transposed tensor cannot be flattened in place: view names the problem, reshape copies.
  Tensor t = transpose(iota({3, 4}), 0, 1);
  CHECK_THROWS_WITH_AS(view(t, {12}),
                       doctest::Contains("view: f64[4, 3] on cpu with strides [1, 4] cannot be viewed as [12] without a copy; use reshape"),
                       Error);
  Tensor flat = reshape(t, {12});
  CHECK(flat.impl()->storage != t.impl()->storage);
  expect_values(flat, [](const Index& i) { return (i[0] % 3) * 4 + i[0] / 3; });
  // Splitting a strided dimension is still a view.
  Tensor split = view(t, {2, 2, 3});
  expect_shares(split, t, 0);
  expect_values(split, [](const Index& i) { return i[2] * 4 + i[0] * 2 + i[1]; });
  // So is merging the dims of a stepped slice whose rows stay evenly spaced.
  Tensor stepped = slice(iota({3, 4}), 1, 0, 4, 2);  // strides [4, 2]
  Tensor merged = view(stepped, {6});
  expect_shares(merged, stepped, 0);
  expect_values(merged, [](const Index& i) { return 2 * i[0]; });
}

TEST_CASE("view agrees with the row-major order of every permuted and sliced layout") {
  // Brute force: whenever view succeeds, it must read the same values as a copy would.
  Tensor base = iota({4, 6, 2});
  std::vector<std::vector<int64_t>> perms{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  int64_t viewed = 0;
  for (const auto& p : perms) {
    for (Tensor x : {permute(base, p), slice(permute(base, p), 0, 0, 4, 2), select(permute(base, p), 1, 1),
                     narrow(permute(base, p), 2, 0, 1)}) {
      std::vector<double> expected = contiguous(x).to_vector<double>();
      const int64_t n = x.numel();
      // Every 4-d target shape with n elements (size-1 dims included).
      for (int64_t a = 1; a <= n; ++a)
        for (int64_t b = 1; a * b <= n; ++b)
          for (int64_t c = 1; a * b * c <= n; ++c) {
            if (n % (a * b * c) != 0) continue;
            Shape target{a, b, c, n / (a * b * c)};
            Tensor v;
            try {
              v = view(x, target);
            } catch (const Error&) {
              continue;
            }
            ++viewed;
            CAPTURE(describe(x));
            CAPTURE(shape_str(x.strides()));
            CAPTURE(shape_str(target));
            CHECK(v.impl()->storage == base.impl()->storage);
            CHECK(v.to_vector<double>() == expected);
          }
    }
  }
  CHECK(viewed > 100);
}

TEST_CASE("permute, transpose, narrow, slice, select") {
  Tensor x = iota({2, 3, 4});  // x[a, b, c] = 12a + 4b + c
  Tensor p = permute(x, {2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  expect_shares(p, x, 0);
  expect_values(p, [](const Index& i) { return 12 * i[1] + 4 * i[2] + i[0]; });
  expect_values(permute(x, {-1, 0, -2}), [](const Index& i) { return 12 * i[1] + 4 * i[2] + i[0]; });

  Tensor t = transpose(x, 0, -1);
  CHECK(t.shape() == Shape{4, 3, 2});
  expect_values(t, [](const Index& i) { return 12 * i[2] + 4 * i[1] + i[0]; });
  CHECK(transpose(x, 1, 1).to_vector<double>() == x.to_vector<double>());

  Tensor n = narrow(x, 1, 1, 2);
  CHECK(n.shape() == Shape{2, 2, 4});
  expect_shares(n, x, 4);
  expect_values(n, [](const Index& i) { return 12 * i[0] + 4 * (i[1] + 1) + i[2]; });
  CHECK(narrow(x, -1, 3, 1).shape() == Shape{2, 3, 1});
  CHECK(narrow(x, 2, 4, 0).numel() == 0);

  Tensor s = slice(x, 2, 1, 4, 2);  // c in {1, 3}
  CHECK(s.shape() == Shape{2, 3, 2});
  expect_shares(s, x, 1);
  expect_values(s, [](const Index& i) { return 12 * i[0] + 4 * i[1] + 1 + 2 * i[2]; });
  expect_values(slice(x, -1, -3, -1), [](const Index& i) { return 12 * i[0] + 4 * i[1] + 1 + i[2]; });
  CHECK(slice(x, 1, 0, 100, 2).shape() == Shape{2, 2, 4});  // end clamps to the size
  CHECK(slice(x, 1, 2, 1).shape() == Shape{2, 0, 4});       // end before start: empty
  expect_values(slice(x, 1, 0, 3, 5), [](const Index& i) { return 12 * i[0] + i[2]; });

  Tensor sel = select(x, 1, -1);
  CHECK(sel.shape() == Shape{2, 4});
  expect_shares(sel, x, 8);
  expect_values(sel, [](const Index& i) { return 12 * i[0] + 8 + i[1]; });
  expect_values(select(select(x, 0, 1), 1, 0), [](const Index& i) { return 12 + 4 * i[0]; });
  CHECK(select(iota({3}), 0, 2).dim() == 0);
  CHECK(select(iota({3}), 0, 2).item<double>() == 2.0);
  // A view of a view points into the same storage at the summed offset.
  expect_shares(select(narrow(x, 2, 1, 3), 0, 1), x, 13);
}

TEST_CASE("unsqueeze, squeeze, expand, flatten") {
  Tensor x = iota({2, 3});
  CHECK(unsqueeze(x, 0).shape() == Shape{1, 2, 3});
  CHECK(unsqueeze(x, 1).shape() == Shape{2, 1, 3});
  CHECK(unsqueeze(x, 2).shape() == Shape{2, 3, 1});
  CHECK(unsqueeze(x, -1).shape() == Shape{2, 3, 1});
  CHECK(unsqueeze(x, -3).shape() == Shape{1, 2, 3});
  expect_shares(unsqueeze(x, 1), x, 0);
  CHECK(unsqueeze(x, 1).to_vector<double>() == x.to_vector<double>());
  Tensor u = iota({2, 1, 3, 1});
  CHECK(squeeze(u, 1).shape() == Shape{2, 3, 1});
  CHECK(squeeze(u, -1).shape() == Shape{2, 1, 3});
  CHECK(squeeze(u, 0).shape() == Shape{2, 1, 3, 1});  // not size 1: unchanged
  CHECK(squeeze(u).shape() == Shape{2, 3});
  expect_shares(squeeze(u), u, 0);
  // squeeze of a non-contiguous tensor with size-1 dims is still a view.
  Tensor tu = transpose(u, 0, 2);  // [3, 1, 2, 1]
  Tensor sq = squeeze(tu);
  expect_shares(sq, u, 0);
  expect_values(sq, [](const Index& i) { return 3 * i[1] + i[0]; });

  Tensor col = iota({3, 1});
  Tensor e = expand(col, {2, 3, 4});
  CHECK(e.shape() == Shape{2, 3, 4});
  CHECK(e.strides() == Shape{0, 1, 0});
  expect_shares(e, col, 0);
  expect_values(e, [](const Index& i) { return i[1]; });
  CHECK(expand(col, {-1, 5}).shape() == Shape{3, 5});
  CHECK(expand(col, {3, 1}).strides() == col.strides());
  expect_values(expand(slice(iota({6}), 0, 1, 6, 2), {2, 3}), [](const Index& i) { return 1 + 2 * i[1]; });

  Tensor y = iota({2, 3, 4, 5});
  CHECK(flatten(y).shape() == Shape{120});
  CHECK(flatten(y, 1).shape() == Shape{2, 60});
  CHECK(flatten(y, 1, 2).shape() == Shape{2, 12, 5});
  CHECK(flatten(y, -2, -1).shape() == Shape{2, 3, 20});
  CHECK(flatten(y, 2, 2).shape() == y.shape());
  CHECK(flatten(scalar_tensor(7.0, {.dtype = DType::f64})).shape() == Shape{1});
  expect_shares(flatten(y, 1), y, 0);
  expect_values(flatten(transpose(iota({3, 4}), 0, 1)), [](const Index& i) { return (i[0] % 3) * 4 + i[0] / 3; });
}

TEST_CASE("contiguous, clone, to_dtype") {
  Tensor x = iota({3, 4});
  CHECK(contiguous(x).is_same(x));
  Tensor t = transpose(x, 0, 1);
  Tensor c = contiguous(t);
  CHECK(c.is_contiguous());
  CHECK(c.impl()->storage != x.impl()->storage);
  expect_values(c, [](const Index& i) { return 4 * i[1] + i[0]; });
  Tensor k = clone(x);
  CHECK(k.impl()->storage != x.impl()->storage);
  CHECK(k.to_vector<double>() == x.to_vector<double>());
  fill_(k, 5.0);  // the clone owns its memory
  CHECK(x.to_vector<double>()[1] == 1.0);
  CHECK(to_dtype(x, DType::f64).is_same(x));
  Tensor f = to_dtype(t, DType::f32);
  CHECK(f.dtype() == DType::f32);
  CHECK(f.is_contiguous());
  expect_values(f, [](const Index& i) { return 4 * i[1] + i[0]; });
  Tensor i = to_dtype(t, DType::i32);
  CHECK(i.to_vector<int32_t>()[1] == 4);
  CHECK_FALSE(to_dtype(random_leaf({2}, 1), DType::i64).requires_grad());  // integers carry no grad
  CHECK(to_device(x, Device::cpu()).is_same(x));
}

TEST_CASE("every view op passes gradcheck in float64") {
  using In = const std::vector<Tensor>&;
  Tensor x = random_leaf({2, 3, 4}, 101);
  Tensor xt = transposed_leaf({2, 4, 3}, 102);  // non-contiguous input
  for (const Tensor& in : {x, xt}) {
    CAPTURE(describe(in));
    check_gradients([](In v) { return reshape(v[0], {4, -1}); }, {in});
    check_gradients([](In v) { return flatten(v[0]); }, {in});
    check_gradients([](In v) { return flatten(v[0], 1); }, {in});
    check_gradients([](In v) { return permute(v[0], {1, 2, 0}); }, {in});
    check_gradients([](In v) { return transpose(v[0], 0, 2); }, {in});
    check_gradients([](In v) { return narrow(v[0], 1, 1, 2); }, {in});
    check_gradients([](In v) { return slice(v[0], 2, 0, 3, 2); }, {in});
    check_gradients([](In v) { return slice(v[0], 0, -1, 2); }, {in});
    check_gradients([](In v) { return select(v[0], -1, 1); }, {in});
    check_gradients([](In v) { return unsqueeze(v[0], 1); }, {in});
    check_gradients([](In v) { return squeeze(unsqueeze(v[0], -1), -1); }, {in});
    check_gradients([](In v) { return squeeze(narrow(v[0], 0, 1, 1)); }, {in});
    check_gradients([](In v) { return expand(unsqueeze(v[0], 0), {3, -1, -1, -1}); }, {in});
    check_gradients([](In v) { return contiguous(v[0]); }, {in});
    check_gradients([](In v) { return clone(v[0]); }, {in});
    check_gradients([](In v) { return to_dtype(v[0], DType::f64); }, {in});
  }
  check_gradients([](In v) { return view(v[0], {6, 4}); }, {x});
  check_gradients([](In v) { return view(v[0], {2, 2, 2, 3}); }, {xt});  // splits the strided dim
  Tensor col = random_leaf({3, 1}, 103);
  check_gradients([](In v) { return expand(v[0], {2, 3, 5}); }, {col});
  check_gradients([](In v) { return expand(v[0], {3, 4}) * v[0]; }, {col});  // two paths to one leaf
}

TEST_CASE("chains of views pass gradcheck") {
  using In = const std::vector<Tensor>&;
  Tensor x = random_leaf({4, 3, 5}, 111);
  Tensor xt = transposed_leaf({4, 5, 3}, 112);
  for (const Tensor& in : {x, xt}) {
    CAPTURE(describe(in));
    check_gradients([](In v) { return slice(reshape(transpose(v[0], 0, 1), {-1, 4}), 0, 1, 15, 3); }, {in});
    check_gradients([](In v) { return select(permute(slice(v[0], 2, 1, 5, 2), {2, 0, 1}), 0, -1); }, {in});
    check_gradients([](In v) { return expand(unsqueeze(narrow(flatten(v[0], 0, 1), 0, 2, 6), 1), {-1, 2, -1}); }, {in});
    check_gradients([](In v) { return view(contiguous(transpose(v[0], 1, 2)), {2, -1}); }, {in});
    // The same leaf reached through two different views: gradients add up.
    check_gradients([](In v) { return add(select(v[0], 1, 0), narrow(select(v[0], 1, 2), 0, 0, 4)); }, {in});
  }
}

TEST_CASE("expand's gradient sums over the broadcast positions") {
  Tensor col = random_leaf({3, 1}, 121);
  Tensor g = random_tensor({2, 3, 4}, 122);
  backward(expand(col, {2, 3, 4}), g);
  std::vector<double> gv = g.to_vector<double>(), want(3, 0.0);
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 4; ++c) want[size_t(b)] += gv[size_t(12 * a + 4 * b + c)];
  check_close(col.grad(), want, 1e-15);
  // Slices scatter their gradient into zeros; to_dtype hands it back in the input's dtype.
  Tensor x = random_leaf({6}, 123);
  backward(sum(to_dtype(slice(x, 0, 1, 6, 2), DType::f32)));
  CHECK(x.grad().dtype() == DType::f64);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{0, 1, 0, 1, 0, 1});
}

TEST_CASE("view ops reject bad arguments naming the op and the shapes") {
  Tensor x = iota({2, 3, 4});
  CHECK_THROWS_WITH_AS(view(x, {5, 5}), doctest::Contains("view: shape [5, 5] has 25 elements but the input f64[2, 3, 4] on cpu has 24"), Error);
  CHECK_THROWS_WITH_AS(reshape(x, {-1, -1}), doctest::Contains("reshape: only one dimension may be -1, found [-1, -1]"), Error);
  CHECK_THROWS_WITH_AS(reshape(x, {5, -1}), doctest::Contains("reshape: cannot infer -1 in [5, -1] for f64[2, 3, 4] on cpu"), Error);
  CHECK_THROWS_WITH_AS(reshape(x, {-2, -12}), doctest::Contains("reshape: negative dimension in shape [-2, -12]"), Error);
  CHECK_THROWS_WITH_AS(permute(x, {0, 0, 1}), doctest::Contains("permute: dimension 0 appears twice"), Error);
  CHECK_THROWS_WITH_AS(permute(x, {0, 1}), doctest::Contains("permute: 2 dimensions given for f64[2, 3, 4] on cpu"), Error);
  CHECK_THROWS_WITH_AS(permute(x, {0, 1, 3}), doctest::Contains("permute: dimension 3 is out of range for a tensor of 3 dimensions"), Error);
  CHECK_THROWS_WITH_AS(permute(x, {0, 1, -4}), doctest::Contains("permute: dimension -4 is out of range"), Error);
  CHECK_THROWS_WITH_AS(transpose(x, 0, 3), doctest::Contains("transpose: dimension 3 is out of range for a tensor of 3 dimensions"), Error);
  CHECK_THROWS_WITH_AS(narrow(x, 1, 2, 2), doctest::Contains("narrow: range [2, 4) is outside dimension 1 of size 3 of f64[2, 3, 4] on cpu"), Error);
  CHECK_THROWS_WITH_AS(narrow(x, 1, -1, 1), doctest::Contains("narrow: range [-1, 0)"), Error);
  CHECK_THROWS_WITH_AS(narrow(x, 3, 0, 1), doctest::Contains("narrow: dimension 3 is out of range"), Error);
  CHECK_THROWS_WITH_AS(slice(x, 0, 0, 2, 0), doctest::Contains("slice: step must be positive, found 0"), Error);
  CHECK_THROWS_WITH_AS(slice(x, -4, 0, 2), doctest::Contains("slice: dimension -4 is out of range"), Error);
  CHECK_THROWS_WITH_AS(select(x, 1, 3), doctest::Contains("select: index 3 is out of range for dimension 1 of size 3"), Error);
  CHECK_THROWS_WITH_AS(select(x, 1, -4), doctest::Contains("select: index -4 is out of range"), Error);
  CHECK_THROWS_WITH_AS(unsqueeze(x, 4), doctest::Contains("unsqueeze: dimension 4 is out of range for a tensor of 4 dimensions"), Error);
  CHECK_THROWS_WITH_AS(squeeze(x, -4), doctest::Contains("squeeze: dimension -4 is out of range"), Error);
  CHECK_THROWS_WITH_AS(flatten(x, 2, 1), doctest::Contains("flatten: start_dim 2 is after end_dim 1"), Error);
  CHECK_THROWS_WITH_AS(flatten(x, 0, 3), doctest::Contains("flatten: dimension 3 is out of range"), Error);
  Tensor col = iota({3, 1});
  CHECK_THROWS_WITH_AS(expand(col, {2, 5}), doctest::Contains("expand: cannot expand f64[3, 1] on cpu to [2, 5] (dimension 0: 3 vs 2)"), Error);
  CHECK_THROWS_WITH_AS(expand(col, {3}), doctest::Contains("expand: cannot expand f64[3, 1] on cpu to fewer dimensions [3]"), Error);
  CHECK_THROWS_WITH_AS(expand(col, {-1, 3, 1}), doctest::Contains("expand: -1 is not allowed for a new leading dimension"), Error);
  CHECK_THROWS_WITH_AS(expand(col, {3, -2}), doctest::Contains("expand: cannot expand f64[3, 1] on cpu to [3, -2]"), Error);
  Tensor undefined;
  CHECK_THROWS_WITH_AS(reshape(undefined, {1}), doctest::Contains("reshape: input is an undefined tensor"), Error);
}
