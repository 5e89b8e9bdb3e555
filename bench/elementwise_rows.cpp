// Elementwise and matrix-product rows of `scanline bench ops`, timed through the public ops.
#include <string>

#include "bench/kernel_rows.h"
#include "core/random.h"
#include "ops/ops.h"

namespace scanline::bench {
namespace {

Tensor random_gpu(const Shape& shape, DType dtype, uint64_t seed) {
  Generator gen(seed);
  return contiguous_copy(rand(shape, gen, {.dtype = DType::f32}, -1.0, 1.0), dtype, Device::cuda(0));
}

std::string mib(double bytes) { return std::to_string(int(bytes / (1024.0 * 1024.0))) + " MiB"; }

}  // namespace

void append_elementwise_rows(std::vector<Row>& rows, size_t tensor_bytes) {
  for (DType dtype : {DType::f32, DType::bf16}) {
    int64_t n = int64_t(tensor_bytes / dtype_size(dtype));
    Tensor a = random_gpu({n}, dtype, 1), b = random_gpu({n}, dtype, 2);
    double t = double(tensor_bytes);
    std::string d = dtype_name(dtype);
    rows.push_back({"add " + d, mib(t) + " per tensor", time_ms([&] { add(a, b); }), 3 * t, 0, 0.8});
    rows.push_back({"mul by scalar " + d, mib(t), time_ms([&] { mul(a, 0.5); }), 2 * t, 0, 0.8});
    rows.push_back({"silu " + d, mib(t), time_ms([&] { silu(a); }), 2 * t, 0, 0.8});
    // Broadcasting: a (rows, 1024) plus a (1024) bias row.
    Tensor m = reshape(a, {n / 1024, 1024});
    Tensor bias = random_gpu({1024}, dtype, 3);
    rows.push_back({"add broadcast row " + d, mib(t), time_ms([&] { add(m, bias); }), 2 * t, 0, 0.8});
  }
}

void append_matmul_rows(std::vector<Row>& rows, bool quick) {
  const int64_t n = quick ? 2048 : 8192;
  for (DType dtype : {DType::bf16, DType::f32}) {
    Tensor a = random_gpu({n, n}, dtype, 4), b = random_gpu({n, n}, dtype, 5);
    double ms = time_ms([&] { matmul(a, b); }, quick ? 10 : 5);
    std::string shape = std::to_string(n) + "^3";
    rows.push_back({std::string("matmul ") + dtype_name(dtype) + (dtype == DType::f32 ? " (fp32, no TF32)" : ""),
                    shape, ms, 0, 2.0 * double(n) * double(n) * double(n), 0});
  }
  // A linear layer's shape in a 1.3B-parameter model: (tokens, d) x (4d, d)^T.
  Tensor x = random_gpu({16384, 2048}, DType::bf16, 6), w = random_gpu({8192, 2048}, DType::bf16, 7);
  double ms = time_ms([&] { linear(x, w); }, quick ? 10 : 5);
  rows.push_back({"linear bf16", "16384x2048 @ (8192x2048)^T", ms, 0, 2.0 * 16384 * 2048 * 8192.0, 0});
}

}  // namespace scanline::bench
