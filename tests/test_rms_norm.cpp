#include <cmath>

#include "core/parallel.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/rms_norm.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 rms_norm over the last dim; weight may be empty.
std::vector<double> rms_reference(const std::vector<double>& x, int64_t width, const std::vector<double>& weight,
                                  double eps) {
  std::vector<double> out(x.size());
  for (size_t r = 0; r < x.size() / size_t(width); ++r) {
    double squares = 0.0;
    for (int64_t j = 0; j < width; ++j) squares += x[r * size_t(width) + size_t(j)] * x[r * size_t(width) + size_t(j)];
    double inv = 1.0 / std::sqrt(squares / double(width) + eps);
    for (int64_t j = 0; j < width; ++j) {
      size_t i = r * size_t(width) + size_t(j);
      out[i] = x[i] * inv * (weight.empty() ? 1.0 : weight[size_t(j)]);
    }
  }
  return out;
}

double silu_of(double v) { return v / (1.0 + std::exp(-v)); }

}  // namespace

TEST_CASE("rms_norm matches a float64 loop, with and without weight") {
  Tensor x = random_tensor({2, 3, 8}, 1, DType::f64, -2.0, 2.0);
  Tensor w = random_tensor({8}, 2, DType::f64, 0.5, 1.5);
  check_close(rms_norm(x, w), rms_reference(x.to_double_vector(), 8, w.to_double_vector(), 1e-5), 1e-12);
  check_close(rms_norm(x), rms_reference(x.to_double_vector(), 8, {}, 1e-5), 1e-12);
  check_close(rms_norm(x, w, 0.1), rms_reference(x.to_double_vector(), 8, w.to_double_vector(), 0.1), 1e-12);
  Tensor t = transposed_leaf({5, 6}, 3).detach();  // non-contiguous input
  Tensor w6 = random_tensor({6}, 4, DType::f64, 0.5, 1.5);
  check_close(rms_norm(t, w6), rms_reference(t.to_double_vector(), 6, w6.to_double_vector(), 1e-5), 1e-12);
}

TEST_CASE("rms_norm passes gradcheck") {
  Tensor x = random_leaf({4, 6}, 11, -2.0, 2.0);
  Tensor w = random_leaf({6}, 12, 0.5, 1.5);
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1]); }, {x, w});
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0]); }, {x});
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1], 0.5); }, {x, w});
  Tensor x3 = random_leaf({2, 3, 5}, 13, -2.0, 2.0);
  Tensor w5 = random_leaf({5}, 14, 0.5, 1.5);
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1]); }, {x3, w5});
  Tensor t = transposed_leaf({5, 4}, 15);
  Tensor w4 = random_leaf({4}, 16, 0.5, 1.5);
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1]); }, {t, w4});
  // Only the weight requires grad; and a non-contiguous output gradient through a transpose.
  check_gradients([&](const std::vector<Tensor>& in) { return rms_norm(x.detach(), in[0]); }, {w});
  check_gradients([](const std::vector<Tensor>& in) { return transpose(rms_norm(in[0], in[1]), 0, 1); }, {x, w});
  // More rows than one dweight chunk, so the chunk partials are summed too.
  Tensor tall = random_leaf({70, 3}, 17, -2.0, 2.0);
  Tensor w3 = random_leaf({3}, 18, 0.5, 1.5);
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm(in[0], in[1]); }, {tall, w3});
}

TEST_CASE("rms_norm_gated matches a float64 loop and passes gradcheck in both gate orders") {
  Tensor x = random_leaf({3, 6}, 21, -2.0, 2.0);
  Tensor z = random_leaf({3, 6}, 22, -2.0, 2.0);
  Tensor w = random_leaf({6}, 23, 0.5, 1.5);
  std::vector<double> vx = x.to_double_vector(), vz = z.to_double_vector(), vw = w.to_double_vector();
  std::vector<double> gated(vx.size());
  for (size_t i = 0; i < vx.size(); ++i) gated[i] = vx[i] * silu_of(vz[i]);
  check_close(rms_norm_gated(x, z, w), rms_reference(gated, 6, vw, 1e-5), 1e-12);
  std::vector<double> after = rms_reference(vx, 6, vw, 1e-5);
  for (size_t i = 0; i < after.size(); ++i) after[i] *= silu_of(vz[i]);
  check_close(rms_norm_gated(x, z, w, 1e-5, true), after, 1e-12);
  for (bool before : {false, true}) {
    CAPTURE(before);
    check_gradients([before](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], in[2], 1e-5, before); },
                    {x, z, w});
    check_gradients([before](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], Tensor(), 1e-5, before); },
                    {transposed_leaf({4, 5}, 24), random_leaf({4, 5}, 25)});
  }
}

