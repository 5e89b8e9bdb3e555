#include "ops/causal_conv1d_cpu.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "core/parallel.h"
#include "ops/causal_conv1d.h"

namespace scanline::cpu {
namespace {

// Kernels index storage directly with (offset + strides), so they start from the storage base.
template <typename T>
T* base_ptr(const Tensor& t) { return static_cast<T*>(t.impl()->storage->data()); }

// One channel's taps and bias, converted to the compute type once.
template <typename A>
struct ChannelParams {
  std::array<A, kMaxCausalConvWidth> w{};
  A bias = A(0);
};

template <typename T, typename A>
ChannelParams<A> load_channel(const Tensor& weight, const Tensor& bias, int64_t c) {
  ChannelParams<A> p;
  const T* w = base_ptr<T>(weight);
  const int64_t k = weight.shape()[1];
  for (int64_t j = 0; j < k; ++j) p.w[j] = A(w[weight.offset() + c * weight.strides()[0] + j * weight.strides()[1]]);
  if (bias.defined()) p.bias = A(base_ptr<T>(bias)[bias.offset() + c * bias.strides()[0]]);
  return p;
}

// Pre-activation at time t of the row starting at x[row] with time step `step`: the taps that
// would read before time 0 are skipped (zero padding).
template <typename T, typename A>
A conv_at(const T* x, int64_t row, int64_t step, const ChannelParams<A>& p, int64_t k, int64_t t) {
  A acc = p.bias;
  for (int64_t j = std::max<int64_t>(0, k - 1 - t); j < k; ++j)
    acc += p.w[j] * A(x[row + (t - (k - 1) + j) * step]);
  return acc;
}

template <typename A>
A sigmoid_of(A z) { return A(1) / (A(1) + std::exp(-z)); }

}  // namespace

void causal_conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                           const Tensor& out) {
  const int64_t batch = x.shape()[0], channels = x.shape()[1], length = x.shape()[2];
  const int64_t k = weight.shape()[1];
  dispatch_floating(x.dtype(), "causal_conv1d", [&]<typename T>() {
    using A = acc_t<T>;
    const T* px = base_ptr<T>(x);
    T* po = base_ptr<T>(out);
    const Shape& xs = x.strides();
    const Shape& os = out.strides();
    // One (batch, channel) row per task: each output element is written by exactly one thread.
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, length * k));
    parallel_for(batch * channels, grain, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = r / channels, c = r % channels;
        const auto p = load_channel<T, A>(weight, bias, c);
        const int64_t x_row = x.offset() + b * xs[0] + c * xs[1];
        const int64_t o_row = out.offset() + b * os[0] + c * os[1];
        for (int64_t t = 0; t < length; ++t) {
          A z = conv_at(px, x_row, xs[2], p, k, t);
          po[o_row + t * os[2]] = T(silu ? z * sigmoid_of(z) : z);
        }
      }
    });
  });
}

void causal_conv1d_backward(const Tensor& x, const Tensor& weight, const Tensor& bias, bool silu,
                            const Tensor& grad_out, const Tensor& grad_x, const Tensor& grad_weight,
                            const Tensor& grad_bias) {
  const int64_t batch = x.shape()[0], channels = x.shape()[1], length = x.shape()[2];
  const int64_t k = weight.shape()[1];
  dispatch_floating(x.dtype(), "causal_conv1d backward", [&]<typename T>() {
    using A = acc_t<T>;
    const T* px = base_ptr<T>(x);
    const T* pg = base_ptr<T>(grad_out);
    const Shape& xs = x.strides();
    const Shape& gs = grad_out.strides();
    // Parallel over channels: a channel's weight and bias gradients sum over (batch, time) inside
    // one task in a fixed order, and its grad_x rows belong to that task alone.
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, batch * length * k));
    parallel_for(channels, grain, [&](int64_t begin, int64_t end) {
      std::vector<A> dz(static_cast<size_t>(length));  // d loss / d pre-activation of one row
      for (int64_t c = begin; c < end; ++c) {
        const auto p = load_channel<T, A>(weight, bias, c);
        std::array<double, kMaxCausalConvWidth> dw{};
        double db = 0.0;
        for (int64_t b = 0; b < batch; ++b) {
          const int64_t x_row = x.offset() + b * xs[0] + c * xs[1];
          const int64_t g_row = grad_out.offset() + b * gs[0] + c * gs[1];
          for (int64_t t = 0; t < length; ++t) {
            A g = A(pg[g_row + t * gs[2]]);
            if (silu) {  // recompute z; silu'(z) = s (1 + z (1 - s)) with s = sigmoid(z)
              A z = conv_at(px, x_row, xs[2], p, k, t);
              A s = sigmoid_of(z);
              g *= s * (A(1) + z * (A(1) - s));
            }
            dz[size_t(t)] = g;
          }
          if (grad_x.defined()) {
            // x[s] feeds out[s + (k - 1) - j] through tap j, for those times inside the row.
            T* pdx = base_ptr<T>(grad_x);
            const Shape& dxs = grad_x.strides();
            const int64_t dx_row = grad_x.offset() + b * dxs[0] + c * dxs[1];
            for (int64_t s = 0; s < length; ++s) {
              A acc = A(0);
              for (int64_t j = std::max<int64_t>(0, s + k - length); j < k; ++j)
                acc += p.w[j] * dz[size_t(s + (k - 1) - j)];
              pdx[dx_row + s * dxs[2]] = T(acc);
            }
          }
          if (grad_weight.defined() || grad_bias.defined()) {
            for (int64_t t = 0; t < length; ++t) {
              const double g = double(dz[size_t(t)]);
              db += g;
              for (int64_t j = std::max<int64_t>(0, k - 1 - t); j < k; ++j)
                dw[j] += g * double(px[x_row + (t - (k - 1) + j) * xs[2]]);
            }
          }
        }
        if (grad_weight.defined()) {
          T* pdw = base_ptr<T>(grad_weight);
          for (int64_t j = 0; j < k; ++j)
            pdw[grad_weight.offset() + c * grad_weight.strides()[0] + j * grad_weight.strides()[1]] = T(dw[j]);
        }
        if (grad_bias.defined())
          base_ptr<T>(grad_bias)[grad_bias.offset() + c * grad_bias.strides()[0]] = T(db);
      }
    });
  });
}

}  // namespace scanline::cpu
