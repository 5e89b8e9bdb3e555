// The unfused baseline of `scanline bench scan` (bench/scan_unfused.cu) computes what the fused
// CUDA op computes (cuda/selective_scan.h): y, final_state and every gradient, driven through y
// and final_state at once, on small random f32 inputs with groups 1 (the bench's layout), every
// option on and off, with and without initial_state, in one slice of channels and in several
// uneven ones, over lengths around the scan kernels' spans and the fused kernels' chunks; plus
// groups 2 and one bf16 run (the bench's dtype). Tolerance: f32 1e-4 (bf16 1e-2) relative to the
// tensor's largest |value|: the two sum in different orders.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>

#include "bench/scan_unfused.h"
#include "cuda/selective_scan.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Config {
  int64_t batch = 2, d_inner = 5, L = 7, N = 16, groups = 1, slice = 5;
  bool D = true, z = true, bias = true, softplus = true, h0 = true;
};

std::string describe_config(const Config& c, DType dtype) {
  std::string s = "batch " + std::to_string(c.batch) + " d_inner " + std::to_string(c.d_inner) + " L " +
                  std::to_string(c.L) + " N " + std::to_string(c.N) + " groups " + std::to_string(c.groups) +
                  " slices of " + std::to_string(c.slice);
  s += std::string(c.D ? " D" : "") + (c.z ? " z" : "") + (c.bias ? " bias" : "") + (c.softplus ? " softplus" : "") +
       (c.h0 ? " h0" : "");
  return s + (dtype == DType::bf16 ? " bf16" : " f32");
}

void check_same(const Tensor& actual, const Tensor& expected, double rtol, const std::string& what) {
  REQUIRE(actual.defined() == expected.defined());
  if (!expected.defined()) return;
  REQUIRE(actual.dtype() == expected.dtype());
  check_relative(actual, expected, rtol, std::max(max_abs(expected), 1e-20), what);
}

void check_config(const Config& c, DType dtype, uint64_t seed) {
  const std::string what = describe_config(c, dtype);
  CAPTURE(what);
  const Shape rows{c.batch, c.d_inner, c.L}, bc{c.batch, c.groups, c.N, c.L};
  auto make = [&](const Shape& shape, DType dt, double low, double high) {
    return on_gpu(random_cpu(shape, ++seed, dt, low, high));
  };
  bench::UnfusedScanInputs in;
  in.softplus = c.softplus;
  in.u = make(rows, dtype, -1.0, 1.0);
  in.delta = c.softplus ? make(rows, dtype, -2.0, 1.0) : make(rows, dtype, 0.05, 1.0);
  in.A = make({c.d_inner, c.N}, DType::f32, -2.0, -0.1);
  in.B = make(bc, dtype, -1.0, 1.0);
  in.C = make(bc, dtype, -1.0, 1.0);
  if (c.D) in.D = make({c.d_inner}, DType::f32, -1.0, 1.0);
  if (c.z) in.z = make(rows, dtype, -2.0, 2.0);
  if (c.bias) in.delta_bias = c.softplus ? make({c.d_inner}, DType::f32, -1.0, 1.0) : make({c.d_inner}, DType::f32, 0.0, 0.2);
  if (c.h0) in.initial_state = make({c.batch, c.d_inner, c.N}, DType::f32, -1.0, 1.0);
  const Tensor gy = make(rows, dtype, -1.0, 1.0);
  const Tensor gf = make({c.batch, c.d_inner, c.N}, DType::f32, -1.0, 1.0);

  const cuda::ScanForwardResult fwd = cuda::selective_scan_fwd(in.u, in.delta, in.A, in.B, in.C, in.D, in.z,
                                                               in.delta_bias, in.softplus, in.initial_state);
  std::array<bool, 9> needs;
  needs.fill(true);
  const cuda::ScanBackwardResult bwd =
      cuda::selective_scan_bwd(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias, in.softplus,
                               in.initial_state, fwd.chunk_states, gy, gf, needs);

  const double tol = dtype == DType::f32 ? 1e-4 : 1e-2;
  // The forward alone, then forward and backward.
  const bench::UnfusedScanResult only = bench::unfused_selective_scan(in, Tensor(), Tensor(), c.slice);
  check_same(only.y, fwd.y, tol, what + " y (forward only)");
  check_same(only.final_state, fwd.final_state, tol, what + " final_state (forward only)");
  CHECK(!only.u.defined());
  const bench::UnfusedScanResult got = bench::unfused_selective_scan(in, gy, gf, c.slice);
  check_same(got.y, fwd.y, tol, what + " y");
  check_same(got.final_state, fwd.final_state, tol, what + " final_state");
  check_same(got.u, bwd.u, tol, what + " du");
  check_same(got.delta, bwd.delta, tol, what + " ddelta");
  check_same(got.A, bwd.A, tol, what + " dA");
  check_same(got.B, bwd.B, tol, what + " dB");
  check_same(got.C, bwd.C, tol, what + " dC");
  check_same(got.D, bwd.D, tol, what + " dD");
  check_same(got.z, bwd.z, tol, what + " dz");
  check_same(got.delta_bias, bwd.delta_bias, tol, what + " ddelta_bias");
  check_same(got.initial_state, bwd.initial_state, tol, what + " dinitial_state");
}

}  // namespace

