#pragma once
// The CUDA caching allocator: cudaMalloc is called only to grow the cache, never on the hot path.
// Freed blocks go back to size-ordered free lists of their device and stream; a request takes
// the smallest fitting block and splits off the remainder; neighbours from one cudaMalloc
// segment merge again when both are free. Small requests (<= 1 MiB) come from 2 MiB segments so
// they never fragment the large pool.
#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

namespace scanline::cuda {

struct AllocatorStats {
  size_t allocated = 0;       // bytes handed out now (rounded sizes)
  size_t reserved = 0;        // bytes held from cudaMalloc
  size_t peak_allocated = 0;  // maximum of `allocated` since the last reset
  uint64_t segments = 0;      // cudaMalloc calls that succeeded
  uint64_t allocations = 0;   // allocate() calls
};

void* device_allocate(size_t nbytes, int device, cudaStream_t stream);
void device_free(void* ptr);
AllocatorStats allocator_stats(int device);
void reset_peak(int device);
void empty_cache();  // returns every wholly free segment to the driver

}  // namespace scanline::cuda
