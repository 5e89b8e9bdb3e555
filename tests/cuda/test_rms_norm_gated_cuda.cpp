// CUDA rms_norm_gated (cuda/rms_norm_gated.cu) against the CPU reference on the same values,
// forward and backward (dx, dz, dweight), f32 and bf16 (and f64), both gate orders, whole-row and
// grouped (D / 8) norms: sub-warp, warp and block teams, the looped kernels for wide groups, the
// scalar path (odd group sizes, unaligned row strides), no weight, enough rows for many dweight
// slots, x and z as column slices of one wider matrix (read in place, aligned or not), transposed
// inputs (copied), row-strided and transposed upstream gradients, and partial needs (dz only).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "ops/concat.h"
#include "ops/rms_norm.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// GPU vs CPU, relative to max(|element|, floor).
void check_against(const Tensor& gpu, const Tensor& cpu, DType dtype, double floor, const std::string& what) {
  REQUIRE(gpu.defined());
  REQUIRE(cpu.defined());
  CHECK(gpu.device().is_cuda());
  CHECK(gpu.dtype() == cpu.dtype());
  check_relative(gpu, cpu, tolerance_for(dtype), std::max(floor, 1e-30), what);
}

// The largest rstd over the (row, group) segments of x, z (rows of the last dim), in float64.
double max_rstd(const Tensor& x, const Tensor& z, int64_t group, bool before, double eps = 1e-5) {
  const std::vector<double> vx = x.to_double_vector(), vz = z.to_double_vector();
  double worst = 0.0;
  for (size_t base = 0; base < vx.size(); base += size_t(group)) {
    double squares = 0.0;
    for (size_t i = base; i < base + size_t(group); ++i) {
      const double v = before ? vx[i] : vx[i] * vz[i] / (1.0 + std::exp(-vz[i]));
      squares += v * v;
    }
    worst = std::max(worst, 1.0 / std::sqrt(squares / double(group) + eps));
  }
  return worst;
}

enum class Layout {
  contiguous,
  slices,            // x, z: column slices of one (rows, 2 * width + pad) leaf; pad keeps 16-byte rows
  slices_unaligned,  // the same with an odd pad: the scalar path
  transposed,        // x, z: transposes of (width, rows) leaves (copied by the kernels)
};

enum class Upstream { contiguous, row_strided, transposed };

struct Case {
  int64_t rows = 37, width = 64, group = 0;
  DType dtype = DType::f32;
  bool before = false, with_weight = true;
  Layout layout = Layout::contiguous;
  Upstream upstream = Upstream::contiguous;
  bool x_grad = true;  // false: only z (and weight) need a gradient
  uint64_t seed = 1;
};

std::string describe_case(const Case& c) {
  static const char* layouts[] = {"contiguous", "slices", "slices_unaligned", "transposed"};
  static const char* upstreams[] = {"", " row-strided grad", " transposed grad"};
  return "rows " + std::to_string(c.rows) + " width " + std::to_string(c.width) + " group " +
         std::to_string(c.group) + (c.before ? " norm_before_gate" : " gate first") +
         (c.with_weight ? " weight" : " no weight") + " " + layouts[int(c.layout)] + upstreams[int(c.upstream)] +
         (c.x_grad ? "" : " dz only") + " " + dtype_name(c.dtype);
}

// The leaves of one device and the views x, z of them the op reads.
struct Inputs {
  std::vector<Tensor> leaves;  // what gets gradients (x's and z's leaves, or one shared leaf)
  std::vector<std::string> names;
  Tensor x, z, weight;
};

Inputs make_inputs(const Case& c, const Tensor& x0, const Tensor& z0, const Tensor& base0, const Tensor& w0,
                   bool gpu_side) {
  auto leaf = [&](const Tensor& t, bool grad) { return gpu_side ? on_gpu(t, grad) : cpu_leaf(t, grad); };
  Inputs in;
  in.weight = c.with_weight ? leaf(w0, true) : Tensor();
  switch (c.layout) {
    case Layout::contiguous:
      in.x = leaf(x0, c.x_grad);
      in.z = leaf(z0, true);
      in.leaves = {in.x, in.z};
      in.names = {" dx", " dz"};
      break;
    case Layout::transposed: {
      Tensor xl = leaf(transpose(x0, 0, 1), c.x_grad), zl = leaf(transpose(z0, 0, 1), true);
      in.x = transpose(xl, 0, 1);
      in.z = transpose(zl, 0, 1);
      in.leaves = {xl, zl};
      in.names = {" dx", " dz"};
      break;
    }
    case Layout::slices:
    case Layout::slices_unaligned: {
      // One leaf holding [z | pad | x] a row, as in_proj's output holds z and x in the mixer.
      Tensor base = leaf(base0, true);
      const int64_t pad = base0.size(1) - 2 * c.width;
      in.z = narrow(base, 1, 0, c.width);
      in.x = narrow(base, 1, c.width + pad, c.width);
      if (!c.x_grad) in.x = in.x.detach();
      in.leaves = {base};
      in.names = {" d[z | pad | x]"};
      break;
    }
  }
  if (c.with_weight) {
    in.leaves.push_back(in.weight);
    in.names.push_back(" dweight");
  }
  return in;
}

