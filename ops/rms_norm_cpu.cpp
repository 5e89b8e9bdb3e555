#include "ops/rms_norm_cpu.h"

#include <cmath>
#include <type_traits>
#include <vector>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// Rows per dweight partial: a constant, so the summation tree never depends on the thread count.
constexpr int64_t kRowsPerChunk = 32;

int64_t grain_of(int64_t width) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, width)); }

// The math type of the residual variant: f64 when x or the residual is f64, else f32 (as on CUDA).
template <typename T, typename R>
using pair_acc_t = std::conditional_t<std::is_same_v<T, double> || std::is_same_v<R, double>, double, float>;

}  // namespace

std::pair<Tensor, Tensor> rms_norm_forward(const Tensor& x_in, const Tensor& weight_in, double eps) {
  Tensor x = as_contiguous(x_in);
  Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  Tensor y = empty(x.shape(), x.options());
  const int64_t width = x.size(-1);
  const int64_t rows = width == 0 ? 0 : x.numel() / width;
  Tensor rstd;
  dispatch_floating(x.dtype(), "rms_norm", [&]<typename T>() {
    using A = acc_t<T>;
    rstd = empty({rows}, x.options().with_dtype(dtype_of<A>()));
    const T* px = x.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    T* py = y.data_ptr<T>();
    A* pr = rstd.data_ptr<A>();
    parallel_for(rows, grain_of(width), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* xr = px + r * width;
        T* yr = py + r * width;
        double squares = 0.0;
        for (int64_t j = 0; j < width; ++j) squares += double(A(xr[j])) * double(A(xr[j]));
        const A inv_rms = A(1.0 / std::sqrt(squares / double(width) + eps));
        pr[r] = inv_rms;
        for (int64_t j = 0; j < width; ++j) {
          const A normed = A(xr[j]) * inv_rms;
          yr[j] = T(pw ? normed * A(pw[j]) : normed);
        }
      }
    });
  });
  return {y, rstd};
}

