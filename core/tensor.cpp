#include "core/tensor.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <iomanip>
#include <sstream>

#include "core/allocator.h"
#include "core/strided_loop.h"

#ifdef SCANLINE_HAVE_CUDA
#include "core/cuda/tensor_kernels.h"
#endif

namespace scanline {

const TensorImpl& Tensor::checked() const {
  SCANLINE_CHECK(impl_ != nullptr, "tensor: used an undefined (empty) Tensor handle");
  return *impl_;
}

int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "stride")]; }

bool Tensor::is_contiguous() const {
  const auto& t = checked();
  int64_t expected = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] == 1) continue;  // any stride is fine on a size-1 dimension
    if (t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  const auto& t = checked();
  if (!t.storage || !t.storage->data()) return nullptr;
  return static_cast<char*>(t.storage->data()) + t.offset * int64_t(dtype_size(t.dtype));
}

Tensor& Tensor::set_requires_grad(bool requires_grad) {
  checked();
  SCANLINE_CHECK(!requires_grad || is_floating(impl_->dtype),
                 "requires_grad: only floating tensors can require gradients, found ", describe(*this));
  SCANLINE_CHECK(is_leaf() || requires_grad,
                 "requires_grad: cannot turn off gradients of a computed tensor; use detach()");
  impl_->requires_grad = requires_grad;
  return *this;
}

Tensor Tensor::grad() const {
  const auto& t = checked();
  return t.grad ? Tensor(t.grad) : Tensor();
}

void Tensor::set_grad(const Tensor& grad) {
  checked();
  if (grad.defined())
    SCANLINE_CHECK(grad.shape() == shape() && grad.dtype() == dtype(),
                   "set_grad: gradient ", describe(grad), " does not match tensor ", describe(*this));
  impl_->grad = grad.impl_ptr();
}

void Tensor::zero_grad() { checked(); impl_->grad.reset(); }

Tensor Tensor::detach() const {
  const auto& t = checked();
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = t.storage;
  impl->shape = t.shape;
  impl->strides = t.strides;
  impl->offset = t.offset;
  impl->dtype = t.dtype;
  impl->device = t.device;
  return Tensor(impl);
}

std::string describe(const Tensor& t) {
  if (!t.defined()) return "undefined tensor";
  return std::string(dtype_name(t.dtype())) + shape_str(t.shape()) + " on " + t.device().str();
}

// ---- factories ----------------------------------------------------------------------------------

