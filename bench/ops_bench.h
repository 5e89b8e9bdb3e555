#pragma once
// `scanline bench ops`: bandwidth of the core ops against a device-to-device copy measured in the
// same run, matrix-product TFLOP/s, and the caching allocator's alloc/free rate.
namespace scanline::bench {

// Returns 0 when every target is met, 1 otherwise (the table says which).
int run_ops_bench(bool quick);

}  // namespace scanline::bench
