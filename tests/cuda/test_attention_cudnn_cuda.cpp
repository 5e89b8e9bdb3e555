// The cuDNN attention engine (cuda/attention_cudnn.h) against the CPU reference (computed in f64
// from the same bf16 values): out within 2e-2 and dq, dk, dv within 2e-2 of max |reference|, lse
// within 1e-3 absolute; L in {1, 17, 128, 1000}, GQA ratios 1 and 4, head dims 64 and 128, causal
// and not, separate tensors and column slices of a fused qkv tensor. The engines are
// interchangeable: the forward of one and the backward of the other give the same gradients (one
// lse convention). The op honours SCANLINE_ATTENTION_ENGINE, and at issue 7's shape (batch 4, 16
// heads, 4 kv heads, L 4096) cuDNN agrees with our kernels. Skipped (with a message) when this
// build has no cuDNN.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "autograd/engine.h"
#include "cuda/attention_cudnn.h"
#include "ops/attention.h"
#include "ops/attention_cpu.h"
#include "ops/views.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

namespace {

bool have_cudnn() {
  if (cuda::cudnn_attention_built()) return true;
  MESSAGE("SKIP: this scanline was built without cuDNN (SCANLINE_CUDNN=OFF or cuDNN 9 not found): the cuDNN "
          "attention engine is not tested");
  return false;
}

// Sets an environment variable for a scope, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) previous_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (previous_) setenv(name_, previous_->c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> previous_;
};

// Every element finite and max |actual − expected| <= tol · max |expected| (the tolerance of
// tests/cuda/test_attention_cuda.cpp, through check_relative with the floor at max |expected|).
void check_scaled(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  // An all-zero reference (dq and dk at L 1: a softmax over one key has no gradient, exactly 0 in
  // f64) is judged absolutely, as test_attention_cuda.cpp judges the native kernels.
  const double scale = max_abs(expected);
  check_relative(actual, expected, tol, scale > 0.0 ? scale : 1.0, what);
}

// |actual − expected| <= tol for every element (log-sum-exps).
void check_absolute(const Tensor& actual, const Tensor& expected, double tol, const std::string& what) {
  REQUIRE(actual.shape() == expected.shape());
  const std::vector<double> a = actual.to_double_vector(), e = expected.to_double_vector();
  double worst = 0.0;
  int64_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double err = std::abs(a[i] - e[i]);
    if (!(err <= tol)) ++bad;
    if (std::isfinite(err)) worst = std::max(worst, err);
  }
  INFO(what, ": ", bad, " of ", a.size(), " elements off by more than ", tol, "; worst ", worst);
  CHECK(bad == 0);
}

bool bit_identical(const Tensor& a, const Tensor& b) { return a.to_double_vector() == b.to_double_vector(); }

struct Case {
  int64_t batch, L, heads, kv_heads, headdim;
  bool causal, fused;
};

std::string describe_case(const Case& c) {
  return "batch " + std::to_string(c.batch) + " L " + std::to_string(c.L) + " heads " + std::to_string(c.heads) +
         "/" + std::to_string(c.kv_heads) + " d " + std::to_string(c.headdim) + (c.causal ? " causal" : " full") +
         (c.fused ? " fused-qkv slices" : " separate tensors");
}

double scale_of(const Case& c) { return 1.0 / std::sqrt(double(c.headdim)); }

// bf16 q, k, v and an upstream gradient on the GPU (q, k, v column slices of one fused tensor
// when c.fused), and their values on the CPU.
struct Inputs {
  Tensor q, k, v, g;          // GPU
  Tensor q_cpu, k_cpu, v_cpu, g_cpu;
};

