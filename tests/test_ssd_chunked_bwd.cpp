// The chunked SSD backward on CPU (ops/ssd_chunked_bwd_cpu.cpp, the passes of the CUDA backward)
// against the recurrence's backward (cpu::ssd_backward) in float64: every gradient within 1e-10
// of the largest |value| of its tensor, for lengths that are not multiples of the chunk (and one
// that is), chunk sizes 1, 3, 16 and 64, ngroups 1, 2 and heads, every option on and off (D per
// head and per channel, z, dt_bias, softplus, initial_state), with and without grad_final_state.
#include <algorithm>
#include <cmath>

#include "core/random.h"
#include "ops/ssd_chunked_bwd_cpu.h"
#include "ops/ssd_cpu.h"
#include "support/testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Config {
  int64_t batch = 2, L = 7, heads = 4, headdim = 3, N = 5, groups = 1;
  int D = 1;  // 0: none, 1: (heads), 2: (heads, headdim)
  bool z = true, bias = true, softplus = true, h0 = true;
};

cpu::SsdArgs make_args(const Config& c, uint64_t seed) {
  auto make = [&](const Shape& shape, double low, double high) {
    return random_tensor(shape, ++seed, DType::f64, low, high);
  };
  const Shape xs{c.batch, c.L, c.heads, c.headdim}, bc{c.batch, c.L, c.groups, c.N};
  cpu::SsdArgs a;
  a.dt_softplus = c.softplus;
  a.x = make(xs, -1.0, 1.0);
  a.dt = c.softplus ? make({c.batch, c.L, c.heads}, -3.0, 0.5) : make({c.batch, c.L, c.heads}, 0.01, 0.5);
  a.A = make({c.heads}, -3.0, -0.2);
  a.B = make(bc, -1.0, 1.0);
  a.C = make(bc, -1.0, 1.0);
  if (c.D == 1) a.D = make({c.heads}, -1.0, 1.0);
  if (c.D == 2) a.D = make({c.heads, c.headdim}, -1.0, 1.0);
  if (c.z) a.z = make(xs, -2.0, 2.0);
  if (c.bias) a.dt_bias = c.softplus ? make({c.heads}, -1.0, 1.0) : make({c.heads}, 0.0, 0.2);
  if (c.h0) a.initial_state = make({c.batch, c.heads, c.headdim, c.N}, -1.0, 1.0);
  return a;
}

// max |actual − expected| <= tol · max |expected| (both defined or both undefined); a gradient that
// is exactly zero (dA with L = 1 and no initial state) may come out as rounding noise of ~1e-17.
void check_grad(const char* what, const Tensor& actual, const Tensor& expected, double tol) {
  INFO(what);
  REQUIRE(actual.defined() == expected.defined());
  if (!expected.defined()) return;
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  double scale = 0.0, worst = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(e[i]));
    worst = std::max(worst, std::abs(a[i] - e[i]));
  }
  INFO("max |diff| ", worst, " max |ref| ", scale);
  CHECK(worst <= tol * std::max(scale, 1e-3));
}

void compare(const Config& c, int64_t chunk, bool with_final, uint64_t seed) {
  const cpu::SsdArgs args = make_args(c, seed);
  const Tensor gy = random_tensor({c.batch, c.L, c.heads, c.headdim}, seed + 100, DType::f64, -1.0, 1.0);
  const Tensor gf = with_final ? random_tensor({c.batch, c.heads, c.headdim, c.N}, seed + 101, DType::f64, -1.0, 1.0)
                               : Tensor();
  const Tensor gf_ref = with_final ? gf : zeros({c.batch, c.heads, c.headdim, c.N}, {.dtype = DType::f64});
  std::array<bool, 9> needs;
  needs.fill(true);
  const cpu::SsdGrads ref = cpu::ssd_backward(args, gy, gf_ref, needs);
  const cpu::SsdGrads got = cpu::ssd_chunked_backward(args, chunk, gy, gf);
  constexpr double tol = 1e-10;
  check_grad("dx", got.x, ref.x, tol);
  check_grad("ddt", got.dt, ref.dt, tol);
  check_grad("dA", got.A, ref.A, tol);
  check_grad("dB", got.B, ref.B, tol);
  check_grad("dC", got.C, ref.C, tol);
  check_grad("dD", got.D, ref.D, tol);
  check_grad("dz", got.z, ref.z, tol);
  check_grad("d dt_bias", got.dt_bias, ref.dt_bias, tol);
  check_grad("d initial_state", got.initial_state, ref.initial_state, tol);
}

}  // namespace

TEST_CASE("the chunked SSD backward equals the recurrence's backward in float64") {
  uint64_t seed = 7000;
  int variant = 0;
  for (int64_t L : {1, 7, 37, 48})
    for (int64_t chunk : {1, 3, 16})
      for (int64_t groups : {1, 2, 4}) {
        // Every option on (D per head and per channel), then rotating subsets of them.
        for (int mask : {-1, -2, variant++ % 32, (variant * 13) % 32}) {
          Config c{.batch = 2, .L = L, .heads = 4, .headdim = 3, .N = 5, .groups = groups};
          if (mask == -2) c.D = 2;
          if (mask >= 0) {
            c.D = mask & 1 ? 1 + (mask >> 4 & 1) : 0;
            c.z = mask & 2;
            c.bias = mask & 4;
            c.softplus = mask & 8;
            c.h0 = (mask & 16) || (mask & 1);
          }
          CAPTURE(L); CAPTURE(chunk); CAPTURE(groups); CAPTURE(mask);
          compare(c, chunk, (mask & 3) != 2, seed += 10);
        }
      }
}

TEST_CASE("the chunked SSD backward at a CUDA-sized chunk, many heads a group and wide states") {
  // Chunk 64 over 150 steps (two full chunks and a short one), 6 heads in 2 groups, headdim 8, N 16.
  for (int D : {1, 2}) {
    CAPTURE(D);
    compare({.batch = 1, .L = 150, .heads = 6, .headdim = 8, .N = 16, .groups = 2, .D = D}, 64, true, 9000 + D);
  }
  compare({.batch = 2, .L = 64, .heads = 2, .headdim = 4, .N = 4, .groups = 1, .D = 0, .z = false}, 64, false, 9100);
}
