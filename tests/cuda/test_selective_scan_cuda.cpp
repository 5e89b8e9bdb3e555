// CUDA selective scan (cuda/selective_scan_{fwd,bwd}.cu) against the float64 CPU reference on the
// same values: forward (y, final_state), the saved chunk-boundary states, and every gradient,
// driven through y and through final_state separately (the backward is linear in the two, and
// this keeps other ops' kernels out of the test). Lengths around the chunk sizes (128, 256, 512),
// state sizes that change the chunk plan, d_inner that no tile size divides, groups 1 and
// d_inner and in between, every optional input on and off, f32 / bf16 / f64, non-contiguous
// inputs, mamba_ssm's channel-major layout read in place (and y and the row gradients returned
// in it), bitwise determinism, and the memory bound of the recomputing backward.
//
// Tolerances: f32 1e-4, bf16 1e-2, f64 1e-9, each relative to max(|expected|, the largest
// |expected| of the tensor): errors of sums and of long recurrences scale with the magnitude of
// their terms, which the tensor's largest element stands for.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/stream.h"
#include "cuda/selective_scan.h"
#include "ops/selective_scan.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

struct Config {
  int64_t batch = 2, d_inner = 6, L = 7, N = 4, groups = 1;
  bool D = true, z = true, bias = true, softplus = true, h0 = true;
};

Config with_mask(Config c, int mask) {
  c.D = mask & 1;
  c.z = mask & 2;
  c.bias = mask & 4;
  c.softplus = mask & 8;
  c.h0 = mask & 16;
  return c;
}

std::string describe_config(const Config& c, DType dtype) {
  std::string s = "batch " + std::to_string(c.batch) + " d_inner " + std::to_string(c.d_inner) + " L " +
                  std::to_string(c.L) + " N " + std::to_string(c.N) + " groups " + std::to_string(c.groups);
  s += std::string(c.D ? " D" : "") + (c.z ? " z" : "") + (c.bias ? " bias" : "") + (c.softplus ? " softplus" : "") +
       (c.h0 ? " h0" : "");
  return s + " " + std::string(dtype == DType::f32 ? "f32" : dtype == DType::bf16 ? "bf16" : "f64");
}

// CPU inputs in argument order (optional ones undefined): u, delta, B, C, z in `dtype`; A, D,
// delta_bias, initial_state in f32 (f64 for f64). Ranges as a Mamba layer sees them.
struct Inputs {
  std::vector<Tensor> t;  // u, delta, A, B, C, D, z, bias, h0
  bool softplus = false;
};

Inputs make_inputs(const Config& c, uint64_t seed, DType dtype) {
  const DType param = dtype == DType::f64 ? DType::f64 : DType::f32;
  const Shape rows{c.batch, c.d_inner, c.L}, bc{c.batch, c.groups, c.N, c.L};
  auto make = [&](const Shape& shape, DType dt, double low, double high) {
    return random_cpu(shape, ++seed, dt, low, high);
  };
  Inputs in;
  in.softplus = c.softplus;
  in.t.resize(9);
  in.t[0] = make(rows, dtype, -1.0, 1.0);
  in.t[1] = c.softplus ? make(rows, dtype, -2.0, 1.0) : make(rows, dtype, 0.05, 1.0);
  in.t[2] = make({c.d_inner, c.N}, param, -2.0, -0.1);
  in.t[3] = make(bc, dtype, -1.0, 1.0);
  in.t[4] = make(bc, dtype, -1.0, 1.0);
  if (c.D) in.t[5] = make({c.d_inner}, param, -1.0, 1.0);
  if (c.z) in.t[6] = make(rows, dtype, -2.0, 2.0);
  if (c.bias) in.t[7] = c.softplus ? make({c.d_inner}, param, -1.0, 1.0) : make({c.d_inner}, param, 0.0, 0.2);
  if (c.h0) in.t[8] = make({c.batch, c.d_inner, c.N}, param, -1.0, 1.0);
  return in;
}

