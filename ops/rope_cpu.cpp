#include "ops/rope_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace scanline::cpu {

Tensor rope(const Tensor& x_in, int64_t position_offset, double theta, bool inverse) {
  const Tensor x = as_contiguous(x_in);
  Tensor out = empty(x.shape(), x.options());
  if (x.numel() == 0) return out;
  const int64_t B = x.shape()[0], L = x.shape()[1], H = x.shape()[2], D = x.shape()[3], half = D / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = std::pow(theta, -double(2 * i) / double(D));
  dispatch_floating(x.dtype(), "rope", [&]<typename T>() {
    const T* px = x.data_ptr<T>();
    T* po = out.data_ptr<T>();
    // One position t a task: its sines and cosines once, then every batch row and head.
    parallel_for(L, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, B * H * D)), [&](int64_t begin, int64_t end) {
      std::vector<double> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
      for (int64_t t = begin; t < end; ++t) {
        const double pos = double(position_offset + t);
        for (int64_t i = 0; i < half; ++i) {
          const double angle = pos * inv_freq[size_t(i)];
          c[size_t(i)] = std::cos(angle);
          s[size_t(i)] = inverse ? -std::sin(angle) : std::sin(angle);
        }
        for (int64_t b = 0; b < B; ++b)
          for (int64_t h = 0; h < H; ++h) {
            const int64_t base = ((b * L + t) * H + h) * D;
            for (int64_t i = 0; i < half; ++i) {
              const double x0 = double(px[base + i]), x1 = double(px[base + i + half]);
              po[base + i] = T(x0 * c[size_t(i)] - x1 * s[size_t(i)]);
              po[base + i + half] = T(x1 * c[size_t(i)] + x0 * s[size_t(i)]);
            }
          }
      }
    });
  });
  return out;
}

}  // namespace scanline::cpu
