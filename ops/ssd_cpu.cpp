#include "ops/ssd_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace scanline::cpu {
namespace ssd_detail {
namespace {

// A contiguous f64 copy of t (t itself when it already is one); undefined stays undefined.
Tensor dense(const Tensor& t) {
  if (!t.defined()) return t;
  if (t.dtype() == DType::f64 && t.is_contiguous()) return t;
  return contiguous_copy(t, DType::f64, Device::cpu());
}

const double* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; }

}  // namespace

// softplus and sigmoid in forms that neither overflow nor lose digits for large |x|, so the
// reference is exact to double rounding everywhere.
double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
double sigmoid(double x) {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

Tensor cast(const Tensor& t, DType dtype) {
  return t.dtype() == dtype ? t : contiguous_copy(t, dtype, Device::cpu());
}

Dense::Dense(const SsdArgs& a)
    : batch(a.x.shape()[0]), L(a.x.shape()[1]), heads(a.x.shape()[2]), headdim(a.x.shape()[3]),
      ngroups(a.B.shape()[2]), N(a.B.shape()[3]), per_group(heads / ngroups), softplus(a.dt_softplus),
      D_per_channel(a.D.defined() && a.D.dim() == 2), x(dense(a.x)), dt(dense(a.dt)), z(dense(a.z)),
      A(dense(a.A)), D(dense(a.D)), bias(dense(a.dt_bias)), h0(dense(a.initial_state)), B(dense(a.B)),
      C(dense(a.C)), px(ptr(x)), pdt(ptr(dt)), pz(ptr(z)), pA(ptr(A)), pD(ptr(D)), pbias(ptr(bias)),
      ph0(ptr(h0)), pB(ptr(B)), pC(ptr(C)) {}

double Dense::step(double raw) const { return softplus ? ssd_detail::softplus(raw) : raw; }

}  // namespace ssd_detail

namespace {

using ssd_detail::cast;
using ssd_detail::Dense;
using ssd_detail::sigmoid;

// h <- exp(Δ_t A) h + Δ_t x_t ⊗ B_t for head h of batch row b; returns Δ_t.
double advance(const Dense& in, int64_t b, int64_t t, int64_t h, double* state) {
  const int64_t P = in.headdim, N = in.N;
  const double dt = in.step(in.raw_dt(b, t, h)), decay = std::exp(dt * in.pA[h]);
  const double* x = in.px + in.x_index(b, t, h);
  const double* B = in.pB + in.bc_index(b, t, h);
  for (int64_t p = 0; p < P; ++p) {
    const double dx = dt * x[p];
    double* row = state + p * N;
    for (int64_t n = 0; n < N; ++n) row[n] = decay * row[n] + dx * B[n];
  }
  return dt;
}

void load_initial(const Dense& in, int64_t b, int64_t h, double* state) {
  const int64_t size = in.headdim * in.N;
  for (int64_t i = 0; i < size; ++i) state[i] = in.ph0 ? in.ph0[in.state_index(b, h) + i] : 0.0;
}

// Where the backward writes: full outputs (null when not wanted) and per-(batch, head) partials.
struct HeadGrads {
  double *dx, *ddt, *dz, *dinit;
  double *dA, *dD, *dbias;  // (rows), (rows, headdim), (rows): summed over batch afterwards
};

// Per-thread scratch of the backward: the segment checkpoints, one segment's states, dh, ds.
struct Scratch {
  std::vector<double> checkpoints, segment, dh, ds;
  explicit Scratch(const Dense& in)
      : checkpoints(size_t((in.L + kSsdSegment - 1) / kSsdSegment * in.headdim * in.N)),
        segment(size_t((kSsdSegment + 1) * in.headdim * in.N)), dh(size_t(in.headdim * in.N)),
        ds(size_t(in.headdim)) {}
};

// One step of the reverse recurrence at (b, t, h): h = h_t, h_prev = h_{t-1}; dh holds d loss / d h_t
// from the future on entry and d loss / d h_{t-1} on exit.
void backward_step(const Dense& in, int64_t b, int64_t t, int64_t h, const double* grad_y, const double* state,
                   const double* state_prev, const HeadGrads& out, Scratch& s, double* dB_part, double* dC_part) {
  const int64_t P = in.headdim, N = in.N, row = b * in.heads + h, xi = in.x_index(b, t, h);
  const double A = in.pA[h], raw = in.raw_dt(b, t, h), dt = in.step(raw), decay = std::exp(dt * A);
  const double* x = in.px + xi;
  const double* B = in.pB + in.bc_index(b, t, h);
  const double* C = in.pC + in.bc_index(b, t, h);
  const double* gy = grad_y + xi;
  // ds[p] = d loss / d (Σ_n C h + D x), the value before the gate.
  for (int64_t p = 0; p < P; ++p) {
    const double D = in.skip(h, p);
    double ds = gy[p];
    if (in.pz) {
      const double z = in.pz[xi + p], sig = sigmoid(z);
      double pre = D * x[p];
      for (int64_t n = 0; n < N; ++n) pre += C[n] * state[p * N + n];
      ds = gy[p] * z * sig;
      if (out.dz) out.dz[xi + p] = gy[p] * pre * sig * (1.0 + z * (1.0 - sig));  // silu'(z)
    }
    s.ds[size_t(p)] = ds;
    out.dD[row * P + p] += ds * x[p];
  }
  double ddt = 0.0, g_h_prev = 0.0;  // g_h_prev = Σ_{p,n} g h_{t-1}: the decay's gradient factor
  for (int64_t p = 0; p < P; ++p) {
    const double ds = s.ds[size_t(p)];
    const double* h_now = state + p * N;
    const double* h_prev = state_prev + p * N;
    double* dh = s.dh.data() + p * N;
    double gB = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const double g = dh[n] + ds * C[n];  // d loss / d h_t[p, n]
      if (dC_part) dC_part[t * N + n] += ds * h_now[n];
      if (dB_part) dB_part[t * N + n] += g * dt * x[p];
      gB += g * B[n];
      g_h_prev += g * h_prev[n];
      dh[n] = g * decay;  // on to h_{t-1}
    }
    ddt += gB * x[p];
    if (out.dx) out.dx[xi + p] = ds * in.skip(h, p) + dt * gB;
  }
  ddt += g_h_prev * decay * A;
  out.dA[row] += g_h_prev * decay * dt;
  const double draw = in.softplus ? ddt * sigmoid(raw) : ddt;  // d loss / d (dt + bias)
  out.dbias[row] += draw;
  if (out.ddt) out.ddt[(b * in.L + t) * in.heads + h] = draw;
}

