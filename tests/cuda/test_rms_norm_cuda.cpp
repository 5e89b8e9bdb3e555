// CUDA rms_norm and rms_norm_residual (cuda/rms_norm.cu) against the CPU path on the same values,
// forward and backward, f32 and bf16: the warp-per-row (1, 2, 4, 8 packs a lane), register-cached
// block, and two-pass (scalar and vector) kernels, rows of 1 to 20000 columns, with and without
// weight, strided inputs, enough rows for many dweight slots; the residual variant with and
// without a residual, bf16 input with an f32 residual stream.
#include <doctest/doctest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/rms_norm.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// Compares a GPU tensor with its CPU counterpart relative to the larger of each element and
// `floor` (for sums and differences: the scale of their terms).
void check_against(const Tensor& gpu, const Tensor& cpu, DType dtype, double floor, const std::string& what) {
  REQUIRE(gpu.defined());
  REQUIRE(cpu.defined());
  CHECK(gpu.device().is_cuda());
  CHECK(gpu.dtype() == cpu.dtype());
  check_relative(gpu, cpu, tolerance_for(dtype), std::max(floor, 1e-30), what);
}

// The largest 1 / sqrt(mean(x^2) + eps) over the rows of x (rows of the last dim).
double max_rstd(const Tensor& x, double eps = 1e-5) {
  const int64_t width = x.size(-1);
  const std::vector<double> v = x.to_double_vector();
  double worst = 0.0;
  for (size_t r = 0; r < v.size() / size_t(width); ++r) {
    double squares = 0.0;
    for (int64_t j = 0; j < width; ++j) squares += v[r * size_t(width) + size_t(j)] * v[r * size_t(width) + size_t(j)];
    worst = std::max(worst, 1.0 / std::sqrt(squares / double(width) + eps));
  }
  return worst;
}

// rms_norm of a (rows, width) input on both devices, forward and backward with one random
// upstream gradient. transposed: the input is the transpose of a (width, rows) leaf.
void check_rms_norm(int64_t rows, int64_t width, DType dtype, bool with_weight, bool transposed, uint64_t seed) {
  const std::string what = "rows " + std::to_string(rows) + " width " + std::to_string(width) +
                           (with_weight ? " weight" : " no weight") + (transposed ? " transposed" : "");
  CAPTURE(what);
  CAPTURE(dtype);
  Tensor base = random_cpu(transposed ? Shape{width, rows} : Shape{rows, width}, seed, dtype, -2.0, 2.0);
  Tensor weight = random_cpu({width}, seed + 1, dtype, 0.5, 1.5);
  Tensor bc = cpu_leaf(base), bg = on_gpu(base, true);
  Tensor wc = with_weight ? cpu_leaf(weight) : Tensor(), wg = with_weight ? on_gpu(weight, true) : Tensor();
  auto view = [&](const Tensor& t) { return transposed ? transpose(t, 0, 1) : t; };
  Tensor yc = rms_norm(view(bc), wc), yg = rms_norm(view(bg), wg);
  check_against(yg, yc, dtype, 1e-2 * max_abs(yc), what + " y");
  Tensor g = random_cpu({rows, width}, seed + 2, dtype, -1.0, 1.0);
  backward(yc, g);
  backward(yg, on_gpu(g));
  // dx = rstd * (g w - xhat * mean(g w xhat)) cancels (completely for width 1): judge it against
  // its terms' scale rstd |g| |w|; dweight, a sum over rows, against its largest value.
  const double dx_scale = max_rstd(view(bc).detach()) * max_abs(g) * (with_weight ? max_abs(weight) : 1.0);
  check_against(bg.grad(), bc.grad(), dtype, dx_scale, what + " dx");
  if (with_weight) check_against(wg.grad(), wc.grad(), dtype, max_abs(wc.grad()), what + " dweight");
}

// rms_norm_residual on both devices; both outputs get an upstream gradient (two backward passes
// through the one node, so each gradient path is exercised alone and the leaves accumulate).
void check_residual(int64_t rows, int64_t width, DType dtype, bool with_residual, DType residual_dtype,
                    bool residual_in_fp32, uint64_t seed) {
  const std::string what = "rows " + std::to_string(rows) + " width " + std::to_string(width) +
                           (with_residual ? std::string(" residual ") + dtype_name(residual_dtype) : " no residual") +
                           (residual_in_fp32 ? " residual_in_fp32" : "");
  CAPTURE(what);
  CAPTURE(dtype);
  Tensor x = random_cpu({rows, width}, seed, dtype, -2.0, 2.0);
  Tensor res = random_cpu({rows, width}, seed + 1, residual_dtype, -2.0, 2.0);
  Tensor weight = random_cpu({width}, seed + 2, dtype, 0.5, 1.5);
  Tensor xc = cpu_leaf(x), xg = on_gpu(x, true);
  Tensor rc = with_residual ? cpu_leaf(res) : Tensor(), rg = with_residual ? on_gpu(res, true) : Tensor();
  Tensor wc = cpu_leaf(weight), wg = on_gpu(weight, true);
  auto [yc, hc] = rms_norm_residual(xc, rc, wc, 1e-5, residual_in_fp32);
  auto [yg, hg] = rms_norm_residual(xg, rg, wg, 1e-5, residual_in_fp32);
  check_against(yg, yc, dtype, 1e-2 * max_abs(yc), what + " y");
  check_against(hg, hc, hc.dtype(), 1e-2 * max_abs(hc), what + " new_residual");
  Tensor gy = random_cpu({rows, width}, seed + 3, dtype, -1.0, 1.0);
  Tensor gh = random_cpu({rows, width}, seed + 4, hc.dtype(), -1.0, 1.0);
  backward(yc, gy, true);
  backward(hc, gh);
  backward(yg, on_gpu(gy), true);
  backward(hg, on_gpu(gh));
  // The norm's part of dh cancels like rms_norm's dx; grad_new_residual adds on top.
  const double dh_scale = max_rstd(hc) * max_abs(gy) * max_abs(weight) + max_abs(gh);
  check_against(xg.grad(), xc.grad(), dtype, dh_scale, what + " dx");
  if (with_residual) check_against(rg.grad(), rc.grad(), residual_dtype, dh_scale, what + " dresidual");
  check_against(wg.grad(), wc.grad(), dtype, max_abs(wc.grad()), what + " dweight");
}

}  // namespace

