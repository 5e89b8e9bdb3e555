#include "ops/reduce_cpu.h"

#include <cmath>
#include <limits>

#include "core/parallel.h"

namespace scanline::cpu {
namespace {

// Splits x's dims into kept (outer) and reduced (inner) lists of sizes and strides.
struct ReduceLayout {
  Shape outer_shape, outer_strides, inner_shape, inner_strides;
  int64_t inner_numel = 1;
};

ReduceLayout layout_of(const Tensor& x, const std::vector<int64_t>& dims) {
  ReduceLayout l;
  std::vector<bool> reduced(size_t(x.dim()), false);
  for (int64_t d : dims) reduced[size_t(d)] = true;
  for (int64_t d = 0; d < x.dim(); ++d) {
    auto& shape = reduced[d] ? l.inner_shape : l.outer_shape;
    auto& strides = reduced[d] ? l.inner_strides : l.outer_strides;
    shape.push_back(x.shape()[d]);
    strides.push_back(x.strides()[d]);
  }
  l.inner_numel = numel_of(l.inner_shape);
  return l;
}

// Calls fn(out_index, first_offset) for each output, then visit(offset) over its inputs in
// row-major order of the reduced dims.
template <typename Visit>
void for_each_inner(const ReduceLayout& l, int64_t base, Visit&& visit) {
  const size_t nd = l.inner_shape.size();
  Shape index(nd, 0);
  int64_t off = base;
  for (int64_t n = 0; n < l.inner_numel; ++n) {
    visit(off);
    for (size_t d = nd; d-- > 0;) {
      off += l.inner_strides[d];
      if (++index[d] < l.inner_shape[d]) break;
      off -= index[d] * l.inner_strides[d];
      index[d] = 0;
    }
  }
}

int64_t outer_offset(const ReduceLayout& l, int64_t o, int64_t base) {
  int64_t off = base;
  for (size_t d = l.outer_shape.size(); d-- > 0;) {
    off += (o % l.outer_shape[d]) * l.outer_strides[d];
    o /= l.outer_shape[d];
  }
  return off;
}

Shape kept_shape(const Tensor& x, const std::vector<int64_t>& dims) {
  Shape shape = x.shape();
  for (int64_t d : dims) shape[size_t(d)] = 1;
  return shape;
}

}  // namespace

Tensor reduce(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims) {
  ReduceLayout l = layout_of(x, dims);
  Tensor out = empty(kept_shape(x, dims), x.options());
  const int64_t outputs = out.numel();
  SCANLINE_CHECK(op == ReduceOp::sum || l.inner_numel > 0, "amax: cannot reduce over an empty dimension of ",
                 describe(x));
  dispatch_all(x.dtype(), "reduce", [&]<typename T>() {
    const T* in = static_cast<const T*>(x.impl()->storage->data());
    T* o = out.data_ptr<T>();
    using A = std::conditional_t<std::is_floating_point_v<acc_t<T>>, double, int64_t>;
    const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, l.inner_numel));
    parallel_for(outputs, grain, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        int64_t base = outer_offset(l, i, x.offset());
        A acc = op == ReduceOp::sum ? A(0) : std::numeric_limits<A>::lowest();
        bool nan = false;
        for_each_inner(l, base, [&](int64_t off) {
          A v = A(in[off]);
          if (op == ReduceOp::sum) acc += v;
          else if (v != v) nan = true;
          else if (v > acc) acc = v;
        });
        if constexpr (std::is_floating_point_v<A>)
          if (nan) acc = std::numeric_limits<A>::quiet_NaN();
        o[i] = T(acc);
      }
    });
  });
  return out;
}

std::pair<Tensor, Tensor> max_along(const Tensor& x, int64_t dim) {
  ReduceLayout l = layout_of(x, {dim});
  SCANLINE_CHECK(l.inner_numel > 0, "max: cannot reduce over an empty dimension of ", describe(x));
  Tensor values = empty(kept_shape(x, {dim}), x.options());
  Tensor indices = empty(values.shape(), x.options().with_dtype(DType::i64));
  dispatch_all(x.dtype(), "max", [&]<typename T>() {
    const T* in = static_cast<const T*>(x.impl()->storage->data());
    T* ov = values.data_ptr<T>();
    int64_t* oi = indices.data_ptr<int64_t>();
    using A = std::conditional_t<std::is_floating_point_v<acc_t<T>>, double, int64_t>;
    parallel_for(values.numel(), 1024, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        int64_t base = outer_offset(l, i, x.offset());
        A best = A(in[base]);
        int64_t best_k = 0;
        for (int64_t k = 1; k < l.inner_numel && best == best; ++k) {
          A v = A(in[base + k * l.inner_strides[0]]);
          if (v > best || v != v) best = v, best_k = k;  // NaN wins and stops the search
        }
        ov[i] = T(best);
        oi[i] = best_k;
      }
    });
  });
  return {values, indices};
}

}  // namespace scanline::cpu
