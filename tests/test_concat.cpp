#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 concatenation of row-major values: for each outer index, each tensor's slab.
std::vector<double> cat_reference(const std::vector<Tensor>& tensors, int64_t dim) {
  const Shape& s = tensors[0].shape();
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= s[d];
  for (int64_t d = dim + 1; d < int64_t(s.size()); ++d) inner *= s[d];
  std::vector<std::vector<double>> values;
  for (const Tensor& t : tensors) values.push_back(t.to_double_vector());
  std::vector<double> out;
  for (int64_t o = 0; o < outer; ++o)
    for (size_t i = 0; i < tensors.size(); ++i) {
      const int64_t n = tensors[i].shape()[dim];
      for (int64_t p = 0; p < n; ++p)
        for (int64_t e = 0; e < inner; ++e) out.push_back(values[i][size_t((o * n + p) * inner + e)]);
    }
  return out;
}

std::vector<int64_t> sizes_along(const std::vector<Tensor>& pieces, int64_t dim) {
  std::vector<int64_t> sizes;
  for (const Tensor& p : pieces) sizes.push_back(p.shape()[dim]);
  return sizes;
}

}  // namespace

TEST_CASE("cat matches a float64 loop along every dimension") {
  Tensor a = random_tensor({2, 3, 4}, 1), b = random_tensor({2, 1, 4}, 2), c = random_tensor({2, 5, 4}, 3);
  Tensor y = cat({a, b, c}, 1);
  CHECK(y.shape() == Shape{2, 9, 4});
  check_close(y, cat_reference({a, b, c}, 1), 0.0);
  Tensor d = random_tensor({3, 3, 4}, 4);
  check_close(cat({a, d}, 0), cat_reference({a, d}, 0), 0.0);
  Tensor e = random_tensor({2, 3, 2}, 5);
  CHECK(cat({a, e}, -1).shape() == Shape{2, 3, 6});
  check_close(cat({a, e}, -1), cat_reference({a, e}, 2), 0.0);
  // A single tensor, an empty piece, non-contiguous pieces and integer tensors.
  check_close(cat({a}, 1), a.to_double_vector(), 0.0);
  Tensor empty_piece = random_tensor({2, 0, 4}, 6);
  check_close(cat({a, empty_piece, b}, 1), cat_reference({a, empty_piece, b}, 1), 0.0);
  Tensor t = transposed_leaf({2, 3, 4}, 7).detach();
  REQUIRE(!t.is_contiguous());
  check_close(cat({t, a}, 2), cat_reference({t, a}, 2), 0.0);
  Tensor i = arange(0, 6).detach();
  CHECK(cat({i, i}, 0).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5});
}

TEST_CASE("cat passes gradcheck, with non-contiguous inputs and some constants") {
  Tensor a = random_leaf({2, 3, 4}, 11), b = random_leaf({2, 2, 4}, 12);
  Tensor t = transposed_leaf({2, 3, 4}, 13);
  auto fn = [](const std::vector<Tensor>& in) { return cat(in, 1); };
  check_gradients(fn, {a, b, t});
  check_gradients(fn, {a, b.detach(), t});
  check_gradients([](const std::vector<Tensor>& in) { return cat({in[0], in[1]}, -1); }, {a, t});
  // The same tensor twice: both slices' gradients accumulate into it.
  check_gradients([](const std::vector<Tensor>& in) { return cat({in[0], in[0] * in[0]}, 0); }, {t});
}

TEST_CASE("split and chunk return views with PyTorch's piece sizes") {
  Tensor x = random_tensor({7, 3}, 21);
  auto pieces = split(x, 3, 0);
  CHECK(sizes_along(pieces, 0) == std::vector<int64_t>{3, 3, 1});
  std::vector<double> vx = x.to_double_vector();
  check_close(pieces[1], std::vector<double>(vx.begin() + 9, vx.begin() + 18), 0.0);
  CHECK(pieces[2].impl()->storage == x.impl()->storage);  // a view, no copy
  CHECK(pieces[2].offset() == 18);
  CHECK(sizes_along(split(x, 7, 0), 0) == std::vector<int64_t>{7});
  CHECK(sizes_along(split(x, 10, 0), 0) == std::vector<int64_t>{7});
  CHECK(sizes_along(split(x, std::vector<int64_t>{2, 0, 5}, 0), 0) == std::vector<int64_t>{2, 0, 5});
  CHECK(sizes_along(split(x, 2, -1), 1) == std::vector<int64_t>{2, 1});
  CHECK(sizes_along(chunk(x, 3, 0), 0) == std::vector<int64_t>{3, 3, 1});
  CHECK(sizes_along(chunk(x, 4, 0), 0) == std::vector<int64_t>{2, 2, 2, 1});
  CHECK(sizes_along(chunk(random_tensor({5}, 22), 4, 0), 0) == std::vector<int64_t>{2, 2, 1});  // fewer pieces
  CHECK(sizes_along(chunk(random_tensor({6}, 23), 4, 0), 0) == std::vector<int64_t>{2, 2, 2});
  CHECK(sizes_along(chunk(x, 1, 1), 1) == std::vector<int64_t>{3});
  Tensor none = random_tensor({0, 2}, 24);
  CHECK(sizes_along(chunk(none, 3, 0), 0) == std::vector<int64_t>{0, 0, 0});
  CHECK(sizes_along(split(none, 2, 0), 0) == std::vector<int64_t>{0});
  // cat undoes split, along a middle dimension of a non-contiguous tensor.
  Tensor t = transposed_leaf({2, 5, 4}, 25).detach();
  check_close(cat(split(t, 2, 2), 2), t.to_double_vector(), 0.0);
  check_close(cat(chunk(t, 2, 1), 1), t.to_double_vector(), 0.0);
}

