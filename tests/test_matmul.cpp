#include <cstring>

#include "autograd/grad_mode.h"
#include "autograd/node.h"
#include "core/parallel.h"
#include "ops/elementwise.h"
#include "ops/matmul.h"
#include "ops/matmul_cpu.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Naive float64 triple loop with numpy batch broadcasting; a (..., m, k), b (..., k, n).
std::vector<double> reference_matmul(const Tensor& a, const Tensor& b, Shape* out_shape = nullptr) {
  const std::vector<double> va = a.to_double_vector(), vb = b.to_double_vector();
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const Shape a_batch(a.shape().begin(), a.shape().end() - 2), b_batch(b.shape().begin(), b.shape().end() - 2);
  const Shape batch = broadcast_shapes(a_batch, b_batch, "reference");
  std::vector<double> out;
  for (int64_t bi = 0; bi < numel_of(batch); ++bi) {
    // Flat matrix index of a and b for batch element bi (size-1 dims repeat).
    int64_t rem = bi, ia = 0, ib = 0, sa = 1, sb = 1;
    for (size_t d = batch.size(); d-- > 0;) {
      const int64_t idx = rem % batch[d];
      rem /= batch[d];
      const size_t off_a = batch.size() - a_batch.size(), off_b = batch.size() - b_batch.size();
      if (d >= off_a) {
        const int64_t size = a_batch[d - off_a];
        ia += (size == 1 ? 0 : idx) * sa;
        sa *= size;
      }
      if (d >= off_b) {
        const int64_t size = b_batch[d - off_b];
        ib += (size == 1 ? 0 : idx) * sb;
        sb *= size;
      }
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0.0;
        for (int64_t p = 0; p < k; ++p) s += va[size_t(ia * m * k + i * k + p)] * vb[size_t(ib * k * n + p * n + j)];
        out.push_back(s);
      }
  }
  if (out_shape) {
    *out_shape = batch;
    out_shape->insert(out_shape->end(), {m, n});
  }
  return out;
}

void check_matmul(const Tensor& a, const Tensor& b, double tol) {
  Shape expected_shape;
  std::vector<double> expected = reference_matmul(a, b, &expected_shape);
  Tensor out = matmul(a, b);
  CHECK(out.shape() == expected_shape);
  CHECK(out.dtype() == a.dtype());
  check_close(out, expected, tol);
}

// A (rows, cols) view with non-unit strides in both dims, so no BLAS layout fits.
Tensor strided_view(const Shape& shape, uint64_t seed, DType dtype = DType::f64) {
  Tensor base = random_tensor({shape[0] * 2, shape[1] * 3}, seed, dtype);
  return slice(slice(base, 0, 0, shape[0] * 2, 2), 1, 0, shape[1] * 3, 3);
}

Tensor transposed(const Shape& shape, uint64_t seed, DType dtype = DType::f64) {
  return transpose(random_tensor({shape[1], shape[0]}, seed, dtype), 0, 1);
}

// The gradients out's node hands its inputs for output gradient g: what the engine passes on,
// before a leaf copies it into .grad.
std::vector<Tensor> node_grads(const Tensor& out, const Tensor& g) {
  NoGradGuard no_grad;
  return out.grad_fn()->apply({g});
}

Tensor transpose_last(const Tensor& t) { return transpose(t, -2, -1); }

bool same_storage(const Tensor& a, const Tensor& b) { return a.impl()->storage == b.impl()->storage; }

}  // namespace

TEST_CASE("matmul 2-D matches a float64 loop on sizes that are not block multiples") {
  INFO("gemm backend: ", cpu::gemm_backend());
  const std::vector<std::array<int64_t, 3>> sizes = {
      {1, 1, 1}, {7, 13, 5}, {65, 130, 33}, {4, 1, 9}, {1, 300, 1}, {67, 259, 260}};
  uint64_t seed = 100;
  for (auto [m, k, n] : sizes) {
    CAPTURE(m);
    CAPTURE(k);
    CAPTURE(n);
    Tensor a = random_tensor({m, k}, seed), b = random_tensor({k, n}, seed + 1);
    seed += 2;
    check_matmul(a, b, 1e-12);
  }
}

