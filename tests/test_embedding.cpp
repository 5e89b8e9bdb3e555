#include <cstring>

#include "core/parallel.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 gather: row idx[i] of weight for every index, in order.
std::vector<double> reference_embedding(const Tensor& weight, const std::vector<int64_t>& idx) {
  const std::vector<double> w = weight.to_double_vector();
  const int64_t dim = weight.size(1);
  std::vector<double> out;
  for (int64_t r : idx)
    for (int64_t j = 0; j < dim; ++j) out.push_back(w[size_t(r * dim + j)]);
  return out;
}

}  // namespace

TEST_CASE("embedding gathers rows for i64 and i32 indices of any shape") {
  Tensor weight = random_tensor({7, 5}, 1);
  const std::vector<int64_t> idx = {3, 0, 6, 3, 3, 1};
  Tensor i64 = from_vector<int64_t>(idx, {2, 3});
  Tensor out = embedding(weight, i64);
  CHECK(out.shape() == Shape{2, 3, 5});
  check_close(out, reference_embedding(weight, idx), 1e-12);

  Tensor i32 = from_vector<int32_t>({3, 0, 6, 3, 3, 1}, {6});
  Tensor out32 = embedding(weight, i32);
  CHECK(out32.shape() == Shape{6, 5});
  check_close(out32, reference_embedding(weight, idx), 1e-12);

  Tensor scalar = from_vector<int64_t>({4}, {});
  Tensor row = embedding(weight, scalar);
  CHECK(row.shape() == Shape{5});
  check_close(row, reference_embedding(weight, {4}), 1e-12);

  // Non-contiguous weight and non-contiguous indices.
  Tensor wt = transpose(random_tensor({5, 7}, 2), 0, 1);
  Tensor it = transpose(i64, 0, 1);  // logical order 3, 3, 0, 3, 6, 1
  check_close(embedding(wt, it), reference_embedding(wt, {3, 3, 0, 3, 6, 1}), 1e-12);

  Tensor empty_idx = from_vector<int64_t>({}, {0, 4});
  CHECK(embedding(weight, empty_idx).shape() == Shape{0, 4, 5});
}

TEST_CASE("embedding copies f32 and bf16 rows exactly") {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
    CAPTURE(dtype);
    Tensor weight = random_tensor({9, 3}, 11, dtype);
    const std::vector<int64_t> idx = {8, 2, 2, 0};
    Tensor out = embedding(weight, from_vector<int64_t>(idx, {4}));
    CHECK(out.dtype() == dtype);
    check_close(out, reference_embedding(weight, idx), 0.0);
  }
}

TEST_CASE("embedding passes gradcheck with repeated indices") {
  Tensor idx = from_vector<int64_t>({1, 4, 1, 0, 4, 4, 2, 1, 0, 5, 1, 4}, {3, 4});
  auto fn = [&idx](const std::vector<Tensor>& in) { return embedding(in[0], idx); };
  check_gradients(fn, {random_leaf({6, 4}, 21)});
  check_gradients(fn, {transposed_leaf({6, 4}, 22)});
  Tensor idx32 = from_vector<int32_t>({2, 2, 2, 0}, {2, 2});
  check_gradients([&idx32](const std::vector<Tensor>& in) { return embedding(in[0], idx32) * in[1]; },
                  {random_leaf({3, 5}, 23), random_leaf({5}, 24)});
}

TEST_CASE("embedding backward sums each row's gradients deterministically") {
  // Rows 1 and 4 are read several times, row 3 never: its gradient must be exactly zero.
  const std::vector<int64_t> idx = {1, 4, 1, 0, 4, 4, 2, 1};
  Tensor indices = from_vector<int64_t>(idx, {2, 4});
  Tensor g = random_tensor({2, 4, 3}, 31);
  std::vector<double> vg = g.to_double_vector(), expected(5 * 3, 0.0);
  for (size_t i = 0; i < idx.size(); ++i)
    for (size_t j = 0; j < 3; ++j) expected[size_t(idx[i]) * 3 + j] += vg[i * 3 + j];
  Tensor weight = random_leaf({5, 3}, 32);
  backward(embedding(weight, indices), g);
  check_close(weight.grad(), expected, 1e-12);

  // Many indices in f32: the same bits on 1 and 4 threads.
  const int threads = num_threads();
  Generator gen(33);
  Tensor many = randint(0, 50, {4000}, gen);
  Tensor g32 = random_tensor({4000, 16}, 34, DType::f32);
  std::vector<Tensor> grads;
  for (int n : {1, 4}) {
    set_num_threads(n);
    Tensor w = random_tensor({50, 16}, 35, DType::f32);
    w.set_requires_grad(true);
    backward(embedding(w, many), g32);
    grads.push_back(w.grad());
  }
  set_num_threads(threads);
  CHECK(std::memcmp(grads[0].raw_data(), grads[1].raw_data(), grads[0].nbytes()) == 0);
}

TEST_CASE("embedding rejects bad indices and tables with clear messages") {
  Tensor weight = random_tensor({7, 5}, 41);
  CHECK_THROWS_WITH_AS(embedding(weight, from_vector<int64_t>({0, 1, 2, 3, 4, 7}, {2, 3})),
                       doctest::Contains("embedding: index 7 at position [1, 2] of indices i64[2, 3] on cpu is out of "
                                         "range for a table of 7 rows"),
                       Error);
  CHECK_THROWS_WITH_AS(embedding(weight, from_vector<int32_t>({2, -1}, {2})),
                       doctest::Contains("embedding: index -1 at position [1]"), Error);
  CHECK_THROWS_WITH_AS(embedding(weight, random_tensor({2}, 42, DType::f32)),
                       doctest::Contains("embedding: expected indices of dtype i64 or i32 but found f32[2]"), Error);
  CHECK_THROWS_WITH_AS(embedding(random_tensor({7}, 43), from_vector<int64_t>({0}, {1})),
                       doctest::Contains("embedding: expected weight to have 2 dimensions but found f64[7]"), Error);
  CHECK_THROWS_WITH_AS(embedding(reshape(arange(0, 6), {3, 2}), from_vector<int64_t>({0}, {1})),
                       doctest::Contains("embedding: expected weight to be floating but found i64[3, 2]"), Error);
}