// Backward of head h of batch row b: checkpoints the state every kSsdSegment steps, then walks
// the segments backwards, recomputing each one's states from its checkpoint.
void backward_head(const Dense& in, int64_t b, int64_t h, const double* grad_y, const double* grad_h,
                   const HeadGrads& out, Scratch& s, double* dB_part, double* dC_part) {
  const int64_t L = in.L, size = in.headdim * in.N;
  double* state = s.segment.data();
  load_initial(in, b, h, state);
  for (int64_t t = 0; t < L; ++t) {
    if (t % kSsdSegment == 0) std::copy(state, state + size, s.checkpoints.data() + t / kSsdSegment * size);
    advance(in, b, t, h, state);
  }
  std::copy(grad_h + in.state_index(b, h), grad_h + in.state_index(b, h) + size, s.dh.begin());
  for (int64_t k = (L - 1) / kSsdSegment; k >= 0; --k) {
    const int64_t t0 = k * kSsdSegment, t1 = std::min(L, t0 + kSsdSegment);
    std::copy(s.checkpoints.data() + k * size, s.checkpoints.data() + (k + 1) * size, state);
    for (int64_t t = t0; t < t1; ++t) {  // segment[i] = h_{t0 + i - 1}
      double* next = state + (t - t0 + 1) * size;
      std::copy(next - size, next, next);
      advance(in, b, t, h, next);
    }
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const double* now = state + (t - t0 + 1) * size;
      backward_step(in, b, t, h, grad_y, now, now - size, out, s, dB_part, dC_part);
    }
  }
  if (out.dinit) std::copy(s.dh.begin(), s.dh.end(), out.dinit + in.state_index(b, h));
}

// Σ over batch rows, in order, of per-(batch, head) partials of `width` values each.
std::vector<double> sum_over_batch(const std::vector<double>& partial, int64_t batch, int64_t width) {
  std::vector<double> total(size_t(width), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < width; ++i) total[size_t(i)] += partial[size_t(b * width + i)];
  return total;
}

// dB or dC (batch, L, ngroups, N) from the task partials (tasks, L, N), summed in task order.
Tensor sum_tasks(const std::vector<double>& partial, const Dense& in, int64_t tasks_per_group, DType dtype) {
  const int64_t L = in.L, N = in.N, G = in.ngroups;
  Tensor out = empty({in.batch, L, G, N}, {.dtype = DType::f64});
  double* po = out.data_ptr<double>();
  parallel_for(in.batch * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / G, g = bg % G;
      for (int64_t t = 0; t < L; ++t)
        for (int64_t n = 0; n < N; ++n) {
          double acc = 0.0;
          for (int64_t k = 0; k < tasks_per_group; ++k)
            acc += partial[size_t(((bg * tasks_per_group + k) * L + t) * N + n)];
          po[((b * L + t) * G + g) * N + n] = acc;
        }
    }
  });
  return cast(out, dtype);
}

}  // namespace