TEST_CASE("matmul reads transposed and strided operands without changing the result") {
  check_matmul(transposed({7, 13}, 1), random_tensor({13, 5}, 2), 1e-12);
  check_matmul(random_tensor({7, 13}, 3), transposed({13, 5}, 4), 1e-12);
  check_matmul(transposed({65, 130}, 5), transposed({130, 33}, 6), 1e-12);
  check_matmul(strided_view({9, 11}, 7), strided_view({11, 6}, 8), 1e-12);
  check_matmul(strided_view({9, 11}, 9, DType::f32), transposed({11, 6}, 10, DType::f32), 1e-5);
  // A row-broadcast operand (stride 0 along rows).
  check_matmul(expand(random_tensor({1, 6}, 11), {5, 6}), random_tensor({6, 4}, 12), 1e-12);
}

TEST_CASE("matmul broadcasts batch dimensions and handles vectors like numpy") {
  check_matmul(random_tensor({2, 1, 3, 4}, 21), random_tensor({5, 4, 6}, 22), 1e-12);
  check_matmul(random_tensor({3, 4}, 23), random_tensor({2, 4, 5}, 24), 1e-12);
  check_matmul(random_tensor({2, 3, 4}, 25), random_tensor({4, 5}, 26), 1e-12);
  check_matmul(transpose(random_tensor({3, 5, 4}, 27), 1, 2), random_tensor({1, 5, 2}, 28), 1e-12);
  check_matmul(random_tensor({2, 0, 3, 4}, 29), random_tensor({4, 2}, 30), 1e-12);
  check_matmul(random_tensor({3, 0}, 31), random_tensor({0, 2}, 32), 1e-12);  // empty sum: zeros

  Tensor a = random_tensor({2, 3, 4}, 33), v = random_tensor({4}, 34), w = random_tensor({3}, 35);
  Tensor av = matmul(a, v);
  CHECK(av.shape() == Shape{2, 3});
  check_close(av, reference_matmul(a, reshape(v, {4, 1})), 1e-12);
  Tensor wa = matmul(w, a);
  CHECK(wa.shape() == Shape{2, 4});
  check_close(wa, reference_matmul(reshape(w, {1, 3}), a), 1e-12);
  Tensor dot = matmul(v, v);
  CHECK(dot.dim() == 0);
  check_close(dot, reference_matmul(reshape(v, {1, 4}), reshape(v, {4, 1})), 1e-12);
}

TEST_CASE("bmm and linear match a float64 loop") {
  Tensor a = random_tensor({3, 5, 7}, 41), b = random_tensor({3, 7, 2}, 42);
  Tensor out = bmm(a, b);
  CHECK(out.shape() == Shape{3, 5, 2});
  check_close(out, reference_matmul(a, b), 1e-12);

  Tensor x = random_tensor({2, 3, 6}, 43), weight = random_tensor({4, 6}, 44), bias = random_tensor({4}, 45);
  std::vector<double> expected = reference_matmul(x, transpose(weight, 0, 1));
  Tensor y = linear(x, weight);
  CHECK(y.shape() == Shape{2, 3, 4});
  check_close(y, expected, 1e-12);
  std::vector<double> vb = bias.to_double_vector();
  for (size_t i = 0; i < expected.size(); ++i) expected[i] += vb[i % 4];
  check_close(linear(x, weight, bias), expected, 1e-12);
  // Non-contiguous input and weight, 1-D input.
  Tensor xt = transpose(random_tensor({6, 5}, 46), 0, 1), wt = transpose(random_tensor({6, 4}, 47), 0, 1);
  check_close(linear(xt, wt, bias), [&] {
    std::vector<double> e = reference_matmul(xt, transpose(wt, 0, 1));
    for (size_t i = 0; i < e.size(); ++i) e[i] += vb[i % 4];
    return e;
  }(), 1e-12);
  Tensor x1 = random_tensor({6}, 48);
  Tensor y1 = linear(x1, weight, bias);
  CHECK(y1.shape() == Shape{4});
}

