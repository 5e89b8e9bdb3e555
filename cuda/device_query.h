#pragma once
// What CUDA devices this process can use; 0 when there is no driver or no GPU (CPU machines).
#include <string>

namespace scanline::cuda {

int device_count();
std::string device_name(int device);
// Capability as major*10+minor (90 for the H100).
int compute_capability(int device);
// Fills dst[0..n) with value*i on the device and copies it back: a launch round trip.
void fill_iota_roundtrip(float* host_dst, int n, float value);

}  // namespace scanline::cuda
