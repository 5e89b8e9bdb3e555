// cuBLASLt matrix products (cuda/matmul.cpp) against the float64 CPU product of the same values,
// forward and backward. Error bounds are honest for a GEMM: an element's error scales with
// sum_k |a_ik * b_kj| (the magnitude of its terms), not with the (possibly cancelled) result, so
// every element is judged against that magnitude, computed by running the same op in f64 on
// the absolute values of the inputs and of the upstream gradient.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "cuda/matmul.h"
#include "ops/matmul.h"
#include "ops/matmul_options.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

struct Result {
  Tensor out;
  std::vector<Tensor> grads;  // one per input
};

// |t| as a float64 CPU tensor.
Tensor abs_f64(const Tensor& t) {
  std::vector<double> v = t.to_double_vector();
  for (double& x : v) x = std::abs(x);
  return from_vector(v, t.shape());
}

// fn on fresh leaves made from `inputs` by `make_leaf`, then backward with upstream gradient `grad`.
Result run(const Fn& fn, const std::vector<Tensor>& inputs, const Tensor& grad,
           const std::function<Tensor(const Tensor&)>& convert) {
  std::vector<Tensor> leaves;
  for (const Tensor& x : inputs) {
    Tensor leaf = convert(x);
    leaf.set_requires_grad(true);
    leaves.push_back(leaf);
  }
  Result r;
  r.out = fn(leaves);
  backward(r.out, convert(grad));
  for (const Tensor& leaf : leaves) r.grads.push_back(leaf.grad());
  return r;
}

Result run_gpu(const Fn& fn, const std::vector<Tensor>& inputs, const Tensor& grad) {
  return run(fn, inputs, grad, [](const Tensor& t) { return contiguous_copy(t, t.dtype(), gpu()); });
}
Result run_f64(const Fn& fn, const std::vector<Tensor>& inputs, const Tensor& grad) {
  return run(fn, inputs, grad, [](const Tensor& t) { return contiguous_copy(t, DType::f64, Device::cpu()); });
}
Result run_abs_f64(const Fn& fn, const std::vector<Tensor>& inputs, const Tensor& grad) {
  return run(fn, inputs, grad, [](const Tensor& t) { return abs_f64(t); });
}

// Every element: |actual - expected| <= rtol * magnitude (the sum of |terms| of that element).
// Returns the worst ratio error / magnitude.
double check_bounded(const Tensor& actual, const Tensor& expected, const Tensor& magnitude, double rtol,
                     const std::string& what) {
  REQUIRE(actual.defined());
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector(),
                            mag = magnitude.to_double_vector();
  int64_t bad = 0, first_bad = -1;
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double scale = std::max(mag[i], 1e-300);
    const double err = std::abs(a[i] - e[i]);
    const bool ok = err <= rtol * scale;  // NaN (an unwritten element) fails
    if (!ok && first_bad < 0) first_bad = int64_t(i);
    bad += ok ? 0 : 1;
    if (std::isfinite(err)) worst = std::max(worst, err / scale);
  }
  INFO(what, ": ", bad, " of ", a.size(), " elements off (rtol ", rtol, "); worst error / magnitude ", worst,
       first_bad >= 0 ? ", first at " + std::to_string(first_bad) + ": " + std::to_string(a[size_t(first_bad)]) +
                            " vs " + std::to_string(e[size_t(first_bad)])
                      : std::string());
  CHECK(bad == 0);
  return worst;
}

// Runs fn forward and backward on the GPU in `dtype` and compares output and every gradient with
// the float64 CPU run on the same values. Returns the worst forward error / magnitude.
double check_op(const std::string& what, const Fn& fn, const std::vector<Shape>& shapes, DType dtype, double rtol,
                uint64_t seed) {
  INFO(what, " in ", dtype_name(dtype));
  std::vector<Tensor> inputs;
  for (const Shape& shape : shapes) inputs.push_back(random_cpu(shape, seed++, dtype));
  Tensor out_f64;
  {
    std::vector<Tensor> leaves;
    for (const Tensor& x : inputs) leaves.push_back(contiguous_copy(x, DType::f64, Device::cpu()));
    out_f64 = fn(leaves);
  }
  const Tensor grad = random_cpu(out_f64.shape(), seed++, dtype);
  const Result got = run_gpu(fn, inputs, grad);
  const Result want = run_f64(fn, inputs, grad);
  const Result magnitude = run_abs_f64(fn, inputs, grad);
  CHECK(got.out.device() == gpu());
  CHECK(got.out.dtype() == dtype);
  const double worst = check_bounded(got.out, want.out, magnitude.out, rtol, what + " forward");
  for (size_t i = 0; i < inputs.size(); ++i)
    check_bounded(got.grads[i], want.grads[i], magnitude.grads[i], rtol, what + " gradient of input " + std::to_string(i));
  return worst;
}

