#pragma once
// CUDA_CHECK, CUBLAS_CHECK and NCCL_CHECK wrap every runtime call; CUDA_CHECK_LAUNCH follows every
// kernel launch. Failures throw scanline::Error with the call, the error string and the place.
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t status_ = (call);                                                          \
    SCANLINE_CHECK(status_ == cudaSuccess, "CUDA error in ", #call, ": ",                  \
                   cudaGetErrorName(status_), " (", cudaGetErrorString(status_), ")");     \
  } while (0)

#define CUDA_CHECK_LAUNCH(kernel_name) CUDA_CHECK(cudaGetLastError())
