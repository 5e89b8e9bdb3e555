#pragma once
// Where a run trains and what the progress line says about that device: train.device resolved
// (auto = the first GPU when this build has CUDA and one is present, else the CPU), its memory
// use, and the peak rate MFU is measured against.
#include <optional>
#include <string>

#include "core/device.h"
#include "trainer/run_config.h"

namespace scanline {

// Throws ConfigError at train.device when `cuda` is asked for and this build or machine has none.
Device resolve_device(const RunConfig& config);

// "cuda:0 (NVIDIA H100 80GB HBM3)" / "cpu (N threads)".
std::string describe_device(Device device);

// Peak memory so far: on a GPU the caching allocator's peak allocated bytes; on the CPU the
// process's maximum resident set size.
struct MemoryUse {
  double mib = 0;
  const char* what = "";  // "gpu peak" or "rss peak"
};
MemoryUse peak_memory(Device device);

// The dense peak FLOP/s model FLOPs utilization is quoted against, on a GPU only (nullopt on the
// CPU): an H100/H200 SXM's 989e12 for bf16 tensor cores and 67e12 for fp32 (no TF32). The MFU
// counts 6 * parameters FLOPs per token (forward + backward of the matrix products) and leaves the
// scan, convolution and norm FLOPs out, so it slightly understates the work done.
std::optional<double> peak_flops(Device device, Precision precision);

}  // namespace scanline
