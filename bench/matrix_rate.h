#pragma once
// The chip's dense bf16 matrix rate as the project's cuBLASLt path reaches it (cuda::gemm: bf16
// operands, fp32 accumulation, bf16 result), measured in the same run as the kernels it judges,
// so that a tensor-core kernel's TFLOP/s can be read as a fraction of what the card delivers
// rather than of its datasheet peak.
#include <cstdint>

namespace scanline::bench {

struct MatrixRate {
  int64_t n = 0;       // one n x n x n product
  double ms = 0.0;     // per product (median, bench/timing.h)
  double tflops = 0.0; // 2·n³ / time
};

// Times an n³ bf16 GEMM on the current device (8192³: ~1.4 ms on an H100, ~800 TFLOP/s).
MatrixRate measure_bf16_matrix_rate(int64_t n = 8192);

}  // namespace scanline::bench
