#pragma once
// Shared checks of the op layer. Each op's .cpp holds its public differentiable function, the
// dispatch on device (CPU reference here; CUDA kernels hang on the same switch), and the CPU
// reference itself.
#include <initializer_list>

#include "autograd/node.h"
#include "core/tensor.h"

namespace scanline::ops_detail {

// Every defined tensor lives on one device and (if same_dtype) has one dtype.
void check_same_device(const char* op, std::initializer_list<Tensor> tensors);
void check_same_dtype(const char* op, std::initializer_list<Tensor> tensors);
void check_floating(const char* op, const Tensor& t, const char* name);
void check_defined(const char* op, const Tensor& t, const char* name);
void check_dim(const char* op, const Tensor& t, const char* name, int64_t ndim);

// t is defined and has shape `expected`; the message shows the symbolic layout as well, e.g.
// "expected dt of shape (batch, L, heads) = [2, 7, 4]".
void check_shape(const char* op, const Tensor& t, const char* name, const char* layout, const Shape& expected);

// The scan ops' dtype rules. Token inputs share the dtype of the lead input (`lead` names it,
// "u" or "x"); parameters and states are f32, f64 with f64 inputs. Undefined tensors pass.
void check_input_dtype(const char* op, const Tensor& t, const char* name, DType input, const char* lead);
void check_param_dtype(const char* op, const Tensor& t, const char* name, DType input);

// Step ops record no graph and overwrite their state, so a gradient could only be silently
// wrong: with grad mode on, none of their inputs may require grad.
struct NamedTensor {
  const Tensor& t;
  const char* name;
};
void check_inference_only(const char* op, std::initializer_list<NamedTensor> inputs);

// Thrown where an op meets a CUDA tensor before its kernel exists in this build.
[[noreturn]] void no_cuda_kernel(const char* op, const Tensor& t);

}  // namespace scanline::ops_detail