void check_gated(const Case& c) {
  const std::string what = describe_case(c);
  CAPTURE(what);
  const int64_t pad = c.layout == Layout::slices ? 8 : (c.layout == Layout::slices_unaligned ? 3 : 0);
  Tensor x0 = random_cpu({c.rows, c.width}, c.seed, c.dtype, -2.0, 2.0);
  Tensor z0 = random_cpu({c.rows, c.width}, c.seed + 1, c.dtype, -3.0, 3.0);
  Tensor base0 = random_cpu({c.rows, 2 * c.width + pad}, c.seed + 2, c.dtype, -2.5, 2.5);
  Tensor w0 = random_cpu({c.width}, c.seed + 3, c.dtype, 0.5, 1.5);
  Tensor g0 = random_cpu({c.rows, c.width}, c.seed + 4, c.dtype, -1.0, 1.0);
  Tensor extra = random_cpu({c.rows, 5}, c.seed + 5, c.dtype, -1.0, 1.0);

  Inputs cpu = make_inputs(c, x0, z0, base0, w0, false);
  Inputs gpu = make_inputs(c, x0, z0, base0, w0, true);
  Tensor yc = rms_norm_gated(cpu.x, cpu.z, cpu.weight, 1e-5, c.before, c.group);
  Tensor yg = rms_norm_gated(gpu.x, gpu.z, gpu.weight, 1e-5, c.before, c.group);
  check_against(yg, yc, c.dtype, 1e-2 * max_abs(yc), what + " y");

  // The upstream gradient reaches the norm as given, as a column slice (through cat), or as a
  // transpose.
  auto run_backward = [&](const Tensor& y, const Tensor& g, bool gpu_side) {
    auto dev = [&](const Tensor& t) { return gpu_side ? on_gpu(t) : t; };
    switch (c.upstream) {
      case Upstream::contiguous: backward(y, dev(g)); break;
      case Upstream::row_strided: backward(cat({y, dev(extra)}, 1), dev(cat({g, extra}, 1))); break;
      case Upstream::transposed: backward(transpose(y, 0, 1), dev(transpose(g, 0, 1))); break;
    }
  };
  run_backward(yc, g0, false);
  run_backward(yg, g0, true);
  // dx and dz come from dv = rstd * (gw - vhat * mean(gw * vhat)), which cancels (completely for
  // groups of one element): judge them against the terms' scale rstd |grad| |weight| as well as
  // their largest value; dweight, a sum over rows, against its largest value.
  const double terms = max_rstd(cpu.x.detach(), cpu.z.detach(), c.group == 0 ? c.width : c.group, c.before) *
                       max_abs(g0) * (c.with_weight ? max_abs(w0) : 1.0);
  REQUIRE(cpu.leaves.size() == gpu.leaves.size());
  for (size_t i = 0; i < cpu.leaves.size(); ++i) {
    if (!cpu.leaves[i].requires_grad()) continue;
    const bool is_weight = c.with_weight && i + 1 == cpu.leaves.size();
    const double floor = is_weight ? max_abs(cpu.leaves[i].grad()) : std::max(terms, max_abs(cpu.leaves[i].grad()));
    check_against(gpu.leaves[i].grad(), cpu.leaves[i].grad(), c.dtype, floor, what + cpu.names[i]);
  }
}

}  // namespace

TEST_CASE("cuda rms_norm_gated matches the CPU across widths, groups and kernel paths (f32, bf16)") {
  uint64_t seed = 1000;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool before : {false, true}) {
      for (int64_t width : {1, 7, 64, 200, 1000, 1536, 4096, 20000}) {
        for (int64_t groups : {1, 8}) {
          if (width % groups != 0) continue;
          Case c;
          c.rows = width >= 4096 ? 9 : 37;
          c.width = width;
          c.group = groups == 1 ? width : width / groups;
          c.dtype = dtype;
          c.before = before;
          c.seed = seed += 10;
          check_gated(c);
        }
      }
      // Odd widths and groups; group 0 (the whole row); a single group of one element.
      for (auto [width, group] : {std::pair<int64_t, int64_t>{7, 1}, {999, 333}, {999, 0}, {1001, 7}, {1, 1}}) {
        Case c;
        c.width = width;
        c.group = group;
        c.dtype = dtype;
        c.before = before;
        c.seed = seed += 10;
        check_gated(c);
      }
    }
  }
}

