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

// Thrown where an op meets a CUDA tensor before its kernel exists in this build.
[[noreturn]] void no_cuda_kernel(const char* op, const Tensor& t);

}  // namespace scanline::ops_detail
