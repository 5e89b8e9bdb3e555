// CUDA SSD forward (cuda/ssd_fwd*.cu, called directly through cuda/ssd.h) against the chunked
// CPU algorithm (cpu::ssd_chunked_forward) in float64 on the same values: y, final_state, the
// state entering every chunk, and y before the gate when z is given (the reference run without
// z). Lengths 1, 63, 256, 257, 1000 and 8192 (short last chunks, one step, several chunks),
// headdim 32/64/128, N 16/32/64/128, chunk 64/128/256, ngroups 1, 2 and heads, every optional
// input on and off, f32 and bf16, column slices of a projection (read in place when 16-byte
// aligned, copied when not), determinism, and the shapes ssd_supports turns down.
//
// Inputs have a Mamba-2 layer's magnitudes: Δ = softplus(dt + bias) mostly in [1e-3, 0.3],
// A = −exp(U[log 0.1, log 16]) (some heads keep their state across chunks, some forget it within
// a few steps), x, B, C in [-1.5, 1.5]. Tolerance: max |CUDA − reference| / max |reference| per
// output, 1e-3 for f32 inputs (bf16 tensor cores on hi/lo splits), 2e-2 for bf16 inputs (the
// reference sees the same bf16-rounded inputs).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "cuda/ssd.h"
#include "ops/ssd_cpu.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

enum class Skip { none, per_head, per_channel };
// dense: separate contiguous tensors. sliced: z, x, B, C and dt are column slices of one
// (batch, L, width) projection output whose rows keep 16-byte alignment (read in place).
// shifted: the same with every slice one 8-byte step off (copied by the launcher).
enum class Layout { dense, sliced, shifted };

struct Config {
  int64_t batch = 2, L = 63, heads = 4, headdim = 32, N = 16, groups = 1, chunk = 64;
  Skip D = Skip::per_head;
  bool z = true, bias = true, softplus = true, h0 = true;
  Layout layout = Layout::dense;
};

std::string describe_config(const Config& c, DType dtype) {
  const char* skip = c.D == Skip::none ? "" : c.D == Skip::per_head ? " D(heads)" : " D(heads, headdim)";
  const char* layout = c.layout == Layout::sliced ? " sliced" : c.layout == Layout::shifted ? " shifted" : "";
  return "batch " + std::to_string(c.batch) + " L " + std::to_string(c.L) + " heads " + std::to_string(c.heads) +
         " headdim " + std::to_string(c.headdim) + " N " + std::to_string(c.N) + " groups " +
         std::to_string(c.groups) + " chunk " + std::to_string(c.chunk) + skip + (c.z ? " z" : "") +
         (c.bias ? " bias" : "") + (c.softplus ? " softplus" : "") + (c.h0 ? " h0" : "") + layout + " " +
         std::string(dtype_name(dtype));
}

// The layer's inputs on one device; optional ones undefined when the config leaves them out.
struct Inputs {
  Tensor x, dt, A, B, C, D, z, bias, h0;
};

Tensor f64(const Tensor& t) { return t.defined() ? contiguous_copy(t, DType::f64, Device::cpu()) : Tensor(); }
Tensor gpu_copy(const Tensor& t) { return t.defined() ? on_gpu(t) : Tensor(); }

// The token inputs' views of a projection-like buffer: (batch, L, width) with z, x, B, C, dt
// side by side from column `shift` on, the width padded to a multiple of 8 elements.
struct Slices {
  int64_t width, z, x, B, C, dt;
};
Slices slices_of(const Config& c, int64_t shift) {
  const int64_t hp = c.heads * c.headdim, gn = c.groups * c.N;
  Slices s{0, shift, shift + hp, shift + 2 * hp, shift + 2 * hp + gn, shift + 2 * hp + 2 * gn};
  s.width = (s.dt + c.heads + 8 + 7) / 8 * 8;
  return s;
}
Tensor view_of(const Tensor& base, int64_t start, const Shape& shape) {
  int64_t cols = 1;
  for (size_t d = 2; d < shape.size(); ++d) cols *= shape[d];
  return reshape(narrow(base, 2, start, cols), shape);
}

