#include <cmath>

#include "core/parallel.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/rms_norm.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 add + rms_norm over the last dim: returns (y, h = x + residual). residual and
// weight may be empty.
std::pair<std::vector<double>, std::vector<double>> add_norm_reference(const std::vector<double>& x,
                                                                       const std::vector<double>& residual,
                                                                       int64_t width,
                                                                       const std::vector<double>& weight, double eps) {
  std::vector<double> h(x.size()), y(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = x[i] + (residual.empty() ? 0.0 : residual[i]);
  for (size_t r = 0; r < x.size() / size_t(width); ++r) {
    double squares = 0.0;
    for (int64_t j = 0; j < width; ++j) squares += h[r * size_t(width) + size_t(j)] * h[r * size_t(width) + size_t(j)];
    const double inv = 1.0 / std::sqrt(squares / double(width) + eps);
    for (int64_t j = 0; j < width; ++j) {
      const size_t i = r * size_t(width) + size_t(j);
      y[i] = h[i] * inv * (weight.empty() ? 1.0 : weight[size_t(j)]);
    }
  }
  return {y, h};
}

// Both outputs as one tensor, so gradcheck projects on directions over both.
Tensor both(const std::pair<Tensor, Tensor>& outputs) { return cat({outputs.first, outputs.second}, 0); }

}  // namespace

TEST_CASE("rms_norm_residual matches a float64 loop, with and without residual and weight") {
  Tensor x = random_tensor({2, 3, 8}, 1, DType::f64, -2.0, 2.0);
  Tensor res = random_tensor({2, 3, 8}, 2, DType::f64, -2.0, 2.0);
  Tensor w = random_tensor({8}, 3, DType::f64, 0.5, 1.5);
  const std::vector<double> vx = x.to_double_vector(), vr = res.to_double_vector(), vw = w.to_double_vector();
  for (double eps : {1e-5, 0.1}) {
    CAPTURE(eps);
    auto [y, h] = rms_norm_residual(x, res, w, eps);
    auto [ey, eh] = add_norm_reference(vx, vr, 8, vw, eps);
    CHECK(y.shape() == x.shape());
    CHECK(h.shape() == x.shape());
    check_close(y, ey, 1e-12);
    check_close(h, eh, 1e-12);
  }
  {
    auto [y, h] = rms_norm_residual(x, Tensor(), w);
    auto [ey, eh] = add_norm_reference(vx, {}, 8, vw, 1e-5);
    check_close(y, ey, 1e-12);
    check_close(h, eh, 1e-12);
    CHECK_FALSE(h.is_same(x));  // a fresh tensor, never an alias of the input
  }
  {
    auto [y, h] = rms_norm_residual(x, res);
    auto [ey, eh] = add_norm_reference(vx, vr, 8, {}, 1e-5);
    check_close(y, ey, 1e-12);
    check_close(h, eh, 1e-12);
  }
  // Non-contiguous input and residual.
  Tensor t = transposed_leaf({5, 6}, 4).detach();
  Tensor tr = transposed_leaf({5, 6}, 5).detach();
  Tensor w6 = random_tensor({6}, 6, DType::f64, 0.5, 1.5);
  auto [y, h] = rms_norm_residual(t, tr, w6);
  auto [ey, eh] = add_norm_reference(t.to_double_vector(), tr.to_double_vector(), 6, w6.to_double_vector(), 1e-5);
  check_close(y, ey, 1e-12);
  check_close(h, eh, 1e-12);
  // The same as the composed ops.
  check_close(y, rms_norm(add(t, tr), w6).to_double_vector(), 1e-12);
}

