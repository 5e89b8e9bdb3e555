// CUDA attention, rope and attention_decode against the CPU references (computed in f64 from the
// same input values), forward and backward: f32 inputs (split into bf16 hi + lo on the tensor
// cores) within 1e-3 and bf16 within 2e-2 of max |reference| per tensor; L in {1, 17, 128, 1000,
// 4096}, GQA ratios 1, 4, 8, head dims 64 and 128, causal and not, column slices of a fused qkv
// tensor (read in place) and misaligned views (copied); the backward bit-identical across runs;
// decode with split cache lengths, zero-length rows, several head tiles a kv head and strided
// caches; rope at offsets, on views, in every vector width, with its backward.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "autograd/grad_mode.h"
#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "ops/rope.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

// max |actual − expected| / max |expected|; every element must be finite (poisoned outputs are NaN).
void check_max_relative(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  double diff = 0.0, scale = 0.0;
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!std::isfinite(a[i])) ++bad;
    diff = std::max(diff, std::abs(a[i] - e[i]));
    scale = std::max(scale, std::abs(e[i]));
  }
  const double rel = scale > 0.0 ? diff / scale : diff;
  INFO(what, ": max |diff| ", diff, " over max |ref| ", scale, " = ", rel, " (tolerance ", tol, "); ", bad,
       " non-finite elements");
  CHECK(bad == 0);
  CHECK(rel <= tol);
}

double tolerance(DType dtype) { return dtype == DType::f32 ? 1e-3 : 2e-2; }

using ViewFn = std::function<std::vector<Tensor>(const Tensor&)>;  // base leaf -> q, k, v

struct Case {
  int64_t batch, L, heads, kv_heads, headdim;
  bool causal;
  DType dtype;
};

std::string describe_case(const Case& c, const std::string& label) {
  return label + " batch " + std::to_string(c.batch) + " L " + std::to_string(c.L) + " heads " +
         std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " d " + std::to_string(c.headdim) +
         (c.causal ? " causal " : " full ") + dtype_name(c.dtype);
}

// attention of views of one base tensor on both devices (the CPU in f64 from the same values),
// then backward with one random upstream gradient; out, and the base's gradient (so every view's
// gradient), compared.
void check_attention(const Case& c, const Tensor& base_values, const ViewFn& views, const std::string& label) {
  const std::string what = describe_case(c, label);
  CAPTURE(what);
  Tensor base_cpu = cpu_leaf(to_dtype(base_values, DType::f64));
  Tensor base_gpu = on_gpu(base_values, true);
  auto vc = views(base_cpu), vg = views(base_gpu);
  Tensor yc = attention(vc[0], vc[1], vc[2], c.causal);
  Tensor yg = attention(vg[0], vg[1], vg[2], c.causal);
  REQUIRE(yg.device().is_cuda());
  REQUIRE(yg.dtype() == c.dtype);
  check_max_relative(yg, yc, tolerance(c.dtype), what + " forward");
  Tensor g = random_cpu(yc.shape(), 99, c.dtype);
  backward(yc, to_dtype(g, DType::f64));
  backward(yg, on_gpu(g));
  REQUIRE(base_gpu.grad().defined());
  // Gradients per view (q, k, v), each judged against its own largest value.
  auto gc = views(base_cpu.grad()), gg = views(base_gpu.grad());
  const char* names[3] = {" dq", " dk", " dv"};
  for (int i = 0; i < 3; ++i) check_max_relative(gg[size_t(i)], gc[size_t(i)], tolerance(c.dtype), what + names[i]);
}

// Separate q, k, v in one base (batch, L, heads + 2 kv_heads, headdim) sliced along the heads:
// the fused-qkv layout (strided, rows 16-byte aligned).
ViewFn fused_views(const Case& c) {
  return [c](const Tensor& base) {
    return std::vector<Tensor>{slice(base, 2, 0, c.heads), slice(base, 2, c.heads, c.heads + c.kv_heads),
                               slice(base, 2, c.heads + c.kv_heads, c.heads + 2 * c.kv_heads)};
  };
}

Tensor fused_base(const Case& c, uint64_t seed) {
  // Queries a little larger than keys and values so that softmax rows are not nearly uniform.
  Tensor q = random_cpu({c.batch, c.L, c.heads, c.headdim}, seed, c.dtype, -2.0, 2.0);
  Tensor kv = random_cpu({c.batch, c.L, 2 * c.kv_heads, c.headdim}, seed + 1, c.dtype, -1.0, 1.0);
  Tensor base = empty({c.batch, c.L, c.heads + 2 * c.kv_heads, c.headdim}, {.dtype = c.dtype});
  copy_into(narrow(base, 2, 0, c.heads), q);
  copy_into(narrow(base, 2, c.heads, 2 * c.kv_heads), kv);
  return base;
}

}  // namespace

