// models/mamba2_mixer.h on the GPU: the same mixer (same seed) moved with Module::to(cuda) against
// the CPU one. Forward and the gradients of the input and of every parameter with f32 activations
// (1e-3 relative to the tensor's largest element: the SSD kernels' f32 path runs its matrix
// products as split bf16 on tensor cores, ops/ssd.h); step() on the GPU against the GPU's full
// forward (outputs and final states); bf16 activations with f32 parameters within 2e-2 of the
// CPU f32 forward. Lengths below, at and across the chunk size, one and two groups.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "models/mamba2_mixer.h"
#include "ops/concat.h"
#include "ops/elementwise.h"
#include "ops/reduce.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// actual within rtol of expected, relative to expected's largest element.
void check_scaled(const Tensor& actual, const Tensor& expected, double rtol, const std::string& what) {
  check_relative(to_device(actual, Device::cpu()), expected, rtol, std::max(max_abs(expected), 1e-30), what);
}

Mamba2Config config(int64_t ngroups) {
  Mamba2Config c;
  c.d_model = 64;  // d_inner 128: 4 heads of 32
  c.d_state = 16;
  c.headdim = 32;
  c.ngroups = ngroups;
  c.chunk_size = 64;
  return c;
}

Tensor step_through(const Mamba2Mixer& m, const Tensor& x, Mamba2State& state, int64_t start = 0) {
  std::vector<Tensor> outs;
  for (int64_t t = start; t < x.size(1); ++t) outs.push_back(unsqueeze(m.step(select(x, 1, t), state), 1));
  return cat(outs, 1);
}

}  // namespace

TEST_CASE("Mamba2Mixer on the GPU matches the CPU in f32: forward, input and parameter gradients") {
  for (int64_t ngroups : {1, 2}) {
    for (int64_t L : {37, 64, 150}) {
      INFO("ngroups ", ngroups, ", L ", L);
      Generator g_cpu(1), g_gpu(1);
      Mamba2Mixer cpu(config(ngroups), g_cpu), gpu_mixer(config(ngroups), g_gpu);
      gpu_mixer.to(gpu());
      Tensor x = random_cpu({2, L, 64}, 2, DType::f32, -2.0, 2.0);
      Tensor w = random_cpu({2, L, 64}, 3);  // loss = sum(out * w): every output element matters
      Tensor x_cpu = cpu_leaf(x), x_gpu = on_gpu(x, true);
      Tensor out_cpu = cpu.forward(x_cpu), out_gpu = gpu_mixer.forward(x_gpu);
      CHECK(out_gpu.device() == gpu());
      check_scaled(out_gpu, out_cpu, 1e-3, "out");
      backward(sum(mul(out_cpu, w)));
      backward(sum(mul(out_gpu, on_gpu(w))));
      check_scaled(x_gpu.grad(), x_cpu.grad(), 1e-3, "x.grad");
      std::vector<NamedParameter> pc = cpu.named_parameters(), pg = gpu_mixer.named_parameters();
      REQUIRE(pc.size() == pg.size());
      for (size_t i = 0; i < pc.size(); ++i) {
        REQUIRE(pg[i].tensor.grad().defined());
        check_scaled(pg[i].tensor.grad(), pc[i].tensor.grad(), 1e-3, pc[i].name + ".grad");
      }
    }
  }
}

TEST_CASE("Mamba2Mixer step() on the GPU reproduces the GPU forward and its final states") {
  for (int64_t ngroups : {1, 2}) {
    INFO("ngroups ", ngroups);
    Generator gen(4);
    Mamba2Mixer m(config(ngroups), gen, {.device = gpu()});
    Tensor x = on_gpu(random_cpu({3, 150, 64}, 5, DType::f32, -2.0, 2.0));
    NoGradGuard no_grad;
    Mamba2State full;
    Tensor expected = to_device(m.forward(x, &full), Device::cpu());
    const Tensor conv_expected = to_device(full.conv_state, Device::cpu());
    const Tensor ssm_expected = to_device(full.ssm_state, Device::cpu());

    Mamba2State stepped;
    check_scaled(step_through(m, x, stepped), expected, 1e-3, "stepped outputs");
    check_scaled(stepped.conv_state, conv_expected, 1e-5, "conv_state");
    check_scaled(stepped.ssm_state, ssm_expected, 1e-3, "ssm_state");

    Mamba2State prefilled;  // prefill 70 tokens (across a chunk boundary), then step the rest
    Tensor head = m.forward(narrow(x, 1, 0, 70), &prefilled);
    Tensor tail = step_through(m, x, prefilled, 70);
    check_scaled(cat({head, tail}, 1), expected, 1e-3, "prefill + steps");
    check_scaled(prefilled.ssm_state, ssm_expected, 1e-3, "prefill ssm_state");
  }
}

TEST_CASE("Mamba2Mixer on the GPU with bf16 activations and f32 parameters stays within 2e-2 of f32") {
  Generator g_cpu(6), g_gpu(6);
  Mamba2Mixer cpu(config(1), g_cpu), gpu_mixer(config(1), g_gpu);
  gpu_mixer.to(gpu());
  Tensor x = random_cpu({2, 300, 64}, 7, DType::f32, -2.0, 2.0);
  NoGradGuard no_grad;
  Tensor expected = cpu.forward(x);
  Tensor out = gpu_mixer.forward(on_gpu(to_dtype(x, DType::bf16)));
  CHECK(out.dtype() == DType::bf16);
  check_scaled(out, expected, 2e-2, "bf16 out");
}