TEST_CASE("unfused selective scan equals the fused CUDA op (f32, groups 1)") {
  uint64_t seed = 110000;
  // Lengths: one step, less than a scan span (64 steps at N 16), spans and tiles (128) +- 1, more
  // than one fused chunk (512 at N 16), and a long one.
  for (int64_t L : {1, 7, 63, 64, 65, 129, 1000, 2049})
    for (int64_t slice : {5, 2}) {  // one slice; three, the last of one channel
      check_config({.batch = 2, .d_inner = 5, .L = L, .N = 16, .slice = slice}, DType::f32, seed += 100);
      check_config({.batch = 2, .d_inner = 5, .L = L, .N = 16, .slice = slice, .h0 = false}, DType::f32, seed += 100);
    }
}

TEST_CASE("unfused selective scan equals the fused CUDA op without D, z, bias or softplus") {
  uint64_t seed = 120000;
  for (int64_t L : {7, 300}) {
    check_config({.batch = 1, .d_inner = 3, .L = L, .N = 4, .slice = 2, .D = false, .z = false, .bias = false,
                  .softplus = false, .h0 = false},
                 DType::f32, seed += 100);
    check_config({.batch = 1, .d_inner = 3, .L = L, .N = 4, .slice = 1, .D = false, .bias = false}, DType::f32,
                 seed += 100);
  }
}

TEST_CASE("unfused selective scan equals the fused CUDA op over state sizes, groups and bf16") {
  uint64_t seed = 130000;
  // N: one state (32 parts a span), odd, 64, and 200 (one part, 256-thread scan blocks).
  for (int64_t N : {1, 3, 64, 200})
    check_config({.batch = 2, .d_inner = 3, .L = 300, .N = N, .slice = 2}, DType::f32, seed += 100);
  // Two groups, slices that cut across a group.
  check_config({.batch = 2, .d_inner = 6, .L = 257, .N = 16, .groups = 2, .slice = 4}, DType::f32, seed += 100);
  check_config({.batch = 2, .d_inner = 4, .L = 600, .N = 16, .slice = 3}, DType::bf16, seed += 100);
}

TEST_CASE("unfused selective scan slices fit the budget") {
  // (1, 4096, 65536, 16): three (batch, slice, L, N) f32 tensors of 17 GB at full width.
  const int64_t slice = bench::unfused_slice_channels(1, 4096, 65536, 16, 24e9);
  CHECK(slice < 4096);
  CHECK(bench::unfused_workspace_bytes(1, slice, 65536, 16) <= 24e9);
  CHECK(bench::unfused_slice_channels(8, 1536, 2048, 16, 24e9) == 1536);  // fits in one slice
}
