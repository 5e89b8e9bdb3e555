#include "ops/selective_scan_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// softplus and sigmoid in forms that neither overflow nor lose digits for large |x|, so the
// reference is exact to double rounding everywhere.
double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }
double sigmoid(double x) {
  if (x >= 0.0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

// A contiguous f64 copy of t (t itself when it already is one); undefined stays undefined.
Tensor dense(const Tensor& t) {
  if (!t.defined()) return t;
  if (t.dtype() == DType::f64 && t.is_contiguous()) return t;
  return contiguous_copy(t, DType::f64, Device::cpu());
}

// B or C (batch, groups, N, L) as contiguous f64 (batch, groups, L, N): one time step's N values
// are adjacent, which is how the state loop reads them.
Tensor time_major(const Tensor& t) {
  Shape shape = t.shape(), strides = t.strides();
  std::swap(shape[2], shape[3]);
  std::swap(strides[2], strides[3]);
  return contiguous_copy(as_strided(t, shape, strides, t.offset()), DType::f64, Device::cpu());
}

const double* ptr(const Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; }

// Rounds a f64 result to the dtype its input had (once, at the end).
Tensor cast(const Tensor& t, DType dtype) {
  return t.dtype() == dtype ? t : contiguous_copy(t, dtype, Device::cpu());
}

// The inputs as dense f64 arrays plus the sizes; the tensors keep the copies alive.
struct Dense {
  int64_t batch, d_inner, L, N, groups, per_group;
  bool softplus;
  Tensor u, delta, z, A, D, bias, h0, B, C;
  const double *pu, *pdelta, *pz, *pA, *pD, *pbias, *ph0, *pB, *pC;

  explicit Dense(const SelectiveScanArgs& a)
      : batch(a.u.shape()[0]), d_inner(a.u.shape()[1]), L(a.u.shape()[2]), N(a.A.shape()[1]),
        groups(a.B.shape()[1]), per_group(d_inner / groups), softplus(a.delta_softplus),
        u(dense(a.u)), delta(dense(a.delta)), z(dense(a.z)), A(dense(a.A)), D(dense(a.D)),
        bias(dense(a.delta_bias)), h0(dense(a.initial_state)), B(time_major(a.B)), C(time_major(a.C)),
        pu(ptr(u)), pdelta(ptr(delta)), pz(ptr(z)), pA(ptr(A)), pD(ptr(D)), pbias(ptr(bias)),
        ph0(ptr(h0)), pB(ptr(B)), pC(ptr(C)) {}

  // The (L, N) block of B or C that channel d of batch row b reads.
  const double* group_block(const double* p, int64_t b, int64_t d) const {
    return p + (b * groups + d / per_group) * L * N;
  }
  // delta + bias at time t of row (b, d), before softplus; and Δ itself.
  double raw_delta(int64_t row, int64_t d, int64_t t) const {
    return pdelta[row * L + t] + (pbias ? pbias[d] : 0.0);
  }
  double step(double raw) const { return softplus ? cpu::softplus(raw) : raw; }
  void initial(int64_t row, double* h) const {
    for (int64_t n = 0; n < N; ++n) h[n] = ph0 ? ph0[row * N + n] : 0.0;
  }
};

// Where one backward task writes: per-row outputs (null when not wanted) and per-row partials.
struct RowGrads {
  double *du, *ddelta, *dz, *dinit;
  double *dA, *dD, *dbias;  // (rows, N), (rows), (rows): summed over batch afterwards
};

// Backward of one (b, d) row. states is (L + 1) · N scratch, dh N scratch; dB_part/dC_part are the
// task's (L, N) partials (null when not wanted); grad_y/grad_h are dense f64.
void backward_row(const Dense& in, int64_t b, int64_t d, const double* grad_y, const double* grad_h,
                  const RowGrads& out, double* states, double* dh, double* dB_part, double* dC_part) {
  const int64_t L = in.L, N = in.N, row = b * in.d_inner + d;
  const double* A = in.pA + d * N;
  const double* Bg = in.group_block(in.pB, b, d);
  const double* Cg = in.group_block(in.pC, b, d);
  const double D = in.pD ? in.pD[d] : 0.0;
  // Recompute h_{-1} .. h_{L-1} into states[0 .. L] (states[t + 1] = h_t).
  in.initial(row, states);
  for (int64_t t = 0; t < L; ++t) {
    const double dt = in.step(in.raw_delta(row, d, t)), u = in.pu[row * L + t];
    const double* h_prev = states + t * N;
    double* h = states + (t + 1) * N;
    for (int64_t n = 0; n < N; ++n) h[n] = std::exp(dt * A[n]) * h_prev[n] + dt * Bg[t * N + n] * u;
  }
  // dh holds d loss / d h_t from the future: it starts as the final state's gradient.
  for (int64_t n = 0; n < N; ++n) dh[n] = grad_h[row * N + n];
  double* dA = out.dA + row * N;
  double dD = 0.0, dbias = 0.0;
  for (int64_t t = L - 1; t >= 0; --t) {
    const double raw = in.raw_delta(row, d, t), dt = in.step(raw), u = in.pu[row * L + t];
    const double* h = states + (t + 1) * N;
    const double* h_prev = states + t * N;
    const double* Bt = Bg + t * N;
    const double* Ct = Cg + t * N;
    const double gy = grad_y[row * L + t];
    double ds = gy;  // d loss / d (Σ C h + D u), the value before the gate
    if (in.pz) {
      const double z = in.pz[row * L + t], sig = sigmoid(z);
      double pre = D * u;
      for (int64_t n = 0; n < N; ++n) pre += Ct[n] * h[n];
      ds = gy * z * sig;
      if (out.dz) out.dz[row * L + t] = gy * pre * sig * (1.0 + z * (1.0 - sig));  // silu'(z)
    }
    dD += ds * u;
    double du = ds * D, ddt = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const double g = dh[n] + ds * Ct[n];  // d loss / d h_t[n]
      const double decay = std::exp(dt * A[n]);
      const double g_exponent = g * decay * h_prev[n];  // d loss / d (Δ_t A[n])
      if (dC_part) dC_part[t * N + n] += ds * h[n];
      if (dB_part) dB_part[t * N + n] += g * dt * u;
      ddt += g_exponent * A[n] + g * Bt[n] * u;
      dA[n] += g_exponent * dt;
      du += g * dt * Bt[n];
      dh[n] = g * decay;  // on to h_{t-1}
    }
    const double draw = in.softplus ? ddt * sigmoid(raw) : ddt;  // d loss / d (delta + bias)
    dbias += draw;
    if (out.du) out.du[row * L + t] = du;
    if (out.ddelta) out.ddelta[row * L + t] = draw;
  }
  out.dD[row] = dD;
  out.dbias[row] = dbias;
  if (out.dinit)
    for (int64_t n = 0; n < N; ++n) out.dinit[row * N + n] = dh[n];
}

// Σ over batch rows, in order, of per-(batch, channel) partials of `width` values each.
Tensor sum_over_batch(const std::vector<double>& partial, int64_t batch, int64_t d_inner, int64_t width,
                      const Shape& shape, DType dtype) {
  std::vector<double> total(size_t(d_inner * width), 0.0);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t i = 0; i < d_inner * width; ++i) total[size_t(i)] += partial[size_t(b * d_inner * width + i)];
  return cast(from_vector<double>(total, shape), dtype);
}