struct Outcome {
  Tensor y, final_state;
  std::vector<Tensor> grads;  // per input, undefined for undefined inputs
};

// How the inputs reach the op. dense: contiguous leaves. transposed: every 2-d and larger input
// is the transpose of a leaf holding its values with the last two dims swapped (time is not
// innermost: the launcher copies it). channel_major: mamba_ssm's layout, which the kernels read
// in place: u, delta, z and grad_y are (batch, d_inner, L) views, strides (L, batch·L, 1), of
// (d_inner, batch, L) leaves, and B and C views of states 1 .. N of (groups, N + 2, batch, L)
// leaves (batch stride L, state stride batch·L). channel_major_padded: the same with the rows of
// u, delta, z and grad_y one step longer than L, strides that put rows off word boundaries, so
// the kernels take their per-step path whatever L is.
enum class Layout { dense, transposed, channel_major, channel_major_padded };

const char* layout_name(Layout layout) {
  switch (layout) {
    case Layout::dense: return "";
    case Layout::transposed: return " transposed";
    case Layout::channel_major: return " channel-major";
    case Layout::channel_major_padded: return " channel-major padded";
  }
  return "";
}

// x's values in a fresh tensor (`storage`) on a device that holds x's dims in the order `order`
// (outermost first), with x's dim pad_dim `pad` entries longer (x at [pad / 2, pad / 2 + size)).
// view() reads a tensor shaped like storage (it, or its gradient) as x.
struct Placed {
  Tensor storage;
  std::vector<int64_t> order;
  int64_t pad_dim = 0, pad = 0;

  Tensor view(const Tensor& t) const {
    std::vector<int64_t> dims(order.size());
    for (size_t k = 0; k < order.size(); ++k) dims[size_t(order[k])] = int64_t(k);
    const Tensor v = permute(t, dims);
    if (pad == 0) return v;
    const int64_t begin = pad / 2;
    return slice(v, pad_dim, begin, v.shape()[size_t(pad_dim)] - (pad - begin));
  }
};

Placed place(const Tensor& x, Device device, std::vector<int64_t> order, int64_t pad_dim = 0, int64_t pad = 0) {
  Placed p{Tensor(), std::move(order), pad_dim, pad};
  Shape shape;
  for (int64_t d : p.order) shape.push_back(x.shape()[size_t(d)] + (d == pad_dim ? pad : 0));
  const Tensor host = zeros(shape, {.dtype = x.dtype()});
  copy_into(p.view(host), x);
  p.storage = contiguous_copy(host, x.dtype(), device);
  return p;
}

// Where a channel-major layout puts a (batch, d_inner, L) tensor, or B or C (state_rows).
Placed place_channel_major(const Tensor& x, Device device, Layout layout, bool state_rows) {
  if (state_rows) return place(x, device, {1, 2, 0, 3}, 2, 2);
  return place(x, device, {1, 0, 2}, 2, layout == Layout::channel_major_padded ? 1 : 0);
}

bool is_channel_major(Layout layout) {
  return layout == Layout::channel_major || layout == Layout::channel_major_padded;
}

