#include "ops/selective_scan_step_cpu.h"

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// The same overflow-free forms as selective_scan's reference, so a step matches it to rounding.
double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
double sigmoid(double x) {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

template <typename T>
const T* dense_ptr(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

template <typename T, typename P>
void step_rows(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B,
               const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias, bool softplus_on,
               const Tensor& y) {
  const int64_t batch = u.shape()[0], d_inner = u.shape()[1], N = A.shape()[1], groups = B.shape()[1];
  const int64_t per_group = d_inner / groups;
  const T *pu = dense_ptr<T>(u), *pdelta = dense_ptr<T>(delta), *pz = dense_ptr<T>(z);
  const T *pB = dense_ptr<T>(B), *pC = dense_ptr<T>(C);
  const P *pA = dense_ptr<P>(A), *pD = dense_ptr<P>(D), *pbias = dense_ptr<P>(bias);
  P* ph = state.data_ptr<P>();
  T* py = y.data_ptr<T>();
  // One (batch, channel) row per index: its N states and its y come from one thread.
  parallel_for(batch * d_inner, std::max<int64_t>(1, 4096 / N), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / d_inner, d = row % d_inner;
      const T* Bg = pB + (b * groups + d / per_group) * N;
      const T* Cg = pC + (b * groups + d / per_group) * N;
      const double raw = double(pdelta[row]) + (pbias ? double(pbias[d]) : 0.0);
      const double dt = softplus_on ? softplus(raw) : raw, x = double(pu[row]);
      double out = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        P& h = ph[row * N + n];
        const double next = std::exp(dt * double(pA[d * N + n])) * double(h) + dt * double(Bg[n]) * x;
        out += double(Cg[n]) * next;  // y reads the unrounded state, as the full scan does
        h = P(next);
      }
      if (pD) out += double(pD[d]) * x;
      if (pz) {
        const double zv = double(pz[row]);
        out *= zv * sigmoid(zv);
      }
      py[row] = T(out);
    }
  });
}

}  // namespace

Tensor selective_scan_step(const Tensor& state, const Tensor& u, const Tensor& delta, const Tensor& A,
                           const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                           const Tensor& delta_bias, bool delta_softplus) {
  auto dense = [](const Tensor& t) { return t.defined() ? as_contiguous(t) : Tensor(); };
  Tensor y = empty(u.shape(), {.dtype = u.dtype()});
  const Tensor du = dense(u), ddelta = dense(delta), dA = dense(A), dB = dense(B), dC = dense(C);
  const Tensor dD = dense(D), dz = dense(z), dbias = dense(delta_bias);
  dispatch_floating(u.dtype(), "selective_scan_step", [&]<typename T>() {
    using P = std::conditional_t<std::is_same_v<T, double>, double, float>;
    step_rows<T, P>(state, du, ddelta, dA, dB, dC, dD, dz, dbias, delta_softplus, y);
  });
  return y;
}

}  // namespace scanline::cpu