Tensor empty(const Shape& shape, TensorOptions options) {
  for (int64_t s : shape)
    SCANLINE_CHECK(s >= 0, "empty: negative dimension in shape ", shape);
  auto impl = std::make_shared<TensorImpl>();
  impl->storage = std::make_shared<Storage>(size_t(numel_of(shape)) * dtype_size(options.dtype),
                                            options.device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = options.dtype;
  impl->device = options.device;
  Tensor t(impl);
  if (options.requires_grad) t.set_requires_grad(true);
  return t;
}

Tensor full(const Shape& shape, double value, TensorOptions options) {
  bool requires_grad = options.requires_grad;
  Tensor t = empty(shape, options.with_requires_grad(false));
  fill_(t, value);
  if (requires_grad) t.set_requires_grad(true);
  return t;
}

Tensor zeros(const Shape& shape, TensorOptions options) { return full(shape, 0.0, options); }
Tensor ones(const Shape& shape, TensorOptions options) { return full(shape, 1.0, options); }
Tensor scalar_tensor(double value, TensorOptions options) { return full({}, value, options); }

Tensor arange(int64_t start, int64_t end, int64_t step, TensorOptions options) {
  SCANLINE_CHECK(step != 0, "arange: step must be non-zero");
  int64_t n = std::max<int64_t>(0, (end - start + step + (step > 0 ? -1 : 1)) / step);
  Tensor host = empty({n}, options.with_device(Device::cpu()).with_requires_grad(false));
  dispatch_all(options.dtype, "arange", [&]<typename T>() {
    T* p = host.data_ptr<T>();
    for (int64_t i = 0; i < n; ++i) p[i] = T(double(start + i * step));
  });
  return options.device.is_cpu() ? host : contiguous_copy(host, options.dtype, options.device);
}

// ---- raw views and copies -----------------------------------------------------------------------

Tensor as_strided(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset) {
  SCANLINE_CHECK(shape.size() == strides.size(), "as_strided: shape ", shape, " and strides ",
                 strides, " differ in rank");
  int64_t lo = offset, hi = offset;
  for (size_t i = 0; i < shape.size(); ++i) {
    SCANLINE_CHECK(shape[i] >= 0, "as_strided: negative dimension in shape ", shape);
    if (shape[i] == 0) { hi = lo - 1; break; }
    int64_t reach = (shape[i] - 1) * strides[i];
    (reach < 0 ? lo : hi) += reach;
  }
  const auto& storage = base.impl()->storage;
  int64_t capacity = int64_t(storage->nbytes() / dtype_size(base.dtype()));
  SCANLINE_CHECK(hi < lo || (lo >= 0 && hi < capacity), "as_strided: view ", shape, " strides ",
                 strides, " offset ", offset, " reaches outside a storage of ", capacity, " elements");
  auto impl = std::make_shared<TensorImpl>(*base.impl());
  impl->shape = shape;
  impl->strides = strides;
  impl->offset = offset;
  impl->requires_grad = false;
  impl->grad.reset();
  impl->grad_fn.reset();
  impl->output_nr = 0;
  return Tensor(impl);
}

namespace {

// double -> float rounding to odd (toward zero, last bit set when inexact): rounding that float
// to bf16 or f16 then gives the same result as rounding the double directly, never a double
// rounding.
float to_float_round_odd(double d) {
  float f = float(d);
  if (!std::isfinite(d) || double(f) == d) return f;
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::fabs(double(f)) > std::fabs(d)) --u;  // rounded away from zero: step back
  return std::bit_cast<float>(u | 1u);
}

template <typename D, typename S>
D convert_value(S s) {
  if constexpr (std::is_same_v<D, S>) return s;
  else if constexpr (std::is_same_v<D, bool>) return float(s) != 0.0f;
  else if constexpr (std::is_integral_v<D> && std::is_integral_v<S>) return D(s);
  else if constexpr ((std::is_same_v<D, BFloat16> || std::is_same_v<D, Half>) &&
                     (std::is_same_v<S, double> || std::is_integral_v<S>))
    return D(to_float_round_odd(double(s)));
  else if constexpr (std::is_same_v<S, double> || std::is_integral_v<S>) return D(double(s));
  else return D(float(s));  // f32/bf16/f16 to anything floating: exact through float
}

void copy_cpu(const Tensor& dst, const Tensor& src) {
  dispatch_all(dst.dtype(), "copy", [&]<typename D>() {
    dispatch_all(src.dtype(), "copy", [&]<typename S>() {
      D* out = static_cast<D*>(dst.impl()->storage->data());
      const S* in = static_cast<const S*>(src.impl()->storage->data());
      strided_loop<2>(dst.shape(), {dst.strides().data(), src.strides().data()},
                      {dst.offset(), src.offset()},
                      [&](std::array<int64_t, 2> o, int64_t n, std::array<int64_t, 2> s) {
                        for (int64_t i = 0; i < n; ++i)
                          out[o[0] + i * s[0]] = convert_value<D>(in[o[1] + i * s[1]]);
                      });
    });
  });
}

}  // namespace

void copy_into(const Tensor& dst, const Tensor& src) {
  SCANLINE_CHECK(dst.shape() == src.shape(), "copy: destination ", describe(dst),
                 " and source ", describe(src), " differ in shape");
  if (dst.numel() == 0) return;
  if (dst.device().is_cpu() && src.device().is_cpu()) return copy_cpu(dst, src);
  if (dst.dtype() == src.dtype() && dst.is_contiguous() && src.is_contiguous())
    return copy_bytes(dst.raw_data(), dst.device(), src.raw_data(), src.device(), dst.nbytes());
#ifdef SCANLINE_HAVE_CUDA
  if (dst.device() == src.device()) return cuda::copy_tensor(dst, src);
  // Across devices with strides or a conversion: make src dense in dst's dtype on its own side,
  // move the bytes, then scatter into dst's layout on dst's side.
  Tensor dense = contiguous_copy(src, dst.dtype(), src.device());
  if (dst.is_contiguous())
    return copy_bytes(dst.raw_data(), dst.device(), dense.raw_data(), dense.device(), dst.nbytes());
  Tensor moved = empty(dst.shape(), {.dtype = dst.dtype(), .device = dst.device()});
  copy_bytes(moved.raw_data(), moved.device(), dense.raw_data(), dense.device(), moved.nbytes());
  copy_into(dst, moved);
#else
  SCANLINE_FAIL("copy: ", describe(src), " to ", describe(dst), " needs the CUDA backend, which this build lacks");
#endif
}