std::pair<Tensor, Tensor> rms_norm_backward(const Tensor& grad, const Tensor& x_in, const Tensor& weight_in,
                                            const Tensor& rstd_in, bool need_dx, bool need_dweight) {
  Tensor g = as_contiguous(grad), x = as_contiguous(x_in), rstd = as_contiguous(rstd_in);
  Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  need_dweight = need_dweight && weight.defined();
  const int64_t width = x.size(-1);
  const int64_t rows = width == 0 ? 0 : x.numel() / width;
  Tensor dx = need_dx ? empty(x.shape(), x.options()) : Tensor();
  Tensor dweight = need_dweight ? empty({width}, weight.options()) : Tensor();
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<double> partial(need_dweight ? size_t(chunks * width) : 0, 0.0);
  dispatch_floating(x.dtype(), "rms_norm backward", [&]<typename T>() {
    using A = acc_t<T>;
    const T* pg = g.data_ptr<T>();
    const T* px = x.data_ptr<T>();
    const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
    const A* pr = rstd.data_ptr<A>();
    T* pdx = need_dx ? dx.data_ptr<T>() : nullptr;
    // With xhat = x * rstd and gw = g * weight: dx = rstd * (gw - xhat * mean(gw * xhat)),
    // dweight = sum over rows of g * xhat.
    parallel_for(chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
        double* acc = need_dweight ? partial.data() + chunk * width : nullptr;
        const int64_t row_end = std::min(rows, (chunk + 1) * kRowsPerChunk);
        for (int64_t r = chunk * kRowsPerChunk; r < row_end; ++r) {
          const T* gr = pg + r * width;
          const T* xr = px + r * width;
          const A inv_rms = pr[r];
          if (acc)
            for (int64_t j = 0; j < width; ++j) acc[j] += double(A(gr[j]) * (A(xr[j]) * inv_rms));
          if (!pdx) continue;
          double dot = 0.0;
          for (int64_t j = 0; j < width; ++j) {
            const A gw = pw ? A(gr[j]) * A(pw[j]) : A(gr[j]);
            dot += double(gw * (A(xr[j]) * inv_rms));
          }
          const A mean_dot = A(dot / double(width));
          T* dxr = pdx + r * width;
          for (int64_t j = 0; j < width; ++j) {
            const A gw = pw ? A(gr[j]) * A(pw[j]) : A(gr[j]);
            dxr[j] = T(inv_rms * (gw - A(xr[j]) * inv_rms * mean_dot));
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
  return {dx, dweight};
}

std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_forward(const Tensor& x_in, const Tensor& residual_in,
                                                             const Tensor& weight_in, double eps,
                                                             DType residual_dtype) {
  Tensor x = as_contiguous(x_in);
  Tensor residual = residual_in.defined() ? as_contiguous(residual_in) : Tensor();
  Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  Tensor y = empty(x.shape(), x.options());
  Tensor h = empty(x.shape(), x.options().with_dtype(residual_dtype));
  const int64_t width = x.size(-1);
  const int64_t rows = width == 0 ? 0 : x.numel() / width;
  Tensor rstd;
  dispatch_floating(x.dtype(), "rms_norm_residual", [&]<typename T>() {
    dispatch_floating(residual_dtype, "rms_norm_residual", [&]<typename R>() {
      using A = pair_acc_t<T, R>;
      rstd = empty({rows}, x.options().with_dtype(dtype_of<A>()));
      const T* px = x.data_ptr<T>();
      const R* pres = residual.defined() ? residual.data_ptr<R>() : nullptr;
      const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
      T* py = y.data_ptr<T>();
      R* ph = h.data_ptr<R>();
      A* pr = rstd.data_ptr<A>();
      parallel_for(rows, grain_of(width), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
          const int64_t base = r * width;
          double squares = 0.0;
          for (int64_t j = 0; j < width; ++j) {
            A sum = A(px[base + j]);
            if (pres) sum += A(pres[base + j]);
            ph[base + j] = R(sum);
            const double v = double(A(ph[base + j]));
            squares += v * v;
          }
          const A inv_rms = A(1.0 / std::sqrt(squares / double(width) + eps));
          pr[r] = inv_rms;
          for (int64_t j = 0; j < width; ++j) {
            const A normed = A(ph[base + j]) * inv_rms;
            py[base + j] = T(pw ? normed * A(pw[j]) : normed);
          }
        }
      });
    });
  });
  return {y, h, rstd};
}

std::tuple<Tensor, Tensor, Tensor> rms_norm_residual_backward(const Tensor& grad_y, const Tensor& grad_new_residual,
                                                              const Tensor& new_residual, const Tensor& weight_in,
                                                              const Tensor& rstd_in, DType x_dtype, bool need_dx,
                                                              bool need_dresidual, bool need_dweight) {
  Tensor gy = as_contiguous(grad_y), h = as_contiguous(new_residual);
  Tensor gh = grad_new_residual.defined() ? as_contiguous(grad_new_residual) : Tensor();  // undefined: zeros
  Tensor rstd = as_contiguous(rstd_in);
  Tensor weight = weight_in.defined() ? as_contiguous(weight_in) : Tensor();
  need_dweight = need_dweight && weight.defined();
  const bool need_dh = need_dx || need_dresidual;
  const int64_t width = h.size(-1);
  const int64_t rows = width == 0 ? 0 : h.numel() / width;
  Tensor dx = need_dx ? empty(h.shape(), h.options().with_dtype(x_dtype)) : Tensor();
  Tensor dres = need_dresidual ? empty(h.shape(), h.options()) : Tensor();
  Tensor dweight = need_dweight ? empty({width}, weight.options()) : Tensor();
  const int64_t chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<double> partial(need_dweight ? size_t(chunks * width) : 0, 0.0);
  dispatch_floating(x_dtype, "rms_norm_residual backward", [&]<typename T>() {
    dispatch_floating(h.dtype(), "rms_norm_residual backward", [&]<typename R>() {
      using A = pair_acc_t<T, R>;
      const T* pg = gy.data_ptr<T>();
      const R* pgh = gh.defined() ? gh.data_ptr<R>() : nullptr;
      const R* ph = h.data_ptr<R>();
      const T* pw = weight.defined() ? weight.data_ptr<T>() : nullptr;
      const A* pr = rstd.data_ptr<A>();
      T* pdx = need_dx ? dx.data_ptr<T>() : nullptr;
      R* pdres = need_dresidual ? dres.data_ptr<R>() : nullptr;
      // The rms_norm backward of grad_y at h (see rms_norm_backward), plus grad_new_residual.
      parallel_for(chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
          double* acc = need_dweight ? partial.data() + chunk * width : nullptr;
          const int64_t row_end = std::min(rows, (chunk + 1) * kRowsPerChunk);
          for (int64_t r = chunk * kRowsPerChunk; r < row_end; ++r) {
            const int64_t base = r * width;
            const A inv_rms = pr[r];
            if (acc)
              for (int64_t j = 0; j < width; ++j) acc[j] += double(A(pg[base + j]) * (A(ph[base + j]) * inv_rms));
            if (!need_dh) continue;
            double dot = 0.0;
            for (int64_t j = 0; j < width; ++j) {
              const A gw = pw ? A(pg[base + j]) * A(pw[j]) : A(pg[base + j]);
              dot += double(gw * (A(ph[base + j]) * inv_rms));
            }
            const A mean_dot = A(dot / double(width));
            for (int64_t j = 0; j < width; ++j) {
              const A gw = pw ? A(pg[base + j]) * A(pw[j]) : A(pg[base + j]);
              A d = inv_rms * (gw - A(ph[base + j]) * inv_rms * mean_dot);
              if (pgh) d += A(pgh[base + j]);
              if (pdx) pdx[base + j] = T(d);
              if (pdres) pdres[base + j] = R(d);
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
  });
  return {dx, dres, dweight};
}

}  // namespace scanline::cpu
