#include "bench/matrix_rate.h"

#include "bench/timing.h"
#include "core/cuda/caching_allocator.h"
#include "core/cuda/stream.h"
#include "core/random.h"
#include "cuda/matmul.h"

namespace scanline::bench {

MatrixRate measure_bf16_matrix_rate(int64_t n) {
  const int device = cuda::current_device();
  // Random operands (zeros would run the tensor cores at a lower power draw than real data).
  Tensor a, b;
  {
    Generator gen(11);
    a = contiguous_copy(randn({n, n}, gen, {.dtype = DType::f32}), DType::bf16, Device::cuda(device));
    b = contiguous_copy(randn({n, n}, gen, {.dtype = DType::f32}), DType::bf16, Device::cuda(device));
  }
  MatrixRate r;
  r.n = n;
  r.ms = time_ms([&] { cuda::gemm(a, b); }, 5, 5, 3);
  r.tflops = 2.0 * double(n) * double(n) * double(n) / (r.ms * 1e-3) / 1e12;
  // Hand the operands and the cached products back so the kernels measured next run with the
  // memory they would have without this measurement.
  a = Tensor();
  b = Tensor();
  cuda::synchronize();
  cuda::empty_cache();
  return r;
}

}  // namespace scanline::bench