Inputs make_inputs(const Case& c, uint64_t seed) {
  Inputs in;
  // Queries a little larger than keys so that softmax rows are not nearly uniform.
  in.q_cpu = random_cpu({c.batch, c.L, c.heads, c.headdim}, seed, DType::bf16, -2.0, 2.0);
  in.k_cpu = random_cpu({c.batch, c.L, c.kv_heads, c.headdim}, seed + 1, DType::bf16);
  in.v_cpu = random_cpu({c.batch, c.L, c.kv_heads, c.headdim}, seed + 2, DType::bf16);
  in.g_cpu = random_cpu({c.batch, c.L, c.heads, c.headdim}, seed + 3, DType::bf16);
  if (c.fused) {
    Tensor base = empty({c.batch, c.L, c.heads + 2 * c.kv_heads, c.headdim}, {.dtype = DType::bf16});
    copy_into(narrow(base, 2, 0, c.heads), in.q_cpu);
    copy_into(narrow(base, 2, c.heads, c.kv_heads), in.k_cpu);
    copy_into(narrow(base, 2, c.heads + c.kv_heads, c.kv_heads), in.v_cpu);
    Tensor gpu = on_gpu(base);
    in.q = narrow(gpu, 2, 0, c.heads);
    in.k = narrow(gpu, 2, c.heads, c.kv_heads);
    in.v = narrow(gpu, 2, c.heads + c.kv_heads, c.kv_heads);
  } else {
    in.q = on_gpu(in.q_cpu), in.k = on_gpu(in.k_cpu), in.v = on_gpu(in.v_cpu);
  }
  in.g = on_gpu(in.g_cpu);
  return in;
}

struct Reference {
  Tensor out, lse, dq, dk, dv;
};

Reference cpu_reference(const Case& c, const Inputs& in) {
  auto f64 = [](const Tensor& t) { return contiguous_copy(t, DType::f64, Device::cpu()); };
  const Tensor q = f64(in.q_cpu), k = f64(in.k_cpu), v = f64(in.v_cpu), g = f64(in.g_cpu);
  auto fwd = cpu::attention_forward(q, k, v, c.causal, scale_of(c));
  auto bwd = cpu::attention_backward(q, k, v, fwd.lse, g, c.causal, scale_of(c));
  return {fwd.out, fwd.lse, bwd.dq, bwd.dk, bwd.dv};
}

void check_forward(const cuda::AttentionForwardResult& r, const Reference& ref, const std::string& what) {
  REQUIRE(r.out.dtype() == DType::bf16);
  REQUIRE(r.lse.dtype() == DType::f32);
  check_scaled(r.out, ref.out, 2e-2, what + " out");
  check_absolute(r.lse, ref.lse, 1e-3, what + " lse");
}

void check_backward(const cuda::AttentionBackwardResult& g, const Reference& ref, const std::string& what) {
  REQUIRE(g.dq.defined());
  REQUIRE(g.dk.defined());
  REQUIRE(g.dv.defined());
  check_scaled(g.dq, ref.dq, 2e-2, what + " dq");
  check_scaled(g.dk, ref.dk, 2e-2, what + " dk");
  check_scaled(g.dv, ref.dv, 2e-2, what + " dv");
}

}  // namespace

TEST_CASE("cuda attention, cuDNN engine, matches the CPU: L 1/16/17/128/1000, GQA 1/4, d 64/128, causal and not") {
  if (!have_cudnn()) return;
  MESSAGE("cuDNN runtime version ", cuda::cudnn_runtime_version());
  uint64_t seed = 10000;
  for (int64_t L : {1, 16, 17, 128, 1000})
    for (int64_t ratio : {1, 4})
      for (int64_t headdim : {64, 128})
        for (bool causal : {true, false}) {
          // Fused-qkv slices for half the cases, balanced over causal, ratio and headdim.
          const bool fused = (causal != (headdim == 64)) != (ratio == 4);
          const Case c{L >= 1000 ? 1 : 2, L, ratio == 1 ? 4 : 8, ratio == 1 ? 4 : 2, headdim, causal, fused};
          const std::string what = "cuDNN " + describe_case(c);
          CAPTURE(what);
          const Inputs in = make_inputs(c, seed += 10);
          const Reference ref = cpu_reference(c, in);
          const auto fwd = cuda::attention_fwd_cudnn(in.q, in.k, in.v, c.causal, scale_of(c));
          check_forward(fwd, ref, what);
          const auto bwd =
              cuda::attention_bwd_cudnn(in.q, in.k, in.v, fwd.out, fwd.lse, in.g, c.causal, scale_of(c));
          check_backward(bwd, ref, what);
        }
}