TEST_CASE("f32, bf16 and f16 products match the float64 product of the same values") {
  // The reference uses the low-precision inputs exactly; the tolerance covers float
  // accumulation over k <= 130 terms (about k * 2^-24 for f32) and the final rounding to the
  // output dtype (2^-8 for bf16, 2^-11 for f16, relative).
  struct Case { DType dtype; double tol; };
  for (Case c : {Case{DType::f32, 1e-5}, Case{DType::bf16, 8e-3}, Case{DType::f16, 1e-3}}) {
    CAPTURE(c.dtype);
    check_matmul(random_tensor({65, 130}, 51, c.dtype), random_tensor({130, 33}, 52, c.dtype), c.tol);
    check_matmul(transposed({7, 13}, 53, c.dtype), transposed({13, 5}, 54, c.dtype), c.tol);
    check_matmul(random_tensor({2, 1, 3, 4}, 55, c.dtype), random_tensor({5, 4, 6}, 56, c.dtype), c.tol);
    Tensor x = random_tensor({3, 70}, 57, c.dtype), w = random_tensor({9, 70}, 58, c.dtype);
    Tensor bias = random_tensor({9}, 59, c.dtype);
    std::vector<double> expected = reference_matmul(x, transpose(w, 0, 1)), vb = bias.to_double_vector();
    for (size_t i = 0; i < expected.size(); ++i) expected[i] += vb[i % 9];
    check_close(linear(x, w, bias), expected, c.tol);
  }
}

TEST_CASE("matmul results do not depend on the thread count") {
  const int threads = num_threads();
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    CAPTURE(dtype);
    Tensor a = random_tensor({3, 130, 300}, 61, dtype), b = random_tensor({300, 270}, 62, dtype);
    set_num_threads(1);
    Tensor one = matmul(a, b);
    set_num_threads(4);
    Tensor four = matmul(a, b);
    set_num_threads(threads);
    CHECK(std::memcmp(one.raw_data(), four.raw_data(), one.nbytes()) == 0);
  }
}

TEST_CASE("matmul, bmm and linear pass gradcheck") {
  auto mm = [](const std::vector<Tensor>& in) { return matmul(in[0], in[1]); };
  check_gradients(mm, {random_leaf({3, 4}, 71), random_leaf({4, 5}, 72)});
  check_gradients(mm, {transposed_leaf({3, 4}, 73), transposed_leaf({4, 5}, 74)});
  check_gradients(mm, {random_leaf({2, 1, 3, 4}, 75), random_leaf({5, 4, 6}, 76)});
  check_gradients(mm, {random_leaf({3, 4}, 77), transposed_leaf({2, 4, 2}, 78)});
  check_gradients(mm, {random_leaf({4}, 79), random_leaf({2, 4, 3}, 80)});
  check_gradients(mm, {random_leaf({2, 3, 4}, 81), random_leaf({4}, 82)});
  check_gradients(mm, {random_leaf({4}, 83), random_leaf({4}, 84)});

  check_gradients([](const std::vector<Tensor>& in) { return bmm(in[0], in[1]); },
                  {random_leaf({2, 3, 4}, 85), transposed_leaf({2, 4, 5}, 86)});

  auto lin = [](const std::vector<Tensor>& in) { return linear(in[0], in[1]); };
  auto lin_bias = [](const std::vector<Tensor>& in) { return linear(in[0], in[1], in[2]); };
  check_gradients(lin, {random_leaf({2, 3, 4}, 87), random_leaf({5, 4}, 88)});
  check_gradients(lin_bias, {random_leaf({2, 3, 4}, 89), random_leaf({5, 4}, 90), random_leaf({5}, 91)});
  check_gradients(lin_bias, {transposed_leaf({3, 4}, 92), transposed_leaf({5, 4}, 93), random_leaf({5}, 94)});
  check_gradients(lin_bias, {random_leaf({4}, 95), random_leaf({5, 4}, 96), random_leaf({5}, 97)});
}

