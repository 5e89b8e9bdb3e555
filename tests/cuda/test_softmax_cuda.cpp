// CUDA softmax and log_softmax (cuda/softmax.cu) against the CPU path on the same values,
// forward and backward, f32 and bf16: the warp-per-row, register-cached block and two-read
// kernels (rows of 1 to 50304+ columns), vector and scalar (unaligned) rows, another dim than
// the last, strided inputs, extreme logits and NaN.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/softmax.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

using ViewFn = std::function<Tensor(const Tensor&)>;
const ViewFn kSame = [](const Tensor& t) { return t; };

// softmax or log_softmax of view(base) along dim on both devices, then backward with one random
// upstream gradient; outputs compared element-wise, gradients relative to their largest value.
void check_softmax(const Tensor& base, const ViewFn& view, int64_t dim, bool log, const std::string& label) {
  const std::string what = label + (log ? " log_softmax" : " softmax") + " dim " + std::to_string(dim);
  CAPTURE(what);
  const double tol = tolerance_for(base.dtype());
  Tensor bc = cpu_leaf(base), bg = on_gpu(base, true);
  Tensor yc = log ? log_softmax(view(bc), dim) : softmax(view(bc), dim);
  Tensor yg = log ? log_softmax(view(bg), dim) : softmax(view(bg), dim);
  REQUIRE(yg.device().is_cuda());
  REQUIRE(yg.shape() == yc.shape());
  // softmax values lie in [0, 1]: judge them against 1 (and 1/C-sized values by their own size
  // through the relative check of the largest); log_softmax values relative to themselves.
  check_relative(yg, yc, tol, log ? 1.0 : std::min(1.0, max_abs(yc)), what + " forward");
  Tensor g = random_cpu(yc.shape(), 31, base.dtype(), -1.0, 1.0);
  backward(yc, g);
  backward(yg, on_gpu(g));
  REQUIRE(bg.grad().defined());
  check_relative(bg.grad(), bc.grad(), tol, std::max(max_abs(bc.grad()), 1e-30), what + " backward");
}

void check_both(const Tensor& base, const ViewFn& view, int64_t dim, const std::string& label) {
  for (bool log : {false, true}) check_softmax(base, view, dim, log, label);
}

}  // namespace

TEST_CASE("cuda softmax matches the CPU on small and odd shapes (f32, bf16)") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    check_both(random_cpu({1, 1}, 1, dtype), kSame, -1, "(1, 1)");
    check_both(random_cpu({1}, 2, dtype), kSame, 0, "(1)");
    check_both(random_cpu({3, 7}, 3, dtype, -3.0, 3.0), kSame, -1, "(3, 7)");
    check_both(random_cpu({3, 7}, 3, dtype, -3.0, 3.0), kSame, 0, "(3, 7) dim 0");
    check_both(random_cpu({2, 3, 1025}, 4, dtype, -3.0, 3.0), kSame, -1, "(2, 3, 1025)");
    check_both(random_cpu({2, 3, 1024}, 5, dtype, -3.0, 3.0), kSame, -1, "(2, 3, 1024)");  // vector rows
    check_both(random_cpu({300, 64}, 6, dtype, -3.0, 3.0), kSame, -1, "(300, 64)");        // warp rows
    check_both(random_cpu({17, 4000}, 7, dtype, -3.0, 3.0), kSame, -1, "(17, 4000)");      // cached block rows
  }
}

TEST_CASE("cuda softmax handles vocabulary-sized rows (50304 columns and more)") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    check_both(random_cpu({5, 50304}, 8, dtype, -8.0, 8.0), kSame, -1, "(5, 50304)");
    check_both(random_cpu({2, 50305}, 9, dtype, -8.0, 8.0), kSame, -1, "(2, 50305)");    // scalar, two reads
    check_both(random_cpu({2, 131072}, 10, dtype, -8.0, 8.0), kSame, -1, "(2, 131072)");  // vector, two reads
  }
}

TEST_CASE("cuda softmax along another dim than the last, and of strided inputs") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    CAPTURE(dtype);
    const Tensor x = random_cpu({4, 33, 6}, 11, dtype, -3.0, 3.0);
    for (int64_t dim : {0, 1, 2, -2}) check_both(x, kSame, dim, "(4, 33, 6)");
    const Tensor t = random_cpu({9, 70}, 12, dtype, -3.0, 3.0);
    const ViewFn transposed = [](const Tensor& v) { return transpose(v, 0, 1); };
    check_both(t, transposed, 1, "transposed");
    check_both(t, transposed, 0, "transposed");
    check_both(random_cpu({6, 80}, 13, dtype, -3.0, 3.0), [](const Tensor& v) { return slice(v, 1, 3, 80, 2); }, 1,
               "sliced");
  }
}

TEST_CASE("cuda softmax of extreme logits stays finite; a NaN makes its row NaN") {
  std::vector<float> v(2 * 300, 0.0f);
  for (size_t i = 0; i < 300; ++i) v[i] = float(i) * 100.0f;  // huge spread: exp would overflow unshifted
  for (size_t i = 300; i < 600; ++i) v[i] = -float(i) * 100.0f;
  v[0] = -1e30f;
  const Tensor x = from_vector(v, {2, 300});
  for (bool log : {false, true}) {
    Tensor yc = log ? log_softmax(x, 1) : softmax(x, 1);
    Tensor yg = log ? log_softmax(on_gpu(x), 1) : softmax(on_gpu(x), 1);
    check_relative(yg, yc, 1e-5, 1.0, log ? "extreme log_softmax" : "extreme softmax");
  }
  v[305] = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> y = softmax(on_gpu(from_vector(v, {2, 300})), 1).to_vector<float>();
  for (size_t i = 0; i < 300; ++i) CHECK(std::isfinite(y[i]));
  for (size_t i = 300; i < 600; ++i) CHECK(std::isnan(y[i]));
}