// dB or dC (batch, groups, N, L) from the task partials (tasks, L, N), summed in task order.
Tensor sum_tasks(const std::vector<double>& partial, const Dense& in, int64_t tasks_per_group, DType dtype) {
  const int64_t L = in.L, N = in.N;
  Tensor out = empty({in.batch, in.groups, N, L}, {.dtype = DType::f64});
  double* po = out.data_ptr<double>();
  parallel_for(in.batch * in.groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bg = begin; bg < end; ++bg)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t t = 0; t < L; ++t) {
          double acc = 0.0;
          for (int64_t k = 0; k < tasks_per_group; ++k)
            acc += partial[size_t(((bg * tasks_per_group + k) * L + t) * N + n)];
          po[(bg * N + n) * L + t] = acc;
        }
  });
  return cast(out, dtype);
}

}  // namespace

std::pair<Tensor, Tensor> selective_scan_forward(const SelectiveScanArgs& args) {
  const Dense in(args);
  const int64_t L = in.L, N = in.N, rows = in.batch * in.d_inner;
  Tensor y = empty({in.batch, in.d_inner, L}, {.dtype = DType::f64});
  Tensor final_state = empty({in.batch, in.d_inner, N}, {.dtype = DType::f64});
  double* py = y.data_ptr<double>();
  double* pfinal = final_state.data_ptr<double>();
  // One (batch, channel) row per index: every output element comes from one thread.
  parallel_for(rows, std::max<int64_t>(1, 32768 / (L * N)), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / in.d_inner, d = row % in.d_inner;
      const double* A = in.pA + d * N;
      const double* Bg = in.group_block(in.pB, b, d);
      const double* Cg = in.group_block(in.pC, b, d);
      double* h = pfinal + row * N;  // the state lives in its output slot
      in.initial(row, h);
      for (int64_t t = 0; t < L; ++t) {
        const double dt = in.step(in.raw_delta(row, d, t)), u = in.pu[row * L + t];
        double y_t = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          h[n] = std::exp(dt * A[n]) * h[n] + dt * Bg[t * N + n] * u;
          y_t += Cg[t * N + n] * h[n];
        }
        if (in.pD) y_t += in.pD[d] * u;
        if (in.pz) {
          const double z = in.pz[row * L + t];
          y_t *= z * sigmoid(z);
        }
        py[row * L + t] = y_t;
      }
    }
  });
  return {cast(y, args.u.dtype()), cast(final_state, args.A.dtype())};
}

