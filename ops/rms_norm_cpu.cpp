#include "ops/rms_norm_cpu.h"

#include <cmath>
#include <vector>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// Rows per dweight partial: a constant, so the summation tree never depends on the thread count.
constexpr int64_t kRowsPerChunk = 32;

int64_t grain_of(int64_t width) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, width)); }

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

}  // namespace scanline::cpu