TEST_CASE("rms_norm in f32 and bf16 matches the float64 reference") {
  Tensor x64 = random_tensor({6, 40}, 31, DType::f64, -3.0, 3.0);
  Tensor w64 = random_tensor({40}, 32, DType::f64, 0.5, 1.5);
  for (auto [dtype, tol] : {std::pair{DType::f32, 1e-6}, std::pair{DType::bf16, 4e-3}}) {
    CAPTURE(dtype);
    Tensor x = to_dtype(x64, dtype), w = to_dtype(w64, dtype);
    std::vector<double> expected = rms_reference(to_dtype(x, DType::f64).to_double_vector(), 40,
                                                 to_dtype(w, DType::f64).to_double_vector(), 1e-5);
    Tensor y = rms_norm(x, w);
    CHECK(y.dtype() == dtype);
    check_close(y, expected, tol);
  }
}

TEST_CASE("rms_norm gradients do not depend on the thread count") {
  const int threads = num_threads();
  Tensor x = random_leaf({257, 16}, 41, -2.0, 2.0);
  Tensor w = random_leaf({16}, 42, 0.5, 1.5);
  Tensor g = random_tensor({257, 16}, 43);
  std::vector<std::vector<double>> dx, dw;
  for (int n : {1, 3, 4}) {
    set_num_threads(n);
    x.zero_grad();
    w.zero_grad();
    backward(rms_norm(x, w), g);
    dx.push_back(x.grad().to_double_vector());
    dw.push_back(w.grad().to_double_vector());
  }
  set_num_threads(threads);
  CHECK(dx[0] == dx[1]);
  CHECK(dx[0] == dx[2]);
  CHECK(dw[0] == dw[1]);
  CHECK(dw[0] == dw[2]);
}

TEST_CASE("rms_norm rejects bad inputs with the op's name and shapes") {
  Tensor x = zeros({2, 8});
  CHECK_THROWS_WITH_AS(rms_norm(x, zeros({7})),
                       doctest::Contains("rms_norm: expected weight of shape [8] (the last dim of input f32[2, 8] on cpu) "
                                         "but found f32[7]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm(x, zeros({1, 8})),
                       doctest::Contains("rms_norm: expected weight of shape [8] (the last dim of input f32[2, 8] on cpu) "
                                         "but found f32[1, 8]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm(x, zeros({8}, {.dtype = DType::f64})),
                       doctest::Contains("rms_norm: expected one dtype but found f32[2, 8] on cpu and f64[8] on cpu"), Error);
  CHECK_THROWS_WITH_AS(rms_norm(zeros({2, 8}, {.dtype = DType::i32})),
                       doctest::Contains("rms_norm: expected input to be floating but found i32[2, 8]"), Error);
  CHECK_THROWS_WITH_AS(rms_norm(zeros({2, 0})),
                       doctest::Contains("rms_norm: expected an input of shape (..., D) with D >= 1 but found f32[2, 0]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm(x, Tensor(), -1.0), doctest::Contains("rms_norm: expected eps >= 0 but found -1"), Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, zeros({2, 7})),
                       doctest::Contains("rms_norm_gated: expected gate z of the input's shape f32[2, 8] on cpu but found f32[2, 7]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, x, zeros({3})),
                       doctest::Contains("rms_norm_gated: expected weight of shape [8] (the last dim of input f32[2, 8] on cpu) "
                                         "but found f32[3]"),
                       Error);
}
