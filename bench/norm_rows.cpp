// RMSNorm, gated RMSNorm and cross-entropy rows of `scanline bench ops`: forward and backward kernels timed
// through their CUDA launchers, so each row is one kernel's work and bytes.
#include <string>

#include "bench/kernel_rows.h"
#include "core/random.h"
#include "cuda/cross_entropy.h"
#include "cuda/rms_norm.h"
#include "cuda/rms_norm_gated.h"
#include "ops/ops.h"

namespace scanline::bench {
namespace {

Tensor random_gpu(const Shape& shape, DType dtype, uint64_t seed, double low = -1.0, double high = 1.0) {
  Generator gen(seed);
  return contiguous_copy(rand(shape, gen, {.dtype = DType::f32}, low, high), dtype, Device::cuda(0));
}

std::string dims(int64_t rows, int64_t cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

}  // namespace

void append_norm_rows(std::vector<Row>& rows, size_t tensor_bytes) {
  const int64_t width = 1024;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const int64_t n = int64_t(tensor_bytes / dtype_size(dtype)) / width;
    Tensor x = random_gpu({n, width}, dtype, 11), w = random_gpu({width}, dtype, 12, 0.5, 1.5);
    Tensor g = random_gpu({n, width}, dtype, 13);
    const double t = double(tensor_bytes);
    std::string d = dtype_name(dtype);
    auto [y, rstd] = cuda::rms_norm_forward(x, w, 1e-5);
    rows.push_back({"rms_norm fwd " + d, dims(n, width), time_ms([&] { cuda::rms_norm_forward(x, w, 1e-5); }),
                    2 * t, 0, 0.8});
    rows.push_back({"rms_norm bwd " + d, dims(n, width),
                    time_ms([&] { cuda::rms_norm_backward(g, x, w, rstd, true, true); }), 3 * t, 0, 0.8});
    // Fused residual add + norm with an fp32 residual stream: reads x and residual, writes y and
    // the new residual.
    Tensor residual = random_gpu({n, width}, DType::f32, 14);
    const double rt = double(n * width * 4);
    rows.push_back({"rms_norm+residual fwd " + d + " (f32 residual)", dims(n, width),
                    time_ms([&] { cuda::rms_norm_residual_forward(x, residual, w, 1e-5, DType::f32); }),
                    2 * t + 2 * rt, 0, 0.8});
  }
  // Mamba-2's gated norm (norm_before_gate = false) over d_inner = 4096, one group and 8 groups:
  // the forward reads x and z and writes y, the backward reads grad, x and z and writes dx and dz.
  const int64_t gated_width = 4096;
  for (DType dtype : {DType::f32, DType::bf16}) {
    const int64_t n = int64_t(tensor_bytes / dtype_size(dtype)) / gated_width;
    Tensor x = random_gpu({n, gated_width}, dtype, 15), z = random_gpu({n, gated_width}, dtype, 16, -3.0, 3.0);
    Tensor w = random_gpu({gated_width}, dtype, 17, 0.5, 1.5), g = random_gpu({n, gated_width}, dtype, 18);
    const double t = double(n * gated_width * int64_t(dtype_size(dtype)));
    for (int64_t groups : {1, 8}) {
      const int64_t group_size = gated_width / groups;
      const std::string d = dtype_name(dtype) + (groups > 1 ? " (" + std::to_string(groups) + " groups)" : "");
      auto [y, rstd] = cuda::rms_norm_gated_forward(x, z, w, 1e-5, false, group_size);
      rows.push_back({"rms_norm_gated fwd " + d, dims(n, gated_width),
                      time_ms([&] { cuda::rms_norm_gated_forward(x, z, w, 1e-5, false, group_size); }), 3 * t, 0, 0.8});
      auto bwd = [&] { cuda::rms_norm_gated_backward(g, x, z, w, rstd, false, group_size, true, true, true); };
      rows.push_back({"rms_norm_gated bwd " + d, dims(n, gated_width), time_ms(bwd), 5 * t, 0, 0.8});
    }
  }
}

void append_cross_entropy_rows(std::vector<Row>& rows, bool quick) {
  const int64_t n = quick ? 2048 : 16384, vocab = 50304;
  Tensor logits = random_gpu({n, vocab}, DType::bf16, 21, -4.0, 4.0);
  Generator gen(22);
  Tensor targets = contiguous_copy(randint(0, vocab, {n}, gen), DType::i64, Device::cuda(0));
  const double bytes = double(n * vocab * 2);
  auto fwd = cuda::cross_entropy_forward(logits, targets, -100);
  Tensor g = full({}, 1.0, {.dtype = DType::f32, .device = Device::cuda(0)});
  double scale = 1.0 / double(fwd.count);
  double fwd_ms = time_ms([&] { cuda::cross_entropy_forward(logits, targets, -100); }, 5);
  double bwd_ms = time_ms([&] { cuda::cross_entropy_backward(g, logits, targets, fwd.lse, -100, scale); }, 5);
  rows.push_back({"cross_entropy fwd bf16", dims(n, vocab), fwd_ms, bytes, 0, 0.7});
  rows.push_back({"cross_entropy bwd bf16", dims(n, vocab), bwd_ms, 2 * bytes, 0, 0.7});
  rows.push_back({"cross_entropy fwd+bwd bf16", dims(n, vocab), fwd_ms + bwd_ms, 3 * bytes, 0, 0.7});
}

}  // namespace scanline::bench
