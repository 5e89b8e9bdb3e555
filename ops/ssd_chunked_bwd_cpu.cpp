// The chunked SSD backward on CPU in double, written as the passes of the CUDA backward
// (cuda/ssd_bwd*.cu) so that each pass's math is checked against the recurrence. Within chunk c
// (steps c·Q .. c·Q + len − 1) with entering state H_c, a_i = Σ_{j<=i} Δ_j A and dy the gradient
// of the ungated output:
//   y_i = exp(a_i) C_i·H_c + Σ_{j<=i} (C_i·B_j) exp(a_i − a_j) Δ_j x_j + D x_i
//   H_{c+1} = exp(a_last) H_c + Σ_j exp(a_last − a_j) Δ_j x_j ⊗ B_j
// Passes:
//  1. Δ and the cumulative a per chunk.
//  2. the gate's backward (dy of the ungated output, dz) and G_c = Σ_i exp(a_i) dy_i ⊗ C_i.
//  3. the state gradient across chunks, last to first: Dout_c = d loss / d H_{c+1} (grad_final
//     for the last chunk), Dout_{c−1} = exp(a_last) Dout_c + G_c, d initial_state = Dout_{−1};
//     and q_c = exp(a_last) ⟨H_c, Dout_c⟩, the incoming state's part of d loss / d a_last.
//  4. per source step j: dxs_j = exp(a_last − a_j) Dout_c B_j + Σ_{i>=j} (C_i·B_j) exp(a_i − a_j) dy_i
//     (d loss / d (Δ_j x_j)), dx_j = Δ_j dxs_j + D dy_j, the direct part of dΔ_j, x_j·dxs_j, and
//     w_j = Δ_j x_j·(state part of dxs_j); dB_j; the row sums Σ_{j<=i} T_ij and column sums
//     Σ_{i>=j} T_ij of T_ij = (C_i·B_j) exp(a_i − a_j) Δ_j (dy_i·x_j).
//  5. per output step i: dC_i and the incoming state's part of d loss / d a_i, C_i·(exp(a_i) dy_i H_c).
//  6. per chunk, g_k = d loss / d a_k = rowsum_k − colsum_k + incoming_k − w_k (+ Σ_j w_j + q_c at the
//     chunk's last step), then dΔ_t = x_t·dxs_t + A Σ_{k>=t} g_k and dA = Σ_t Δ_t Σ_{k>=t} g_k.
//     (colsum_k + w_k = Δ_k x_k·dxs_k in exact arithmetic; the kernels take the column sums from the
//     same f32 T values as the row sums, so that the two cancel in the suffix sums.)
//  7. sums over heads (dB, dC), batch and chunks (dA, dD, d dt_bias) in a fixed order.
#include "ops/ssd_chunked_bwd_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace scanline::cpu {
namespace {

using ssd_detail::cast;
using ssd_detail::Dense;
using ssd_detail::sigmoid;

struct Chunking {
  int64_t Q, n_chunks;
  int64_t length(int64_t c, int64_t L) const { return std::min(Q, L - c * Q); }
};

std::vector<double> values(const Tensor& t) { return contiguous_copy(t, DType::f64, Device::cpu()).to_double_vector(); }

// Everything the passes hand on, f64. Per-position values are (batch, heads, n_chunks, Q); per-chunk
// states (batch, n_chunks, heads, headdim, N).
struct Work {
  std::vector<double> delta, a;   // Δ (0 past L) and the cumulative Σ Δ·A (constant past L)
  std::vector<double> dy;         // (batch, L, heads, headdim): d loss / d (ungated y)
  std::vector<double> dz;         // (batch, L, heads, headdim) when z is given
  std::vector<double> dout;       // G_c after pass 2, Dout_c after pass 3
  std::vector<double> dinit;      // (batch, heads, headdim, N)
  std::vector<double> q;          // (batch, n_chunks, heads)
  std::vector<double> ddir, w, rowsum, colsum, incoming;
  std::vector<double> dx;         // (batch, L, heads, headdim)
  std::vector<double> dB, dC;     // per head: (batch, L, heads, N)
  std::vector<double> dD;         // (batch, n_chunks, heads, headdim): Σ over the chunk of dy·x
  std::vector<double> ddt;        // (batch, L, heads): d loss / d (dt + bias) = d loss / d dt
  std::vector<double> dA, dbias;  // (batch, n_chunks, heads)
};

}  // namespace

