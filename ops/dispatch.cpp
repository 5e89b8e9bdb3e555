#include "ops/dispatch.h"

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

void no_cuda_kernel(const char* op, const Tensor& t) {
  SCANLINE_FAIL(op, ": no CUDA kernel in this build for ", describe(t));
}

}  // namespace scanline::ops_detail