// Runs the scan on `device` with fresh leaves, the inputs reaching the op in `layout`; backward
// from y (through_y) or from final_state with gradient grad_out.
Outcome run_on(const Inputs& in, Device device, bool through_y, const Tensor& grad_out, Layout layout = Layout::dense) {
  const bool transposed = layout == Layout::transposed;
  std::vector<Tensor> leaves(9), args(9);
  std::vector<Placed> placed(9);  // channel-major layouts: how a leaf maps to its argument
  for (size_t i = 0; i < 9; ++i) {
    if (!in.t[i].defined()) continue;
    const Tensor& x = in.t[i];
    const bool rows = i == 0 || i == 1 || i == 6, state_rows = i == 3 || i == 4;
    if (is_channel_major(layout) && (rows || state_rows)) {
      placed[i] = place_channel_major(x, device, layout, state_rows);
      leaves[i] = placed[i].storage;
      leaves[i].set_requires_grad(true);
      args[i] = placed[i].view(leaves[i]);
    } else if (transposed && x.dim() >= 2) {
      // A leaf holding the values with the last two dims swapped; the op gets its transpose.
      const int64_t last = x.dim() - 1;
      Tensor swapped = contiguous_copy(transpose(x, last - 1, last), x.dtype(), device);
      swapped.set_requires_grad(true);
      leaves[i] = swapped;
      args[i] = transpose(swapped, last - 1, last);
    } else {
      leaves[i] = contiguous_copy(x, x.dtype(), device);
      leaves[i].set_requires_grad(true);
      args[i] = leaves[i];
    }
  }
  SelectiveScanResult r =
      selective_scan(args[0], args[1], args[2], args[3], args[4], args[5], args[6], args[7], in.softplus, args[8]);
  Tensor grad = contiguous_copy(grad_out, grad_out.dtype(), device);
  if (through_y && is_channel_major(layout)) {  // grad_y in u's layout, as a mixer's would come
    const Placed g = place_channel_major(grad_out, device, layout, false);
    grad = g.view(g.storage);
  }
  backward(through_y ? r.y : r.final_state, grad);
  Outcome out{r.y, r.final_state, {}};
  for (size_t i = 0; i < 9; ++i) {
    if (!leaves[i].defined()) {
      out.grads.emplace_back();
      continue;
    }
    REQUIRE(leaves[i].grad().defined());
    const int64_t last = leaves[i].dim() - 1;
    if (placed[i].storage.defined())
      out.grads.push_back(placed[i].view(leaves[i].grad()));
    else
      out.grads.push_back(transposed && last >= 1 ? transpose(leaves[i].grad(), last - 1, last) : leaves[i].grad());
  }
  return out;
}

double tolerance(DType dtype) { return dtype == DType::f32 ? 1e-4 : dtype == DType::bf16 ? 1e-2 : 1e-9; }

// actual vs expected within rtol of max(|expected_i|, max |expected|).
void check_scaled(const Tensor& actual, const Tensor& expected, double rtol, const std::string& what) {
  REQUIRE(actual.dtype() == expected.dtype());
  check_relative(actual, expected, rtol, std::max(max_abs(expected), 1e-20), what);
}

const char* const kNames[9] = {"du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "dinitial_state"};

// Forward and both backward paths of one configuration on CPU and CUDA.
void check_config(const Config& c, DType dtype, uint64_t seed, Layout layout = Layout::dense) {
  const std::string what = describe_config(c, dtype) + layout_name(layout);
  CAPTURE(what);
  const Inputs in = make_inputs(c, seed, dtype);
  const double tol = tolerance(dtype);
  const DType param = dtype == DType::f64 ? DType::f64 : DType::f32;
  const Tensor gy = random_cpu({c.batch, c.d_inner, c.L}, seed + 100, dtype, -1.0, 1.0);
  const Tensor gf = random_cpu({c.batch, c.d_inner, c.N}, seed + 101, param, -1.0, 1.0);
  for (bool through_y : {true, false}) {
    const std::string path = through_y ? " (through y)" : " (through final_state)";
    const Outcome ref = run_on(in, Device::cpu(), through_y, through_y ? gy : gf);
    const Outcome got = run_on(in, gpu(), through_y, through_y ? gy : gf, layout);
    REQUIRE(got.y.device().is_cuda());
    CHECK(got.y.dtype() == dtype);
    // y in u's dimension order: (d_inner, batch, L) storage for a channel-major u.
    if (is_channel_major(layout)) CHECK(got.y.strides() == Shape{c.L, c.batch * c.L, 1});
    CHECK(got.final_state.dtype() == param);
    if (through_y) {
      check_scaled(got.y, ref.y, tol, what + " y");
      check_scaled(got.final_state, ref.final_state, tol, what + " final_state");
    }
    for (size_t i = 0; i < 9; ++i) {
      if (!in.t[i].defined()) continue;
      CAPTURE(i);
      REQUIRE(got.grads[i].defined());
      CHECK(got.grads[i].shape() == in.t[i].shape());
      check_scaled(got.grads[i], ref.grads[i], tol, what + path + " " + kNames[i]);
    }
  }
}

}  // namespace

