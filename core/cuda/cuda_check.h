#pragma once
// CUDA_CHECK wraps every CUDA runtime call and CUDA_CHECK_LAUNCH follows every kernel launch;
// failures throw scanline::Error with the call, the error name and string, and the place.
#include <cuda_runtime.h>

#include "core/error.h"

#define CUDA_CHECK(call)                                                                   \
  do {                                                                                     \
    cudaError_t status_ = (call);                                                          \
    SCANLINE_CHECK(status_ == cudaSuccess, "CUDA error in ", #call, ": ",                  \
                   cudaGetErrorName(status_), " (", cudaGetErrorString(status_), ")");     \
  } while (0)

// After a launch: configuration errors surface at once; SCANLINE_CUDA_SYNC_CHECK=1 also waits
// for the kernel so an asynchronous fault is reported at the launch that caused it.
#define CUDA_CHECK_LAUNCH(kernel_name)                                                     \
  do {                                                                                     \
    cudaError_t status_ = cudaGetLastError();                                              \
    SCANLINE_CHECK(status_ == cudaSuccess, "CUDA launch of ", kernel_name, " failed: ",    \
                   cudaGetErrorName(status_), " (", cudaGetErrorString(status_), ")");     \
    if (::scanline::cuda::sync_after_launch()) CUDA_CHECK(cudaDeviceSynchronize());        \
  } while (0)

namespace scanline::cuda {
bool sync_after_launch();  // SCANLINE_CUDA_SYNC_CHECK=1 in the environment
}