const Fn kMatmul = [](const std::vector<Tensor>& v) { return matmul(v[0], v[1]); };

}  // namespace

TEST_CASE("cuBLASLt matmul matches the float64 product, forward and backward, f32 exact and bf16") {
  const std::vector<std::array<int64_t, 3>> sizes = {{1, 1, 1}, {7, 13, 5}, {65, 130, 33}, {1000, 1024, 1000}};
  uint64_t seed = 1;
  for (auto [m, k, n] : sizes) {
    std::ostringstream what_stream;
    what_stream << "(" << m << " x " << k << ") @ (" << k << " x " << n << ")";
    const std::string what = what_stream.str();
    check_op(what, kMatmul, {{m, k}, {k, n}}, DType::f32, 1e-5, seed += 10);
    check_op(what, kMatmul, {{m, k}, {k, n}}, DType::bf16, 1e-2, seed += 10);
  }
}

TEST_CASE("cuBLASLt matmul in f16 and f64") {
  uint64_t seed = 200;
  for (auto [m, k, n] : std::vector<std::array<int64_t, 3>>{{1, 1, 1}, {7, 13, 5}, {65, 130, 33}}) {
    check_op("f16/f64 product", kMatmul, {{m, k}, {k, n}}, DType::f16, 1e-2, seed += 10);
    check_op("f16/f64 product", kMatmul, {{m, k}, {k, n}}, DType::f64, 1e-12, seed += 10);
  }
}

TEST_CASE("transposed operands go to cuBLASLt as flags; other layouts are copied first") {
  uint64_t seed = 300;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const double rtol = tolerance_for(dtype);
    // a^T @ b, a @ b^T, a^T @ b^T from contiguous leaves: unit row strides.
    check_op("a^T @ b", [](const std::vector<Tensor>& v) { return matmul(transpose(v[0], 0, 1), v[1]); },
             {{33, 65}, {33, 17}}, dtype, rtol, seed += 10);
    check_op("a @ b^T", [](const std::vector<Tensor>& v) { return matmul(v[0], transpose(v[1], 0, 1)); },
             {{65, 33}, {17, 33}}, dtype, rtol, seed += 10);
    check_op("a^T @ b^T",
             [](const std::vector<Tensor>& v) { return matmul(transpose(v[0], 0, 1), transpose(v[1], 0, 1)); },
             {{33, 65}, {17, 33}}, dtype, rtol, seed += 10);
    // Every other element in both dims: no unit stride, so the operand is made contiguous.
    check_op("strided a @ b",
             [](const std::vector<Tensor>& v) { return matmul(slice(slice(v[0], 0, 0, 130, 2), 1, 0, 66, 2), v[1]); },
             {{130, 66}, {33, 17}}, dtype, rtol, seed += 10);
    // Rows padded (ld > cols) and a view one element in: unaligned pointers and leading dims.
    check_op("offset views",
             [](const std::vector<Tensor>& v) { return matmul(narrow(v[0], 1, 1, 31), narrow(v[1], 0, 1, 31)); },
             {{19, 33}, {33, 23}}, dtype, rtol, seed += 10);
    // Transposed batches: (b, k, m)^T per matrix.
    check_op("batched a^T @ b",
             [](const std::vector<Tensor>& v) { return matmul(transpose(v[0], 1, 2), v[1]); },
             {{4, 65, 33}, {4, 65, 17}}, dtype, rtol, seed += 10);
  }
}

TEST_CASE("batched and broadcast products") {
  uint64_t seed = 400;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const double rtol = tolerance_for(dtype);
    check_op("bmm (4,33,65) @ (4,65,17)", [](const std::vector<Tensor>& v) { return bmm(v[0], v[1]); },
             {{4, 33, 65}, {4, 65, 17}}, dtype, rtol, seed += 10);
    check_op("matmul (4,33,65) @ (4,65,17)", kMatmul, {{4, 33, 65}, {4, 65, 17}}, dtype, rtol, seed += 10);
    // Batch dims that don't collapse to one stride: expanded copies.
    check_op("(2,1,3,4) @ (5,4,6)", kMatmul, {{2, 1, 3, 4}, {5, 4, 6}}, dtype, rtol, seed += 10);
    // A shared right operand: the batch folds into the rows of one GEMM.
    check_op("(3,7,5) @ (5,4)", kMatmul, {{3, 7, 5}, {5, 4}}, dtype, rtol, seed += 10);
    // A shared left operand: batch stride 0 for it.
    check_op("(7,5) @ (3,5,4)", kMatmul, {{7, 5}, {3, 5, 4}}, dtype, rtol, seed += 10);
    check_op("(2,3,1,5) @ (3,5,4)", kMatmul, {{2, 3, 1, 5}, {3, 5, 4}}, dtype, rtol, seed += 10);
    // Vectors (numpy semantics): row vector, column vector, dot product.
    check_op("(5) @ (5,4)", kMatmul, {{5}, {5, 4}}, dtype, rtol, seed += 10);
    check_op("(3,7,5) @ (5)", kMatmul, {{3, 7, 5}, {5}}, dtype, rtol, seed += 10);
    check_op("(37) @ (37)", kMatmul, {{37}, {37}}, dtype, rtol, seed += 10);
  }
}