TEST_CASE("cuda selective_scan f32 matches the CPU reference over lengths, state sizes, groups and options") {
  // Masks (D, z, bias, softplus, h0 bits): everything on, plus a rotating subset.
  const int rotating[] = {0, 5, 10, 19, 26, 12, 17, 3, 28, 9, 22, 14, 7, 24, 1, 30, 11, 20, 6, 25, 13};
  int next = 0;
  uint64_t seed = 10000;
  for (int64_t L : {1, 7, 64, 2047, 2048, 2049, 4099})
    for (int64_t N : {4, 16, 64})
      for (int64_t groups : {int64_t(1), int64_t(6)}) {
        const Config base{.batch = 2, .d_inner = 6, .L = L, .N = N, .groups = groups};
        check_config(base, DType::f32, seed += 1000);
        check_config(with_mask(base, rotating[next++ % 21]), DType::f32, seed += 1000);
      }
}

TEST_CASE("cuda selective_scan around the chunk sizes of every plan (f32)") {
  uint64_t seed = 20000;
  // f32 chunks (cuda/selective_scan_common.cuh): N 16: 128 steps; N 32: 64; N 64 and N 200: 32.
  // The forward walks 512 steps a warp pass and the chunk-map pass 512 a warp, so lengths
  // straddle both.
  for (int64_t N : {16, 32, 64})
    for (int64_t L : {127, 128, 129, 255, 256, 257, 511, 512, 513, 1025})
      check_config({.batch = 1, .d_inner = 3, .L = L, .N = N, .groups = 1}, DType::f32, seed += 1000);
  for (int64_t L : {31, 32, 33, 300})
    for (int64_t groups : {int64_t(1), int64_t(2)})
      check_config({.batch = 1, .d_inner = 2, .L = L, .N = 200, .groups = groups}, DType::f32, seed += 1000);
  check_config({.batch = 1, .d_inner = 2, .L = 70, .N = 1, .groups = 1}, DType::f32, seed += 1000);
  check_config({.batch = 1, .d_inner = 1, .L = 1, .N = 1, .groups = 1}, DType::f32, seed += 1000);  // one element
}

TEST_CASE("cuda selective_scan bf16 inputs match the CPU reference on the same values") {
  uint64_t seed = 30000;
  int mask = 0;
  for (int64_t L : {1, 7, 64, 2047, 2048, 2049, 4099})
    for (int64_t groups : {int64_t(1), int64_t(6)}) {
      const Config base{.batch = 2, .d_inner = 6, .L = L, .N = 16, .groups = groups};
      check_config(base, DType::bf16, seed += 1000);
      check_config(with_mask(base, (mask += 7) % 32), DType::bf16, seed += 1000);
    }
  check_config({.batch = 1, .d_inner = 4, .L = 300, .N = 64, .groups = 2}, DType::bf16, seed += 1000);
}

TEST_CASE("cuda selective_scan f64 agrees with the CPU reference to rounding") {
  uint64_t seed = 40000;
  for (int64_t L : {1, 129, 2049})
    for (int64_t N : {4, 16})
      for (int64_t groups : {int64_t(1), int64_t(3)})
        check_config({.batch = 2, .d_inner = 6, .L = L, .N = N, .groups = groups}, DType::f64, seed += 1000);
}