Inputs make_inputs(const Config& c, DType dtype, uint64_t seed) {
  const Shape xs{c.batch, c.L, c.heads, c.headdim}, dts{c.batch, c.L, c.heads}, bc{c.batch, c.L, c.groups, c.N};
  const DType param = DType::f32;
  Inputs in;
  in.x = random_cpu(xs, seed + 1, dtype, -1.5, 1.5);
  in.dt = c.softplus ? random_cpu(dts, seed + 2, dtype, c.bias ? -2.0 : -7.0, c.bias ? 1.0 : -1.0)
                     : random_cpu(dts, seed + 2, dtype, 0.001, 0.1);
  in.B = random_cpu(bc, seed + 3, dtype, -1.5, 1.5);
  in.C = random_cpu(bc, seed + 4, dtype, -1.5, 1.5);
  if (c.z) in.z = random_cpu(xs, seed + 5, dtype, -3.0, 3.0);
  std::vector<float> A = random_cpu({c.heads}, seed + 6, DType::f32, std::log(0.1), std::log(16.0)).to_vector<float>();
  for (float& a : A) a = -std::exp(a);
  in.A = from_vector(A, {c.heads});
  if (c.D == Skip::per_head) in.D = random_cpu({c.heads}, seed + 7, param);
  if (c.D == Skip::per_channel) in.D = random_cpu({c.heads, c.headdim}, seed + 7, param);
  if (c.bias) in.bias = c.softplus ? random_cpu({c.heads}, seed + 8, param, -5.0, -2.0)
                                   : random_cpu({c.heads}, seed + 8, param, 0.0, 0.02);
  if (c.h0) in.h0 = random_cpu({c.batch, c.heads, c.headdim, c.N}, seed + 9, param);
  return in;
}

// The GPU copies; for a sliced or shifted layout the token inputs are views of one buffer.
Inputs to_gpu(const Config& c, const Inputs& in) {
  Inputs g{gpu_copy(in.x), gpu_copy(in.dt), gpu_copy(in.A), gpu_copy(in.B), gpu_copy(in.C),
           gpu_copy(in.D), gpu_copy(in.z), gpu_copy(in.bias), gpu_copy(in.h0)};
  if (c.layout == Layout::dense) return g;
  // 8 bytes off: 4 bf16 or 2 f32 elements.
  const int64_t shift = c.layout == Layout::shifted ? 8 / int64_t(dtype_size(in.x.dtype())) : 0;
  const Slices s = slices_of(c, shift);
  Tensor base = random_cpu({c.batch, c.L, s.width}, 777, in.x.dtype());  // filler between the slices
  const Shape xs = in.x.shape(), bc = in.B.shape();
  copy_into(view_of(base, s.x, xs), in.x);
  copy_into(view_of(base, s.B, bc), in.B);
  copy_into(view_of(base, s.C, bc), in.C);
  copy_into(narrow(base, 2, s.dt, c.heads), in.dt);
  if (c.z) copy_into(view_of(base, s.z, xs), in.z);
  const Tensor dev = on_gpu(base);
  g.x = view_of(dev, s.x, xs);
  g.B = view_of(dev, s.B, bc);
  g.C = view_of(dev, s.C, bc);
  g.dt = narrow(dev, 2, s.dt, c.heads);
  if (c.z) g.z = view_of(dev, s.z, xs);
  REQUIRE(!g.x.is_contiguous());
  REQUIRE(g.x.raw_data() != nullptr);
  return g;
}

cuda::SsdForwardResult run_gpu(const Config& c, const Inputs& g) {
  return cuda::ssd_fwd(g.x, g.dt, g.A, g.B, g.C, g.D, g.z, g.bias, c.softplus, c.chunk, g.h0);
}

// max |actual − expected| / max |expected|, NaN when actual has a NaN (an unwritten element).
double relative_error(const Tensor& actual, const Tensor& expected) {
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) return std::nan("");
    diff = std::max(diff, std::abs(a[i] - e[i]));
    scale = std::max(scale, std::abs(e[i]));
  }
  return diff == 0.0 ? 0.0 : diff / scale;  // an all-zero reference asks for exact zeros
}