std::pair<Tensor, Tensor> ssd_forward(const SsdArgs& args) {
  const Dense in(args);
  const int64_t L = in.L, P = in.headdim, N = in.N, rows = in.batch * in.heads;
  Tensor y = empty(args.x.shape(), {.dtype = DType::f64});
  Tensor final_state = empty({in.batch, in.heads, P, N}, {.dtype = DType::f64});
  double* py = y.data_ptr<double>();
  double* pfinal = final_state.data_ptr<double>();
  // One (batch, head) per index: every output element comes from one thread.
  parallel_for(rows, std::max<int64_t>(1, 32768 / std::max<int64_t>(1, L * P * N)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / in.heads, h = row % in.heads;
      double* state = pfinal + in.state_index(b, h);  // the state lives in its output slot
      load_initial(in, b, h, state);
      for (int64_t t = 0; t < L; ++t) {
        advance(in, b, t, h, state);
        const int64_t xi = in.x_index(b, t, h);
        const double* C = in.pC + in.bc_index(b, t, h);
        for (int64_t p = 0; p < P; ++p) {
          double out = in.skip(h, p) * in.px[xi + p];
          for (int64_t n = 0; n < N; ++n) out += C[n] * state[p * N + n];
          if (in.pz) out *= in.pz[xi + p] * sigmoid(in.pz[xi + p]);
          py[xi + p] = out;
        }
      }
    }
  });
  return {cast(y, args.x.dtype()), cast(final_state, args.A.dtype())};
}

SsdGrads ssd_backward(const SsdArgs& args, const Tensor& grad_y, const Tensor& grad_final_state,
                      const std::array<bool, 9>& needs) {
  const Dense in(args);
  const int64_t L = in.L, P = in.headdim, N = in.N, H = in.heads, rows = in.batch * H;
  const Tensor gy = contiguous_copy(grad_y, DType::f64, Device::cpu());
  const Tensor gh = contiguous_copy(grad_final_state, DType::f64, Device::cpu());
  auto wanted = [&](int i, const Tensor& input) {
    return needs[size_t(i)] && input.defined() ? empty(input.shape(), {.dtype = DType::f64}) : Tensor();
  };
  Tensor dx = wanted(0, args.x), ddt = wanted(1, args.dt), dz = wanted(6, args.z);
  Tensor dinit = wanted(8, args.initial_state);
  auto out_ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; };
  std::vector<double> partial_A(size_t(rows), 0.0), partial_D(size_t(rows * P), 0.0);
  std::vector<double> partial_bias(size_t(rows), 0.0);
  const HeadGrads out{out_ptr(dx), out_ptr(ddt), out_ptr(dz), out_ptr(dinit),
                      partial_A.data(), partial_D.data(), partial_bias.data()};

  // Tasks: (batch row, group, block of up to kSsdHeadsPerTask heads of the group).
  const int64_t tasks_per_group = (in.per_group + kSsdHeadsPerTask - 1) / kSsdHeadsPerTask;
  const int64_t tasks = in.batch * in.ngroups * tasks_per_group;
  const bool need_B = needs[3], need_C = needs[4];
  std::vector<double> partial_B(need_B ? size_t(tasks * L * N) : 0, 0.0);
  std::vector<double> partial_C(need_C ? size_t(tasks * L * N) : 0, 0.0);
  const double* pgy = gy.data_ptr<double>();
  const double* pgh = gh.data_ptr<double>();
  parallel_for(tasks, 1, [&](int64_t begin, int64_t end) {
    Scratch scratch(in);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (in.ngroups * tasks_per_group);
      const int64_t g = task / tasks_per_group % in.ngroups, k = task % tasks_per_group;
      const int64_t h_begin = g * in.per_group + k * kSsdHeadsPerTask;
      const int64_t h_end = std::min(h_begin + kSsdHeadsPerTask, (g + 1) * in.per_group);
      double* dB_part = need_B ? partial_B.data() + task * L * N : nullptr;
      double* dC_part = need_C ? partial_C.data() + task * L * N : nullptr;
      for (int64_t h = h_begin; h < h_end; ++h)  // head order: the partial sums are fixed
        backward_head(in, b, h, pgy, pgh, out, scratch, dB_part, dC_part);
    }
  });

  const DType in_dtype = args.x.dtype(), param_dtype = args.A.dtype();
  SsdGrads grads;
  if (dx.defined()) grads.x = cast(dx, in_dtype);
  if (ddt.defined()) grads.dt = cast(ddt, in_dtype);
  if (dz.defined()) grads.z = cast(dz, in_dtype);
  if (dinit.defined()) grads.initial_state = cast(dinit, param_dtype);
  if (needs[2]) grads.A = cast(from_vector(sum_over_batch(partial_A, in.batch, H), {H}), param_dtype);
  if (needs[7] && args.dt_bias.defined())
    grads.dt_bias = cast(from_vector(sum_over_batch(partial_bias, in.batch, H), {H}), param_dtype);
  if (needs[5] && args.D.defined()) {
    std::vector<double> dD = sum_over_batch(partial_D, in.batch, H * P);
    if (!in.D_per_channel) {  // D (heads): its channels' terms summed in channel order
      std::vector<double> per_head(size_t(H), 0.0);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t p = 0; p < P; ++p) per_head[size_t(h)] += dD[size_t(h * P + p)];
      dD = per_head;
    }
    grads.D = cast(from_vector(dD, args.D.shape()), param_dtype);
  }
  if (need_B) grads.B = sum_tasks(partial_B, in, tasks_per_group, in_dtype);
  if (need_C) grads.C = sum_tasks(partial_C, in, tasks_per_group, in_dtype);
  return grads;
}

}  // namespace scanline::cpu
