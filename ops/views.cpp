#include "ops/views.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include "ops/dispatch.h"
#include "ops/reduce.h"

namespace scanline {

using autograd::BackwardContext;
using autograd::record;

namespace {

// A view of x's storage recorded with a backward; the workhorse of every view op.
Tensor make_view(const char* name, const Tensor& x, const Shape& shape, const Shape& strides,
                 int64_t offset, autograd::BackwardFn fn) {
  Tensor out = as_strided(x, shape, strides, offset);
  record(name, {x}, {out}, std::move(fn));
  return out;
}

// Strides for viewing x as `shape` without a copy, or empty when the memory layout forbids it.
// Groups of x's dimensions that are contiguous among themselves can be split or merged freely.
std::optional<Shape> view_strides(const Tensor& x, const Shape& shape) {
  if (x.numel() == 0 || x.is_contiguous()) return contiguous_strides(shape);
  // Size-1 dimensions say nothing about the layout: drop them, then split the rest into runs
  // that are contiguous among themselves. Each run must map onto whole new dimensions.
  Shape old_shape, old_strides;
  for (int64_t d = 0; d < x.dim(); ++d)
    if (x.shape()[d] != 1) old_shape.push_back(x.shape()[d]), old_strides.push_back(x.strides()[d]);
  Shape strides(shape.size(), 1);
  size_t new_d = 0;
  size_t old_d = 0;
  while (old_d < old_shape.size()) {
    size_t run_end = old_d;
    int64_t run_numel = old_shape[old_d];
    while (run_end + 1 < old_shape.size() &&
           old_strides[run_end] == old_strides[run_end + 1] * old_shape[run_end + 1]) {
      ++run_end;
      run_numel *= old_shape[run_end];
    }
    int64_t acc = 1;
    size_t first_new = new_d;
    while (new_d < shape.size() && acc * shape[new_d] <= run_numel &&
           (acc < run_numel || shape[new_d] == 1)) {
      acc *= shape[new_d];
      ++new_d;
    }
    if (acc != run_numel) return std::nullopt;
    int64_t stride = old_strides[run_end];
    for (size_t d = new_d; d-- > first_new;) {
      strides[d] = stride;
      stride *= shape[d];
    }
    old_d = run_end + 1;
  }
  for (; new_d < shape.size(); ++new_d)
    if (shape[new_d] != 1) return std::nullopt;
  return strides;
}

Shape infer_shape(const Tensor& x, Shape shape, const char* op) {
  int64_t known = 1, infer_at = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      SCANLINE_CHECK(infer_at < 0, op, ": only one dimension may be -1, found ", shape);
      infer_at = int64_t(i);
    } else {
      SCANLINE_CHECK(shape[i] >= 0, op, ": negative dimension in shape ", shape);
      known *= shape[i];
    }
  }
  if (infer_at >= 0) {
    SCANLINE_CHECK(known != 0 && x.numel() % known == 0, op, ": cannot infer -1 in ", shape,
                   " for ", describe(x));
    shape[infer_at] = x.numel() / known;
  }
  SCANLINE_CHECK(numel_of(shape) == x.numel(), op, ": shape ", shape, " has ", numel_of(shape),
                 " elements but the input ", describe(x), " has ", x.numel());
  return shape;
}

}  // namespace

Tensor view(const Tensor& x, Shape shape) {
  ops_detail::check_defined("view", x, "input");
  shape = infer_shape(x, std::move(shape), "view");
  auto strides = view_strides(x, shape);
  SCANLINE_CHECK(strides.has_value(), "view: ", describe(x), " with strides ", x.strides(),
                 " cannot be viewed as ", shape, " without a copy; use reshape");
  Shape in_shape = x.shape();
  return make_view("view", x, shape, *strides, x.offset(), [in_shape](const BackwardContext& ctx) {
    return std::vector<Tensor>{reshape(ctx.grad(), in_shape)};
  });
}

Tensor reshape(const Tensor& x, Shape shape) {
  ops_detail::check_defined("reshape", x, "input");
  shape = infer_shape(x, std::move(shape), "reshape");
  if (view_strides(x, shape)) return view(x, shape);
  return view(contiguous(x), shape);
}