TEST_CASE("cuda attention matches the CPU: L 1/17/128/1000, GQA 1/4/8, d 64/128, causal and not") {
  const int64_t gqa[3][2] = {{4, 4}, {8, 2}, {8, 1}};
  int index = 0;
  for (DType dtype : {DType::f32, DType::bf16})
    for (int64_t L : {1, 17, 128, 1000})
      for (int64_t headdim : {64, 128})
        for (bool causal : {true, false}) {
          const int64_t* hk = gqa[index++ % 3];
          const Case c{L >= 1000 ? 1 : 2, L, hk[0], hk[1], headdim, causal, dtype};
          check_attention(c, fused_base(c, 1000 + uint64_t(index)), fused_views(c), "fused qkv");
        }
}

TEST_CASE("cuda attention matches the CPU at L 4096 (batch 1, 2 heads)") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    const Case causal128{1, 4096, 2, 1, 128, true, dtype};
    check_attention(causal128, fused_base(causal128, 2000), fused_views(causal128), "long");
    const Case full64{1, 4096, 2, 2, 64, false, dtype};
    check_attention(full64, fused_base(full64, 2100), fused_views(full64), "long");
  }
}

TEST_CASE("cuda attention copies misaligned views and reads separate contiguous tensors") {
  for (DType dtype : {DType::f32, DType::bf16}) {
    // Rows starting one element past a 16-byte boundary: q, k, v read through as_strided views
    // of a flat buffer (the launcher copies them).
    const Case c{2, 77, 4, 2, 64, true, dtype};
    const int64_t width = (c.heads + 2 * c.kv_heads) * c.headdim + 1;
    Tensor flat = random_cpu({c.batch, c.L, width}, 3000, dtype);
    ViewFn odd = [c, width](const Tensor& base) {
      auto view = [&](int64_t first_head, int64_t n) {
        return as_strided(base, {c.batch, c.L, n, c.headdim}, {c.L * width, width, c.headdim, 1},
                          base.offset() + 1 + first_head * c.headdim);
      };
      return std::vector<Tensor>{view(0, c.heads), view(c.heads, c.kv_heads), view(c.heads + c.kv_heads, c.kv_heads)};
    };
    // as_strided views carry no history: run the forward only, on both devices.
    Tensor fc = to_dtype(flat, DType::f64), fg = on_gpu(flat);
    auto vc = odd(fc), vg = odd(fg);
    check_max_relative(attention(vg[0], vg[1], vg[2]), attention(vc[0], vc[1], vc[2]), tolerance(dtype),
                       std::string("misaligned views ") + dtype_name(dtype));

    const Case d{1, 300, 8, 1, 128, false, dtype};
    Tensor q = random_cpu({1, 300, 8, 128}, 3100, dtype, -2.0, 2.0), k = random_cpu({1, 300, 1, 128}, 3101, dtype),
           v = random_cpu({1, 300, 1, 128}, 3102, dtype);
    Tensor base = empty({1, 300, 10, 128}, {.dtype = dtype});
    copy_into(narrow(base, 2, 0, 8), q);
    copy_into(narrow(base, 2, 8, 1), k);
    copy_into(narrow(base, 2, 9, 1), v);
    ViewFn separate = [](const Tensor& b) {
      return std::vector<Tensor>{contiguous(narrow(b, 2, 0, 8)), contiguous(narrow(b, 2, 8, 1)),
                                 contiguous(narrow(b, 2, 9, 1))};
    };
    check_attention(d, base, separate, "contiguous copies");
  }
}

TEST_CASE("cuda attention backward is deterministic") {
  const Case c{2, 300, 8, 2, 64, true, DType::bf16};
  Tensor base = fused_base(c, 4000);
  Tensor g = on_gpu(random_cpu({2, 300, 8, 64}, 4001, DType::bf16));
  std::vector<std::vector<double>> runs;
  for (int r = 0; r < 2; ++r) {
    Tensor leaf = on_gpu(base, true);
    auto v = fused_views(c)(leaf);
    backward(attention(v[0], v[1], v[2]), g);
    runs.push_back(leaf.grad().to_double_vector());
  }
  CHECK(runs[0] == runs[1]);
}

TEST_CASE("cuda attention rejects head dims without a kernel") {
  Tensor q = on_gpu(random_cpu({1, 8, 2, 32}, 5000)), k = on_gpu(random_cpu({1, 8, 1, 32}, 5001));
  CHECK_THROWS_WITH_AS(attention(q, k, k), doctest::Contains("headdim 64 or 128"), Error);
}