TEST_CASE("cuda selective_scan dB/dC channel tiles: uneven tiles, one tile of many channels, one channel a tile") {
  uint64_t seed = 50000;
  // 37 channels in one group: tiles of 3 channels (the last of 1) summed by the tile reduction.
  check_config({.batch = 1, .d_inner = 37, .L = 600, .N = 16, .groups = 1}, DType::f32, seed += 1000);
  // 2 channels a group and batch * groups * chunks >= 1024 blocks: one tile, summed in shared memory.
  check_config({.batch = 8, .d_inner = 8, .L = 4099, .N = 64, .groups = 4}, DType::f32, seed += 1000);
  // 3 channels a group, one a tile.
  check_config({.batch = 2, .d_inner = 6, .L = 1000, .N = 16, .groups = 2}, DType::f32, seed += 1000);
  // 40 channels in 2 groups, bf16.
  check_config({.batch = 2, .d_inner = 80, .L = 257, .N = 16, .groups = 2}, DType::bf16, seed += 1000);
}

TEST_CASE("cuda selective_scan over 65536 steps matches the CPU reference (f32 and bf16)") {
  // The acceptance sweep's longest sequence: many chunks carried forward and backward. A
  // few channels keep the sequential CPU reference affordable.
  const Config c{.batch = 1, .d_inner = 3, .L = 65536, .N = 16, .groups = 1};
  check_config(c, DType::f32, 55000);
  check_config(c, DType::bf16, 56000);
}

TEST_CASE("cuda selective_scan reads non-contiguous inputs") {
  check_config({.batch = 2, .d_inner = 5, .L = 2049, .N = 16, .groups = 1}, DType::f32, 60000, Layout::transposed);
  check_config({.batch = 2, .d_inner = 4, .L = 64, .N = 16, .groups = 4}, DType::bf16, 61000, Layout::transposed);
}

TEST_CASE("cuda selective_scan reads channel-major u, delta, z, grad_y and strided B, C in place") {
  // L: multiples of 16 (every kernel on its whole-word path), of 4 only (the backward's), and odd
  // (per step everywhere); groups 1 (Mamba-1: B and C shared by all channels) and d_inner.
  uint64_t seed = 62000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t L : {64, 300, 2048, 2049})
      for (int64_t groups : {int64_t(1), int64_t(6)})
        for (bool z : {true, false}) {
          Config c{.batch = 2, .d_inner = 6, .L = L, .N = 16, .groups = groups};
          c.z = z;
          check_config(c, dtype, seed += 1000, Layout::channel_major);
        }
  // Rows off word boundaries: the per-step path at an L that would take the whole-word one.
  for (DType dtype : {DType::f32, DType::bf16})
    for (bool z : {true, false}) {
      Config c{.batch = 2, .d_inner = 4, .L = 256, .N = 16, .groups = 2};
      c.z = z;
      check_config(c, dtype, seed += 1000, Layout::channel_major_padded);
    }
}

