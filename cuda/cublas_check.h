#pragma once
// CUBLAS_CHECK wraps every cuBLAS / cuBLASLt call, as CUDA_CHECK does for the runtime: a failure
// throws scanline::Error naming the call and the status (name and description).
#include <cublas_api.h>

#include "core/error.h"

#define CUBLAS_CHECK(call)                                                                     \
  do {                                                                                         \
    cublasStatus_t status_ = (call);                                                           \
    SCANLINE_CHECK(status_ == CUBLAS_STATUS_SUCCESS, "cuBLAS error in ", #call, ": ",          \
                   cublasGetStatusName(status_), " (", cublasGetStatusString(status_), ")");   \
  } while (0)
