#pragma once
// `scanline bench scan`: the Mamba-1 selective scan kernels on the sweep, against a copy
// measured in the same run, the chip's exp2 and FMA rates measured in the same run
// (bench/chip_rates.h), an unfused version of ours (bench/scan_unfused.h) and the official
// mamba_ssm kernel's published H100 times.
#include <cstdint>

namespace scanline::bench {

// Returns 0 when every case beats the mamba_ssm reference time, 1 otherwise.
int run_scan_bench(bool quick);

// The exponentials and FMAs our fused kernels (cuda/selective_scan_{fwd,bwd}.cu) do for one
// pass over (batch, d_inner, L, N), softplus and the SiLU gate on. Counted per element:
//   forward, per (b, d, t, n): 1 exp2 (exp(Δ·A) as exp2 of a pre-scaled exponent) and 5 FMAs
//     (exponent scale, Δ·B·u, the composite map, the state update, C·h);
//   forward, per (b, d, t): 3 exps (softplus: exp + log1p, counted as 2; the gate's sigmoid: 1);
//   backward, per (b, d, t, n): 2 exps (exp(Δ·A) recomputed in the main kernel and again in the
//     chunk-composition pre-pass) and 20 FMAs (state recompute 4, reverse scan 3, gradients 13);
//   backward, per (b, d, t): 7 exps (main kernel: softplus 2, its derivative's sigmoid 1, the
//     gate's sigmoid 1; pre-pass: softplus 2, gate 1).
// Per-(b, d, t) FMAs (a few per step, against 5 or 20 per state) are left out. Adjust the
// constants here when the kernels change.
struct ScanWork {
  double exps = 0.0;
  double fmas = 0.0;
};
ScanWork fused_scan_work(int64_t batch, int64_t d_inner, int64_t L, int64_t N, bool backward);

}  // namespace scanline::bench
