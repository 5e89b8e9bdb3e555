// rms_norm_gated (ops/rms_norm_gated.cpp): the fused, grouped gated RMSNorm against a float64
// loop of its definition and against the composition it replaced (rms_norm, mul, silu, with a
// reshape for groups), gradcheck in f64, thread-count independence, and input errors.
#include <cmath>
#include <functional>

#include "autograd/node.h"
#include "core/parallel.h"
#include "ops/elementwise.h"
#include "ops/rms_norm.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

double silu_of(double v) { return v / (1.0 + std::exp(-v)); }

// The definition, in float64: one RMS per group of `group` consecutive channels.
std::vector<double> gated_reference(const std::vector<double>& x, const std::vector<double>& z, int64_t width,
                                    int64_t group, const std::vector<double>& weight, double eps, bool before) {
  std::vector<double> out(x.size());
  for (size_t base = 0; base < x.size(); base += size_t(group)) {
    double squares = 0.0;
    for (int64_t j = 0; j < group; ++j) {
      const size_t i = base + size_t(j);
      const double v = before ? x[i] : x[i] * silu_of(z[i]);
      squares += v * v;
    }
    const double inv = 1.0 / std::sqrt(squares / double(group) + eps);
    for (int64_t j = 0; j < group; ++j) {
      const size_t i = base + size_t(j);
      const double w = weight.empty() ? 1.0 : weight[i % size_t(width)];
      out[i] = before ? x[i] * inv * w * silu_of(z[i]) : x[i] * silu_of(z[i]) * inv * w;
    }
  }
  return out;
}

// The composition rms_norm_gated replaced: rms_norm over a reshape (..., G, group) of x * silu(z)
// (or of x), the weight applied after.
Tensor composed(const Tensor& x, const Tensor& z, const Tensor& weight, double eps, bool before, int64_t group) {
  Shape grouped = x.shape();
  grouped.back() = x.size(-1) / group;
  grouped.push_back(group);
  const Tensor v = before ? x : mul(x, silu(z));
  Tensor y = reshape(rms_norm(reshape(v, grouped), Tensor(), eps), x.shape());
  if (weight.defined()) y = mul(y, weight);
  return before ? mul(y, silu(z)) : y;
}

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

// Runs fn on fresh copies of the leaves with one upstream gradient; returns the output and the
// leaves' gradients.
std::vector<Tensor> run_with_grads(const Fn& fn, const std::vector<Tensor>& leaves, const Tensor& upstream) {
  std::vector<Tensor> in;
  for (const Tensor& t : leaves) {
    Tensor c = contiguous_copy(t, t.dtype(), Device::cpu());
    c.set_requires_grad(true);
    in.push_back(c);
  }
  Tensor y = fn(in);
  backward(y, upstream);
  std::vector<Tensor> out{y};
  for (const Tensor& t : in) out.push_back(t.grad());
  return out;
}

}  // namespace

TEST_CASE("rms_norm_gated matches a float64 loop of its definition, grouped and whole-row") {
  const int64_t width = 12;
  Tensor x = random_tensor({2, 3, width}, 1, DType::f64, -2.0, 2.0);
  Tensor z = random_tensor({2, 3, width}, 2, DType::f64, -3.0, 3.0);
  Tensor w = random_tensor({width}, 3, DType::f64, 0.5, 1.5);
  const std::vector<double> vx = x.to_double_vector(), vz = z.to_double_vector(), vw = w.to_double_vector();
  for (bool before : {false, true}) {
    for (int64_t group : {1, 3, 4, 12}) {
      CAPTURE(before);
      CAPTURE(group);
      check_close(rms_norm_gated(x, z, w, 1e-5, before, group),
                  gated_reference(vx, vz, width, group, vw, 1e-5, before), 1e-12);
      check_close(rms_norm_gated(x, z, Tensor(), 0.25, before, group),
                  gated_reference(vx, vz, width, group, {}, 0.25, before), 1e-12);
    }
    // group_size 0 is the whole row.
    check_close(rms_norm_gated(x, z, w, 1e-5, before, 0), gated_reference(vx, vz, width, width, vw, 1e-5, before),
                1e-12);
  }
  // Non-contiguous x and z (transposes).
  Tensor xt = transposed_leaf({5, 6}, 4).detach(), zt = transposed_leaf({5, 6}, 5).detach();
  check_close(rms_norm_gated(xt, zt, Tensor(), 1e-5, false, 2),
              gated_reference(xt.to_double_vector(), zt.to_double_vector(), 6, 2, {}, 1e-5, false), 1e-12);
}