TEST_CASE("cuda attention: cuDNN and native engines are interchangeable between forward and backward") {
  if (!have_cudnn()) return;
  // L not a multiple of 128 (cuDNN <= 9.15 takes the padding-mask path in the backward) and one that is.
  const Case cases[] = {{2, 200, 8, 2, 64, true, true}, {1, 256, 4, 4, 128, false, false},
                        {2, 77, 8, 2, 128, true, false}, {1, 384, 8, 2, 64, true, true},
                        // One kv head: the backward's halves split the batch; three: no split.
                        {2, 200, 4, 1, 64, true, false}, {1, 130, 3, 3, 128, true, false}};
  uint64_t seed = 20000;
  for (const Case& c : cases) {
    const std::string what = describe_case(c);
    CAPTURE(what);
    const Inputs in = make_inputs(c, seed += 10);
    const Reference ref = cpu_reference(c, in);
    const double scale = scale_of(c);
    const auto fc = cuda::attention_fwd_cudnn(in.q, in.k, in.v, c.causal, scale);
    const auto fn = cuda::attention_fwd(in.q, in.k, in.v, c.causal, scale);
    check_forward(fc, ref, what + " cuDNN forward");
    check_forward(fn, ref, what + " native forward");
    check_absolute(fc.lse, fn.lse, 1e-3, what + " lse cuDNN vs native");
    // Each backward from each forward's (out, lse).
    const auto cc = cuda::attention_bwd_cudnn(in.q, in.k, in.v, fc.out, fc.lse, in.g, c.causal, scale);
    const auto cn = cuda::attention_bwd(in.q, in.k, in.v, fc.out, fc.lse, in.g, c.causal, scale, true, true);
    const auto nc = cuda::attention_bwd_cudnn(in.q, in.k, in.v, fn.out, fn.lse, in.g, c.causal, scale);
    const auto nn = cuda::attention_bwd(in.q, in.k, in.v, fn.out, fn.lse, in.g, c.causal, scale, true, true);
    check_backward(cc, ref, what + " cuDNN forward + cuDNN backward");
    check_backward(cn, ref, what + " cuDNN forward + native backward");
    check_backward(nc, ref, what + " native forward + cuDNN backward");
    check_backward(nn, ref, what + " native forward + native backward");
    // Same backward engine, the other engine's forward: the same gradients up to bf16 rounding.
    check_scaled(cn.dq, nn.dq, 2e-2, what + " native backward: dq from either forward");
    check_scaled(cn.dk, nn.dk, 2e-2, what + " native backward: dk from either forward");
    check_scaled(nc.dq, cc.dq, 2e-2, what + " cuDNN backward: dq from either forward");
    check_scaled(nc.dv, cc.dv, 2e-2, what + " cuDNN backward: dv from either forward");
  }
}

TEST_CASE("cuda attention op: SCANLINE_ATTENTION_ENGINE picks the engine") {
  if (!have_cudnn()) return;
  const Case c{2, 77, 8, 2, 64, true, false};
  const Inputs in = make_inputs(c, 30000);
  const Reference ref = cpu_reference(c, in);
  const double scale = scale_of(c);
  const auto direct_cudnn = cuda::attention_fwd_cudnn(in.q, in.k, in.v, c.causal, scale);
  const auto direct_native = cuda::attention_fwd(in.q, in.k, in.v, c.causal, scale);
  for (const char* engine : {"cudnn", "native", "auto"}) {
    CAPTURE(engine);
    ScopedEnv env("SCANLINE_ATTENTION_ENGINE", engine);
    Tensor q = on_gpu(in.q_cpu, true), k = on_gpu(in.k_cpu, true), v = on_gpu(in.v_cpu, true);
    Tensor out = attention(q, k, v, c.causal);
    // The forward of the chosen engine, bit for bit (auto: cuDNN, which takes this shape).
    CHECK(bit_identical(out, std::string(engine) == "native" ? direct_native.out : direct_cudnn.out));
    backward(out, in.g);
    check_scaled(out, ref.out, 2e-2, std::string(engine) + " op out");
    check_scaled(q.grad(), ref.dq, 2e-2, std::string(engine) + " op dq");
    check_scaled(k.grad(), ref.dk, 2e-2, std::string(engine) + " op dk");
    check_scaled(v.grad(), ref.dv, 2e-2, std::string(engine) + " op dv");
  }
  {
    // f32 inputs keep our kernels in every mode.
    ScopedEnv env("SCANLINE_ATTENTION_ENGINE", "cudnn");
    Tensor q = on_gpu(to_dtype(in.q_cpu, DType::f32)), k = on_gpu(to_dtype(in.k_cpu, DType::f32)),
           v = on_gpu(to_dtype(in.v_cpu, DType::f32));
    check_scaled(attention(q, k, v, c.causal), ref.out, 1e-3, "f32 under SCANLINE_ATTENTION_ENGINE=cudnn");
  }
  {
    ScopedEnv env("SCANLINE_ATTENTION_ENGINE", "fastest");
    CHECK_THROWS_WITH_AS(attention(in.q, in.k, in.v, c.causal), doctest::Contains("auto, cudnn or native"), Error);
  }
  CHECK_THROWS_WITH_AS(cuda::attention_fwd_cudnn(on_gpu(to_dtype(in.q_cpu, DType::f32)),
                                                 on_gpu(to_dtype(in.k_cpu, DType::f32)),
                                                 on_gpu(to_dtype(in.v_cpu, DType::f32)), c.causal, scale),
                       doctest::Contains("bf16"), Error);
}

