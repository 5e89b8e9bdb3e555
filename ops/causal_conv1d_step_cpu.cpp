#include "ops/causal_conv1d_step_cpu.h"

#include <algorithm>
#include <cmath>

#include "core/parallel.h"

namespace scanline::cpu {

Tensor causal_conv1d_step(const Tensor& conv_state, const Tensor& x, const Tensor& weight, const Tensor& bias,
                          bool silu) {
  const int64_t batch = x.shape()[0], channels = x.shape()[1], k = weight.shape()[1], width = k - 1;
  Tensor out = empty(x.shape(), {.dtype = x.dtype()});
  const Tensor dx = as_contiguous(x), dw = as_contiguous(weight);
  const Tensor db = bias.defined() ? as_contiguous(bias) : Tensor();
  dispatch_floating(x.dtype(), "causal_conv1d_step", [&]<typename T>() {
    using A = acc_t<T>;
    const T* px = dx.data_ptr<T>();
    const T* pw = dw.data_ptr<T>();
    const T* pb = db.defined() ? db.data_ptr<T>() : nullptr;
    T* ps = width > 0 ? conv_state.data_ptr<T>() : nullptr;
    T* po = out.data_ptr<T>();
    // One (batch, channel) row per index: its output and its state row come from one thread.
    parallel_for(batch * channels, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t c = r % channels;
        const T* w = pw + c * k;
        T* s = ps + r * width;
        // causal_conv1d's order: bias, then taps j = 0 .. k-1 over the window oldest first.
        A acc = pb ? A(pb[c]) : A(0);
        for (int64_t j = 0; j < width; ++j) acc += A(w[j]) * A(s[j]);
        acc += A(w[width]) * A(px[r]);
        po[r] = T(silu ? acc * (A(1) / (A(1) + std::exp(-acc))) : acc);
        // The window moves on by one token: drop the oldest input, append x.
        for (int64_t j = 0; j + 1 < width; ++j) s[j] = s[j + 1];
        if (width > 0) s[width - 1] = px[r];
      }
    });
  });
  return out;
}

}  // namespace scanline::cpu