TEST_CASE("cuda selective_scan returns y, du, ddelta and dz in a channel-major u's layout") {
  // The launchers directly (the autograd graph would transpose the gradients back): the same
  // values read densely and channel-major give bitwise the same results, y and the row
  // gradients in u's layout, dB and dC contiguous. Three chunks: the chunk-map pass runs too.
  const Config c{.batch = 3, .d_inner = 4, .L = 384, .N = 16, .groups = 2};
  const std::array<bool, 9> needs{true, true, true, true, true, true, true, true, true};
  uint64_t seed = 64000;
  for (DType dtype : {DType::f32, DType::bf16})
    for (Layout layout : {Layout::channel_major, Layout::channel_major_padded}) {
      const std::string what = describe_config(c, dtype) + layout_name(layout);
      CAPTURE(what);
      const Inputs in = make_inputs(c, seed += 1000, dtype);
      const Tensor gy = random_cpu({c.batch, c.d_inner, c.L}, seed + 100, dtype);
      std::vector<Tensor> dense(9), strided(9);
      for (size_t i = 0; i < 9; ++i)
        if (in.t[i].defined()) dense[i] = strided[i] = on_gpu(in.t[i]);
      std::vector<Placed> placed;  // keeps the views' storage alive
      for (size_t i : {0, 1, 3, 4, 6}) {
        placed.push_back(place_channel_major(in.t[i], gpu(), layout, i == 3 || i == 4));
        strided[i] = placed.back().view(placed.back().storage);
      }
      const Placed gy_placed = place_channel_major(gy, gpu(), layout, false);
      const Tensor gy_dense = on_gpu(gy), gy_strided = gy_placed.view(gy_placed.storage);
      const int64_t row = layout == Layout::channel_major ? c.L : c.L + 1;
      REQUIRE(strided[0].strides() == Shape{row, c.batch * row, 1});
      REQUIRE(strided[3].strides() == Shape{c.L, (c.N + 2) * c.batch * c.L, c.batch * c.L, 1});
      REQUIRE(gy_strided.strides() == strided[0].strides());

      auto forward = [&](const std::vector<Tensor>& t) {
        return cuda::selective_scan_fwd(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], in.softplus, t[8]);
      };
      auto backward_of = [&](const std::vector<Tensor>& t, const cuda::ScanForwardResult& f, const Tensor& g) {
        return cuda::selective_scan_bwd(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], in.softplus, t[8],
                                        f.chunk_states, g, Tensor(), needs);
      };
      const cuda::ScanForwardResult fa = forward(dense), fb = forward(strided);
      const cuda::ScanBackwardResult ga = backward_of(dense, fa, gy_dense), gb = backward_of(strided, fb, gy_strided);
      // y, du, ddelta, dz: dense storage in u's dimension order, (d_inner, batch, L) here.
      const Shape channel_major{c.L, c.batch * c.L, 1};
      CHECK(fa.y.is_contiguous());
      CHECK(fb.y.strides() == channel_major);
      const std::vector<Tensor> a{ga.u, ga.delta, ga.A, ga.B, ga.C, ga.D, ga.z, ga.delta_bias, ga.initial_state};
      const std::vector<Tensor> b{gb.u, gb.delta, gb.A, gb.B, gb.C, gb.D, gb.z, gb.delta_bias, gb.initial_state};
      for (size_t i : {0, 1, 6}) {
        CAPTURE(kNames[i]);
        CHECK(a[i].is_contiguous());
        CHECK(b[i].strides() == channel_major);
      }
      CHECK(b[3].is_contiguous());
      CHECK(b[4].is_contiguous());
      // Bitwise only where both take the same kernels (the padded rows take the per-step path;
      // check_config compares those values against the CPU reference).
      if (layout != Layout::channel_major) continue;
      CHECK(fb.y.to_double_vector() == fa.y.to_double_vector());
      CHECK(fb.final_state.to_double_vector() == fa.final_state.to_double_vector());
      for (size_t i = 0; i < 9; ++i) {
        CAPTURE(kNames[i]);
        CHECK(b[i].to_double_vector() == a[i].to_double_vector());
      }
    }
}

TEST_CASE("cuda selective_scan saves the state entering every chunk") {
  const Config c{.batch = 2, .d_inner = 3, .L = 2049, .N = 16, .groups = 1};
  const Inputs in = make_inputs(c, 70000, DType::f32);
  const int64_t chunk = cuda::selective_scan_chunk_size(c.L, c.N, DType::f32);
  REQUIRE(chunk == 128);
  std::vector<Tensor> g(9);
  for (size_t i = 0; i < 9; ++i)
    if (in.t[i].defined()) g[i] = on_gpu(in.t[i]);
  const cuda::ScanForwardResult r =
      cuda::selective_scan_fwd(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], in.softplus, g[8]);
  const int64_t n_chunks = (c.L + chunk - 1) / chunk;
  REQUIRE(r.chunk_states.shape() == Shape{c.batch, c.d_inner, n_chunks, c.N});
  for (int64_t k = 0; k < n_chunks; ++k) {
    CAPTURE(k);
    // The CPU state after the first k * chunk steps (initial_state itself for k = 0).
    Tensor expected;
    if (k == 0) {
      expected = in.t[8];
    } else {
      std::vector<Tensor> prefix = in.t;
      for (size_t i : {0, 1, 6}) prefix[i] = slice(in.t[i], 2, 0, k * chunk);
      for (size_t i : {3, 4}) prefix[i] = slice(in.t[i], 3, 0, k * chunk);
      expected = selective_scan(prefix[0], prefix[1], prefix[2], prefix[3], prefix[4], prefix[5], prefix[6],
                                prefix[7], in.softplus, prefix[8]).final_state;
    }
    const Tensor got = contiguous_copy(slice(r.chunk_states, 2, k, k + 1), DType::f32, Device::cpu());
    check_scaled(reshape(got, {c.batch, c.d_inner, c.N}), expected, 1e-4, "chunk state " + std::to_string(k));
  }
}

