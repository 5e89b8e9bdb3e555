#pragma once
// `scanline bench scan`: the Mamba-1 selective scan kernels on the sweep, against a copy
// measured in the same run and the official mamba_ssm kernel's published H100 times.
namespace scanline::bench {

// Returns 0 when every case beats the mamba_ssm reference time, 1 otherwise.
int run_scan_bench(bool quick);

}  // namespace scanline::bench
