// CUDA ssd_step (cuda/ssd_step.cu) against the CPU reference on the same values: several tokens
// in a row, each updating a CPU and a GPU state in place, y and the state compared after every
// token. State sizes that pick every lane count and both the 16-byte and the scalar path (N 1, 5,
// 16, 64, 128, 256), headdim 1, 3 and 64, heads 6 and 24, groups 1, 2, 3 and heads, batch 1 and
// 3, D absent / per head / per channel, z, dt_bias and softplus on and off, f32 / bf16 / f64,
// strided and sliced (column slices of a projection) inputs, a misaligned state, a Mamba-2-sized
// layer, bitwise determinism; then Mamba2Mixer::step() on the GPU against the CPU mixer.
//
// Tolerances: f32 1e-5, bf16 1e-2, f64 1e-12, relative to the largest |value| of the tensor
// (y is a sum over N states; the state's errors scale with its largest entries); the mixer 1e-4.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "autograd/grad_mode.h"
#include "models/mamba2_mixer.h"
#include "ops/ssd_step.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// How x, dt, z, B and C are laid out: dense; every third element (a time slice); or a column
// slice of a wider (batch, ·) matrix reshaped (unit stride, a projection's output columns).
enum class Layout { dense, strided, sliced };
enum class Skip { none, per_head, per_channel };

struct Config {
  int64_t batch = 3, heads = 6, headdim = 3, N = 16, groups = 1;
  Skip D = Skip::per_head;
  bool z = true, bias = true, softplus = true;
  Layout layout = Layout::dense;
  bool misaligned = false;  // the GPU state starts one element past a 16-byte boundary
};

// mask bits: z, bias, softplus; D from mask >> 3 (none, per head, per channel).
Config with_mask(Config c, int mask) {
  c.z = mask & 1;
  c.bias = mask & 2;
  c.softplus = mask & 4;
  c.D = Skip((mask >> 3) % 3);
  return c;
}

std::string describe_config(const Config& c, DType dtype) {
  const char* skip = c.D == Skip::none ? "" : c.D == Skip::per_head ? " D(heads)" : " D(heads, headdim)";
  return "batch " + std::to_string(c.batch) + " heads " + std::to_string(c.heads) + " headdim " +
         std::to_string(c.headdim) + " N " + std::to_string(c.N) + " groups " + std::to_string(c.groups) + skip +
         (c.z ? " z" : "") + (c.bias ? " bias" : "") + (c.softplus ? " softplus" : "") +
         (c.layout == Layout::strided ? " strided" : "") + (c.layout == Layout::sliced ? " sliced" : "") +
         (c.misaligned ? " misaligned" : "") + " " + std::string(dtype_name(dtype));
}

// max_abs, never 0: a scale to divide by.
double scale_of(const Tensor& t) { return std::max(max_abs(t), 1e-30); }

struct Pair {
  Tensor cpu, gpu;
};

