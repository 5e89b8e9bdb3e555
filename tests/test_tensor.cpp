#include <doctest/doctest.h>

#include "core/tensor.h"
#include "ops/views.h"

using namespace scanline;

TEST_CASE("factories fill shape, dtype and values") {
  Tensor z = zeros({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.dtype() == DType::f32);
  CHECK(z.is_contiguous());
  for (float v : z.to_vector<float>()) CHECK(v == 0.0f);
  Tensor f = full({4}, 2.5, {.dtype = DType::f64});
  for (double v : f.to_vector<double>()) CHECK(v == 2.5);
  Tensor a = arange(2, 11, 3);
  CHECK(a.to_vector<int64_t>() == std::vector<int64_t>{2, 5, 8});
  CHECK(arange(5, 0, -2).to_vector<int64_t>() == std::vector<int64_t>{5, 3, 1});
  CHECK(scalar_tensor(3.0).item<float>() == 3.0f);
}

TEST_CASE("negative dimensions and undefined tensors are rejected with a message") {
  CHECK_THROWS_WITH_AS(zeros({2, -1}), doctest::Contains("negative dimension in shape [2, -1]"), Error);
  Tensor undefined;
  CHECK_THROWS_WITH_AS(undefined.shape(), doctest::Contains("undefined"), Error);
  CHECK_THROWS_WITH_AS(zeros({2}).data_ptr<double>(), doctest::Contains("tensor is f32 but f64 was requested"), Error);
}

TEST_CASE("dtype conversion round-trips through every dtype") {
  Tensor x = from_vector<double>({-2.0, -0.5, 0.0, 1.0, 3.0, 100.0}, {6});
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
    Tensor y = to_dtype(to_dtype(x, dt), DType::f64);
    CHECK(y.to_vector<double>() == x.to_vector<double>());  // all exactly representable
  }
  Tensor i = to_dtype(from_vector<double>({-2.7, 3.9}, {2}), DType::i64);
  CHECK(i.to_vector<int64_t>() == std::vector<int64_t>{-2, 3});  // truncation toward zero
  Tensor b = to_dtype(from_vector<double>({0.0, -0.1}, {2}), DType::b8);
  CHECK(b.to_vector<bool>() == std::vector<bool>{false, true});
}

TEST_CASE("printing shows header and nested values") {
  Tensor t = from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  std::string s = t.str();
  CHECK(s.find("tensor(f32[2, 3] on cpu)") != std::string::npos);
  CHECK(s.find("[[1, 2, 3]\n[4, 5, 6]]") != std::string::npos);
}

TEST_CASE("detach shares storage and drops history") {
  Tensor x = ones({3}, {.requires_grad = true});
  Tensor d = x.detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(d.raw_data() == x.raw_data());
}

TEST_CASE("empty_in_layout_of follows the dimension order of its model tensor") {
  // A (batch 2, E 3, L 4) view of (E, batch, L) storage: strides (L, batch·L, 1).
  Tensor rows = zeros({3, 2, 4});
  Tensor channel_major = as_strided(rows, {2, 3, 4}, {4, 8, 1}, 0);
  Tensor out = empty_in_layout_of(channel_major, {.dtype = DType::bf16});
  CHECK(out.shape() == Shape({2, 3, 4}));
  CHECK(out.strides() == Shape({4, 8, 1}));
  CHECK(out.dtype() == DType::bf16);
  CHECK(out.offset() == 0);
  // Contiguous, broadcast (stride 0) and size-1 dims keep a contiguous result.
  CHECK(empty_in_layout_of(zeros({2, 3, 4}), {}).is_contiguous());
  CHECK(empty_in_layout_of(as_strided(zeros({3, 4}), {2, 3, 4}, {0, 4, 1}, 0), {}).is_contiguous());
  CHECK(empty_in_layout_of(as_strided(zeros({3, 1, 4}), {1, 3, 4}, {4, 4, 1}, 0), {}).is_contiguous());
  // A time-strided (channels-last read as channels-first) view keeps that order too.
  Tensor last = as_strided(zeros({2, 4, 3}), {2, 3, 4}, {12, 1, 3}, 0);
  CHECK(empty_in_layout_of(last, {}).strides() == Shape({12, 1, 3}));
}
