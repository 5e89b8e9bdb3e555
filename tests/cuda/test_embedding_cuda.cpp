// CUDA embedding (cuda/embedding.cu) against the CPU path: the gather is an exact copy; the
// backward (radix sort + one warp per weight row) sums repeated indices in position order and
// writes zeros to rows nobody read. i32 and i64 indices of several shapes, f32 and bf16 tables up
// to GPT-2's padded vocabulary, strided tables, and the out-of-range error message.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/embedding.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

Tensor random_indices(const Shape& shape, int64_t high, DType dtype, uint64_t seed) {
  Generator gen(seed);
  return randint(0, high, shape, gen, {.dtype = dtype});
}

// embedding(view(table), indices) on both devices, forward (bit-exact) and backward.
void check_embedding(int64_t num, int64_t dim, const Shape& index_shape, int64_t index_high, DType dtype,
                     DType index_dtype, bool transposed_table, uint64_t seed) {
  const std::string what = "table " + std::to_string(num) + " x " + std::to_string(dim) + " indices " +
                           shape_str(index_shape) + " " + dtype_name(index_dtype) + " below " +
                           std::to_string(index_high) + (transposed_table ? " transposed table" : "");
  CAPTURE(what);
  CAPTURE(dtype);
  Tensor base = transposed_table ? random_cpu({dim, num}, seed, dtype) : random_cpu({num, dim}, seed, dtype);
  Tensor idx = random_indices(index_shape, index_high, index_dtype, seed + 1);
  Tensor bc = cpu_leaf(base), bg = on_gpu(base, true);
  auto view = [&](const Tensor& t) { return transposed_table ? transpose(t, 0, 1) : t; };
  Tensor oc = embedding(view(bc), idx), og = embedding(view(bg), on_gpu(idx));
  REQUIRE(og.device().is_cuda());
  REQUIRE(og.shape() == oc.shape());
  CHECK(og.to_double_vector() == oc.to_double_vector());
  Tensor g = random_cpu(oc.shape(), seed + 2, dtype);
  backward(oc, g);
  backward(og, on_gpu(g));
  REQUIRE(bg.grad().defined());
  // A row's gradient is a sum of up to a few dozen rows of g: judge it against their scale.
  check_relative(bg.grad(), bc.grad(), tolerance_for(dtype), std::max(max_abs(bc.grad()), 1e-30), what + " dweight");
}

}  // namespace

TEST_CASE("cuda embedding matches the CPU with repeated and unused indices") {
  uint64_t seed = 10;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (DType index_dtype : {DType::i64, DType::i32}) {
      CAPTURE(index_dtype);
      check_embedding(50, 16, {2, 40}, 10, dtype, index_dtype, false, seed++);    // many repeats, 40 rows unused
      check_embedding(50, 7, {3, 5}, 50, dtype, index_dtype, false, seed++);      // scalar rows
      check_embedding(1, 8, {9}, 1, dtype, index_dtype, false, seed++);           // one row read 9 times
      check_embedding(10, 1, {4, 3, 2}, 10, dtype, index_dtype, false, seed++);   // dim 1, 3-d indices
      check_embedding(300, 1000, {123}, 300, dtype, index_dtype, false, seed++);  // several chunks a lane
      check_embedding(64, 24, {2, 17}, 64, dtype, index_dtype, true, seed++);     // strided table
      check_embedding(5, 8, {1}, 5, dtype, index_dtype, false, seed++);           // one index
    }
  }
}

TEST_CASE("cuda embedding matches the CPU at vocabulary size (50304 x 768, 4096 indices)") {
  uint64_t seed = 50;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (DType index_dtype : {DType::i64, DType::i32}) {
      CAPTURE(index_dtype);
      check_embedding(50304, 768, {4, 1024}, 50304, dtype, index_dtype, false, seed++);
      check_embedding(50304, 768, {4096}, 700, dtype, index_dtype, false, seed++);  // ~6 positions a row
    }
  }
}

TEST_CASE("cuda embedding with no indices gives a zero gradient") {
  Tensor base = random_cpu({6, 4}, 70);
  Tensor bg = on_gpu(base, true);
  Tensor out = embedding(bg, on_gpu(zeros({0}, {.dtype = DType::i64})));
  CHECK(out.shape() == Shape{0, 4});
  backward(out, on_gpu(zeros({0, 4})));
  REQUIRE(bg.grad().defined());
  CHECK(bg.grad().to_double_vector() == std::vector<double>(24, 0.0));
}

TEST_CASE("cuda embedding reports the first out-of-range index like the CPU") {
  Tensor table = on_gpu(random_cpu({50, 4}, 80));
  for (DType index_dtype : {DType::i64, DType::i32}) {
    CAPTURE(index_dtype);
    Tensor idx = to_dtype(from_vector<int64_t>({1, 2, 3, 4, 5, 6, 57, -1}, {2, 4}), index_dtype);
    const std::string expected = std::string("embedding: index 57 at position [1, 2] of indices ") +
                                 dtype_name(index_dtype) + "[2, 4] on cuda:0 is out of range for a table of 50 "
                                 "rows (valid indices are 0 to 49)";
    CHECK_THROWS_WITH_AS(embedding(table, on_gpu(idx)), doctest::Contains(expected.c_str()), Error);
    Tensor negative = to_dtype(from_vector<int64_t>({0, -3, 1}, {3}), index_dtype);
    CHECK_THROWS_WITH_AS(embedding(table, on_gpu(negative)),
                         doctest::Contains("embedding: index -3 at position [1] of indices"), Error);
    // The CPU path says the same, but for the device.
    CHECK_THROWS_WITH_AS(embedding(to_device(table, Device::cpu()), idx),
                         doctest::Contains("embedding: index 57 at position [1, 2] of indices"), Error);
  }
}