TEST_CASE("rms_norm_residual passes gradcheck through both outputs") {
  Tensor x = random_leaf({4, 6}, 11, -2.0, 2.0);
  Tensor res = random_leaf({4, 6}, 12, -2.0, 2.0);
  Tensor w = random_leaf({6}, 13, 0.5, 1.5);
  check_gradients([](const std::vector<Tensor>& in) { return both(rms_norm_residual(in[0], in[1], in[2])); },
                  {x, res, w});
  check_gradients([](const std::vector<Tensor>& in) { return both(rms_norm_residual(in[0], Tensor(), in[1])); },
                  {x, w});
  check_gradients([](const std::vector<Tensor>& in) { return both(rms_norm_residual(in[0], in[1])); }, {x, res});
  check_gradients([](const std::vector<Tensor>& in) { return both(rms_norm_residual(in[0], in[1], in[2], 0.5)); },
                  {x, res, w});
  // Each output alone (the other's gradient arrives as zeros).
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm_residual(in[0], in[1], in[2]).first; },
                  {x, res, w});
  check_gradients([](const std::vector<Tensor>& in) { return rms_norm_residual(in[0], in[1], in[2]).second; },
                  {x, res, w});
  // Only some inputs require grad; non-contiguous inputs; more rows than one dweight chunk.
  check_gradients([&](const std::vector<Tensor>& in) { return both(rms_norm_residual(x.detach(), in[0], in[1])); },
                  {res, w});
  check_gradients(
      [&](const std::vector<Tensor>& in) { return both(rms_norm_residual(in[0], res.detach(), w.detach())); }, {x});
  check_gradients([](const std::vector<Tensor>& in) { return both(rms_norm_residual(in[0], in[1], in[2])); },
                  {transposed_leaf({5, 4}, 14), transposed_leaf({5, 4}, 15), random_leaf({4}, 16, 0.5, 1.5)});
  check_gradients([](const std::vector<Tensor>& in) { return both(rms_norm_residual(in[0], in[1], in[2])); },
                  {random_leaf({70, 3}, 17, -2.0, 2.0), random_leaf({70, 3}, 18), random_leaf({3}, 19, 0.5, 1.5)});
  // A residual stream through two blocks: the second block's residual is the first's output.
  check_gradients(
      [](const std::vector<Tensor>& in) {
        auto [y1, h1] = rms_norm_residual(in[0], in[1], in[2]);
        auto [y2, h2] = rms_norm_residual(mul(y1, 0.5), h1, in[2]);
        return both({y2, h2});
      },
      {x, res, w});
}

TEST_CASE("rms_norm_residual keeps the residual stream in f32 under a bf16 input") {
  Tensor x64 = random_tensor({6, 40}, 31, DType::f64, -3.0, 3.0);
  Tensor r64 = random_tensor({6, 40}, 32, DType::f64, -3.0, 3.0);
  Tensor w64 = random_tensor({40}, 33, DType::f64, 0.5, 1.5);
  Tensor x = to_dtype(x64, DType::bf16), w = to_dtype(w64, DType::bf16);
  Tensor res = to_dtype(r64, DType::f32);
  auto [y, h] = rms_norm_residual(x, res, w);
  CHECK(y.dtype() == DType::bf16);
  CHECK(h.dtype() == DType::f32);
  // h is the f32 sum of the bf16 input and the f32 residual, exactly.
  Tensor expected_h = add(to_dtype(x, DType::f32), res);
  CHECK(h.to_double_vector() == expected_h.to_double_vector());
  auto [ey, eh] = add_norm_reference(to_dtype(x, DType::f64).to_double_vector(), res.to_double_vector(), 40,
                                     to_dtype(w, DType::f64).to_double_vector(), 1e-5);
  check_close(y, ey, 4e-3);
  // Without a residual: residual_in_fp32 makes an f32 copy of x, otherwise a bf16 one.
  auto [y2, h2] = rms_norm_residual(x, Tensor(), w, 1e-5, true);
  CHECK(h2.dtype() == DType::f32);
  CHECK(h2.to_double_vector() == to_dtype(x, DType::f64).to_double_vector());
  auto [y3, h3] = rms_norm_residual(x, Tensor(), w);
  CHECK(h3.dtype() == DType::bf16);
  CHECK(y3.to_double_vector() == y2.to_double_vector());

  // Gradients: dx in bf16, dresidual in f32, both the sum of the norm's and new_residual's.
  Tensor xl = x.detach().set_requires_grad(true);
  Tensor rl = res.detach().set_requires_grad(true);
  Tensor wl = w.detach().set_requires_grad(true);
  auto [yl, hl] = rms_norm_residual(xl, rl, wl);
  Tensor gy = random_tensor({6, 40}, 34, DType::bf16);
  Tensor gh = random_tensor({6, 40}, 35, DType::f32);
  backward(add(sum(mul(to_dtype(yl, DType::f32), to_dtype(gy, DType::f32))), sum(mul(hl, gh))));
  CHECK(xl.grad().dtype() == DType::bf16);
  CHECK(rl.grad().dtype() == DType::f32);
  CHECK(wl.grad().dtype() == DType::bf16);
  // The same in f64 from the same (rounded) values.
  Tensor x64l = to_dtype(x, DType::f64).set_requires_grad(true);
  Tensor r64l = to_dtype(res, DType::f64).set_requires_grad(true);
  Tensor w64l = to_dtype(w, DType::f64).set_requires_grad(true);
  auto [y64, h64] = rms_norm_residual(x64l, r64l, w64l);
  backward(add(sum(mul(y64, to_dtype(gy, DType::f64))), sum(mul(h64, to_dtype(gh, DType::f64)))));
  check_close(rl.grad(), r64l.grad().to_double_vector(), 1e-4);
  check_close(xl.grad(), x64l.grad().to_double_vector(), 1e-2);
  check_close(wl.grad(), w64l.grad().to_double_vector(), 2e-2);
}