SsdGrads ssd_chunked_backward(const SsdArgs& args, int64_t chunk_size, const Tensor& grad_y,
                              const Tensor& grad_final_state) {
  SCANLINE_CHECK(chunk_size >= 1, "ssd_chunked_backward: expected chunk_size >= 1 but found ", chunk_size);
  const Dense in(args);
  const Chunking ck{chunk_size, (in.L + chunk_size - 1) / chunk_size};
  const int64_t Bn = in.batch, L = in.L, H = in.heads, P = in.headdim, N = in.N, Q = ck.Q, NC = ck.n_chunks;
  const int64_t PN = P * N;

  // The forward's intermediates: the states entering each chunk and the ungated output.
  SsdArgs ungated = args;
  ungated.z = Tensor();
  const SsdChunkedResult fwd = ssd_chunked_forward(ungated, Q);
  const std::vector<double> states = values(fwd.chunk_states), y_ungated = values(fwd.y);
  const std::vector<double> gy = values(grad_y);
  const std::vector<double> gf = grad_final_state.defined() ? values(grad_final_state) : std::vector<double>(size_t(Bn * H * PN), 0.0);

  Work w;
  const size_t positions = size_t(Bn * H * NC * Q), chunk_rows = size_t(Bn * NC * H);
  w.delta.assign(positions, 0.0);
  w.a.assign(positions, 0.0);
  w.dy.assign(size_t(Bn * L * H * P), 0.0);
  if (in.pz) w.dz.assign(w.dy.size(), 0.0);
  w.dout.assign(chunk_rows * size_t(PN), 0.0);
  w.dinit.assign(size_t(Bn * H * PN), 0.0);
  w.q.assign(chunk_rows, 0.0);
  w.ddir.assign(positions, 0.0);
  w.w.assign(positions, 0.0);
  w.rowsum.assign(positions, 0.0);
  w.colsum.assign(positions, 0.0);
  w.incoming.assign(positions, 0.0);
  w.dx.assign(w.dy.size(), 0.0);
  w.dB.assign(size_t(Bn * L * H * N), 0.0);
  w.dC.assign(w.dB.size(), 0.0);
  w.dD.assign(chunk_rows * size_t(P), 0.0);
  w.ddt.assign(size_t(Bn * L * H), 0.0);
  w.dA.assign(chunk_rows, 0.0);
  w.dbias.assign(chunk_rows, 0.0);

  // Position slot of (b, h, c) and state slot of (b, c, h).
  auto pos = [&](int64_t b, int64_t h, int64_t c) { return ((b * H + h) * NC + c) * Q; };
  auto state = [&](int64_t b, int64_t c, int64_t h) { return ((b * NC + c) * H + h) * PN; };
  // A task per (b, c, h): every output element has one writer.
  auto for_chunks = [&](auto&& fn) {
    parallel_for(Bn * NC * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) fn(task / (NC * H), task / H % NC, task % H);
    });
  };

  // 1. Δ and a.
  for_chunks([&](int64_t b, int64_t c, int64_t h) {
    const int64_t at = pos(b, h, c);
    double acc = 0.0;
    for (int64_t i = 0; i < Q; ++i) {
      const int64_t t = c * Q + i;
      if (t < L) {
        w.delta[size_t(at + i)] = in.step(in.raw_dt(b, t, h));
        acc += w.delta[size_t(at + i)] * in.pA[h];
      }
      w.a[size_t(at + i)] = acc;
    }
  });

  // 2. The gate and G_c.
  for_chunks([&](int64_t b, int64_t c, int64_t h) {
    const int64_t at = pos(b, h, c), len = ck.length(c, L);
    double* G = w.dout.data() + state(b, c, h);
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = c * Q + i, xi = in.x_index(b, t, h);
      const double* C = in.pC + in.bc_index(b, t, h);
      const double decay = std::exp(w.a[size_t(at + i)]);
      for (int64_t p = 0; p < P; ++p) {
        double dy = gy[size_t(xi + p)];
        if (in.pz) {
          const double z = in.pz[xi + p], s = sigmoid(z);
          w.dz[size_t(xi + p)] = dy * y_ungated[size_t(xi + p)] * s * (1.0 + z * (1.0 - s));
          dy *= z * s;
        }
        w.dy[size_t(xi + p)] = dy;
        for (int64_t n = 0; n < N; ++n) G[p * N + n] += decay * dy * C[n];
      }
    }
  });

  // 3. The state gradient across chunks (in place: G_c is read before Dout_c overwrites it).
  parallel_for(Bn * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> d(static_cast<size_t>(PN));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, h = row % H;
      std::copy(gf.begin() + (b * H + h) * PN, gf.begin() + (b * H + h + 1) * PN, d.begin());
      for (int64_t c = NC - 1; c >= 0; --c) {
        const double decay = std::exp(w.a[size_t(pos(b, h, c) + Q - 1)]);
        double* slot = w.dout.data() + state(b, c, h);
        const double* Hc = states.data() + state(b, c, h);
        double dot = 0.0;
        for (int64_t k = 0; k < PN; ++k) {
          const double G = slot[k];
          slot[k] = d[size_t(k)];
          dot += Hc[k] * d[size_t(k)];
          d[size_t(k)] = decay * d[size_t(k)] + G;
        }
        w.q[size_t((b * NC + c) * H + h)] = decay * dot;
      }
      std::copy(d.begin(), d.end(), w.dinit.begin() + (b * H + h) * PN);
    }
  });

  // 4. Per source step j: dx, the direct dΔ, w, dB (per head), the row sums of T, dD.
  for_chunks([&](int64_t b, int64_t c, int64_t h) {
    const int64_t at = pos(b, h, c), len = ck.length(c, L);
    const double* a = w.a.data() + at;
    const double* delta = w.delta.data() + at;
    const double* Dout = w.dout.data() + state(b, c, h);
    double* dD = w.dD.data() + ((b * NC + c) * H + h) * P;
    std::vector<double> dxs(static_cast<size_t>(P)), dB(static_cast<size_t>(N));
    for (int64_t j = 0; j < len; ++j) {
      const int64_t tj = c * Q + j, xj_at = in.x_index(b, tj, h);
      const double* xj = in.px + xj_at;
      const double* Bj = in.pB + in.bc_index(b, tj, h);
      const double to_end = std::exp(a[Q - 1] - a[j]);
      double wj = 0.0;
      for (int64_t p = 0; p < P; ++p) {
        double s = 0.0;
        for (int64_t n = 0; n < N; ++n) s += Bj[n] * Dout[p * N + n];
        dxs[size_t(p)] = to_end * s;
        wj += xj[p] * dxs[size_t(p)];
      }
      w.w[size_t(at + j)] = delta[j] * wj;
      for (int64_t n = 0; n < N; ++n) {
        double s = 0.0;
        for (int64_t p = 0; p < P; ++p) s += xj[p] * Dout[p * N + n];
        dB[size_t(n)] = to_end * s;
      }
      for (int64_t i = j; i < len; ++i) {
        const int64_t ti = c * Q + i;
        const double* Ci = in.pC + in.bc_index(b, ti, h);
        const double* dyi = w.dy.data() + in.x_index(b, ti, h);
        const double e = std::exp(a[i] - a[j]);
        double cb = 0.0, m = 0.0;
        for (int64_t n = 0; n < N; ++n) cb += Ci[n] * Bj[n];
        for (int64_t p = 0; p < P; ++p) {
          dxs[size_t(p)] += cb * e * dyi[p];
          m += dyi[p] * xj[p];
        }
        w.rowsum[size_t(at + i)] += cb * e * delta[j] * m;
        w.colsum[size_t(at + j)] += cb * e * delta[j] * m;
        for (int64_t n = 0; n < N; ++n) dB[size_t(n)] += e * m * Ci[n];
      }
      double direct = 0.0;
      const double* dyj = w.dy.data() + xj_at;
      for (int64_t p = 0; p < P; ++p) {
        direct += xj[p] * dxs[size_t(p)];
        w.dx[size_t(xj_at + p)] = delta[j] * dxs[size_t(p)] + in.skip(h, p) * dyj[p];
        dD[p] += dyj[p] * xj[p];
      }
      w.ddir[size_t(at + j)] = direct;
      for (int64_t n = 0; n < N; ++n) w.dB[size_t(((b * L + tj) * H + h) * N + n)] = delta[j] * dB[size_t(n)];
    }
  });

  // 5. Per output step i: dC (per head) and the incoming state's part of g_i.
  for_chunks([&](int64_t b, int64_t c, int64_t h) {
    const int64_t at = pos(b, h, c), len = ck.length(c, L);
    const double* a = w.a.data() + at;
    const double* delta = w.delta.data() + at;
    const double* Hc = states.data() + state(b, c, h);
    std::vector<double> dC(static_cast<size_t>(N));
    for (int64_t i = 0; i < len; ++i) {
      const int64_t ti = c * Q + i;
      const double* Ci = in.pC + in.bc_index(b, ti, h);
      const double* dyi = w.dy.data() + in.x_index(b, ti, h);
      const double decay = std::exp(a[i]);
      double incoming = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        double s = 0.0;
        for (int64_t p = 0; p < P; ++p) s += dyi[p] * Hc[p * N + n];
        dC[size_t(n)] = decay * s;
        incoming += Ci[n] * dC[size_t(n)];
      }
      w.incoming[size_t(at + i)] = incoming;
      for (int64_t j = 0; j <= i; ++j) {
        const int64_t tj = c * Q + j;
        const double* xj = in.px + in.x_index(b, tj, h);
        const double* Bj = in.pB + in.bc_index(b, tj, h);
        double m = 0.0;
        for (int64_t p = 0; p < P; ++p) m += dyi[p] * xj[p];
        const double f = std::exp(a[i] - a[j]) * delta[j] * m;
        for (int64_t n = 0; n < N; ++n) dC[size_t(n)] += f * Bj[n];
      }
      for (int64_t n = 0; n < N; ++n) w.dC[size_t(((b * L + ti) * H + h) * N + n)] = dC[size_t(n)];
    }
  });

  // 6. d loss / d a, its suffix sums, dΔ, d dt, and the per-chunk dA and d dt_bias.
  for_chunks([&](int64_t b, int64_t c, int64_t h) {
    const int64_t at = pos(b, h, c), len = ck.length(c, L), row = (b * NC + c) * H + h;
    std::vector<double> g(static_cast<size_t>(len));
    double w_sum = 0.0;
    for (int64_t k = 0; k < len; ++k) {
      g[size_t(k)] = w.rowsum[size_t(at + k)] - w.colsum[size_t(at + k)] + w.incoming[size_t(at + k)] - w.w[size_t(at + k)];
      w_sum += w.w[size_t(at + k)];
    }
    g[size_t(len - 1)] += w_sum + w.q[size_t(row)];
    double suffix = 0.0, dA = 0.0, dbias = 0.0;
    for (int64_t t = len - 1; t >= 0; --t) {
      suffix += g[size_t(t)];
      const double ddelta = w.ddir[size_t(at + t)] + in.pA[h] * suffix;
      const double raw = in.raw_dt(b, c * Q + t, h);
      const double draw = in.softplus ? ddelta * sigmoid(raw) : ddelta;
      w.ddt[size_t((b * L + c * Q + t) * H + h)] = draw;
      dA += w.delta[size_t(at + t)] * suffix;
      dbias += draw;
    }
    w.dA[size_t(row)] = dA;
    w.dbias[size_t(row)] = dbias;
  });

  // 7. Fixed-order sums and the results in their dtypes.
  const DType input = args.x.dtype(), param = args.A.dtype();
  auto tensor = [&](const std::vector<double>& v, const Shape& shape, DType dtype) {
    return cast(from_vector(v, shape), dtype);
  };
  auto over_heads = [&](const std::vector<double>& per_head) {  // (b, L, H, N) -> (b, L, G, N), head order
    const int64_t G = in.ngroups;
    std::vector<double> out(size_t(Bn * L * G * N), 0.0);
    for (int64_t bt = 0; bt < Bn * L; ++bt)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = 0; n < N; ++n) out[size_t((bt * G + h / in.per_group) * N + n)] += per_head[size_t((bt * H + h) * N + n)];
    return out;
  };
  auto over_chunks = [&](const std::vector<double>& part, int64_t width) {  // (b, NC, H, width) -> (H, width)
    std::vector<double> out(size_t(H * width), 0.0);
    for (int64_t bc = 0; bc < Bn * NC; ++bc)
      for (int64_t k = 0; k < H * width; ++k) out[size_t(k)] += part[size_t(bc * H * width + k)];
    return out;
  };
  SsdGrads g;
  g.x = tensor(w.dx, args.x.shape(), input);
  g.dt = tensor(w.ddt, args.dt.shape(), input);
  g.A = tensor(over_chunks(w.dA, 1), args.A.shape(), param);
  g.B = tensor(over_heads(w.dB), args.B.shape(), input);
  g.C = tensor(over_heads(w.dC), args.C.shape(), input);
  if (args.D.defined()) {
    std::vector<double> dD = over_chunks(w.dD, P);
    if (!in.D_per_channel) {
      std::vector<double> per_head(size_t(H), 0.0);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t p = 0; p < P; ++p) per_head[size_t(h)] += dD[size_t(h * P + p)];
      dD = per_head;
    }
    g.D = tensor(dD, args.D.shape(), param);
  }
  if (args.z.defined()) g.z = tensor(w.dz, args.z.shape(), input);
  if (args.dt_bias.defined()) g.dt_bias = tensor(over_chunks(w.dbias, 1), args.dt_bias.shape(), param);
  if (args.initial_state.defined()) g.initial_state = tensor(w.dinit, args.initial_state.shape(), param);
  return g;
}

}  // namespace scanline::cpu
