// CUDA SSD backward (cuda::ssd_bwd, cuda/ssd_bwd*.cu) against the CPU recurrence's backward
// (cpu::ssd_backward) on the same (rounded) inputs. The forward's saved tensors come from the CPU
// chunked forward (chunk_states, and y_ungated = the output without the gate), so these tests do
// not depend on the forward kernels. Inputs have the magnitudes of a Mamba-2 layer: A = −exp(A_log)
// with A_log in [log 1, log 16], Δ in about [1e-3, 0.1], x, B, C, z, grad_y standard normal.
// Every gradient is compared as max |diff| / max |ref| per tensor: f32 inputs within 1e-3, bf16
// within 2e-2. Covered: L 1, 63, 256, 257, 1000 and 8192; headdim 32, 64, 128; N 16, 32, 64, 128;
// chunk 64, 128, 256; ngroups 1, 2 and heads; D absent / per head / per channel, z, dt_bias,
// softplus and initial_state on and off; some gradients not wanted (undefined results); no
// grad_final_state; column-slice inputs (a projection's columns, as in the mixer); many heads a
// group (head tiles, the partial dB/dC sums) and several heads a block; bitwise-identical
// repeated runs.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "core/random.h"
#include "cuda/ssd.h"
#include "ops/ssd_cpu.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Config {
  int64_t batch = 2, L = 63, heads = 4, headdim = 64, N = 64, groups = 1, chunk = 64;
  int D = 1;  // 0: none, 1: (heads), 2: (heads, headdim)
  bool z = true, bias = true, softplus = true, h0 = true, grad_final = true;
  bool sliced = false;  // x, z, B, C as column slices of one wide (batch, L, ·) projection
  int64_t slice_offset = 8;  // their first column (8: 16-byte aligned rows in bf16; 1: misaligned)
  std::array<bool, 9> needs{true, true, true, true, true, true, true, true, true};
};

std::string describe_config(const Config& c, DType dtype) {
  std::string s = "batch " + std::to_string(c.batch) + " L " + std::to_string(c.L) + " heads " +
                  std::to_string(c.heads) + " headdim " + std::to_string(c.headdim) + " N " + std::to_string(c.N) +
                  " groups " + std::to_string(c.groups) + " chunk " + std::to_string(c.chunk) + " D " +
                  std::to_string(c.D) + (c.z ? " z" : "") + (c.bias ? " bias" : "") + (c.softplus ? " softplus" : "") +
                  (c.h0 ? " h0" : "") + (c.grad_final ? " grad_final" : "") + (c.sliced ? " sliced at " + std::to_string(c.slice_offset) : "") + " needs ";
  for (bool n : c.needs) s += n ? '1' : '0';
  return s + " " + std::string(dtype_name(dtype));
}

Tensor normal(const Shape& shape, uint64_t seed, DType dtype, double scale = 1.0) {
  Generator gen(seed);
  return randn(shape, gen, {.dtype = dtype}, 0.0, scale);
}

// max |actual − expected| <= tol · max |expected|; undefined exactly where expected is.
void check_grad(const std::string& what, const Tensor& actual, const Tensor& expected, double tol) {
  INFO(what);
  REQUIRE(actual.defined() == expected.defined());
  if (!expected.defined()) return;
  REQUIRE(actual.device().is_cuda());
  REQUIRE(actual.shape() == expected.shape());
  CHECK(actual.dtype() == expected.dtype());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  double scale = 0.0, worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(e[i]));
    const double diff = std::abs(a[i] - e[i]);
    worst = std::isnan(diff) ? INFINITY : std::max(worst, diff);
  }
  INFO("max |diff| ", worst, ", max |ref| ", scale, ", ratio ", worst / std::max(scale, 1e-30));
  CHECK(worst <= tol * std::max(scale, 1e-30));
}

struct Case {
  cpu::SsdArgs cpu;         // the rounded inputs on CPU
  cpu::SsdArgs gpu;         // the same values on the GPU (x, z, B, C column slices when sliced)
  Tensor grad_y, grad_final;  // CPU (grad_final may be undefined)
};

// A (batch, L, k, n) input of `dtype`; on the GPU a view of a wider projection when sliced.
std::pair<Tensor, Tensor> token_input(const Shape& shape, uint64_t seed, DType dtype, bool sliced, int64_t offset) {
  const Tensor values = contiguous_copy(normal(shape, seed, DType::f64), dtype, Device::cpu());
  if (!sliced) return {values, on_gpu(values)};
  const int64_t width = shape[2] * shape[3];
  const Tensor wide = random_cpu({shape[0], shape[1], width + 24}, seed + 7, dtype);
  Tensor gpu_wide = on_gpu(wide);
  Tensor view = reshape(narrow(gpu_wide, 2, offset, width), shape);
  REQUIRE(!view.is_contiguous());
  copy_into(view, values);
  return {values, view};
}