Tensor contiguous_copy(const Tensor& src, DType dtype, Device device) {
  Tensor out = empty(src.shape(), {.dtype = dtype, .device = device});
  copy_into(out, src);
  return out;
}

Tensor as_contiguous(const Tensor& t) {
  return t.is_contiguous() ? t : contiguous_copy(t, t.dtype(), t.device());
}

Tensor empty_in_layout_of(const Tensor& t, TensorOptions options) {
  if (t.is_contiguous()) return empty(t.shape(), options);
  const Shape& shape = t.shape();
  const int64_t dims = t.dim();
  auto ordered = [&](int64_t i) { return shape[size_t(i)] > 1 && t.stride(i) != 0; };
  std::vector<int64_t> order(size_t(dims), 0);  // outermost first; insertion sort, stable
  for (int64_t i = 0; i < dims; ++i) order[size_t(i)] = i;
  for (int64_t i = 1; i < dims; ++i)
    for (int64_t j = i; j > 0; --j) {
      const int64_t outer = order[size_t(j - 1)], inner = order[size_t(j)];
      if (!ordered(outer) || !ordered(inner) || t.stride(outer) >= t.stride(inner)) break;
      std::swap(order[size_t(j - 1)], order[size_t(j)]);
    }
  Shape dense(size_t(dims), 0), strides(size_t(dims), 0);
  for (int64_t k = 0; k < dims; ++k) dense[size_t(k)] = shape[size_t(order[size_t(k)])];
  const Shape dense_strides = contiguous_strides(dense);
  for (int64_t k = 0; k < dims; ++k) strides[size_t(order[size_t(k)])] = dense_strides[size_t(k)];
  return as_strided(empty(dense, options), shape, strides, 0);
}

void fill_(const Tensor& t, double value) {
  if (t.numel() == 0) return;
  if (!t.device().is_cpu()) {
#ifdef SCANLINE_HAVE_CUDA
    return cuda::fill_tensor(t, value);
#else
    SCANLINE_FAIL("fill: ", describe(t), " needs the CUDA backend, which this build lacks");
#endif
  }
  dispatch_all(t.dtype(), "fill", [&]<typename T>() {
    T v = convert_value<T>(value);
    T* out = static_cast<T*>(t.impl()->storage->data());
    strided_loop<1>(t.shape(), {t.strides().data()}, {t.offset()},
                    [&](std::array<int64_t, 1> o, int64_t n, std::array<int64_t, 1> s) {
                      for (int64_t i = 0; i < n; ++i) out[o[0] + i * s[0]] = v;
                    });
  });
}

// ---- printing -----------------------------------------------------------------------------------

std::string Tensor::str(int64_t max_elements) const {
  std::ostringstream out;
  out << "tensor(" << describe(*this);
  if (requires_grad()) out << ", requires_grad";
  out << ")";
  if (numel() == 0) return out.str() + " []";
  std::vector<double> values = to_double_vector();
  out << "\n" << std::setprecision(6);
  // Nested brackets, one innermost row per line; long tensors show their first elements only.
  const Shape& s = shape();
  int64_t shown = std::min<int64_t>(numel(), max_elements);
  for (int64_t i = 0; i < shown; ++i) {
    int64_t opened = 0, stride = 1;
    for (int64_t d = dim() - 1; d >= 0; --d) {
      stride *= s[d];
      if (i % stride == 0) ++opened;
    }
    if (i > 0 && opened > 0) out << "\n";
    for (int64_t k = 0; k < opened; ++k) out << "[";
    if (i > 0 && opened == 0) out << ", ";
    out << values[i];
    int64_t closed = 0;
    stride = 1;
    for (int64_t d = dim() - 1; d >= 0; --d) {
      stride *= s[d];
      if ((i + 1) % stride == 0) ++closed;
    }
    for (int64_t k = 0; k < closed; ++k) out << "]";
  }
  if (shown < numel()) out << " ... (" << numel() - shown << " more)";
  return out.str();
}

std::ostream& operator<<(std::ostream& out, const Tensor& tensor) { return out << tensor.str(); }

}  // namespace scanline
