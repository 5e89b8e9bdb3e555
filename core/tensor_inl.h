#pragma once
// Template members of Tensor (included from tensor.h).

namespace scanline {

template <typename T>
T* Tensor::data_ptr() const {
  SCANLINE_CHECK(dtype() == dtype_of<T>(), "data_ptr: tensor is ", dtype(), " but ",
                 dtype_of<T>(), " was requested");
  return static_cast<T*>(raw_data());
}

template <typename T>
std::vector<T> Tensor::to_vector() const {
  Tensor host = contiguous_copy(*this, dtype_of<T>(), Device::cpu());
  const T* p = host.data_ptr<T>();
  return std::vector<T>(p, p + host.numel());
}

template <typename T>
T Tensor::item() const {
  SCANLINE_CHECK(numel() == 1, "item: expected a tensor of one element but found shape ", shape());
  return to_vector<T>()[0];
}

template <typename T>
Tensor from_vector(const std::vector<T>& values, const Shape& shape, Device device) {
  SCANLINE_CHECK(int64_t(values.size()) == numel_of(shape), "from_vector: ", values.size(),
                 " values do not fill shape ", shape);
  Tensor host = empty(shape, {.dtype = dtype_of<T>()});
  T* p = host.data_ptr<T>();
  for (size_t i = 0; i < values.size(); ++i) p[i] = values[i];
  if (device.is_cpu()) return host;
  return contiguous_copy(host, host.dtype(), device);
}

}  // namespace scanline
