// CUDA selective_scan_step (cuda/selective_scan_step.cu) against the CPU reference on the same
// values: several tokens in a row, each updating a CPU and a GPU state in place, y and the state
// compared after every token. State sizes that pick every lane count and both the 16-byte and
// the scalar path (N 1, 5, 16, 64, 128, 256), d_inner 37 (no power of two), groups 1, 2 and
// d_inner, batch 1 and 3, every optional input on and off, f32 / bf16 / f64, strided and sliced
// (unit-stride column) inputs, a misaligned state, a Mamba-sized layer, and bitwise determinism.
//
// Tolerances: f32 1e-5, bf16 1e-2, f64 1e-12, relative to the largest |value| of the tensor
// (y is a sum over N states; the state's errors scale with its largest entries).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "autograd/grad_mode.h"
#include "ops/selective_scan_step.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// How u, delta, z, B and C are laid out: dense; every third element (a time slice); or a column
// slice of a wider last dimension (unit stride, the layout of a projection's output columns).
enum class Layout { dense, strided, sliced };

struct Config {
  int64_t batch = 3, d_inner = 37, N = 16, groups = 1;
  bool D = true, z = true, bias = true, softplus = true;
  Layout layout = Layout::dense;
  bool misaligned = false;  // the GPU state starts one element past a 16-byte boundary
};

Config with_mask(Config c, int mask) {
  c.D = mask & 1;
  c.z = mask & 2;
  c.bias = mask & 4;
  c.softplus = mask & 8;
  return c;
}

std::string describe_config(const Config& c, DType dtype) {
  return "batch " + std::to_string(c.batch) + " d_inner " + std::to_string(c.d_inner) + " N " + std::to_string(c.N) +
         " groups " + std::to_string(c.groups) + (c.D ? " D" : "") + (c.z ? " z" : "") + (c.bias ? " bias" : "") +
         (c.softplus ? " softplus" : "") + (c.layout == Layout::strided ? " strided" : "") +
         (c.layout == Layout::sliced ? " sliced" : "") + (c.misaligned ? " misaligned" : "") + " " +
         std::string(dtype_name(dtype));
}

// max_abs, never 0: a scale to divide by.
double scale_of(const Tensor& t) { return std::max(max_abs(t), 1e-30); }

struct Pair {
  Tensor cpu, gpu;
};

// A random token input in `layout`, the same view of the same values on both devices.
Pair token_input(const Shape& shape, uint64_t seed, DType dtype, double low, double high, Layout layout) {
  Shape wide = shape;
  if (layout == Layout::strided) wide.push_back(3);
  if (layout == Layout::sliced) wide.back() += 8;
  const int64_t last = int64_t(wide.size()) - 1;
  auto view = [&](const Tensor& base) {
    if (layout == Layout::strided) return select(base, last, 1);
    if (layout == Layout::sliced) return narrow(base, last, 4, shape.back());  // 16 bytes in for f32
    return base;
  };
  const Tensor base = random_cpu(wide, seed, dtype, low, high);
  return {view(base), view(on_gpu(base))};
}

// A contiguous GPU copy of a CPU state; misaligned: at element offset 1 of a larger buffer.
Tensor gpu_state(const Tensor& state, bool misaligned) {
  if (!misaligned) return on_gpu(state);
  Tensor buffer = empty({state.numel() + 1}, {.dtype = state.dtype(), .device = gpu()});
  Shape strides(state.dim(), 1);
  for (int64_t d = state.dim() - 2; d >= 0; --d)
    strides[size_t(d)] = strides[size_t(d + 1)] * state.shape()[size_t(d + 1)];
  Tensor view = as_strided(buffer, state.shape(), strides, 1);
  copy_into(view, state);
  REQUIRE(view.is_contiguous());
  return view;
}