TEST_CASE("linear with and without bias: output, input, weight and bias gradients") {
  uint64_t seed = 500;
  const Fn with_bias = [](const std::vector<Tensor>& v) { return linear(v[0], v[1], v[2]); };
  const Fn without_bias = [](const std::vector<Tensor>& v) { return linear(v[0], v[1]); };
  for (DType dtype : {DType::f32, DType::bf16, DType::f64}) {
    const double rtol = tolerance_for(dtype);
    check_op("linear (2,5,33) -> 17 with bias", with_bias, {{2, 5, 33}, {17, 33}, {17}}, dtype, rtol, seed += 10);
    check_op("linear (2,5,33) -> 17", without_bias, {{2, 5, 33}, {17, 33}}, dtype, rtol, seed += 10);
    check_op("linear (1,1) -> 1 with bias", with_bias, {{1, 1}, {1, 1}, {1}}, dtype, rtol, seed += 10);
    check_op("linear (300,257) -> 129 with bias", with_bias, {{300, 257}, {129, 257}, {129}}, dtype, rtol,
             seed += 10);
    // A non-contiguous bias (every other element) is packed before the epilogue reads it.
    check_op("linear with a strided bias",
             [](const std::vector<Tensor>& v) { return linear(v[0], v[1], slice(v[2], 0, 0, 34, 2)); },
             {{9, 33}, {17, 33}, {34}}, dtype, rtol, seed += 10);
  }
}

TEST_CASE("TF32 is opt-in: off gives fp32 accuracy, on stays within TF32 bounds") {
  REQUIRE_FALSE(allow_tf32());
  const Shape a_shape{512, 1024}, b_shape{1024, 384};
  const double exact = check_op("tf32 off", kMatmul, {a_shape, b_shape}, DType::f32, 1e-5, 600);
  double fast = 0.0;
  {
    AllowTf32Guard tf32(true);
    // Inputs rounded to 10-bit mantissas (unit roundoff 2^-11; 2^-10 if truncated): each product
    // is off by at most ~2e-3 of its magnitude, and the sum of them by no more.
    fast = check_op("tf32 on", kMatmul, {a_shape, b_shape}, DType::f32, 2e-3, 600);
  }
  CHECK_FALSE(allow_tf32());
  MESSAGE("worst error / magnitude: fp32 ", exact, ", tf32 ", fast);
  // TF32 tensor cores make the error visibly larger; if not, the switch did not reach cuBLASLt.
  WARN(fast > 10 * exact);
}

TEST_CASE("GEMM plans are cached: repeating a product builds no new plan") {
  Tensor a = on_gpu(random_cpu({96, 80}, 700, DType::bf16));
  Tensor b = on_gpu(random_cpu({80, 48}, 701, DType::bf16));
  Tensor first = matmul(a, b);
  const size_t plans = cuda::gemm_plan_count();
  Tensor second = matmul(a, b);
  CHECK(cuda::gemm_plan_count() == plans);
  CHECK(first.to_double_vector() == second.to_double_vector());  // deterministic run to run
}

TEST_CASE("empty products: zero rows give an empty result, an empty sum gives zeros (or the bias)") {
  Tensor a = on_gpu(random_cpu({0, 5}, 800));
  Tensor b = on_gpu(random_cpu({5, 4}, 801));
  CHECK(matmul(a, b).shape() == Shape{0, 4});
  Tensor x = on_gpu(random_cpu({3, 0}, 802));
  Tensor w = on_gpu(random_cpu({0, 4}, 803));
  check_relative(matmul(x, w), zeros({3, 4}), 0.0, 1.0, "k = 0");
  Tensor weight = on_gpu(random_cpu({4, 0}, 804));
  Tensor bias_cpu = random_cpu({4}, 805);
  Tensor out = linear(x, weight, on_gpu(bias_cpu));
  std::vector<double> expected;
  for (int r = 0; r < 3; ++r)
    for (double v : bias_cpu.to_double_vector()) expected.push_back(v);
  check_relative(out, from_vector(expected, {3, 4}), 0.0, 1.0, "k = 0 with bias");
}
