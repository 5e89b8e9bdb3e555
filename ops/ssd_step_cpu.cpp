#include "ops/ssd_step_cpu.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "core/parallel.h"
#include "ops/ssd_cpu.h"

namespace scanline::cpu {
namespace {

template <typename T>
const T* dense_ptr(const Tensor& t) { return t.defined() ? t.data_ptr<T>() : nullptr; }

template <typename T, typename P>
void step_heads(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& bias, bool softplus_on,
                const Tensor& y) {
  const int64_t batch = x.shape()[0], heads = x.shape()[1], P_dim = x.shape()[2];
  const int64_t ngroups = B.shape()[1], N = B.shape()[2], per_group = heads / ngroups;
  const bool D_per_channel = D.defined() && D.dim() == 2;
  const T *px = dense_ptr<T>(x), *pdt = dense_ptr<T>(dt), *pz = dense_ptr<T>(z);
  const T *pB = dense_ptr<T>(B), *pC = dense_ptr<T>(C);
  const P *pA = dense_ptr<P>(A), *pD = dense_ptr<P>(D), *pbias = dense_ptr<P>(bias);
  P* pstate = state.data_ptr<P>();
  T* py = y.data_ptr<T>();
  // One (batch, head) per index: its headdim·N states and headdim outputs come from one thread.
  parallel_for(batch * heads, std::max<int64_t>(1, 4096 / std::max<int64_t>(1, P_dim * N)),
               [&](int64_t begin, int64_t end) {
    const size_t width = size_t(N);
    std::vector<double> Bg(width), Cg(width), next(width);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / heads, h = row % heads, g = h / per_group;
      for (int64_t n = 0; n < N; ++n) {
        Bg[size_t(n)] = double(pB[(b * ngroups + g) * N + n]);
        Cg[size_t(n)] = double(pC[(b * ngroups + g) * N + n]);
      }
      // ssd's recurrence step (ssd_cpu.cpp, `advance` and the forward's output loop), term for term.
      const double raw = double(pdt[row]) + (pbias ? double(pbias[h]) : 0.0);
      const double delta = softplus_on ? ssd_detail::softplus(raw) : raw;
      const double decay = std::exp(delta * double(pA[h]));
      for (int64_t p = 0; p < P_dim; ++p) {
        const int64_t i = row * P_dim + p;
        const double xv = double(px[i]), dx = delta * xv;
        P* hs = pstate + i * N;
        for (int64_t n = 0; n < N; ++n) {
          next[size_t(n)] = decay * double(hs[n]) + dx * Bg[size_t(n)];
          hs[n] = P(next[size_t(n)]);
        }
        const double skip = pD ? double(pD[D_per_channel ? h * P_dim + p : h]) : 0.0;
        double out = skip * xv;
        for (int64_t n = 0; n < N; ++n) out += Cg[size_t(n)] * next[size_t(n)];  // the unrounded state
        if (pz) {
          const double zv = double(pz[i]);
          out *= zv * ssd_detail::sigmoid(zv);
        }
        py[i] = T(out);
      }
    }
  });
}

}  // namespace

Tensor ssd_step(const Tensor& state, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                const Tensor& C, const Tensor& D, const Tensor& z, const Tensor& dt_bias, bool dt_softplus) {
  auto dense = [](const Tensor& t) { return t.defined() ? as_contiguous(t) : Tensor(); };
  Tensor y = empty(x.shape(), {.dtype = x.dtype()});
  const Tensor dx = dense(x), ddt = dense(dt), dA = dense(A), dB = dense(B), dC = dense(C);
  const Tensor dD = dense(D), dz = dense(z), dbias = dense(dt_bias);
  dispatch_floating(x.dtype(), "ssd_step", [&]<typename T>() {
    using P = std::conditional_t<std::is_same_v<T, double>, double, float>;
    step_heads<T, P>(state, dx, ddt, dA, dB, dC, dD, dz, dbias, dt_softplus, y);
  });
  return y;
}

}  // namespace scanline::cpu
