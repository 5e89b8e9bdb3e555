// CUDA AdamW (cuda/adamw.cu) against the CPU reference's formula (trainer/adamw.cpp: double math,
// f32 storage) after several steps with changing rates: f32 and bf16 gradients; sizes around the
// 4-element pack and the 4096-element block chunk; decayed and undecayed tensors in one launch;
// unaligned buffers (the element path) and strided gradients (copied first); more tensors than
// one launch holds, bit-identical to one launch per tensor; argument errors.
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "cuda/adamw.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;
using cuda::AdamWStep;
using cuda::AdamWTensors;

namespace {

// One parameter on both sides: the host copy follows the CPU reference in double, rounding the
// stored values to f32 after each step as the CPU path does.
struct Case {
  std::vector<double> p, m, v;  // host reference
  AdamWTensors gpu;
  DType grad_dtype;
  std::string name;
};

void reference_step(Case& c, const std::vector<double>& g, const AdamWStep& h) {
  const double decay = 1.0 - h.lr * c.gpu.weight_decay;
  const double step_size = h.lr / (1.0 - std::pow(h.beta1, double(h.step)));
  const double bias2_sqrt = std::sqrt(1.0 - std::pow(h.beta2, double(h.step)));
  for (size_t i = 0; i < c.p.size(); ++i) {
    double p = c.p[i] * decay;
    const double m = h.beta1 * c.m[i] + (1.0 - h.beta1) * g[i];
    const double v = h.beta2 * c.v[i] + (1.0 - h.beta2) * g[i] * g[i];
    p -= step_size * (m / (std::sqrt(v) / bias2_sqrt + h.eps));
    c.p[i] = double(float(p));
    c.m[i] = double(float(m));
    c.v[i] = double(float(v));
  }
}

// A parameter of n elements; `offset` > 0 places every GPU buffer that many elements into its
// storage, so none is 16-byte aligned.
Case make_case(int64_t n, DType grad_dtype, double weight_decay, uint64_t seed, int64_t offset = 0) {
  Tensor p = random_cpu({n}, seed);
  auto placed = [&](const Tensor& host) {
    Tensor base = zeros({n + offset}, {.device = gpu()});
    Tensor view = as_strided(base, {n}, {1}, offset);
    copy_into(view, host);
    return view;
  };
  Case c;
  c.p = p.to_double_vector();
  c.m.assign(size_t(n), 0.0);
  c.v.assign(size_t(n), 0.0);
  c.gpu = {placed(p), Tensor(), placed(zeros({n})), placed(zeros({n})), weight_decay};
  c.grad_dtype = grad_dtype;
  c.name = std::to_string(n) + " elements, " + dtype_name(grad_dtype) + " grad, decay " +
           std::to_string(weight_decay) + (offset ? ", unaligned" : "");
  return c;
}

double max_abs(const std::vector<double>& values) {
  double m = 0.0;
  for (double x : values) m = std::max(m, std::abs(x));
  return m;
}

// Runs `steps` updates of the list on the GPU (one adamw_update call a step) and the reference,
// with fresh random gradients each step (strided ones when asked), then compares p, m and v.
void run_and_compare(std::vector<Case>& cases, int steps, bool strided_grads = false) {
  for (int t = 1; t <= steps; ++t) {
    const AdamWStep h{.lr = 1e-2 * (1.0 - 0.1 * t), .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .step = t};
    std::vector<AdamWTensors> list;
    for (size_t k = 0; k < cases.size(); ++k) {
      Case& c = cases[k];
      const int64_t n = int64_t(c.p.size());
      Tensor g = random_cpu({n}, 1000 * uint64_t(t) + k, c.grad_dtype, -2.0, 2.0);
      reference_step(c, g.to_double_vector(), h);
      if (strided_grads) {
        // The same values read through a stride of 2 from a buffer twice as long.
        Tensor wide = zeros({n, 2}, {.dtype = c.grad_dtype, .device = gpu()});
        Tensor column = as_strided(wide, {n}, {2}, 1);
        copy_into(column, g);
        c.gpu.grad = column;
      } else {
        c.gpu.grad = on_gpu(g);
      }
      list.push_back(c.gpu);
    }
    cuda::adamw_update(list, h);
  }
  for (const Case& c : cases) {
    CAPTURE(c.name);
    const Shape shape{int64_t(c.p.size())};
    // Parameters are O(1): judged against 1. Moments pass through zero: judged against their scale.
    check_relative(c.gpu.param, from_vector(c.p, shape), 1e-6, 1.0, c.name + " param");
    check_relative(c.gpu.m, from_vector(c.m, shape), 1e-6, max_abs(c.m), c.name + " m");
    check_relative(c.gpu.v, from_vector(c.v, shape), 1e-6, max_abs(c.v), c.name + " v");
  }
}

}  // namespace

TEST_CASE("cuda adamw matches the CPU reference over several steps") {
  for (DType grad_dtype : {DType::f32, DType::bf16}) {
    CAPTURE(grad_dtype);
    std::vector<Case> cases;
    uint64_t seed = 1;
    int k = 0;
    for (int64_t n : {1, 3, 4, 5, 1000, 4095, 4096, 4097, 65541, (1 << 20) + 3})
      cases.push_back(make_case(n, grad_dtype, (k++ % 2) ? 0.0 : 0.1, seed++));
    run_and_compare(cases, 5);
  }
}

