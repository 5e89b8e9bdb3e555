// Issue 7, acceptance 1: attention's memory is linear in L. At L = 32768 an L x L score matrix of
// one head would be 4 GiB in f32; the caching allocator's peak over forward + backward must stay
// under 1.5x the bytes of Q, K, V, O and their gradients (dO included). GPU only.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/engine.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/stream.h"
#include "ops/attention.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

TEST_CASE("cuda attention forward + backward peak memory at L 32768 stays below 1.5x Q, K, V, O and grads") {
  constexpr int64_t batch = 1, L = 32768, heads = 8, kv_heads = 2;
  for (int64_t D : {64, 128}) {
    CAPTURE(D);
    const Tensor q_host = random_cpu({batch, L, heads, D}, 7100 + D, DType::bf16);
    const Tensor k_host = random_cpu({batch, L, kv_heads, D}, 7101 + D, DType::bf16);
    const Tensor v_host = random_cpu({batch, L, kv_heads, D}, 7102 + D, DType::bf16);
    cuda::synchronize(0);
    const size_t before = cuda::allocator_stats(0).allocated;
    Tensor q = on_gpu(q_host, true), k = on_gpu(k_host, true), v = on_gpu(v_host, true);
    const Tensor gout = on_gpu(random_cpu({batch, L, heads, D}, 7103 + D, DType::bf16));
    // q, k, v and their gradients, O and dO.
    const size_t counted = size_t(2 * (q.numel() + k.numel() + v.numel()) * 2 + 2 * gout.numel() * 2);
    cuda::synchronize(0);
    cuda::reset_peak(0);
    {
      Tensor out = attention(q, k, v, /*causal=*/true);
      backward(out, gout);
    }
    cuda::synchronize(0);
    const size_t peak = cuda::allocator_stats(0).peak_allocated - before;
    INFO("peak ", peak, " bytes above the starting point; Q, K, V, O and gradients ", counted, " bytes");
    MESSAGE("headdim ", D, ": peak ", double(peak) / double(counted), "x Q, K, V, O and gradients");
    CHECK(double(peak) <= 1.5 * double(counted));
    for (const Tensor* t : {&q, &k, &v}) {
      const std::vector<double> g = t->grad().to_double_vector();
      CHECK(std::all_of(g.begin(), g.end(), [](double x) { return std::isfinite(x); }));
    }
  }
}
