#include "ops/rms_norm_gated_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// Rows per dweight partial: a constant, so the summation tree never depends on the thread count.
constexpr int64_t kRowsPerChunk = 32;

int64_t grain_of(int64_t width) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, width)); }

double sigmoid(double v) { return 1.0 / (1.0 + std::exp(-v)); }

}  // namespace

std::pair<Tensor, Tensor> rms_norm_gated_forward(const Tensor& x_in, const Tensor& z_in, const Tensor& weight_in,
                                                 double eps, bool norm_before_gate, int64_t group_size) {
  const Tensor x = as_contiguous(x_in), z = as_contiguous(z_in);
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  const int64_t width = x.size(-1);
  const int64_t rows = x.numel() / width, groups = width / group_size;
  Tensor y = empty(x.shape(), x.options());
  Tensor rstd;
  dispatch_floating(x.dtype(), "rms_norm_gated", [&]<typename T>() {
    using A = acc_t<T>;
    rstd = empty({rows, groups}, x.options().with_dtype(dtype_of<A>()));
    const T* px = x.data_ptr<T>();
    const T* pz = z.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    T* py = y.data_ptr<T>();
    A* pr = rstd.data_ptr<A>();
    parallel_for(rows, grain_of(width), [&](int64_t begin, int64_t end) {
      const size_t n = static_cast<size_t>(group_size);
      std::vector<double> v(n), gate(n);
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t base = r * width + g * group_size;
          double squares = 0.0;
          for (int64_t j = 0; j < group_size; ++j) {
            const double zv = double(pz[base + j]);
            gate[size_t(j)] = zv * sigmoid(zv);
            v[size_t(j)] = norm_before_gate ? double(px[base + j]) : double(px[base + j]) * gate[size_t(j)];
            squares += v[size_t(j)] * v[size_t(j)];
          }
          const double inv_rms = 1.0 / std::sqrt(squares / double(group_size) + eps);
          pr[r * groups + g] = A(inv_rms);
          for (int64_t j = 0; j < group_size; ++j) {
            double out = v[size_t(j)] * inv_rms;
            if (pw) out *= double(pw[g * group_size + j]);
            if (norm_before_gate) out *= gate[size_t(j)];
            py[base + j] = T(out);
          }
        }
      }
    });
  });
  return {y, rstd};
}

// With v the normalized value, vhat = v * rstd, q the gradient reaching vhat * weight (grad, or
// grad * s after the norm) and gw = q * weight:
//   dv = rstd * (gw - vhat * mean_group(gw * vhat)),  dweight = sum over rows of q * vhat;
//   before the gate (v = x * s): dx = dv * s, dz = dv * x * silu'(z);
//   after it (v = x):            dx = dv,     dz = grad * vhat * weight * silu'(z);
// silu'(z) = sigmoid(z) * (1 + z * (1 - sigmoid(z))).
std::tuple<Tensor, Tensor, Tensor> rms_norm_gated_backward(const Tensor& grad, const Tensor& x_in, const Tensor& z_in,
                                                           const Tensor& weight_in, const Tensor& rstd_in,
                                                           bool norm_before_gate, int64_t group_size, bool need_dx,
                                                           bool need_dz, bool need_dweight) {
  const Tensor gy = as_contiguous(grad), x = as_contiguous(x_in), z = as_contiguous(z_in);
  const Tensor rstd = as_contiguous(rstd_in);
  const Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  need_dweight = need_dweight && weight.defined();
  const int64_t width = x.size(-1);
  const int64_t rows = x.numel() / width, groups = width / group_size;
  Tensor dx = need_dx ? empty(x.shape(), x.options()) : Tensor();
  Tensor dz = need_dz ? empty(x.shape(), x.options()) : Tensor();
  Tensor dweight = need_dweight ? empty({width}, weight.options()) : Tensor();
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<double> partial(need_dweight ? size_t(chunks * width) : 0, 0.0);
  dispatch_floating(x.dtype(), "rms_norm_gated backward", [&]<typename T>() {
    using A = acc_t<T>;
    const T* pg = gy.data_ptr<T>();
    const T* px = x.data_ptr<T>();
    const T* pz = z.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    const A* pr = rstd.data_ptr<A>();
    T* pdx = need_dx ? dx.data_ptr<T>() : nullptr;
    T* pdz = need_dz ? dz.data_ptr<T>() : nullptr;
    parallel_for(chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      const size_t n = static_cast<size_t>(group_size);
      std::vector<double> gate(n), vhat(n), gw(n);
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        double* acc = need_dweight ? partial.data() + chunk * width : nullptr;
        const int64_t row_end = std::min(rows, (chunk + 1) * kRowsPerChunk);
        for (int64_t r = chunk * kRowsPerChunk; r < row_end; ++r) {
          for (int64_t g = 0; g < groups; ++g) {
            const int64_t base = r * width + g * group_size, col0 = g * group_size;
            const double inv_rms = double(pr[r * groups + g]);
            double dot = 0.0;
            for (int64_t j = 0; j < group_size; ++j) {
              const double xv = double(px[base + j]), zv = double(pz[base + j]), dy = double(pg[base + j]);
              const double s = zv * sigmoid(zv);
              const double q = norm_before_gate ? dy * s : dy;
              const double w = pw ? double(pw[col0 + j]) : 1.0;
              gate[size_t(j)] = s;
              vhat[size_t(j)] = (norm_before_gate ? xv : xv * s) * inv_rms;
              gw[size_t(j)] = q * w;
              dot += gw[size_t(j)] * vhat[size_t(j)];
              if (acc) acc[col0 + j] += q * vhat[size_t(j)];
            }
            if (!pdx && !pdz) continue;
            const double mean_dot = dot / double(group_size);
            for (int64_t j = 0; j < group_size; ++j) {
              const double xv = double(px[base + j]), zv = double(pz[base + j]);
              const double sig = sigmoid(zv);
              const double dsilu = sig * (1.0 + zv * (1.0 - sig));
              const double dv = inv_rms * (gw[size_t(j)] - vhat[size_t(j)] * mean_dot);
              if (norm_before_gate) {
                if (pdx) pdx[base + j] = T(dv);
                if (pdz) {
                  const double w = pw ? double(pw[col0 + j]) : 1.0;
                  pdz[base + j] = T(double(pg[base + j]) * vhat[size_t(j)] * w * dsilu);
                }
              } else {
                if (pdx) pdx[base + j] = T(dv * gate[size_t(j)]);
                if (pdz) pdz[base + j] = T(dv * xv * dsilu);
              }
            }
          }
        }
      }
    });
    if (need_dweight) {
      T* pdw = dweight.data_ptr<T>();
      parallel_for(width, 1024, [&](int64_t begin, int64_t end) {
        for (int64_t j = begin; j < end; ++j) {
          double total = 0.0;
          for (int64_t chunk = 0; chunk < chunks; ++chunk) total += partial[size_t(chunk * width + j)];
          pdw[j] = T(total);
        }
      });
    }
  });
  return {dx, dz, dweight};
}

}  // namespace scanline::cpu