TEST_CASE("cuda adamw mixes gradient dtypes, unaligned buffers and strided gradients") {
  std::vector<Case> cases;
  cases.push_back(make_case(4097, DType::f32, 0.1, 11));
  cases.push_back(make_case(4097, DType::bf16, 0.1, 12));
  cases.push_back(make_case(9000, DType::f32, 0.1, 13, 1));  // element path
  cases.push_back(make_case(9000, DType::bf16, 0.0, 14, 3));
  cases.push_back(make_case(7, DType::f32, 0.1, 15, 2));
  run_and_compare(cases, 4);
  std::vector<Case> strided;
  strided.push_back(make_case(5003, DType::f32, 0.1, 16));
  strided.push_back(make_case(64, DType::bf16, 0.1, 17));
  run_and_compare(strided, 3, true);
}

TEST_CASE("cuda adamw applies weight decay per tensor") {
  // Two copies of one parameter with one gradient, decayed and not: after one step the decayed
  // one is lower by p * lr * wd (to f32 rounding of values near 1); the other matches wd = 0.
  const int64_t n = 5000;
  Tensor p = random_cpu({n}, 21), g = random_cpu({n}, 22);
  Tensor a = on_gpu(p), b = on_gpu(p);
  Tensor ma = zeros({n}, {.device = gpu()}), va = zeros({n}, {.device = gpu()});
  Tensor mb = zeros({n}, {.device = gpu()}), vb = zeros({n}, {.device = gpu()});
  const AdamWStep h{.lr = 0.05, .step = 1};
  cuda::adamw_update({{a, on_gpu(g), ma, va, 0.4}, {b, on_gpu(g), mb, vb, 0.0}}, h);
  std::vector<double> pa = a.to_double_vector(), pb = b.to_double_vector(), p0 = p.to_double_vector();
  std::vector<double> gv = g.to_double_vector();
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    // wd = 0: the update is lr * g / (|g| + eps) (m_hat = g, v_hat = g^2 at t = 1).
    const double plain = p0[size_t(i)] - 0.05 * gv[size_t(i)] / (std::abs(gv[size_t(i)]) + 1e-8);
    if (std::abs(pb[size_t(i)] - plain) > 1e-6) ++bad;
    if (std::abs((pb[size_t(i)] - pa[size_t(i)]) - p0[size_t(i)] * 0.05 * 0.4) > 1e-6) ++bad;
  }
  CHECK(bad == 0);
  CHECK(ma.to_double_vector() == mb.to_double_vector());
}

TEST_CASE("cuda adamw over more tensors than one launch holds equals one launch per tensor") {
  // 150 tensors (three launches of at most 64) against the same updates made one tensor a call:
  // the kernel's per-element math does not depend on the grouping, so the bits agree.
  std::vector<AdamWTensors> together, alone;
  for (int k = 0; k < 150; ++k) {
    const int64_t n = 1 + (k * 37) % 300;
    Tensor p = random_cpu({n}, 100 + k);
    const double wd = k % 3 == 0 ? 0.0 : 0.1;
    together.push_back({on_gpu(p), Tensor(), zeros({n}, {.device = gpu()}), zeros({n}, {.device = gpu()}), wd});
    alone.push_back({on_gpu(p), Tensor(), zeros({n}, {.device = gpu()}), zeros({n}, {.device = gpu()}), wd});
  }
  for (int t = 1; t <= 3; ++t) {
    const AdamWStep h{.lr = 1e-3, .step = t};
    for (size_t k = 0; k < together.size(); ++k) {
      const DType grad_dtype = k % 2 ? DType::bf16 : DType::f32;
      Tensor g = random_cpu(together[k].param.shape(), 5000 + 200 * uint64_t(t) + k, grad_dtype);
      together[k].grad = on_gpu(g);
      alone[k].grad = on_gpu(g);
    }
    cuda::adamw_update(together, h);
    for (const AdamWTensors& a : alone) cuda::adamw_update(a.param, a.grad, a.m, a.v, a.weight_decay, h);
  }
  for (size_t k = 0; k < together.size(); ++k) {
    CAPTURE(k);
    CHECK(together[k].param.to_vector<float>() == alone[k].param.to_vector<float>());
    CHECK(together[k].v.to_vector<float>() == alone[k].v.to_vector<float>());
  }
}

TEST_CASE("cuda adamw rejects bad arguments") {
  Tensor p = on_gpu(random_cpu({8}, 31));
  Tensor g = on_gpu(random_cpu({8}, 32));
  Tensor m = zeros({8}, {.device = gpu()}), v = zeros({8}, {.device = gpu()});
  const AdamWStep h{};
  CHECK_THROWS_WITH_AS(cuda::adamw_update(on_gpu(random_cpu({8}, 33, DType::bf16)), g, m, v, 0.0, h),
                       doctest::Contains("adamw_update: expected a contiguous f32 param but found bf16[8] on cuda:0"),
                       Error);
  CHECK_THROWS_WITH_AS(cuda::adamw_update(p, on_gpu(random_cpu({4, 2}, 34)), m, v, 0.0, h),
                       doctest::Contains("shaped and placed like param f32[8] on cuda:0 but found f32[4, 2] on cuda:0"),
                       Error);
  CHECK_THROWS_WITH_AS(cuda::adamw_update(p, g, zeros({8}), v, 0.0, h),
                       doctest::Contains("adamw_update: expected m on a CUDA device but found f32[8] on cpu"), Error);
  CHECK_THROWS_WITH_AS(cuda::adamw_update(p, g, m, zeros({8}, {.dtype = DType::bf16, .device = gpu()}), 0.0, h),
                       doctest::Contains("expected v to be a contiguous f32 tensor"), Error);
  CHECK_THROWS_WITH_AS(cuda::adamw_update(p, g, m, v, 0.0, AdamWStep{.step = 0}),
                       doctest::Contains("adamw_update: the step count must be >= 1, found 0"), Error);
  CHECK_THROWS_WITH_AS(cuda::adamw_update(p, g, m, v, -0.1, h),
                       doctest::Contains("weight decay must be finite and >= 0"), Error);
}