// A random token input in `layout`, the same view of the same values on both devices.
Pair token_input(const Shape& shape, uint64_t seed, DType dtype, double low, double high, Layout layout) {
  int64_t per_row = 1;
  for (size_t i = 1; i < shape.size(); ++i) per_row *= shape[i];
  Shape wide = shape;
  if (layout == Layout::strided) wide.push_back(3);
  if (layout == Layout::sliced) wide = {shape[0], per_row + 8};
  auto view = [&](const Tensor& base) {
    if (layout == Layout::strided) return select(base, int64_t(wide.size()) - 1, 1);
    if (layout == Layout::sliced) return reshape(narrow(base, 1, 4, per_row), shape);  // 16 bytes in for f32
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
  const Tensor A = random_cpu({c.heads}, seed++, param, -2.0, -0.1);
  Tensor D;
  if (c.D == Skip::per_head) D = random_cpu({c.heads}, seed++, param);
  if (c.D == Skip::per_channel) D = random_cpu({c.heads, c.headdim}, seed++, param);
  const Tensor bias = c.bias ? (c.softplus ? random_cpu({c.heads}, seed++, param)
                                           : random_cpu({c.heads}, seed++, param, 0.0, 0.2))
                             : Tensor();
  Tensor state_c = random_cpu({c.batch, c.heads, c.headdim, c.N}, seed++, param);
  Tensor state_g = gpu_state(state_c, c.misaligned);
  const void* state_memory = state_g.raw_data();
  const Tensor A_g = on_gpu(A), D_g = D.defined() ? on_gpu(D) : Tensor(), bias_g = c.bias ? on_gpu(bias) : Tensor();
  for (int token = 0; token < tokens; ++token) {
    CAPTURE(token);
    const Shape xs{c.batch, c.heads, c.headdim}, dts{c.batch, c.heads}, bc{c.batch, c.groups, c.N};
    const Pair x = token_input(xs, seed++, dtype, -1.0, 1.0, c.layout);
    const Pair dt = c.softplus ? token_input(dts, seed++, dtype, -2.0, 1.0, c.layout)
                               : token_input(dts, seed++, dtype, 0.05, 1.0, c.layout);
    const Pair B = token_input(bc, seed++, dtype, -1.0, 1.0, c.layout);
    const Pair C = token_input(bc, seed++, dtype, -1.0, 1.0, c.layout);
    const Pair z = c.z ? token_input(xs, seed++, dtype, -2.0, 2.0, c.layout) : Pair{};
    const Tensor y_c = ssd_step(state_c, x.cpu, dt.cpu, A, B.cpu, C.cpu, D, z.cpu, bias, c.softplus);
    const Tensor y_g = ssd_step(state_g, x.gpu, dt.gpu, A_g, B.gpu, C.gpu, D_g, z.gpu, bias_g, c.softplus);
    REQUIRE(y_g.device().is_cuda());
    REQUIRE(y_g.dtype() == dtype);
    REQUIRE(y_g.shape() == xs);
    check_relative(y_g, y_c, tol, scale_of(y_c), what + " y");
    check_relative(state_g, state_c, state_tol, scale_of(state_c), what + " state");
  }
  CHECK(state_g.raw_data() == state_memory);  // updated in place, not replaced
}

}  // namespace

TEST_CASE("cuda ssd_step matches the CPU for every state size, head size, option and group count") {
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t batch : {1, 3})
      for (int64_t N : {1, 5, 16, 64, 128, 256})
        for (int64_t headdim : {1, 3, 64})
          for (int64_t groups : {1, 6})
            for (int mask : {0, 7, 10, 21}) {
              const Config c =
                  with_mask({.batch = batch, .heads = 6, .headdim = headdim, .N = N, .groups = groups}, mask);
              check_steps(c, dtype, seed += 50);
            }
}

TEST_CASE("cuda ssd_step: every option combination, groups 2 and 3, f64") {
  uint64_t seed = 2000;
  for (int mask = 0; mask < 24; ++mask)
    for (DType dtype : {DType::f32, DType::bf16, DType::f64})
      for (int64_t groups : {2, 3})
        check_steps(with_mask({.batch = 3, .heads = 6, .headdim = 5, .N = 16, .groups = groups}, mask), dtype,
                    seed += 50);
}

TEST_CASE("cuda ssd_step reads strided and sliced inputs and takes a misaligned state") {
  uint64_t seed = 3000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t N : {4, 5, 16, 64, 128}) {
      for (Layout layout : {Layout::strided, Layout::sliced})
        for (int64_t groups : {1, 6})
          check_steps({.batch = 3, .heads = 6, .headdim = 7, .N = N, .groups = groups, .layout = layout}, dtype,
                      seed += 50);
      check_steps({.batch = 3, .heads = 6, .headdim = 7, .N = N, .groups = 2, .misaligned = true}, dtype, seed += 50);
    }
}

TEST_CASE("cuda ssd_step on Mamba-2-sized layers") {
  check_steps({.batch = 4, .heads = 24, .headdim = 64, .N = 128, .groups = 1}, DType::f32, 4000, 4);
  check_steps({.batch = 2, .heads = 32, .headdim = 64, .N = 128, .groups = 8, .D = Skip::per_channel}, DType::bf16,
              4100, 2);
  check_steps({.batch = 2, .heads = 16, .headdim = 128, .N = 64, .groups = 2, .layout = Layout::sliced}, DType::bf16,
              4200, 2);
}