void check_steps(const Config& c, DType dtype, uint64_t seed, int tokens = 3) {
  const std::string what = describe_config(c, dtype);
  CAPTURE(what);
  NoGradGuard no_grad;
  const DType param = dtype == DType::f64 ? DType::f64 : DType::f32;
  const double tol = tolerance_for(dtype), state_tol = tolerance_for(param);
  // Parameters fixed across tokens: A < 0, D, bias (Δ > 0 without softplus).
  const Tensor A = random_cpu({c.d_inner, c.N}, seed++, param, -2.0, -0.1);
  const Tensor D = c.D ? random_cpu({c.d_inner}, seed++, param) : Tensor();
  const Tensor bias = c.bias ? (c.softplus ? random_cpu({c.d_inner}, seed++, param)
                                           : random_cpu({c.d_inner}, seed++, param, 0.0, 0.2))
                             : Tensor();
  Tensor state_c = random_cpu({c.batch, c.d_inner, c.N}, seed++, param);
  Tensor state_g = gpu_state(state_c, c.misaligned);
  const void* state_memory = state_g.raw_data();
  const Tensor A_g = on_gpu(A), D_g = c.D ? on_gpu(D) : Tensor(), bias_g = c.bias ? on_gpu(bias) : Tensor();
  for (int token = 0; token < tokens; ++token) {
    CAPTURE(token);
    const Shape rows{c.batch, c.d_inner}, bc{c.batch, c.groups, c.N};
    const Pair u = token_input(rows, seed++, dtype, -1.0, 1.0, c.layout);
    const Pair delta = c.softplus ? token_input(rows, seed++, dtype, -2.0, 1.0, c.layout)
                                  : token_input(rows, seed++, dtype, 0.05, 1.0, c.layout);
    const Pair B = token_input(bc, seed++, dtype, -1.0, 1.0, c.layout);
    const Pair C = token_input(bc, seed++, dtype, -1.0, 1.0, c.layout);
    const Pair z = c.z ? token_input(rows, seed++, dtype, -2.0, 2.0, c.layout) : Pair{};
    const Tensor y_c = selective_scan_step(state_c, u.cpu, delta.cpu, A, B.cpu, C.cpu, D, z.cpu, bias, c.softplus);
    const Tensor y_g =
        selective_scan_step(state_g, u.gpu, delta.gpu, A_g, B.gpu, C.gpu, D_g, z.gpu, bias_g, c.softplus);
    REQUIRE(y_g.device().is_cuda());
    REQUIRE(y_g.dtype() == dtype);
    REQUIRE(y_g.shape() == rows);
    check_relative(y_g, y_c, tol, scale_of(y_c), what + " y");
    check_relative(state_g, state_c, state_tol, scale_of(state_c), what + " state");
  }
  CHECK(state_g.raw_data() == state_memory);  // updated in place, not replaced
}

}  // namespace

TEST_CASE("cuda selective_scan_step matches the CPU for every state size, option and group count") {
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t batch : {1, 3})
      for (int64_t N : {1, 5, 16, 64, 128, 256})
        for (int64_t groups : {1, 37})
          for (int mask : {0, 5, 10, 15}) {
            Config c = with_mask({.batch = batch, .d_inner = 37, .N = N, .groups = groups}, mask);
            check_steps(c, dtype, seed += 50);
          }
}

TEST_CASE("cuda selective_scan_step: every option combination, groups 2, f64") {
  uint64_t seed = 2000;
  for (int mask = 0; mask < 16; ++mask)
    for (DType dtype : {DType::f32, DType::bf16, DType::f64})
      check_steps(with_mask({.batch = 3, .d_inner = 38, .N = 16, .groups = 2}, mask), dtype, seed += 50);
}

TEST_CASE("cuda selective_scan_step reads strided and sliced inputs and takes a misaligned state") {
  uint64_t seed = 3000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t N : {4, 5, 16, 64}) {
      for (Layout layout : {Layout::strided, Layout::sliced})
        for (int64_t groups : {1, 37})
          check_steps({.batch = 3, .d_inner = 37, .N = N, .groups = groups, .layout = layout}, dtype, seed += 50);
      check_steps({.batch = 3, .d_inner = 37, .N = N, .groups = 37, .misaligned = true}, dtype, seed += 50);
    }
}

TEST_CASE("cuda selective_scan_step on a Mamba-sized layer") {
  check_steps({.batch = 4, .d_inner = 1536, .N = 16, .groups = 1}, DType::f32, 4000, 5);
  check_steps({.batch = 2, .d_inner = 2048, .N = 128, .groups = 1}, DType::bf16, 4100, 2);
}

TEST_CASE("cuda selective_scan_step is deterministic") {
  NoGradGuard no_grad;
  const Tensor A = on_gpu(random_cpu({64, 128}, 5000, DType::f32, -2.0, -0.1));
  const Tensor u = on_gpu(random_cpu({3, 64}, 5001)), delta = on_gpu(random_cpu({3, 64}, 5002));
  const Tensor B = on_gpu(random_cpu({3, 2, 128}, 5003)), C = on_gpu(random_cpu({3, 2, 128}, 5004));
  const Tensor h0 = random_cpu({3, 64, 128}, 5005);
  Tensor s1 = on_gpu(h0), s2 = on_gpu(h0);
  const Tensor y1 = selective_scan_step(s1, u, delta, A, B, C, Tensor(), Tensor(), Tensor(), true);
  const Tensor y2 = selective_scan_step(s2, u, delta, A, B, C, Tensor(), Tensor(), Tensor(), true);
  CHECK(y1.to_vector<float>() == y2.to_vector<float>());
  CHECK(s1.to_vector<float>() == s2.to_vector<float>());
}

TEST_CASE("cuda selective_scan_step rejects a state on another device") {
  NoGradGuard no_grad;
  const Tensor u = on_gpu(random_cpu({2, 4}, 6000)), A = on_gpu(random_cpu({4, 8}, 6001, DType::f32, -1.0, -0.1));
  const Tensor B = on_gpu(random_cpu({2, 1, 8}, 6002));
  Tensor state = random_cpu({2, 4, 8}, 6003);
  CHECK_THROWS_WITH_AS(selective_scan_step(state, u, u, A, B, B),
                       doctest::Contains("selective_scan_step: expected all tensors on one device"), Error);
}