TEST_CASE("cuda selective_scan gradients are bitwise reproducible") {
  const Config c{.batch = 2, .d_inner = 40, .L = 1500, .N = 16, .groups = 1};
  const Inputs in = make_inputs(c, 80000, DType::f32);
  const Tensor gy = random_cpu({c.batch, c.d_inner, c.L}, 80100, DType::f32);
  const Outcome a = run_on(in, gpu(), true, gy), b = run_on(in, gpu(), true, gy);
  CHECK(a.y.to_vector<float>() == b.y.to_vector<float>());
  for (size_t i = 0; i < 9; ++i) {
    CAPTURE(i);
    CHECK(a.grads[i].to_vector<float>() == b.grads[i].to_vector<float>());
  }
}

TEST_CASE("cuda selective_scan handles an empty batch") {
  const Config c{.batch = 0, .d_inner = 4, .L = 5, .N = 3, .groups = 2};
  const Inputs in = make_inputs(c, 90000, DType::f32);
  const Outcome out = run_on(in, gpu(), true, random_cpu({0, 4, 5}, 90100));
  CHECK(out.y.shape() == Shape{0, 4, 5});
  CHECK(out.grads[2].to_vector<float>() == std::vector<float>(12, 0.0f));
  CHECK(out.grads[5].to_vector<float>() == std::vector<float>(4, 0.0f));
}

TEST_CASE("cuda selective_scan forward + backward peak memory stays below 1.5x inputs, outputs and gradients") {
  // The acceptance shape: (batch 1, d_inner 2048, L 65536, N 16) bf16 with D, z, delta_bias and
  // softplus. One (batch, d_inner, L, N) f32 tensor alone would be 8.6 GB, against about 2.2 GB
  // for inputs, outputs and gradients. GPU only: the CPU reference would take far too long here.
  const Config c{.batch = 1, .d_inner = 2048, .L = 65536, .N = 16, .groups = 1, .h0 = false};
  const Inputs in = make_inputs(c, 95000, DType::bf16);
  cuda::synchronize(0);
  const size_t before = cuda::allocator_stats(0).allocated;
  std::vector<Tensor> leaves(9);
  size_t counted = 0;  // inputs + their gradients (same sizes) + y + final_state + y's gradient
  for (size_t i = 0; i < 9; ++i) {
    if (!in.t[i].defined()) continue;
    leaves[i] = on_gpu(in.t[i], true);
    counted += 2 * size_t(in.t[i].numel()) * dtype_size(in.t[i].dtype());
  }
  const Tensor gy = on_gpu(random_cpu({c.batch, c.d_inner, c.L}, 95100, DType::bf16));
  counted += 2 * size_t(gy.numel()) * dtype_size(DType::bf16) + size_t(c.batch * c.d_inner * c.N) * 4;
  cuda::synchronize(0);
  cuda::reset_peak(0);
  {
    SelectiveScanResult r = selective_scan(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5],
                                           leaves[6], leaves[7], true, leaves[8]);
    backward(r.y, gy);
  }
  cuda::synchronize(0);
  const size_t peak = cuda::allocator_stats(0).peak_allocated - before;
  INFO("peak ", peak, " bytes above the starting point; inputs, outputs and gradients ", counted, " bytes");
  CHECK(double(peak) <= 1.5 * double(counted));
  for (size_t i : {0, 1, 3, 4, 6}) {
    CAPTURE(i);
    const std::vector<double> v = leaves[i].grad().to_double_vector();
    CHECK(std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); }));
  }
}
