#pragma once
// GPU timing for benchmarks: CUDA events around repeated launches on the current stream, the
// median of several repetitions, and the table every benchmark prints.
#include <cstddef>
#include <functional>
#include <string>
#include <vector>

namespace scanline::bench {

// Runs fn `warmup` times, then `repeats` timed batches of `inner` calls; returns the median
// milliseconds per call.
double time_ms(const std::function<void()>& fn, int inner = 10, int repeats = 5, int warmup = 3);

// Read + write bytes per second of a device-to-device copy of `bytes` (256 MiB by default): the
// bandwidth roofline the benchmarks report their ratios against, measured in the same run.
double device_copy_gbps(size_t bytes = size_t(256) << 20);

struct Row {
  std::string name;     // what ran, e.g. "add f32"
  std::string shape;    // problem size
  double ms = 0.0;      // per call
  double bytes = 0.0;   // minimal bytes moved per call (0 for compute-bound rows)
  double flops = 0.0;   // per call (0 for bandwidth-bound rows)
  double target = 0.0;  // required fraction of the roofline (0: reported only)
};

// Prints rows as a Markdown table: GB/s and the ratio to `copy_gbps` for bandwidth rows, TFLOP/s
// and the ratio to `peak_tflops` for compute rows, and whether each meets its target. Returns
// false if any target is missed.
bool print_table(const std::string& title, const std::vector<Row>& rows, double copy_gbps, double peak_tflops);

}  // namespace scanline::bench