SelectiveScanGrads selective_scan_backward(const SelectiveScanArgs& args, const Tensor& grad_y,
                                           const Tensor& grad_final_state, const std::array<bool, 9>& needs) {
  const Dense in(args);
  const int64_t L = in.L, N = in.N, rows = in.batch * in.d_inner;
  const Tensor gy = dense(grad_y), gh = dense(grad_final_state);
  auto wanted = [&](int i, const Tensor& input, const Shape& shape) {
    return needs[size_t(i)] && input.defined() ? empty(shape, {.dtype = DType::f64}) : Tensor();
  };
  const Shape row_shape{in.batch, in.d_inner, L}, state_shape{in.batch, in.d_inner, N};
  Tensor du = wanted(0, args.u, row_shape), ddelta = wanted(1, args.delta, row_shape);
  Tensor dz = wanted(6, args.z, row_shape), dinit = wanted(8, args.initial_state, state_shape);
  auto out_ptr = [](const Tensor& t) { return t.defined() ? t.data_ptr<double>() : nullptr; };
  std::vector<double> partial_A(size_t(rows * N), 0.0);
  std::vector<double> partial_D(size_t(rows), 0.0), partial_bias(size_t(rows), 0.0);
  const RowGrads out{out_ptr(du), out_ptr(ddelta), out_ptr(dz), out_ptr(dinit),
                     partial_A.data(), partial_D.data(), partial_bias.data()};

  // Tasks: (batch row, group, block of up to kScanChannelsPerTask channels of the group).
  const int64_t tasks_per_group = (in.per_group + kScanChannelsPerTask - 1) / kScanChannelsPerTask;
  const int64_t tasks = in.batch * in.groups * tasks_per_group;
  const bool need_B = needs[3], need_C = needs[4];
  std::vector<double> partial_B(need_B ? size_t(tasks * L * N) : 0, 0.0);
  std::vector<double> partial_C(need_C ? size_t(tasks * L * N) : 0, 0.0);
  const double* pgy = gy.data_ptr<double>();
  const double* pgh = gh.data_ptr<double>();
  parallel_for(tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> states(size_t((L + 1) * N), 0.0), dh(size_t(N), 0.0);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / (in.groups * tasks_per_group);
      const int64_t g = task / tasks_per_group % in.groups, k = task % tasks_per_group;
      const int64_t d_begin = g * in.per_group + k * kScanChannelsPerTask;
      const int64_t d_end = std::min(d_begin + kScanChannelsPerTask, (g + 1) * in.per_group);
      double* dB_part = need_B ? partial_B.data() + task * L * N : nullptr;
      double* dC_part = need_C ? partial_C.data() + task * L * N : nullptr;
      for (int64_t d = d_begin; d < d_end; ++d)  // channel order: the partial sums are fixed
        backward_row(in, b, d, pgy, pgh, out, states.data(), dh.data(), dB_part, dC_part);
    }
  });

  const DType in_dtype = args.u.dtype(), param_dtype = args.A.dtype();
  SelectiveScanGrads grads;
  if (du.defined()) grads.u = cast(du, in_dtype);
  if (ddelta.defined()) grads.delta = cast(ddelta, in_dtype);
  if (dz.defined()) grads.z = cast(dz, in_dtype);
  if (dinit.defined()) grads.initial_state = cast(dinit, param_dtype);
  if (needs[2]) grads.A = sum_over_batch(partial_A, in.batch, in.d_inner, N, {in.d_inner, N}, param_dtype);
  if (needs[5] && args.D.defined())
    grads.D = sum_over_batch(partial_D, in.batch, in.d_inner, 1, {in.d_inner}, param_dtype);
  if (needs[7] && args.delta_bias.defined())
    grads.delta_bias = sum_over_batch(partial_bias, in.batch, in.d_inner, 1, {in.d_inner}, param_dtype);
  if (need_B) grads.B = sum_tasks(partial_B, in, tasks_per_group, in_dtype);
  if (need_C) grads.C = sum_tasks(partial_C, in, tasks_per_group, in_dtype);
  return grads;
}

}  // namespace scanline::cpu
