#include "ops/dispatch.h"

#include "autograd/grad_mode.h"

namespace scanline::ops_detail {

void check_same_device(const char* op, std::initializer_list<Tensor> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    if (!first) first = &t;
    else
      SCANLINE_CHECK(t.device() == first->device(), op, ": expected all tensors on one device but found ",
                     describe(*first), " and ", describe(t));
  }
}

void check_same_dtype(const char* op, std::initializer_list<Tensor> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor& t : tensors) {
    if (!t.defined()) continue;
    if (!first) first = &t;
    else
      SCANLINE_CHECK(t.dtype() == first->dtype(), op, ": expected one dtype but found ",
                     describe(*first), " and ", describe(t), " (convert with to_dtype)");
  }
}

void check_floating(const char* op, const Tensor& t, const char* name) {
  check_defined(op, t, name);
  SCANLINE_CHECK(is_floating(t.dtype()), op, ": expected ", name, " to be floating but found ",
                 describe(t));
}

void check_defined(const char* op, const Tensor& t, const char* name) {
  SCANLINE_CHECK(t.defined(), op, ": ", name, " is an undefined tensor");
}

void check_dim(const char* op, const Tensor& t, const char* name, int64_t ndim) {
  check_defined(op, t, name);
  SCANLINE_CHECK(t.dim() == ndim, op, ": expected ", name, " to have ", ndim,
                 " dimensions but found ", describe(t));
}

void check_shape(const char* op, const Tensor& t, const char* name, const char* layout, const Shape& expected) {
  check_defined(op, t, name);
  SCANLINE_CHECK(t.shape() == expected, op, ": expected ", name, " of shape ", layout, " = ", expected,
                 " but found ", describe(t));
}

void check_input_dtype(const char* op, const Tensor& t, const char* name, DType input, const char* lead) {
  if (!t.defined()) return;
  SCANLINE_CHECK(t.dtype() == input, op, ": expected ", name, " of ", lead, "'s dtype ", input, " but found ",
                 describe(t));
}

void check_param_dtype(const char* op, const Tensor& t, const char* name, DType input) {
  if (!t.defined()) return;
  const DType param = input == DType::f64 ? DType::f64 : DType::f32;
  SCANLINE_CHECK(t.dtype() == param, op, ": expected ", name, " to be ", param, " (the parameter dtype for ",
                 input, " inputs) but found ", describe(t));
}

void check_inference_only(const char* op, std::initializer_list<NamedTensor> inputs) {
  if (!autograd::is_grad_enabled()) return;
  for (const NamedTensor& in : inputs)
    SCANLINE_CHECK(!in.t.defined() || !in.t.requires_grad(), op,
                   ": the step op is for inference and has no gradient, but ", in.name, " ", describe(in.t),
                   " requires grad; run it under NoGradGuard");
}

void no_cuda_kernel(const char* op, const Tensor& t) {
  SCANLINE_FAIL(op, ": no CUDA kernel in this build for ", describe(t));
}

}  // namespace scanline::ops_detail