TEST_CASE("matmul hands a transposed operand its gradient transposed, so its leaf's arrives contiguous") {
  struct Case { Shape a, b; bool a_t, b_t; };  // a_t: a = transpose_last(leaf); shapes are a's and b's
  const std::vector<Case> cases = {
      {{5, 3}, {3, 4}, true, false},       {{5, 3}, {3, 4}, false, true},       {{5, 3}, {3, 4}, true, true},
      {{2, 5, 3}, {2, 3, 4}, true, true},  {{2, 5, 3}, {3, 4}, true, true},     // b broadcast, a not
      {{2, 2, 5, 3}, {2, 1, 3, 4}, true, false}};
  uint64_t seed = 140;
  for (const Case& c : cases) {
    CAPTURE(c.a); CAPTURE(c.b); CAPTURE(c.a_t); CAPTURE(c.b_t);
    // The leaves are stored transposed where the op sees a transpose.
    auto swap_last = [](Shape s) {
      std::swap(s[s.size() - 1], s[s.size() - 2]);
      return s;
    };
    Tensor la = random_leaf(c.a_t ? swap_last(c.a) : c.a, ++seed);
    Tensor lb = random_leaf(c.b_t ? swap_last(c.b) : c.b, ++seed);
    Tensor a = c.a_t ? transpose_last(la) : la, b = c.b_t ? transpose_last(lb) : lb;
    Tensor y = matmul(a, b);
    Tensor g = random_tensor(y.shape(), ++seed);
    std::vector<Tensor> grads = node_grads(y, g);
    // Today's formulas on contiguous copies (a's batch dims are never broadcast in these cases).
    std::vector<double> ga_ref = reference_matmul(g, transpose_last(b));
    Tensor gb_ref = sum_to(matmul(transpose_last(contiguous(a.detach())), g), b.shape());
    check_close(grads[0], ga_ref, 1e-12);
    check_close(grads[1], gb_ref.to_double_vector(), 1e-12);
    const bool b_broadcast = b.dim() != y.dim();
    for (int i = 0; i < 2; ++i) {
      const Tensor& op = i == 0 ? a : b;
      const bool transposed_op = i == 0 ? c.a_t : c.b_t;
      if (!transposed_op) continue;
      if (i == 1 && b_broadcast) {
        CHECK(grads[1].is_contiguous());  // summed over the batch: today's path
        continue;
      }
      CHECK(grads[size_t(i)].strides() == op.strides());
      // The transpose's backward turns it back into a contiguous tensor on the same memory.
      Tensor leaf_grad = node_grads(op, grads[size_t(i)])[0];
      CHECK(leaf_grad.is_contiguous());
      CHECK(same_storage(leaf_grad, grads[size_t(i)]));
    }
    backward(y, g);
    CHECK(la.grad().is_contiguous());
    check_close(c.a_t ? transpose_last(la.grad()) : la.grad(), grads[0].to_double_vector(), 0.0);
  }
}

TEST_CASE("linear hands a 2-D transposed input its gradient transposed") {
  Tensor lx = random_leaf({6, 5}, 150);  // (in, rows)
  Tensor x = transpose(lx, 0, 1), w = random_leaf({4, 6}, 151), bias = random_leaf({4}, 152);
  Tensor y = linear(x, w, bias);
  Tensor g = random_tensor({5, 4}, 153);
  std::vector<Tensor> grads = node_grads(y, g);
  CHECK(grads[0].strides() == x.strides());
  check_close(grads[0], reference_matmul(g, w), 1e-12);
  check_close(grads[1], reference_matmul(transpose(g, 0, 1), x), 1e-12);
  Tensor leaf_grad = node_grads(x, grads[0])[0];
  CHECK(leaf_grad.is_contiguous());
  CHECK(same_storage(leaf_grad, grads[0]));
  // A 3-D input takes today's path: reshaped rows, contiguous gradient.
  Tensor x3 = transpose(random_leaf({2, 6, 5}, 154), 1, 2);
  std::vector<Tensor> grads3 = node_grads(linear(x3, w), random_tensor({2, 5, 4}, 155));
  CHECK(grads3[0].is_contiguous());
}