TEST_CASE("split and chunk pass gradcheck, including unused pieces and non-contiguous inputs") {
  Tensor x = random_leaf({2, 7, 3}, 31);
  Tensor t = transposed_leaf({2, 3, 7}, 32);
  // Pieces reordered and scaled differently, so a wrong piece offset shows in the gradient.
  auto reorder = [](const std::vector<Tensor>& p, int64_t dim) {
    return cat({p[2] * 3.0, p[0], p[1] * p[1]}, dim);
  };
  check_gradients([&](const std::vector<Tensor>& in) { return reorder(split(in[0], 3, 1), 1); }, {x});
  check_gradients([&](const std::vector<Tensor>& in) { return reorder(split(in[0], std::vector<int64_t>{1, 4, 2}, 1), 1); }, {x});
  check_gradients([&](const std::vector<Tensor>& in) { return reorder(chunk(in[0], 3, -1), 2); }, {t});
  check_gradients([&](const std::vector<Tensor>& in) { return reorder(split(in[0], 1, 1), 1); }, {t});
  // Only one piece used: the others' positions get zero gradient.
  check_gradients([](const std::vector<Tensor>& in) { return chunk(in[0], 3, 2)[1]; }, {t});
}

TEST_CASE("cat, split and chunk reject bad input with the op's name and the shapes") {
  Tensor a = zeros({2, 3});
  CHECK_THROWS_WITH_AS(cat({}, 0), doctest::Contains("cat: expected a non-empty list of tensors"), Error);
  CHECK_THROWS_WITH_AS(cat({a, zeros({2, 4})}, 0),
                       doctest::Contains("cat: tensor 1 has shape [2, 4] but tensor 0 has shape [2, 3]; shapes must match except in dimension 0"),
                       Error);
  CHECK_THROWS_WITH_AS(cat({a, a, zeros({2, 3, 1})}, 1),
                       doctest::Contains("cat: tensor 2 has shape [2, 3, 1] but tensor 0 has shape [2, 3]"), Error);
  CHECK_THROWS_WITH_AS(cat({a, zeros({2, 3}, {.dtype = DType::f64})}, 0),
                       doctest::Contains("cat: tensor 1 is f64[2, 3] on cpu but tensor 0 is f32[2, 3] on cpu"), Error);
  CHECK_THROWS_WITH_AS(cat({a, Tensor()}, 0), doctest::Contains("cat: tensor 1 is an undefined tensor"), Error);
  CHECK_THROWS_WITH_AS(cat({a}, 2), doctest::Contains("cat: dimension 2 is out of range for a tensor of 2 dimensions"), Error);
  CHECK_THROWS_WITH_AS(cat({scalar_tensor(1.0)}, 0), doctest::Contains("cat: zero-dimensional tensor 0"), Error);
  CHECK_THROWS_WITH_AS(split(a, std::vector<int64_t>{1, 1}, 1),
                       doctest::Contains("split: sizes [1, 1] sum to 2 but dimension 1 of f32[2, 3] on cpu has size 3"), Error);
  CHECK_THROWS_WITH_AS(split(a, std::vector<int64_t>{4, -1}, 1), doctest::Contains("split: negative size"), Error);
  CHECK_THROWS_WITH_AS(split(a, 0, 1), doctest::Contains("split: split_size must be positive but is 0 for f32[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(chunk(a, 0, 1), doctest::Contains("chunk: number of chunks must be positive but is 0 for f32[2, 3]"), Error);
}