TEST_CASE("cuda rms_norm matches the CPU for every kernel path (f32, bf16)") {
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool with_weight : {true, false}) {
      check_rms_norm(37, 1, dtype, with_weight, false, seed++);      // scalar two-pass
      check_rms_norm(1, 1, dtype, with_weight, false, seed++);       // a single element
      check_rms_norm(37, 7, dtype, with_weight, false, seed++);      // scalar two-pass
      check_rms_norm(37, 64, dtype, with_weight, false, seed++);     // warp, 1 pack a lane
      check_rms_norm(37, 200, dtype, with_weight, false, seed++);    // warp, 2 (f32) / 1 (bf16)
      check_rms_norm(37, 1000, dtype, with_weight, false, seed++);   // warp, 8 (f32) / 4 (bf16)
      check_rms_norm(13, 4096, dtype, with_weight, false, seed++);   // cached block
      check_rms_norm(5, 8192 + 3, dtype, with_weight, false, seed++);  // scalar two-pass, wide
      check_rms_norm(3, 20000, dtype, with_weight, false, seed++);   // vector two-pass
    }
  }
}

TEST_CASE("cuda rms_norm matches the CPU on strided inputs and many dweight slots") {
  uint64_t seed = 200;
  for (DType dtype : {DType::f32, DType::bf16}) {
    check_rms_norm(29, 64, dtype, true, true, seed++);
    check_rms_norm(29, 1000, dtype, true, true, seed++);
    check_rms_norm(9001, 64, dtype, true, false, seed++);   // 1024 slots of 9 rows, 8 warps each
    check_rms_norm(3001, 1000, dtype, true, false, seed++);
    check_rms_norm(1500, 4096, dtype, true, false, seed++);  // block rows, several rows a slot
    check_rms_norm(1030, 7, dtype, true, false, seed++);     // scalar two-pass, several rows a slot
  }
}

TEST_CASE("cuda rms_norm in f64 matches the CPU closely") {
  Tensor x = random_cpu({33, 130}, 300, DType::f64, -2.0, 2.0);
  Tensor w = random_cpu({130}, 301, DType::f64, 0.5, 1.5);
  Tensor xc = cpu_leaf(x), xg = on_gpu(x, true), wc = cpu_leaf(w), wg = on_gpu(w, true);
  Tensor yc = rms_norm(xc, wc), yg = rms_norm(xg, wg);
  check_relative(yg, yc, 1e-12, max_abs(yc), "f64 y");
  Tensor g = random_cpu({33, 130}, 302, DType::f64);
  backward(yc, g);
  backward(yg, on_gpu(g));
  check_relative(xg.grad(), xc.grad(), 1e-12, max_abs(xc.grad()), "f64 dx");
  check_relative(wg.grad(), wc.grad(), 1e-12, max_abs(wc.grad()), "f64 dweight");
}

TEST_CASE("cuda rms_norm_residual matches the CPU with and without a residual") {
  uint64_t seed = 400;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (int64_t width : {7, 64, 1000, 4096}) {
      check_residual(37, width, dtype, true, dtype, false, seed += 5);
      check_residual(37, width, dtype, false, dtype, false, seed += 5);
    }
  }
  check_residual(3001, 1000, DType::f32, true, DType::f32, false, seed += 5);
}

TEST_CASE("cuda rms_norm_residual keeps an f32 residual stream under bf16 input") {
  uint64_t seed = 500;
  for (int64_t width : {7, 64, 1000, 4096, 8192 + 3, 20000}) {
    check_residual(21, width, DType::bf16, true, DType::f32, false, seed += 5);
    check_residual(21, width, DType::bf16, true, DType::f32, true, seed += 5);
    check_residual(21, width, DType::bf16, false, DType::f32, true, seed += 5);  // f32 copy of x
  }
  check_residual(3001, 1024, DType::bf16, true, DType::f32, true, seed += 5);
}