TEST_CASE("cuda attention: cuDNN agrees with our kernels at issue 7's shape (batch 4, 16/4 heads, L 4096)") {
  if (!have_cudnn()) return;
  for (int64_t headdim : {64, 128}) {
    const Case c{4, 4096, 16, 4, headdim, true, true};
    const std::string what = describe_case(c);
    CAPTURE(what);
    const Inputs in = make_inputs(c, 40000 + uint64_t(headdim));
    const double scale = scale_of(c);
    const auto fc = cuda::attention_fwd_cudnn(in.q, in.k, in.v, c.causal, scale);
    const auto fn = cuda::attention_fwd(in.q, in.k, in.v, c.causal, scale);
    check_scaled(fc.out, fn.out, 2e-2, what + " out");
    check_absolute(fc.lse, fn.lse, 1e-3, what + " lse");
    const auto gc = cuda::attention_bwd_cudnn(in.q, in.k, in.v, fc.out, fc.lse, in.g, c.causal, scale);
    const auto gn = cuda::attention_bwd(in.q, in.k, in.v, fn.out, fn.lse, in.g, c.causal, scale, true, true);
    check_scaled(gc.dq, gn.dq, 2e-2, what + " dq");
    check_scaled(gc.dk, gn.dk, 2e-2, what + " dk");
    check_scaled(gc.dv, gn.dv, 2e-2, what + " dv");
  }
}

TEST_CASE("cuda attention, cuDNN engine: report (plans, engines, run-to-run determinism of the backward)") {
  if (!have_cudnn()) return;
  const Case c{2, 300, 8, 2, 64, true, true};
  const Inputs in = make_inputs(c, 50000);
  const double scale = scale_of(c);
  const auto f = cuda::attention_fwd_cudnn(in.q, in.k, in.v, c.causal, scale);
  const auto f2 = cuda::attention_fwd_cudnn(in.q, in.k, in.v, c.causal, scale);
  const auto a = cuda::attention_bwd_cudnn(in.q, in.k, in.v, f.out, f.lse, in.g, c.causal, scale);
  const auto b = cuda::attention_bwd_cudnn(in.q, in.k, in.v, f.out, f.lse, in.g, c.causal, scale);
  CHECK(bit_identical(f.out, f2.out));  // the forward has no atomics
  MESSAGE("cuDNN ", cuda::cudnn_runtime_version(), " backward bit-identical across two runs: dq ",
          bit_identical(a.dq, b.dq), ", dk ", bit_identical(a.dk, b.dk), ", dv ", bit_identical(a.dv, b.dv),
          " (our kernels' backward is deterministic; cuDNN's accumulates dQ with atomics)");
  std::string plans;
  for (const std::string& line : cuda::cudnn_attention_plans()) plans += "\n  " + line;
  MESSAGE("cuDNN attention plans built in this run:", plans);
}
