// Issue 6, acceptance 5: the SSD forward + backward stores no (batch, L, heads, headdim, N)
// tensor of per-step states. At (batch 1, L 65536, heads 32, headdim 64, N 128) in bf16 such a
// tensor would be 69 GB in f32; the caching allocator's peak must stay under 1.5x the bytes of
// the inputs, the outputs and their gradients. GPU only (the CPU reference would take far too long).
// The backward keeps its per-chunk state gradients in the inputs' dtype (bf16 here: 134 MB)
// next to the forward's f32 states entering each chunk (268 MB).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "autograd/engine.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/stream.h"
#include "ops/ssd.h"
#include "tests/cuda/cuda_testing.h"

using namespace scanline;
using namespace scanline::testing;

TEST_CASE("cuda ssd forward + backward peak memory stays below 1.5x inputs, outputs and gradients") {
  constexpr int64_t batch = 1, L = 65536, heads = 32, P = 64, G = 1, N = 128;
  // Inputs in the Mamba-2 mixer's ranges: Δ = softplus(dt + bias) small, A = -exp(A_log) negative.
  std::vector<Tensor> host = {
      random_cpu({batch, L, heads, P}, 61000, DType::bf16),                   // x
      random_cpu({batch, L, heads}, 61001, DType::bf16, -6.0, -2.0),          // dt
      random_cpu({heads}, 61002, DType::f32, -16.0, -1.0),                   // A
      random_cpu({batch, L, G, N}, 61003, DType::bf16),                       // B
      random_cpu({batch, L, G, N}, 61004, DType::bf16),                       // C
      random_cpu({heads}, 61005, DType::f32, 0.5, 1.5),                      // D
      random_cpu({heads}, 61006, DType::f32, -1.0, 1.0),                     // dt_bias
  };
  cuda::synchronize(0);
  const size_t before = cuda::allocator_stats(0).allocated;
  std::vector<Tensor> leaves;
  size_t counted = 0;  // inputs + their gradients (same sizes) + y and its gradient + final_state
  for (const Tensor& t : host) {
    leaves.push_back(on_gpu(t, true));
    counted += 2 * size_t(t.numel()) * dtype_size(t.dtype());
  }
  const Tensor gy = on_gpu(random_cpu({batch, L, heads, P}, 61100, DType::bf16));
  counted += 2 * size_t(gy.numel()) * dtype_size(DType::bf16) + size_t(batch * heads * P * N) * 4;
  cuda::synchronize(0);
  cuda::reset_peak(0);
  {
    SsdResult r = ssd(leaves[0], leaves[1], leaves[2], leaves[3], leaves[4], leaves[5], Tensor(), leaves[6],
                      /*dt_softplus=*/true, /*chunk_size=*/256);
    backward(r.y, gy);
  }
  cuda::synchronize(0);
  const size_t peak = cuda::allocator_stats(0).peak_allocated - before;
  INFO("peak ", peak, " bytes above the starting point; inputs, outputs and gradients ", counted, " bytes");
  CHECK(double(peak) <= 1.5 * double(counted));
  for (size_t i : {0, 1, 3, 4}) {
    CAPTURE(i);
    const std::vector<double> v = leaves[i].grad().to_double_vector();
    CHECK(std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); }));
  }
}