TEST_CASE("cuda ssd_step is deterministic") {
  NoGradGuard no_grad;
  const Tensor A = on_gpu(random_cpu({8}, 5000, DType::f32, -2.0, -0.1));
  const Tensor x = on_gpu(random_cpu({3, 8, 64}, 5001)), dt = on_gpu(random_cpu({3, 8}, 5002));
  const Tensor B = on_gpu(random_cpu({3, 2, 128}, 5003)), C = on_gpu(random_cpu({3, 2, 128}, 5004));
  const Tensor h0 = random_cpu({3, 8, 64, 128}, 5005);
  Tensor s1 = on_gpu(h0), s2 = on_gpu(h0);
  const Tensor y1 = ssd_step(s1, x, dt, A, B, C, Tensor(), Tensor(), Tensor(), true);
  const Tensor y2 = ssd_step(s2, x, dt, A, B, C, Tensor(), Tensor(), Tensor(), true);
  CHECK(y1.to_vector<float>() == y2.to_vector<float>());
  CHECK(s1.to_vector<float>() == s2.to_vector<float>());
}

TEST_CASE("cuda ssd_step handles an empty batch and rejects a state on another device") {
  NoGradGuard no_grad;
  Tensor empty_state = on_gpu(random_cpu({0, 4, 3, 8}, 6000));
  const Tensor y = ssd_step(empty_state, on_gpu(random_cpu({0, 4, 3}, 6001)), on_gpu(random_cpu({0, 4}, 6002)),
                            on_gpu(random_cpu({4}, 6003, DType::f32, -1.0, -0.1)), on_gpu(random_cpu({0, 1, 8}, 6004)),
                            on_gpu(random_cpu({0, 1, 8}, 6005)));
  CHECK(y.shape() == Shape{0, 4, 3});
  CHECK(y.device().is_cuda());

  const Tensor x = on_gpu(random_cpu({2, 4, 3}, 6010)), dt = on_gpu(random_cpu({2, 4}, 6011));
  const Tensor A = on_gpu(random_cpu({4}, 6012, DType::f32, -1.0, -0.1)), B = on_gpu(random_cpu({2, 1, 8}, 6013));
  Tensor state = random_cpu({2, 4, 3, 8}, 6014);
  CHECK_THROWS_WITH_AS(ssd_step(state, x, dt, A, B, B), doctest::Contains("ssd_step: expected all tensors on one device"),
                       Error);
}

TEST_CASE("Mamba2Mixer step() on the GPU matches the CPU mixer token by token, with its states") {
  for (int64_t ngroups : {1, 2}) {
    INFO("ngroups ", ngroups);
    Mamba2Config c;
    c.d_model = 64;  // E 128, 4 heads of 32, N 64, conv_dim 128 + 2·G·64
    c.headdim = 32;
    c.d_state = 64;
    c.ngroups = ngroups;
    Generator g_cpu(7), g_gpu(7);
    Mamba2Mixer cpu(c, g_cpu), gpu_mixer(c, g_gpu);
    gpu_mixer.to(gpu());
    NoGradGuard no_grad;
    const Tensor x = random_cpu({3, 6, 64}, 8, DType::f32, -2.0, 2.0);
    Mamba2State s_cpu, s_gpu;
    for (int64_t t = 0; t < 6; ++t) {
      CAPTURE(t);
      const Tensor xt = contiguous(select(x, 1, t));
      const Tensor y_cpu = cpu.step(xt, s_cpu), y_gpu = gpu_mixer.step(on_gpu(xt), s_gpu);
      REQUIRE(y_gpu.device().is_cuda());
      check_relative(y_gpu, y_cpu, 1e-4, scale_of(y_cpu), "y");
      check_relative(s_gpu.conv_state, s_cpu.conv_state, 1e-4, scale_of(s_cpu.conv_state), "conv_state");
      check_relative(s_gpu.ssm_state, s_cpu.ssm_state, 1e-4, scale_of(s_cpu.ssm_state), "ssm_state");
    }
    // bf16 activations with f32 parameters: within 2e-2 of the f32 CPU steps.
    Mamba2State s_ref, s_bf16;
    for (int64_t t = 0; t < 6; ++t) {
      CAPTURE(t);
      const Tensor xt = contiguous(select(x, 1, t));
      const Tensor y_ref = cpu.step(xt, s_ref), y_bf16 = gpu_mixer.step(on_gpu(to_dtype(xt, DType::bf16)), s_bf16);
      CHECK(y_bf16.dtype() == DType::bf16);
      CHECK(s_bf16.ssm_state.dtype() == DType::f32);
      check_relative(y_bf16, y_ref, 2e-2, scale_of(y_ref), "bf16 y");
    }
  }
}