TEST_CASE("rms_norm_gated is one node over x, z and weight") {
  Tensor x = random_leaf({3, 8}, 11), z = random_leaf({3, 8}, 12), w = random_leaf({8}, 13, 0.5, 1.5);
  Tensor y = rms_norm_gated(x, z, w, 1e-5, false, 4);
  REQUIRE(y.grad_fn() != nullptr);
  CHECK(y.grad_fn()->name() == "rms_norm_gated");
  REQUIRE(y.grad_fn()->next_edges.size() == 3);
  for (const autograd::Edge& e : y.grad_fn()->next_edges) {
    REQUIRE(e.valid());
    CHECK(e.node->name() == "AccumulateGrad");
  }
}

TEST_CASE("rms_norm_gated matches the composed rms_norm * silu formula, forward and backward") {
  // f64 closely; f32 and bf16 within their precision (the fused op rounds once, the composition
  // rounds every intermediate).
  for (auto [dtype, tol] : {std::pair{DType::f64, 1e-12}, std::pair{DType::f32, 2e-5}, std::pair{DType::bf16, 3e-2}}) {
    for (bool before : {false, true}) {
      for (int64_t group : {16, 4}) {
        for (bool with_weight : {true, false}) {
          CAPTURE(dtype);
          CAPTURE(before);
          CAPTURE(group);
          CAPTURE(with_weight);
          Tensor x = random_tensor({37, 16}, 21, dtype, -2.0, 2.0), z = random_tensor({37, 16}, 22, dtype, -3.0, 3.0);
          Tensor w = random_tensor({16}, 23, dtype, 0.5, 1.5), g = random_tensor({37, 16}, 24, dtype);
          std::vector<Tensor> leaves{x, z};
          if (with_weight) leaves.push_back(w);
          const double eps = 1e-5;
          auto fused = run_with_grads(
              [&](const std::vector<Tensor>& in) {
                return rms_norm_gated(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), eps, before, group);
              },
              leaves, g);
          auto reference = run_with_grads(
              [&](const std::vector<Tensor>& in) {
                return composed(in[0], in[1], in.size() > 2 ? in[2] : Tensor(), eps, before, group);
              },
              leaves, g);
          REQUIRE(fused.size() == reference.size());
          CHECK(fused[0].dtype() == dtype);
          for (size_t i = 0; i < fused.size(); ++i) {
            CAPTURE(i);  // 0: y, 1: dx, 2: dz, 3: dweight
            REQUIRE(fused[i].defined());
            CHECK(fused[i].dtype() == dtype);
            // Judge against the output's scale (gradients are sums and differences of terms).
            double scale = 0.0;
            for (double v : reference[i].to_double_vector()) scale = std::max(scale, std::abs(v));
            const std::vector<double> a = fused[i].to_double_vector(), e = reference[i].to_double_vector();
            double worst = 0.0;
            for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(a[k] - e[k]) / scale);
            CHECK(worst <= tol);
          }
        }
      }
    }
  }
}

