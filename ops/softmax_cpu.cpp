#include "ops/softmax_cpu.h"

#include <cmath>
#include <limits>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// A contiguous tensor seen as (outer, len, inner) around `dim`: row r = (o, i) starts at
// o * len * inner + i and steps by inner.
struct Rows {
  int64_t outer = 1, len = 1, inner = 1;
  int64_t count() const { return outer * inner; }
  int64_t base(int64_t r) const { return (r / inner) * len * inner + r % inner; }
};

Rows rows_of(const Shape& shape, int64_t dim) {
  Rows rows;
  for (int64_t d = 0; d < int64_t(shape.size()); ++d) {
    if (d < dim) rows.outer *= shape[d];
    else if (d == dim) rows.len = shape[d];
    else rows.inner *= shape[d];
  }
  return rows;
}

int64_t grain_of(const Rows& rows) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, rows.len)); }

}  // namespace

Tensor softmax(const Tensor& x_in, int64_t dim, bool log) {
  Tensor x = as_contiguous(x_in);
  Tensor out = empty(x.shape(), x.options());
  const Rows rows = rows_of(x.shape(), dim);
  if (x.numel() == 0) return out;
  dispatch_floating(x.dtype(), log ? "log_softmax" : "softmax", [&]<typename T>() {
    using A = acc_t<T>;
    const T* px = x.data_ptr<T>();
    T* po = out.data_ptr<T>();
    parallel_for(rows.count(), grain_of(rows), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = rows.base(r), s = rows.inner;
        A m = -std::numeric_limits<A>::infinity();
        for (int64_t k = 0; k < rows.len; ++k) {
          A v = A(px[b + k * s]);
          if (v > m || v != v) m = v;  // a NaN wins and makes the whole row NaN
        }
        double total = 0.0;
        for (int64_t k = 0; k < rows.len; ++k) total += double(std::exp(A(px[b + k * s]) - m));
        if (log) {
          const A log_total = A(std::log(total));
          for (int64_t k = 0; k < rows.len; ++k) po[b + k * s] = T(A(px[b + k * s]) - m - log_total);
        } else {
          const double inv = 1.0 / total;
          for (int64_t k = 0; k < rows.len; ++k)
            po[b + k * s] = T(A(double(std::exp(A(px[b + k * s]) - m)) * inv));
        }
      }
    });
  });
  return out;
}

Tensor softmax_backward(const Tensor& grad_in, const Tensor& y_in, int64_t dim, bool log) {
  Tensor g = as_contiguous(grad_in), y = as_contiguous(y_in);
  Tensor out = empty(y.shape(), y.options());
  const Rows rows = rows_of(y.shape(), dim);
  if (y.numel() == 0) return out;
  dispatch_floating(y.dtype(), log ? "log_softmax backward" : "softmax backward", [&]<typename T>() {
    using A = acc_t<T>;
    const T* pg = g.data_ptr<T>();
    const T* py = y.data_ptr<T>();
    T* po = out.data_ptr<T>();
    parallel_for(rows.count(), grain_of(rows), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t b = rows.base(r), s = rows.inner;
        double total = 0.0;  // log: sum(g); softmax: sum(g * y)
        for (int64_t k = 0; k < rows.len; ++k)
          total += log ? double(A(pg[b + k * s])) : double(A(pg[b + k * s]) * A(py[b + k * s]));
        const A t = A(total);
        for (int64_t k = 0; k < rows.len; ++k) {
          const A gk = A(pg[b + k * s]), yk = A(py[b + k * s]);
          po[b + k * s] = T(log ? gk - std::exp(yk) * t : yk * (gk - t));
        }
      }
    });
  });
  return out;
}

}  // namespace scanline::cpu