TEST_CASE("cuda attention_decode matches the CPU: split lengths, empty rows, head tiles, strided caches") {
  NoGradGuard no_grad;
  struct DecodeCase {
    int64_t batch, heads, kv_heads, headdim, max_len;
    std::vector<int64_t> lengths;
  };
  const std::vector<DecodeCase> cases = {
      {3, 8, 2, 64, 1000, {1000, 517, 0}},   // GQA 4, several splits, an empty row
      {2, 8, 8, 128, 130, {1, 129}},         // GQA 1, a partial last tile
      {2, 32, 1, 128, 700, {700, 64}},       // GQA 32: two 16-head tiles a kv head
      {1, 16, 2, 64, 4096, {4096}},          // GQA 8, a long cache split across the GPU
      {4, 4, 4, 128, 17, {17, 16, 3, 1}},
  };
  for (DType dtype : {DType::f32, DType::bf16})
    for (const DecodeCase& c : cases) {
      const std::string what = "decode heads " + std::to_string(c.heads) + "/" + std::to_string(c.kv_heads) + " d " +
                               std::to_string(c.headdim) + " max_len " + std::to_string(c.max_len) + " " +
                               dtype_name(dtype);
      CAPTURE(what);
      Tensor q = random_cpu({c.batch, c.heads, c.headdim}, 6000, dtype, -2.0, 2.0);
      // Caches as slices of one (batch, max_len, 2 kv_heads, headdim) buffer: strided rows.
      Tensor kv = random_cpu({c.batch, c.max_len, 2 * c.kv_heads, c.headdim}, 6001, dtype);
      Tensor len = from_vector(c.lengths, {c.batch});
      Tensor kvc = to_dtype(kv, DType::f64), kvg = on_gpu(kv);
      Tensor yc = attention_decode(to_dtype(q, DType::f64), narrow(kvc, 2, 0, c.kv_heads),
                                   narrow(kvc, 2, c.kv_heads, c.kv_heads), len);
      Tensor yg = attention_decode(on_gpu(q), narrow(kvg, 2, 0, c.kv_heads), narrow(kvg, 2, c.kv_heads, c.kv_heads),
                                   to_device(to_dtype(len, DType::i32), gpu()));
      REQUIRE(yg.dtype() == dtype);
      check_max_relative(yg, yc, tolerance(dtype), what);
    }
}

TEST_CASE("cuda attention_decode equals the last row of the CUDA forward") {
  NoGradGuard no_grad;
  const int64_t L = 333;
  Tensor q = on_gpu(random_cpu({2, L, 8, 128}, 7000, DType::bf16, -2.0, 2.0));
  Tensor k = on_gpu(random_cpu({2, L, 2, 128}, 7001, DType::bf16)), v = on_gpu(random_cpu({2, L, 2, 128}, 7002, DType::bf16));
  Tensor full = attention(q, k, v, true);
  Tensor y = attention_decode(contiguous(select(q, 1, L - 1)), k, v,
                              to_device(from_vector(std::vector<int64_t>{L, L}, {2}), gpu()));
  check_max_relative(y, contiguous(select(full, 1, L - 1)), 2e-2, "decode vs forward");
}

TEST_CASE("cuda rope matches the CPU, forward and backward, on views and at offsets") {
  struct RopeCase {
    Shape shape;
    int64_t offset;
    bool view;  // a head slice of a wider tensor
  };
  const std::vector<RopeCase> cases = {
      {{2, 17, 3, 64}, 0, false},   {{1, 1000, 4, 128}, 12345, true}, {{2, 5, 2, 6}, 3, false},  // half 3: scalar
      {{1, 9, 3, 12}, 1, true},     {{3, 1, 2, 128}, 4095, false},
  };
  for (DType dtype : {DType::f32, DType::bf16})
    for (const RopeCase& c : cases) {
      const std::string what = "rope " + std::to_string(c.shape[3]) + " offset " + std::to_string(c.offset) +
                               (c.view ? " view " : " ") + dtype_name(dtype);
      CAPTURE(what);
      Shape wide = c.shape;
      if (c.view) wide[2] += 2;
      Tensor base = random_cpu(wide, 8000, dtype);
      auto pick = [&](const Tensor& t) { return c.view ? narrow(t, 2, 1, c.shape[2]) : t; };
      Tensor bc = cpu_leaf(to_dtype(base, DType::f64)), bg = on_gpu(base, true);
      Tensor yc = rope(pick(bc), c.offset), yg = rope(pick(bg), c.offset);
      const double tol = dtype == DType::f32 ? 1e-5 : 1e-2;
      check_max_relative(yg, yc, tol, what + " forward");
      Tensor g = random_cpu(c.shape, 8001, dtype);
      backward(yc, to_dtype(g, DType::f64));
      backward(yg, on_gpu(g));
      check_max_relative(bg.grad(), bc.grad(), tol, what + " backward");
    }
}