TEST_CASE("rms_norm_gated passes gradcheck in both gate orders, grouped and whole-row") {
  for (bool before : {false, true}) {
    CAPTURE(before);
    for (int64_t group : {0, 2, 3}) {
      CAPTURE(group);
      Tensor x = random_leaf({4, 6}, 31, -2.0, 2.0), z = random_leaf({4, 6}, 32, -3.0, 3.0);
      Tensor w = random_leaf({6}, 33, 0.5, 1.5);
      check_gradients(
          [=](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], in[2], 1e-5, before, group); },
          {x, z, w});
      check_gradients(
          [=](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], Tensor(), 0.5, before, group); },
          {x, z});
    }
    // 3-d input; non-contiguous x and z; an odd width with group 1 and 5.
    Tensor x3 = random_leaf({2, 3, 4}, 34, -2.0, 2.0), z3 = random_leaf({2, 3, 4}, 35, -2.0, 2.0);
    Tensor w4 = random_leaf({4}, 36, 0.5, 1.5);
    check_gradients(
        [=](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], in[2], 1e-5, before, 2); },
        {x3, z3, w4});
    Tensor xt = transposed_leaf({5, 4}, 37), zt = transposed_leaf({5, 4}, 38);
    check_gradients(
        [=](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], in[2], 1e-5, before, 2); },
        {xt, zt, w4});
    Tensor x5 = random_leaf({3, 5}, 39, -2.0, 2.0), z5 = random_leaf({3, 5}, 40, -2.0, 2.0);
    Tensor w5 = random_leaf({5}, 41, 0.5, 1.5);
    for (int64_t group : {1, 5})
      check_gradients(
          [=](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], in[2], 1e-5, before, group); },
          {x5, z5, w5});
    // Only one input requiring grad at a time; a non-contiguous upstream gradient (a transpose).
    Tensor x4 = random_leaf({4, 6}, 42, -2.0, 2.0), z4 = random_leaf({4, 6}, 43, -2.0, 2.0);
    Tensor w6 = random_leaf({6}, 44, 0.5, 1.5);
    check_gradients(
        [=](const std::vector<Tensor>& in) { return rms_norm_gated(x4.detach(), z4.detach(), in[0], 1e-5, before, 3); },
        {w6});
    check_gradients(
        [=](const std::vector<Tensor>& in) { return rms_norm_gated(x4.detach(), in[0], w6.detach(), 1e-5, before, 3); },
        {z4});
    check_gradients(
        [=](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], z4.detach(), w6.detach(), 1e-5, before, 3); },
        {x4});
    check_gradients(
        [=](const std::vector<Tensor>& in) {
          return transpose(rms_norm_gated(in[0], in[1], in[2], 1e-5, before, 2), 0, 1);
        },
        {x4, z4, w6});
    // More rows than one dweight chunk.
    Tensor tall = random_leaf({70, 4}, 45, -2.0, 2.0), ztall = random_leaf({70, 4}, 46, -2.0, 2.0);
    check_gradients(
        [=](const std::vector<Tensor>& in) { return rms_norm_gated(in[0], in[1], in[2], 1e-5, before, 2); },
        {tall, ztall, w4});
  }
}

TEST_CASE("rms_norm_gated gradients do not depend on the thread count") {
  const int threads = num_threads();
  Tensor x = random_leaf({257, 16}, 51, -2.0, 2.0), z = random_leaf({257, 16}, 52, -2.0, 2.0);
  Tensor w = random_leaf({16}, 53, 0.5, 1.5);
  Tensor g = random_tensor({257, 16}, 54);
  for (bool before : {false, true}) {
    std::vector<std::vector<double>> grads;
    for (int n : {1, 3, 4}) {
      set_num_threads(n);
      x.zero_grad();
      z.zero_grad();
      w.zero_grad();
      backward(rms_norm_gated(x, z, w, 1e-5, before, 4), g);
      std::vector<double> all = x.grad().to_double_vector();
      for (const Tensor& t : {z.grad(), w.grad()})
        for (double v : t.to_double_vector()) all.push_back(v);
      grads.push_back(all);
    }
    CHECK(grads[0] == grads[1]);
    CHECK(grads[0] == grads[2]);
  }
  set_num_threads(threads);
}

TEST_CASE("rms_norm_gated rejects bad inputs with the op's name and shapes") {
  Tensor x = zeros({2, 8});
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, x, Tensor(), 1e-5, false, 3),
                       doctest::Contains("rms_norm_gated: expected group_size to divide the last dim D = 8 of input "
                                         "f32[2, 8] on cpu (or 0 for the whole row) but found 3"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, x, Tensor(), 1e-5, false, 16),
                       doctest::Contains("expected group_size to divide the last dim D = 8"), Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, x, Tensor(), 1e-5, false, -2),
                       doctest::Contains("expected group_size to divide the last dim D = 8"), Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, zeros({2, 7})),
                       doctest::Contains("rms_norm_gated: expected gate z of the input's shape f32[2, 8] on cpu but "
                                         "found f32[2, 7]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, zeros({8})),
                       doctest::Contains("rms_norm_gated: expected gate z of the input's shape"), Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, zeros({2, 8}, {.dtype = DType::f64})),
                       doctest::Contains("rms_norm_gated: expected one dtype"), Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, x, zeros({4})),
                       doctest::Contains("rms_norm_gated: expected weight of shape [8] (the last dim of input "
                                         "f32[2, 8] on cpu) but found f32[4]"),
                       Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(zeros({2, 8}, {.dtype = DType::i32}), x),
                       doctest::Contains("rms_norm_gated: expected input to be floating"), Error);
  CHECK_THROWS_WITH_AS(rms_norm_gated(x, x, Tensor(), -1.0),
                       doctest::Contains("rms_norm_gated: expected eps >= 0 but found -1"), Error);
}