Tensor flatten(const Tensor& x, int64_t start_dim, int64_t end_dim) {
  if (x.dim() == 0) return reshape(x, {1});
  start_dim = wrap_dim(start_dim, x.dim(), "flatten");
  end_dim = wrap_dim(end_dim, x.dim(), "flatten");
  SCANLINE_CHECK(start_dim <= end_dim, "flatten: start_dim ", start_dim, " is after end_dim ", end_dim);
  Shape shape(x.shape().begin(), x.shape().begin() + start_dim);
  int64_t merged = 1;
  for (int64_t d = start_dim; d <= end_dim; ++d) merged *= x.shape()[d];
  shape.push_back(merged);
  shape.insert(shape.end(), x.shape().begin() + end_dim + 1, x.shape().end());
  return reshape(x, shape);
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& dims) {
  ops_detail::check_defined("permute", x, "input");
  SCANLINE_CHECK(int64_t(dims.size()) == x.dim(), "permute: ", dims.size(),
                 " dimensions given for ", describe(x));
  std::vector<int64_t> inverse(dims.size(), -1);
  Shape shape(dims.size()), strides(dims.size());
  for (size_t i = 0; i < dims.size(); ++i) {
    int64_t d = wrap_dim(dims[i], x.dim(), "permute");
    SCANLINE_CHECK(inverse[d] < 0, "permute: dimension ", d, " appears twice in the permutation");
    inverse[d] = int64_t(i);
    shape[i] = x.shape()[d];
    strides[i] = x.strides()[d];
  }
  return make_view("permute", x, shape, strides, x.offset(), [inverse](const BackwardContext& ctx) {
    return std::vector<Tensor>{permute(ctx.grad(), inverse)};
  });
}

Tensor transpose(const Tensor& x, int64_t dim0, int64_t dim1) {
  ops_detail::check_defined("transpose", x, "input");
  std::vector<int64_t> dims(size_t(x.dim()));
  std::iota(dims.begin(), dims.end(), 0);
  std::swap(dims[wrap_dim(dim0, x.dim(), "transpose")], dims[wrap_dim(dim1, x.dim(), "transpose")]);
  return permute(x, dims);
}

Tensor slice(const Tensor& x, int64_t dim, int64_t start, int64_t end, int64_t step) {
  ops_detail::check_defined("slice", x, "input");
  dim = wrap_dim(dim, x.dim(), "slice");
  int64_t n = x.shape()[dim];
  SCANLINE_CHECK(step > 0, "slice: step must be positive, found ", step);
  if (start < 0) start += n;
  if (end < 0) end += n;
  start = std::clamp<int64_t>(start, 0, n);
  end = std::clamp<int64_t>(end, start, n);
  Shape shape = x.shape(), strides = x.strides();
  shape[dim] = (end - start + step - 1) / step;
  strides[dim] *= step;
  int64_t offset = x.offset() + start * x.strides()[dim];
  Shape in_shape = x.shape();
  DType dtype = x.dtype();
  Device device = x.device();
  return make_view("slice", x, shape, strides, offset,
                   [=](const BackwardContext& ctx) {
                     // The gradient lands in the sliced positions of a zero tensor.
                     Tensor grad = zeros(in_shape, {.dtype = dtype, .device = device});
                     Shape gstrides = grad.strides();
                     int64_t goffset = start * gstrides[dim];
                     gstrides[dim] *= step;
                     copy_into(as_strided(grad, ctx.grad().shape(), gstrides, goffset), ctx.grad());
                     return std::vector<Tensor>{grad};
                   });
}

Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  ops_detail::check_defined("narrow", x, "input");
  int64_t d = wrap_dim(dim, x.dim(), "narrow");
  int64_t n = x.shape()[d];
  SCANLINE_CHECK(start >= 0 && length >= 0 && start + length <= n, "narrow: range [", start, ", ",
                 start + length, ") is outside dimension ", d, " of size ", n, " of ", describe(x));
  return slice(x, d, start, start + length);
}

Tensor select(const Tensor& x, int64_t dim, int64_t index) {
  ops_detail::check_defined("select", x, "input");
  int64_t d = wrap_dim(dim, x.dim(), "select");
  int64_t n = x.shape()[d];
  SCANLINE_CHECK(index >= -n && index < n, "select: index ", index, " is out of range for dimension ",
                 d, " of size ", n);
  if (index < 0) index += n;
  return squeeze(narrow(x, d, index, 1), d);
}