TEST_CASE("cuda rms_norm_gated matches the CPU without weight and with many dweight slots") {
  uint64_t seed = 2000;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool before : {false, true}) {
      for (auto [rows, width, group] : {std::tuple<int64_t, int64_t, int64_t>{37, 4096, 512}, {37, 200, 25}}) {
        Case c{.rows = rows, .width = width, .group = group, .dtype = dtype, .before = before, .with_weight = false};
        c.seed = seed += 10;
        check_gated(c);
      }
      for (auto [rows, width, group] : {std::tuple<int64_t, int64_t, int64_t>{3001, 256, 32},
                                        {2049, 1024, 1024},
                                        {1030, 64, 8},
                                        {600, 4096, 512},
                                        {70, 20000, 2500}}) {
        Case c{.rows = rows, .width = width, .group = group, .dtype = dtype, .before = before};
        c.seed = seed += 10;
        check_gated(c);
      }
    }
  }
}

TEST_CASE("cuda rms_norm_gated reads strided x, z and gradients (f32, bf16)") {
  uint64_t seed = 3000;
  for (DType dtype : {DType::f32, DType::bf16}) {
    for (bool before : {false, true}) {
      for (Layout layout : {Layout::slices, Layout::slices_unaligned, Layout::transposed}) {
        for (auto [width, group] : {std::pair<int64_t, int64_t>{64, 64}, {1536, 192}, {4096, 4096}}) {
          Case c{.rows = 29, .width = width, .group = group, .dtype = dtype, .before = before, .layout = layout};
          c.seed = seed += 10;
          check_gated(c);
        }
      }
      for (Upstream upstream : {Upstream::row_strided, Upstream::transposed}) {
        for (auto [width, group] : {std::pair<int64_t, int64_t>{64, 8}, {1000, 1000}}) {
          Case c{.rows = 29, .width = width, .group = group, .dtype = dtype, .before = before, .upstream = upstream};
          c.seed = seed += 10;
          check_gated(c);
        }
      }
      // dz (and dweight) only: x needs no gradient.
      for (auto [width, group] : {std::pair<int64_t, int64_t>{64, 8}, {4096, 512}, {20000, 20000}}) {
        Case c{.rows = 21, .width = width, .group = group, .dtype = dtype, .before = before, .x_grad = false};
        c.seed = seed += 10;
        check_gated(c);
      }
      Case sliced_dz{.rows = 21, .width = 1536, .group = 768, .dtype = dtype, .before = before,
                     .layout = Layout::slices, .x_grad = false};
      sliced_dz.seed = seed += 10;
      check_gated(sliced_dz);
    }
  }
}

TEST_CASE("cuda rms_norm_gated in f64 matches the CPU closely, on a 3-d input") {
  for (bool before : {false, true}) {
    Tensor x = random_cpu({3, 11, 130}, 4000, DType::f64, -2.0, 2.0);
    Tensor z = random_cpu({3, 11, 130}, 4001, DType::f64, -3.0, 3.0);
    Tensor w = random_cpu({130}, 4002, DType::f64, 0.5, 1.5);
    Tensor g = random_cpu({3, 11, 130}, 4003, DType::f64);
    Tensor xc = cpu_leaf(x), zc = cpu_leaf(z), wc = cpu_leaf(w);
    Tensor xg = on_gpu(x, true), zg = on_gpu(z, true), wg = on_gpu(w, true);
    for (int64_t group : {130, 26}) {
      CAPTURE(before);
      CAPTURE(group);
      for (Tensor t : {xc, zc, wc, xg, zg, wg}) t.zero_grad();
      Tensor yc = rms_norm_gated(xc, zc, wc, 1e-5, before, group), yg = rms_norm_gated(xg, zg, wg, 1e-5, before, group);
      check_relative(yg, yc, 1e-12, max_abs(yc), "f64 y");
      backward(yc, g);
      backward(yg, on_gpu(g));
      check_relative(xg.grad(), xc.grad(), 1e-12, max_abs(xc.grad()), "f64 dx");
      check_relative(zg.grad(), zc.grad(), 1e-12, max_abs(zc.grad()), "f64 dz");
      check_relative(wg.grad(), wc.grad(), 1e-12, max_abs(wc.grad()), "f64 dweight");
    }
  }
}