TEST_CASE("matmul and linear pass gradcheck through transposed operands") {
  auto mm_t = [](const std::vector<Tensor>& in) { return matmul(transpose_last(in[0]), transpose_last(in[1])); };
  check_gradients(mm_t, {random_leaf({4, 3}, 161), random_leaf({5, 4}, 162)});
  check_gradients(mm_t, {random_leaf({2, 4, 3}, 163), random_leaf({2, 5, 4}, 164)});
  check_gradients(mm_t, {random_leaf({2, 4, 3}, 165), random_leaf({5, 4}, 166)});     // b broadcast
  check_gradients(mm_t, {random_leaf({4, 3}, 167), random_leaf({3, 5, 4}, 168)});     // a broadcast
  check_gradients([](const std::vector<Tensor>& in) { return matmul(in[0], transpose_last(in[1])); },
                  {random_leaf({4}, 169), random_leaf({5, 4}, 170)});                 // 1-D a
  check_gradients([](const std::vector<Tensor>& in) { return matmul(transpose_last(in[0]), in[1]); },
                  {random_leaf({4, 3}, 171), random_leaf({4}, 172)});                 // 1-D b
  check_gradients([](const std::vector<Tensor>& in) { return linear(transpose_last(in[0]), in[1], in[2]); },
                  {random_leaf({4, 3}, 173), random_leaf({5, 4}, 174), random_leaf({5}, 175)});
}

TEST_CASE("linear's bias gradient sums over every leading dimension") {
  Tensor x = random_leaf({2, 3, 4}, 101), w = random_leaf({5, 4}, 102), bias = random_leaf({5}, 103);
  backward(sum(linear(x, w, bias)));
  check_close(bias.grad(), std::vector<double>(5, 6.0), 1e-12);
}

TEST_CASE("matmul, bmm and linear reject bad inputs with clear messages") {
  Tensor a = random_tensor({2, 3}, 111), b = random_tensor({4, 5}, 112);
  CHECK_THROWS_WITH_AS(matmul(a, b), doctest::Contains("matmul: inner dimensions differ: f64[2, 3] on cpu @ f64[4, 5]"), Error);
  CHECK_THROWS_WITH_AS(matmul(random_tensor({3}, 113), b), doctest::Contains("matmul: inner dimensions differ"), Error);
  CHECK_THROWS_WITH_AS(matmul(random_tensor({2, 2, 3}, 114), random_tensor({3, 3, 4}, 115)),
                       doctest::Contains("matmul: batch dimensions [2] and [3] do not broadcast"), Error);
  CHECK_THROWS_WITH_AS(matmul(a, random_tensor({3, 2}, 116, DType::f32)),
                       doctest::Contains("matmul: expected one dtype but found f64[2, 3]"), Error);
  Tensor ints = arange(0, 6);
  CHECK_THROWS_WITH_AS(matmul(reshape(ints, {2, 3}), reshape(ints, {3, 2})),
                       doctest::Contains("matmul: expected a to be floating but found i64[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(matmul(scalar_tensor(1.0, {.dtype = DType::f64}), a),
                       doctest::Contains("matmul: expected operands with at least one dimension"), Error);
  CHECK_THROWS_WITH_AS(bmm(a, b), doctest::Contains("bmm: expected a to have 3 dimensions but found f64[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(bmm(random_tensor({2, 3, 4}, 117), random_tensor({3, 4, 5}, 118)),
                       doctest::Contains("bmm: batch sizes differ: f64[2, 3, 4] on cpu @ f64[3, 4, 5]"), Error);
  CHECK_THROWS_WITH_AS(bmm(random_tensor({2, 3, 4}, 119), random_tensor({2, 5, 5}, 120)),
                       doctest::Contains("bmm: inner dimensions differ"), Error);
  Tensor w = random_tensor({5, 4}, 121);
  CHECK_THROWS_WITH_AS(linear(random_tensor({2, 3}, 122), w),
                       doctest::Contains("linear: expected input with last dimension 4 for weight f64[5, 4] on cpu but found f64[2, 3]"), Error);
  CHECK_THROWS_WITH_AS(linear(random_tensor({2, 4}, 123), w, random_tensor({4}, 124)),
                       doctest::Contains("linear: expected bias of shape [5]"), Error);
  CHECK_THROWS_WITH_AS(linear(random_tensor({2, 4}, 125), random_tensor({5, 4, 1}, 126)),
                       doctest::Contains("linear: expected weight to have 2 dimensions"), Error);
  CHECK_THROWS_WITH_AS(linear(random_tensor({2, 4}, 127, DType::f32), w),
                       doctest::Contains("linear: expected one dtype"), Error);
}
