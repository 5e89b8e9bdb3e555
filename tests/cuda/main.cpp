// CUDA test runner: without a usable GPU it says so and exits 77, which ctest reports as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>

#include "cuda/device_query.h"

int main(int argc, char** argv) {
  if (scanline::cuda::device_count() == 0) {
    std::printf("SKIP: no CUDA device on this machine; CUDA tests run on the GPU machine (tools/gpu-check.sh)\n");
    return 77;
  }
  setenv("SCANLINE_CUDA_POISON", "1", 1);  // fresh device memory reads as NaN until written
  doctest::Context context(argc, argv);
  return context.run();
}
