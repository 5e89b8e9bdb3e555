// Rotary embedding (see ops/rope.h and cuda/attention.h). A thread owns kVec consecutive pairs
// (i, i + headdim/2) of one token position: it computes their angles, sines and cosines once in
// double (exact for any position) and then rotates them in fp32 for a chunk of (batch, head)
// rows, reading both halves as 16-byte vectors where the layout allows. The backward is the same
// kernel with the sines negated.
#include "cuda/attention.h"

#include <algorithm>

#include "core/cuda/device_utils.cuh"

namespace scanline::cuda {
namespace {

constexpr int kRopeThreads = 128;

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Pack {
  T v[kVec];
};

template <typename T>
struct RopeParams {
  const T* x;
  T* out;                              // (batch, L, heads, headdim), contiguous
  int64_t x_batch, x_row, x_head;      // element strides of x (its last dim is contiguous)
  int64_t L, rows, rows_per_block;     // rows = batch · heads
  int heads, headdim;
  int64_t position_offset;
  double theta;
  bool inverse;
};

template <typename T, int kVec>
__global__ void __launch_bounds__(kRopeThreads) rope_kernel(const RopeParams<T> p) {
  const int half = p.headdim / 2, vecs = half / kVec;
  const int64_t idx = int64_t(blockIdx.x) * kRopeThreads + threadIdx.x;
  if (idx >= p.L * vecs) return;
  const int64_t t = idx / vecs;
  const int i0 = int(idx % vecs) * kVec;
  float c[kVec], s[kVec];
  const double pos = double(p.position_offset + t);
#pragma unroll
  for (int e = 0; e < kVec; ++e) {
    const double inv_freq = pow(p.theta, -double(2 * (i0 + e)) / double(p.headdim));  // as the CPU's
    double sd, cd;
    sincos(pos * inv_freq, &sd, &cd);
    c[e] = float(cd);
    s[e] = float(p.inverse ? -sd : sd);
  }
  const int64_t r_begin = int64_t(blockIdx.y) * p.rows_per_block;
  const int64_t r_end = min(p.rows, r_begin + p.rows_per_block);
  for (int64_t r = r_begin; r < r_end; ++r) {
    const int64_t b = r / p.heads, h = r % p.heads;
    const T* src = p.x + b * p.x_batch + t * p.x_row + h * p.x_head + i0;
    T* dst = p.out + ((b * p.L + t) * p.heads + h) * p.headdim + i0;
    const Pack<T, kVec> lo = *reinterpret_cast<const Pack<T, kVec>*>(src);
    const Pack<T, kVec> hi = *reinterpret_cast<const Pack<T, kVec>*>(src + half);
    Pack<T, kVec> out_lo, out_hi;
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float x0 = load_math(&lo.v[e]), x1 = load_math(&hi.v[e]);
      out_lo.v[e] = from_math<T>(x0 * c[e] - x1 * s[e]);
      out_hi.v[e] = from_math<T>(x1 * c[e] + x0 * s[e]);
    }
    *reinterpret_cast<Pack<T, kVec>*>(dst) = out_lo;
    *reinterpret_cast<Pack<T, kVec>*>(dst + half) = out_hi;
  }
}

}  // namespace

Tensor rope(const Tensor& x_in, int64_t position_offset, double theta, bool inverse) {
  constexpr const char* op = "rope";
  check_cuda_tensor(op, x_in, "x");
  SCANLINE_CHECK(x_in.dim() == 4 && x_in.shape()[3] % 2 == 0, op,
                 ": expected x of shape (batch, L, heads, headdim) with an even headdim but found ", describe(x_in));
  SCANLINE_CHECK(x_in.dtype() == DType::f32 || x_in.dtype() == DType::bf16 || x_in.dtype() == DType::f16, op,
                 ": the CUDA kernel takes f32, bf16 or f16 but found ", describe(x_in));
  DeviceGuard guard(x_in.device().index);
  Tensor out = empty(x_in.shape(), x_in.options());
  if (x_in.numel() == 0) return out;
  const Tensor x = x_in.strides().back() == 1 || x_in.shape()[3] == 1 ? x_in
                                                                       : contiguous_copy(x_in, x_in.dtype(), x_in.device());
  const int64_t batch = x.shape()[0], L = x.shape()[1], heads = x.shape()[2], D = x.shape()[3], half = D / 2;
  SCANLINE_CHECK(heads <= 0x7fffffff && D <= 0x7fffffff, op, ": too many heads or too wide a head in ", describe(x));

  dispatch_floating_device(x.dtype(), op, [&]<typename T>() {
    if constexpr (std::is_same_v<T, double>) {
      SCANLINE_FAIL(op, ": the CUDA kernel takes f32, bf16 or f16");
    } else {
      RopeParams<T> p{};
      p.x = data_at<const T>(x);
      p.out = data_at<T>(out);
      p.x_batch = x.strides()[0], p.x_row = x.strides()[1], p.x_head = x.strides()[2];
      p.L = L, p.rows = batch * heads;
      p.heads = int(heads), p.headdim = int(D);
      p.position_offset = position_offset;
      p.theta = theta;
      p.inverse = inverse;
      // 16-byte vectors when both halves of every row start 16-byte aligned.
      constexpr int kWide = 16 / int(sizeof(T));
      const int64_t wide = half % kWide == 0 && aligned16(p.x) && p.x_batch % kWide == 0 && p.x_row % kWide == 0 &&
                                   p.x_head % kWide == 0
                               ? kWide
                               : (half % 2 == 0 && reinterpret_cast<uintptr_t>(p.x) % (2 * sizeof(T)) == 0 &&
                                          p.x_batch % 2 == 0 && p.x_row % 2 == 0 && p.x_head % 2 == 0
                                      ? 2
                                      : 1);
      const int64_t threads = L * (half / wide);
      // Enough blocks to fill the GPU, at least 8 rows a thread to amortize the sines.
      const int64_t x_blocks = (threads + kRopeThreads - 1) / kRopeThreads;
      const int64_t y_target = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, x_blocks));
      p.rows_per_block = std::max<int64_t>({int64_t(8), (p.rows + y_target - 1) / y_target, (p.rows + 65534) / 65535});
      const int64_t y_blocks = (p.rows + p.rows_per_block - 1) / p.rows_per_block;
      SCANLINE_CHECK(x_blocks <= 0x7fffffff, op, ": ", describe(x), " needs more blocks than a grid holds");
      const dim3 grid(static_cast<unsigned>(x_blocks), static_cast<unsigned>(y_blocks));
      if (wide == kWide) rope_kernel<T, kWide><<<grid, kRopeThreads, 0, current_stream()>>>(p);
      else if (wide == 2) rope_kernel<T, 2><<<grid, kRopeThreads, 0, current_stream()>>>(p);
      else rope_kernel<T, 1><<<grid, kRopeThreads, 0, current_stream()>>>(p);
      CUDA_CHECK_LAUNCH("rope");
    }
  });
  return out;
}

}  // namespace scanline::cuda