void check_output(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  const double err = relative_error(actual, expected);
  INFO(what, ": relative error ", err, " (tolerance ", tol, ")");
  CHECK(err <= tol);  // false for NaN
}

void check_forward(const Config& c, DType dtype, uint64_t seed) {
  const std::string what = describe_config(c, dtype);
  CAPTURE(what);
  NoGradGuard no_grad;
  const Inputs in = make_inputs(c, dtype, seed);
  const Inputs g = to_gpu(c, in);
  const cuda::SsdForwardResult r = run_gpu(c, g);

  cpu::SsdArgs args{f64(in.x), f64(in.dt), f64(in.A), f64(in.B), f64(in.C),
                    f64(in.D), f64(in.z),  f64(in.bias), f64(in.h0), c.softplus};
  const cpu::SsdChunkedResult ref = cpu::ssd_chunked_forward(args, c.chunk);
  const int64_t n_chunks = (c.L + c.chunk - 1) / c.chunk;
  REQUIRE(r.y.dtype() == dtype);
  REQUIRE(r.y.shape() == in.x.shape());
  REQUIRE(r.final_state.dtype() == DType::f32);
  REQUIRE(r.final_state.shape() == Shape{c.batch, c.heads, c.headdim, c.N});
  REQUIRE(r.chunk_states.dtype() == DType::f32);
  REQUIRE(r.chunk_states.shape() == Shape{c.batch, n_chunks, c.heads, c.headdim, c.N});
  REQUIRE(r.y_ungated.defined() == c.z);
  const double tol = dtype == DType::f32 ? 1e-3 : 2e-2;
  check_output(r.y, ref.y, tol, what + " y");
  check_output(r.final_state, ref.final_state, tol, what + " final_state");
  check_output(r.chunk_states, ref.chunk_states, tol, what + " chunk_states");
  if (c.z) {
    args.z = Tensor();
    const cpu::SsdChunkedResult ungated = cpu::ssd_chunked_forward(args, c.chunk);
    REQUIRE(r.y_ungated.dtype() == dtype);
    check_output(r.y_ungated, ungated.y, tol, what + " y_ungated");
  }
}

}  // namespace

TEST_CASE("cuda ssd forward matches the chunked CPU algorithm across lengths, head sizes, states and chunks") {
  const std::vector<int64_t> lengths{1, 63, 256, 257, 1000}, headdims{32, 64, 128}, states{16, 64, 128},
      chunks{64, 128, 256};
  uint64_t seed = 10000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (size_t l = 0; l < lengths.size(); ++l)
      for (size_t p = 0; p < headdims.size(); ++p) {
        // Each (L, headdim) pair gets a different N, chunk, group count and option set, so that
        // every value of each comes up with every length.
        const int v = int(l * headdims.size() + p);
        Config c{.batch = 2, .L = lengths[l], .heads = 4, .headdim = headdims[p],
                 .N = states[(l + p) % states.size()], .chunk = chunks[(l + 2 * p) % chunks.size()]};
        c.groups = std::vector<int64_t>{1, 2, 4}[size_t(v + 1) % 3];
        c.D = Skip(v % 3);
        c.z = v % 2 == 0;
        c.bias = v / 2 % 2 == 0;
        c.softplus = v % 4 != 3;
        c.h0 = v / 3 % 2 == 0;
        check_forward(c, dtype, seed += 100);
      }
}

TEST_CASE("cuda ssd forward: every optional input on and off, N 32, ngroups 1, 2 and heads") {
  uint64_t seed = 20000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int mask = 0; mask < 16; ++mask) {
      Config c{.batch = 2, .L = 300, .heads = 6, .headdim = 64, .N = 32, .chunk = 128};
      c.z = mask & 1;
      c.bias = mask & 2;
      c.softplus = mask & 4;
      c.h0 = mask & 8;
      c.D = Skip(mask % 3);
      c.groups = std::vector<int64_t>{1, 2, 6}[size_t(mask / 3 % 3)];
      check_forward(c, dtype, seed += 100);
    }
}

