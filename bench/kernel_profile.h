#pragma once
// Where a GPU's time goes, kernel by kernel: CUPTI's activity records of every kernel, memcpy
// and memset between start() and stop(), summed by name (demangled, scanline:: dropped). For
// `scanline bench train`'s "top kernels" table (issue 10). Builds without CUPTI compile it to a
// profile that says so and records nothing.
#include <cstdint>
#include <string>
#include <vector>

namespace scanline::bench {

class KernelProfile {
 public:
  struct Row {
    std::string name;
    double total_ms = 0;
    int64_t count = 0;
  };

  static bool available();  // built with CUPTI
  // Only one profile records at a time (CUPTI's activity buffers are process-wide).
  void start();
  void stop();  // waits for the device and collects every record since start()

  std::vector<Row> rows() const;  // by total time, largest first
  double total_ms() const;

  // The top `n` rows as a markdown table, times per step over `steps` steps.
  void print(int64_t steps, size_t n) const;

 private:
  std::vector<Row> rows_;
};

}  // namespace scanline::bench
