#pragma once
// Tensor: a cheap handle to shared storage plus shape, strides (in elements), offset, dtype and
// device, and the autograd fields the engine in autograd/ reads and writes. Tensor methods only
// describe and access data; every computation, views included, is a differentiable free function
// in ops/ (scanline::reshape, scanline::matmul, ...).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/shape.h"
#include "core/storage.h"

namespace scanline {

namespace autograd { class Node; }

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape;
  Shape strides;
  int64_t offset = 0;  // in elements
  DType dtype = DType::f32;
  Device device;
  // Autograd: a leaf that requires grad accumulates into `grad`; a computed tensor points at the
  // node that made it (grad_fn) and which of that node's outputs it is (output_nr).
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;
  std::shared_ptr<autograd::Node> grad_fn;
  int output_nr = 0;
};

struct TensorOptions {
  DType dtype = DType::f32;
  Device device = Device::cpu();
  bool requires_grad = false;

  TensorOptions with_dtype(DType d) const { auto o = *this; o.dtype = d; return o; }
  TensorOptions with_device(Device d) const { auto o = *this; o.device = d; return o; }
  TensorOptions with_requires_grad(bool r) const { auto o = *this; o.requires_grad = r; return o; }
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  bool defined() const { return impl_ != nullptr; }
  TensorImpl* impl() const { return impl_.get(); }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

  const Shape& shape() const { return checked().shape; }
  const Shape& strides() const { return checked().strides; }
  int64_t offset() const { return checked().offset; }
  int64_t dim() const { return int64_t(checked().shape.size()); }
  int64_t size(int64_t dim) const;  // negative dims count from the end
  int64_t stride(int64_t dim) const;
  int64_t numel() const { return numel_of(checked().shape); }
  DType dtype() const { return checked().dtype; }
  Device device() const { return checked().device; }
  TensorOptions options() const { return {dtype(), device(), false}; }
  bool is_contiguous() const;
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype()); }

  // Pointer to the first element (storage + offset). Checks the dtype matches T.
  template <typename T> T* data_ptr() const;
  void* raw_data() const;

  // Host-side access: copies to CPU if needed, converts to T.
  template <typename T> T item() const;
  template <typename T> std::vector<T> to_vector() const;
  std::vector<double> to_double_vector() const { return to_vector<double>(); }

  // Autograd fields.
  bool requires_grad() const { return checked().requires_grad; }
  Tensor& set_requires_grad(bool requires_grad);
  Tensor grad() const;
  void set_grad(const Tensor& grad);
  void zero_grad();  // drops the accumulated gradient
  const std::shared_ptr<autograd::Node>& grad_fn() const { return checked().grad_fn; }
  bool is_leaf() const { return checked().grad_fn == nullptr; }
  Tensor detach() const;  // same storage, no autograd history

  std::string str(int64_t max_elements = 64) const;  // header plus values

 private:
  const TensorImpl& checked() const;
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& out, const Tensor& tensor);

// Factories (no autograd history; `requires_grad` in the options makes a leaf).
Tensor empty(const Shape& shape, TensorOptions options = {});
Tensor zeros(const Shape& shape, TensorOptions options = {});
Tensor ones(const Shape& shape, TensorOptions options = {});
Tensor full(const Shape& shape, double value, TensorOptions options = {});
Tensor scalar_tensor(double value, TensorOptions options = {});
Tensor arange(int64_t start, int64_t end, int64_t step = 1, TensorOptions options = {.dtype = DType::i64});
template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device = Device::cpu());

// A raw view of the same storage (no autograd); checks the view stays inside the storage.
Tensor as_strided(const Tensor& base, const Shape& shape, const Shape& strides, int64_t offset);
// Element-wise copy of src into dst (same shape), converting dtype; any strides, any devices.
void copy_into(const Tensor& dst, const Tensor& src);
// A contiguous tensor with src's values in `dtype` on `device`, no autograd.
Tensor contiguous_copy(const Tensor& src, DType dtype, Device device);
// t itself when contiguous, else a contiguous copy (no autograd): for kernels that want dense input.
Tensor as_contiguous(const Tensor& t);
// An empty dense tensor of t's shape whose dims lie in memory in t's order (outermost: largest
// stride; a dim of size 1 or stride 0 keeps its place), so that an op's output or gradient
// follows its input's layout: a (batch, E, L) view with strides (L, batch·L, 1) gets (E, batch,
// L) storage. A contiguous t gives a contiguous tensor.
Tensor empty_in_layout_of(const Tensor& t, TensorOptions options);
// Fills every element of t with value (converted to t's dtype).
void fill_(const Tensor& t, double value);

// Error-message helper: "f32[2, 3] on cpu".
std::string describe(const Tensor& t);

}  // namespace scanline

#include "core/tensor_inl.h"
