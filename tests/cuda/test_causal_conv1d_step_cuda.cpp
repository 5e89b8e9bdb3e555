// CUDA causal_conv1d_step (cuda/causal_conv1d_step.cu) against the CPU reference on the same
// values: several tokens in a row from a random state, each updating a CPU and a GPU state in
// place; the outputs compared after every token and the states exactly (they hold copies of the
// inputs). Widths 1 (empty state) to 8, batch 1 and 3, channels 1, 37 and 261 (several blocks),
// with and without bias and SiLU, f32 / bf16 / f64, strided x and weight, and a large layer.
//
// Tolerances: f32 1e-5, bf16 1e-2, f64 1e-12, relative to the largest |output| (an output is a
// sum of k products and the bias).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "autograd/grad_mode.h"
#include "ops/causal_conv1d_step.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Case {
  int64_t batch, channels, k;
  bool bias, silu;
  bool strided = false;  // x a slice of a (batch, channels, 3) tensor, weight a transposed view
};

std::string describe_case(const Case& c, DType dtype) {
  return "batch " + std::to_string(c.batch) + " channels " + std::to_string(c.channels) + " k " +
         std::to_string(c.k) + (c.bias ? " bias" : "") + (c.silu ? " silu" : "") + (c.strided ? " strided" : "") +
         " " + std::string(dtype_name(dtype));
}

// max_abs, never 0: a scale to divide by.
double scale_of(const Tensor& t) { return std::max(max_abs(t), 1e-30); }

void check_steps(const Case& c, DType dtype, uint64_t seed, int tokens = 3) {
  const std::string what = describe_case(c, dtype);
  CAPTURE(what);
  NoGradGuard no_grad;
  const double tol = tolerance_for(dtype);
  // strided: weight is the transpose of a (k, channels) tensor on both sides.
  const Tensor w_base = random_cpu(c.strided ? Shape{c.k, c.channels} : Shape{c.channels, c.k}, seed++, dtype);
  const Tensor w = c.strided ? transpose(w_base, 0, 1) : w_base;
  const Tensor w_g = c.strided ? transpose(on_gpu(w_base), 0, 1) : on_gpu(w_base);
  const Tensor b = c.bias ? random_cpu({c.channels}, seed++, dtype) : Tensor();
  const Tensor b_g = c.bias ? on_gpu(b) : Tensor();
  Tensor state_c = random_cpu({c.batch, c.channels, c.k - 1}, seed++, dtype, -2.0, 2.0);
  Tensor state_g = on_gpu(state_c);
  const void* state_memory = state_g.raw_data();
  for (int token = 0; token < tokens; ++token) {
    CAPTURE(token);
    Tensor x, x_g;
    if (c.strided) {
      const Tensor wide = random_cpu({c.batch, c.channels, 3}, seed++, dtype, -2.0, 2.0);
      x = select(wide, 2, 1);
      x_g = select(on_gpu(wide), 2, 1);
    } else {
      x = random_cpu({c.batch, c.channels}, seed++, dtype, -2.0, 2.0);
      x_g = on_gpu(x);
    }
    const Tensor out_c = causal_conv1d_step(state_c, x, w, b, c.silu);
    const Tensor out_g = causal_conv1d_step(state_g, x_g, w_g, b_g, c.silu);
    REQUIRE(out_g.device().is_cuda());
    REQUIRE(out_g.dtype() == dtype);
    REQUIRE(out_g.shape() == Shape{c.batch, c.channels});
    check_relative(out_g, out_c, tol, scale_of(out_c), what + " out");
    CHECK(state_g.to_double_vector() == state_c.to_double_vector());
  }
  CHECK(state_g.raw_data() == state_memory);  // updated in place, not replaced
}

}  // namespace

TEST_CASE("cuda causal_conv1d_step matches the CPU for every width, bias and SiLU") {
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16, DType::f64})
    for (int64_t k = 1; k <= 8; ++k)
      for (int64_t batch : {1, 3})
        for (int64_t channels : {1, 37, 261})
          for (bool bias : {false, true})
            for (bool silu : {false, true})
              check_steps({.batch = batch, .channels = channels, .k = k, .bias = bias, .silu = silu}, dtype,
                          seed += 20);
}

TEST_CASE("cuda causal_conv1d_step reads strided x and weight") {
  uint64_t seed = 2000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t k : {1, 4, 8})
      check_steps({.batch = 3, .channels = 37, .k = k, .bias = true, .silu = true, .strided = true}, dtype, seed += 20);
}

TEST_CASE("cuda causal_conv1d_step on a large layer") {
  check_steps({.batch = 64, .channels = 5120, .k = 4, .bias = true, .silu = true}, DType::bf16, 3000, 2);
  check_steps({.batch = 16, .channels = 3072, .k = 4, .bias = true, .silu = true}, DType::f32, 3100, 2);
}

TEST_CASE("cuda causal_conv1d_step rejects a state on another device") {
  NoGradGuard no_grad;
  Tensor state = random_cpu({2, 3, 3}, 4000);
  CHECK_THROWS_WITH_AS(causal_conv1d_step(state, on_gpu(random_cpu({2, 3}, 4001)), on_gpu(random_cpu({3, 4}, 4002))),
                       doctest::Contains("causal_conv1d_step: expected all tensors on one device"), Error);
}