Case make_case(const Config& c, DType dtype, uint64_t seed) {
  const DType param = DType::f32;
  const Shape xs{c.batch, c.L, c.heads, c.headdim}, dts{c.batch, c.L, c.heads}, bc{c.batch, c.L, c.groups, c.N};
  Case k;
  auto [x, x_g] = token_input(xs, seed + 1, dtype, c.sliced, c.slice_offset);
  auto [B, B_g] = token_input(bc, seed + 2, dtype, c.sliced, c.slice_offset);
  auto [C, C_g] = token_input(bc, seed + 3, dtype, c.sliced, c.slice_offset);
  Tensor z, z_g;
  if (c.z) std::tie(z, z_g) = token_input(xs, seed + 4, dtype, c.sliced, c.slice_offset);
  // Δ in about [1e-3, 0.1]: softplus(dt + bias) with dt + bias in [-6.5, -2.3], or dt + bias itself.
  Tensor dt = c.softplus ? random_cpu(dts, seed + 5, dtype, c.bias ? -2.0 : -6.5, c.bias ? 1.2 : -2.3)
                         : random_cpu(dts, seed + 5, dtype, 0.001, c.bias ? 0.08 : 0.1);
  Tensor bias;
  if (c.bias) bias = c.softplus ? random_cpu({c.heads}, seed + 6, param, -4.5, -3.5) : random_cpu({c.heads}, seed + 6, param, 0.0, 0.02);
  const Tensor A_log = random_cpu({c.heads}, seed + 7, DType::f64, 0.0, std::log(16.0));
  std::vector<double> a = A_log.to_double_vector();
  for (double& v : a) v = -std::exp(v);
  const Tensor A = contiguous_copy(from_vector(a, {c.heads}), param, Device::cpu());
  Tensor D;
  if (c.D == 1) D = random_cpu({c.heads}, seed + 8, param);
  if (c.D == 2) D = random_cpu({c.heads, c.headdim}, seed + 8, param);
  Tensor h0;
  if (c.h0) h0 = contiguous_copy(normal({c.batch, c.heads, c.headdim, c.N}, seed + 9, DType::f64), param, Device::cpu());
  k.cpu = {x, dt, A, B, C, D, z, bias, h0, c.softplus};
  auto g = [](const Tensor& t) { return t.defined() ? on_gpu(t) : Tensor(); };
  k.gpu = {x_g, g(dt), g(A), B_g, C_g, g(D), z_g, g(bias), g(h0), c.softplus};
  k.grad_y = contiguous_copy(normal(xs, seed + 10, DType::f64), dtype, Device::cpu());
  if (c.grad_final)
    k.grad_final = contiguous_copy(normal({c.batch, c.heads, c.headdim, c.N}, seed + 11, DType::f64), param, Device::cpu());
  return k;
}

cuda::SsdBackwardResult run_gpu(const Config& c, const Case& k, const Tensor& chunk_states, const Tensor& y_ungated) {
  const cpu::SsdArgs& a = k.gpu;
  return cuda::ssd_bwd(a.x, a.dt, a.A, a.B, a.C, a.D, a.z, a.dt_bias, a.dt_softplus, c.chunk, a.initial_state,
                       chunk_states, y_ungated, on_gpu(k.grad_y), k.grad_final.defined() ? on_gpu(k.grad_final) : Tensor(),
                       c.needs);
}

void check_case(const Config& c, DType dtype, uint64_t seed) {
  const std::string what = describe_config(c, dtype);
  CAPTURE(what);
  const Case k = make_case(c, dtype, seed);
  // The forward's saved tensors, from the CPU chunked forward.
  const cpu::SsdChunkedResult fwd = cpu::ssd_chunked_forward(k.cpu, c.chunk);
  Tensor y_ungated;
  if (c.z) {
    cpu::SsdArgs ungated = k.cpu;
    ungated.z = Tensor();
    y_ungated = on_gpu(cpu::ssd_chunked_forward(ungated, c.chunk).y);
  }
  const cuda::SsdBackwardResult got = run_gpu(c, k, on_gpu(fwd.chunk_states), y_ungated);

  const Tensor gf = k.grad_final.defined() ? k.grad_final : zeros({c.batch, c.heads, c.headdim, c.N});
  const cpu::SsdGrads ref = cpu::ssd_backward(k.cpu, k.grad_y, gf, c.needs);
  const double tol = dtype == DType::f32 ? 1e-3 : 2e-2;
  check_grad(what + " dx", got.x, ref.x, tol);
  check_grad(what + " ddt", got.dt, ref.dt, tol);
  check_grad(what + " dA", got.A, ref.A, tol);
  check_grad(what + " dB", got.B, ref.B, tol);
  check_grad(what + " dC", got.C, ref.C, tol);
  check_grad(what + " dD", got.D, ref.D, tol);
  check_grad(what + " dz", got.z, ref.z, tol);
  check_grad(what + " d dt_bias", got.dt_bias, ref.dt_bias, tol);
  check_grad(what + " d initial_state", got.initial_state, ref.initial_state, tol);
}

}  // namespace