Tensor unsqueeze(const Tensor& x, int64_t dim) {
  ops_detail::check_defined("unsqueeze", x, "input");
  int64_t d = wrap_dim(dim, x.dim() + 1, "unsqueeze");
  Shape shape = x.shape(), strides = x.strides();
  int64_t stride = d < x.dim() ? x.strides()[d] * x.shape()[d] : 1;
  shape.insert(shape.begin() + d, 1);
  strides.insert(strides.begin() + d, stride);
  return make_view("unsqueeze", x, shape, strides, x.offset(), [d](const BackwardContext& ctx) {
    return std::vector<Tensor>{squeeze(ctx.grad(), d)};
  });
}

Tensor squeeze(const Tensor& x, int64_t dim) {
  ops_detail::check_defined("squeeze", x, "input");
  int64_t d = wrap_dim(dim, x.dim(), "squeeze");
  if (x.shape()[d] != 1) return x;
  Shape shape = x.shape(), strides = x.strides();
  shape.erase(shape.begin() + d);
  strides.erase(strides.begin() + d);
  return make_view("squeeze", x, shape, strides, x.offset(), [d](const BackwardContext& ctx) {
    return std::vector<Tensor>{unsqueeze(ctx.grad(), d)};
  });
}

Tensor squeeze(const Tensor& x) {
  ops_detail::check_defined("squeeze", x, "input");
  Shape shape;
  for (int64_t s : x.shape())
    if (s != 1) shape.push_back(s);
  return reshape(x, shape);
}

Tensor expand(const Tensor& x, const Shape& target) {
  ops_detail::check_defined("expand", x, "input");
  SCANLINE_CHECK(target.size() >= size_t(x.dim()), "expand: cannot expand ", describe(x),
                 " to fewer dimensions ", target);
  Shape shape = target;
  size_t lead = target.size() - size_t(x.dim());
  for (size_t i = 0; i < target.size(); ++i) {
    int64_t have = i < lead ? 1 : x.shape()[i - lead];
    if (target[i] == -1) {
      SCANLINE_CHECK(i >= lead, "expand: -1 is not allowed for a new leading dimension in ", target);
      shape[i] = have;
    }
    SCANLINE_CHECK(shape[i] >= 0 && (have == shape[i] || have == 1), "expand: cannot expand ", describe(x), " to ",
                   target, " (dimension ", i, ": ", have, " vs ", shape[i], ")");
  }
  Shape strides = broadcast_strides(x.shape(), x.strides(), shape);
  Shape in_shape = x.shape();
  return make_view("expand", x, shape, strides, x.offset(), [in_shape](const BackwardContext& ctx) {
    return std::vector<Tensor>{sum_to(ctx.grad(), in_shape)};
  });
}

Tensor contiguous(const Tensor& x) {
  ops_detail::check_defined("contiguous", x, "input");
  if (x.is_contiguous()) return x;
  return clone(x);
}

Tensor clone(const Tensor& x) {
  ops_detail::check_defined("clone", x, "input");
  Tensor out = contiguous_copy(x, x.dtype(), x.device());
  record("clone", {x}, {out}, [](const BackwardContext& ctx) {
    return std::vector<Tensor>{ctx.grad()};
  });
  return out;
}

Tensor to_dtype(const Tensor& x, DType dtype) {
  ops_detail::check_defined("to_dtype", x, "input");
  if (x.dtype() == dtype) return x;
  Tensor out = contiguous_copy(x, dtype, x.device());
  DType in_dtype = x.dtype();
  if (is_floating(dtype))
    record("to_dtype", {x}, {out}, [in_dtype](const BackwardContext& ctx) {
      return std::vector<Tensor>{to_dtype(ctx.grad(), in_dtype)};
    });
  return out;
}

Tensor to_device(const Tensor& x, Device device) {
  ops_detail::check_defined("to_device", x, "input");
  if (x.device() == device) return x;
  Tensor out = contiguous_copy(x, x.dtype(), device);
  Device in_device = x.device();
  record("to_device", {x}, {out}, [in_device](const BackwardContext& ctx) {
    return std::vector<Tensor>{to_device(ctx.grad(), in_device)};
  });
  return out;
}

}  // namespace scanline