TEST_CASE("cuda ssd forward reads column slices of a projection in place and copies misaligned ones") {
  uint64_t seed = 30000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (Layout layout : {Layout::sliced, Layout::shifted})
      for (int64_t chunk : {64, 256})
        check_forward({.batch = 2, .L = 300, .heads = 4, .headdim = 64, .N = 64, .groups = 2, .chunk = chunk,
                       .D = Skip::per_channel, .layout = layout},
                      dtype, seed += 100);
}

TEST_CASE("cuda ssd forward over 8192 steps") {
  check_forward({.batch = 1, .L = 8192, .heads = 2, .headdim = 64, .N = 128, .groups = 1, .chunk = 256, .z = false},
                DType::f32, 40000);
  check_forward({.batch = 1, .L = 8192, .heads = 2, .headdim = 64, .N = 128, .groups = 2, .chunk = 256}, DType::bf16,
                40100);
}

TEST_CASE("cuda ssd forward: Mamba-2-sized heads in bf16") {
  check_forward({.batch = 2, .L = 1000, .heads = 8, .headdim = 64, .N = 128, .groups = 1, .chunk = 256,
                 .layout = Layout::sliced},
                DType::bf16, 50000);
  check_forward({.batch = 1, .L = 600, .heads = 8, .headdim = 128, .N = 128, .groups = 8, .chunk = 128,
                 .D = Skip::per_channel},
                DType::f32, 50100);
}

TEST_CASE("cuda ssd forward is deterministic") {
  NoGradGuard no_grad;
  const Config c{.batch = 2, .L = 700, .heads = 4, .headdim = 64, .N = 128, .groups = 2, .chunk = 256};
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Inputs g = to_gpu(c, make_inputs(c, dtype, 60000));
    const cuda::SsdForwardResult a = run_gpu(c, g), b = run_gpu(c, g);
    CHECK(a.y.to_double_vector() == b.y.to_double_vector());
    CHECK(a.y_ungated.to_double_vector() == b.y_ungated.to_double_vector());
    CHECK(a.final_state.to_double_vector() == b.final_state.to_double_vector());
    CHECK(a.chunk_states.to_double_vector() == b.chunk_states.to_double_vector());
  }
}

TEST_CASE("cuda ssd_supports names what the kernels take") {
  const char* why = nullptr;
  CHECK(cuda::ssd_supports(64, 128, 256, &why));
  CHECK(why == nullptr);
  for (int64_t headdim : {32, 64, 128})
    for (int64_t N : {16, 32, 64, 128})
      for (int64_t chunk : {64, 128, 256}) CHECK(cuda::ssd_supports(headdim, N, chunk, nullptr));
  CHECK_FALSE(cuda::ssd_supports(48, 64, 256, &why));
  REQUIRE(why != nullptr);
  CHECK(std::string(why).find("headdim") != std::string::npos);
  CHECK_FALSE(cuda::ssd_supports(64, 48, 256, &why));
  CHECK(std::string(why).find("N") != std::string::npos);
  CHECK_FALSE(cuda::ssd_supports(64, 64, 100, &why));
  CHECK(std::string(why).find("chunk_size") != std::string::npos);
  CHECK_FALSE(cuda::ssd_supports(256, 64, 64, &why));

  NoGradGuard no_grad;
  Config c{.batch = 1, .L = 10, .heads = 2, .headdim = 48, .N = 16};
  const Inputs g = to_gpu(c, make_inputs(c, DType::f32, 70000));
  CHECK_THROWS_WITH_AS(run_gpu(c, g), doctest::Contains("headdim 32, 64 or 128"), Error);
  c.headdim = 32;
  c.chunk = 100;
  const Inputs h = to_gpu(c, make_inputs(c, DType::f32, 70100));
  CHECK_THROWS_WITH_AS(run_gpu(c, h), doctest::Contains("chunk_size 64, 128 or 256"), Error);
}
