#pragma once
// The chip's peak rates of the two operations the selective scan is bounded by besides memory,
// measured in the same run as the kernels they judge: fp32 exponentials as our kernels compute
// them (exp2f of a pre-scaled argument, one MUFU.EX2 each) and fp32 fused multiply-adds (FFMA).
namespace scanline::bench {

struct ChipRates {
  double exp_per_s = 0.0;  // exp2f results a second, every SM busy
  double fma_per_s = 0.0;  // fp32 FMAs a second (2 flops each)
  int sms = 0;             // multiprocessors of the device
  double clock_hz = 0.0;   // the device's peak clock, for the per-SM-per-clock sanity line
};

// Runs both microbenchmarks on the current device (a few ms each, timed like every benchmark).
ChipRates measure_chip_rates();

}  // namespace scanline::bench