TEST_CASE("rms_norm_residual gradients do not depend on the thread count") {
  const int threads = num_threads();
  Tensor x = random_leaf({257, 16}, 41, -2.0, 2.0);
  Tensor res = random_leaf({257, 16}, 42, -2.0, 2.0);
  Tensor w = random_leaf({16}, 43, 0.5, 1.5);
  Tensor gy = random_tensor({257, 16}, 44), gh = random_tensor({257, 16}, 45);
  std::vector<std::vector<double>> dx, dr, dw;
  for (int n : {1, 3, 4}) {
    set_num_threads(n);
    x.zero_grad();
    res.zero_grad();
    w.zero_grad();
    auto [y, h] = rms_norm_residual(x, res, w);
    backward(add(sum(mul(y, gy)), sum(mul(h, gh))));
    dx.push_back(x.grad().to_double_vector());
    dr.push_back(res.grad().to_double_vector());
    dw.push_back(w.grad().to_double_vector());
  }
  set_num_threads(threads);
  for (size_t i = 1; i < dx.size(); ++i) {
    CHECK(dx[0] == dx[i]);
    CHECK(dr[0] == dr[i]);
    CHECK(dw[0] == dw[i]);
  }
}

TEST_CASE("rms_norm_residual rejects bad inputs with the op's name and shapes") {
  Tensor x = zeros({2, 8});
  CHECK_THROWS_WITH_AS(rms_norm_residual(x, zeros({2, 7})),
                       doctest::Contains("rms_norm_residual: expected residual of the input's shape f32[2, 8] on cpu "
                                         "but found f32[2, 7]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(x, zeros({2, 8}, {.dtype = DType::bf16})),
                       doctest::Contains("rms_norm_residual: expected residual of the input's dtype or f32 (input "
                                         "f32[2, 8] on cpu) but found bf16[2, 8]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(zeros({2, 8}, {.dtype = DType::bf16}), zeros({2, 8}, {.dtype = DType::bf16}),
                                         Tensor(), 1e-5, true),
                       doctest::Contains("rms_norm_residual: residual_in_fp32 expects an f32 residual but found "
                                         "bf16[2, 8]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(x, zeros({2, 8}, {.dtype = DType::i32})),
                       doctest::Contains("rms_norm_residual: expected residual to be floating but found i32[2, 8]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(x, Tensor(), zeros({7})),
                       doctest::Contains("rms_norm_residual: expected weight of shape [8] (the last dim of input "
                                         "f32[2, 8] on cpu) but found f32[7]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(x, Tensor(), zeros({8}, {.dtype = DType::f64})),
                       doctest::Contains("rms_norm_residual: expected one dtype but found f32[2, 8] on cpu and f64[8] "
                                         "on cpu"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(zeros({2, 0}), Tensor()),
                       doctest::Contains("rms_norm_residual: expected an input of shape (..., D) with D >= 1 but found "
                                         "f32[2, 0]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(x, x, Tensor(), -1.0),
                       doctest::Contains("rms_norm_residual: expected eps >= 0 but found -1"), Error);
  CHECK_THROWS_WITH_AS(rms_norm_residual(Tensor(), x),
                       doctest::Contains("rms_norm_residual: input is an undefined tensor"), Error);
}