TEST_CASE("cuda ssd_bwd matches the CPU backward for lengths around and across chunk boundaries") {
  uint64_t seed = 100;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t L : {1, 63, 256, 257, 1000})
      for (int64_t chunk : {64, 256}) {
        Config c;
        c.L = L;
        c.chunk = chunk;
        check_case(c, dtype, seed += 20);
      }
}

TEST_CASE("cuda ssd_bwd for every headdim and state size") {
  uint64_t seed = 2000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t headdim : {32, 64, 128})
      for (int64_t N : {16, 32, 64, 128}) {
        Config c;
        c.batch = 1;
        c.L = 200;
        c.heads = 2;
        c.headdim = headdim;
        c.N = N;
        c.chunk = 128;
        check_case(c, dtype, seed += 20);
      }
}

TEST_CASE("cuda ssd_bwd for group counts, options, wanted gradients and input layouts") {
  uint64_t seed = 3000;
  int variant = 0;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t groups : {1, 2, 6})
      for (int mask = 0; mask < 8; ++mask) {
        Config c;
        c.L = 150;
        c.heads = 6;
        c.groups = groups;
        c.headdim = 32;
        c.N = 16;
        c.chunk = 64;
        ++variant;
        // Options: all on, all off, then rotating subsets.
        const int options = mask == 0 ? 63 : mask == 1 ? 0 : (variant * 11) % 64;
        c.D = options & 1 ? 1 + (options >> 5 & 1) : 0;
        c.z = options & 2;
        c.bias = options & 4;
        c.softplus = options & 8;
        c.h0 = options & 16;
        c.grad_final = mask != 2 && mask != 5;
        c.sliced = mask >= 6;
        c.slice_offset = mask == 7 ? 1 : 8;
        if (mask == 3) c.needs = {true, false, true, false, true, false, true, false, true};
        if (mask == 4) c.needs = {false, true, false, true, false, true, false, true, false};
        if (mask == 5) c.needs = {false, false, false, false, true, false, false, false, false};
        check_case(c, dtype, seed += 20);
      }
}

TEST_CASE("cuda ssd_bwd with many heads a group (head tiles summed afterwards) and a long sequence") {
  // 24 heads in one group over one chunk: the group's heads span several blocks of the tile kernels.
  for (DType dtype : {DType::f32, DType::bf16}) {
    Config c;
    c.batch = 1;
    c.L = 300;
    c.heads = 24;
    c.groups = 1;
    c.headdim = 64;
    c.N = 128;
    c.chunk = 256;
    check_case(c, dtype, 4000);
    Config many = c;
    many.heads = 8;
    many.groups = 2;
    many.D = 2;
    many.sliced = true;
    check_case(many, dtype, 4100);
  }
  // Enough (batch, chunk, group, tile) blocks that each block walks several heads: 2 heads a block
  // over 8 head tiles (partial sums), then 4 heads a block and one tile a group (direct dB/dC).
  for (DType dtype : {DType::f32, DType::bf16}) {
    Config c;
    c.batch = 4;
    c.L = 2048;
    c.heads = 16;
    c.groups = 1;
    c.headdim = 32;
    c.N = 16;
    c.chunk = 64;
    check_case(c, dtype, 4400);
    c.L = 4096 - 5;
    c.groups = 4;
    c.D = 2;
    check_case(c, dtype, 4500);
  }
  Config lng;
  lng.batch = 1;
  lng.L = 8192;
  lng.heads = 2;
  lng.headdim = 64;
  lng.N = 64;
  lng.chunk = 256;
  check_case(lng, DType::bf16, 4200);
  lng.chunk = 64;
  lng.L = 8191;
  check_case(lng, DType::f32, 4300);
}

TEST_CASE("cuda ssd_bwd is bitwise reproducible") {
  Config c;
  c.L = 300;
  c.heads = 12;
  c.headdim = 64;
  c.N = 128;
  c.chunk = 128;
  const Case k = make_case(c, DType::bf16, 5000);
  const cpu::SsdChunkedResult fwd = cpu::ssd_chunked_forward(k.cpu, c.chunk);
  cpu::SsdArgs ungated = k.cpu;
  ungated.z = Tensor();
  const Tensor y_ungated = on_gpu(cpu::ssd_chunked_forward(ungated, c.chunk).y), states = on_gpu(fwd.chunk_states);
  const cuda::SsdBackwardResult a = run_gpu(c, k, states, y_ungated), b = run_gpu(c, k, states, y_ungated);
  for (auto [x, y] : {std::pair{a.x, b.x}, std::pair{a.dt, b.dt}, std::pair{a.A, b.A}, std::pair{a.B, b.B},
                      std::pair{a.C, b.C}, std::pair{a.D, b.D}, std::pair{a.z, b.z}, std::pair{a.dt_bias, b.dt_bias},
                      std::pair{a.initial_state, b.initial_state}})
    CHECK(x.to_double_vector() == y.to_double_vector());
}
