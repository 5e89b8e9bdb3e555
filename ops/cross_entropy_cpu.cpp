#include "ops/cross_entropy_cpu.h"

#include <cmath>
#include <limits>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// "[1, 3]": the multi-index of flat position `flat` in `shape`, for error messages.
std::string position_of(int64_t flat, const Shape& shape) {
  Shape index(shape.size(), 0);
  for (size_t d = shape.size(); d-- > 0;) {
    index[d] = flat % shape[d];
    flat /= shape[d];
  }
  return shape_str(index);
}

// Sequential, so the first bad target in row-major order is the one reported.
void check_targets(const std::vector<int64_t>& targets, const Shape& shape, int64_t classes, int64_t ignore_index) {
  for (size_t r = 0; r < targets.size(); ++r) {
    const int64_t t = targets[r];
    SCANLINE_CHECK(t == ignore_index || (t >= 0 && t < classes), "cross_entropy: target ", t,
                   " at position ", position_of(int64_t(r), shape), " of targets ", shape,
                   " is out of range for ", classes, " classes (expected 0 <= target < ", classes,
                   " or ignore_index ", ignore_index, ")");
  }
}

int64_t grain_of(int64_t classes) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, classes)); }

}  // namespace

CrossEntropyForward cross_entropy_forward(const Tensor& logits, const Tensor& targets_in, int64_t ignore_index) {
  Tensor x = as_contiguous(logits);
  const int64_t classes = x.size(-1);
  const int64_t rows = classes == 0 ? 0 : x.numel() / classes;
  std::vector<int64_t> targets = targets_in.to_vector<int64_t>();
  check_targets(targets, targets_in.shape(), classes, ignore_index);

  CrossEntropyForward result;
  result.losses.assign(size_t(rows), 0.0);
  for (int64_t t : targets) result.count += t != ignore_index;
  dispatch_floating(x.dtype(), "cross_entropy", [&]<typename T>() {
    using A = acc_t<T>;
    result.lse = empty({rows}, x.options().with_dtype(dtype_of<A>()));
    const T* px = x.data_ptr<T>();
    A* plse = result.lse.data_ptr<A>();
    parallel_for(rows, grain_of(classes), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = px + r * classes;
        A m = -std::numeric_limits<A>::infinity();
        for (int64_t c = 0; c < classes; ++c) {
          A v = A(row[c]);
          if (v > m || v != v) m = v;  // a NaN logit makes the row's loss NaN
        }
        double total = 0.0;
        for (int64_t c = 0; c < classes; ++c) total += double(std::exp(A(row[c]) - m));
        const double lse = double(m) + std::log(total);
        plse[r] = A(lse);
        const int64_t t = targets[size_t(r)];
        if (t != ignore_index) result.losses[size_t(r)] = lse - double(A(row[t]));
      }
    });
  });
  return result;
}

Tensor cross_entropy_backward(const Tensor& grad, const Tensor& logits, const Tensor& targets_in,
                              const Tensor& lse_in, int64_t ignore_index, double scale) {
  Tensor x = as_contiguous(logits), lse = as_contiguous(lse_in);
  Tensor out = empty(x.shape(), x.options());
  const int64_t classes = x.size(-1);
  const int64_t rows = classes == 0 ? 0 : x.numel() / classes;
  const std::vector<int64_t> targets = targets_in.to_vector<int64_t>();
  const std::vector<double> g = grad.to_double_vector();
  SCANLINE_CHECK(g.size() == 1 || int64_t(g.size()) == rows, "cross_entropy backward: expected a gradient of 1 or ",
                 rows, " elements but found ", describe(grad));
  dispatch_floating(x.dtype(), "cross_entropy backward", [&]<typename T>() {
    using A = acc_t<T>;
    const T* px = x.data_ptr<T>();
    const A* plse = lse.data_ptr<A>();
    T* po = out.data_ptr<T>();
    parallel_for(rows, grain_of(classes), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = px + r * classes;
        T* orow = po + r * classes;
        const int64_t t = targets[size_t(r)];
        if (t == ignore_index) {
          for (int64_t c = 0; c < classes; ++c) orow[c] = T(A(0));
          continue;
        }
        const A s = A(scale * g[g.size() == 1 ? 0 : size_t(r)]);
        const A l = plse[r];
        for (int64_t c = 0; c < classes; ++c)
          orow[c] = T(s * (std::exp(A(row[c]) - l) - (c == t ? A(1) : A(0))));
      }
    });
  });
  return out;
}

}  // namespace scanline::cpu
