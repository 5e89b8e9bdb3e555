#pragma once
// The progress line printed every train.log_every steps, e.g.
//   step   100/300 | loss 0.4512 | lr 2.73e-03 | grad norm 0.412 | 41.2k tok/s | rss peak 180 MiB | ETA 1m12s
// with "| MFU 31.4%" after the tokens/s on a GPU and "| skipped 2" once steps were skipped.
#include <cstdint>
#include <optional>
#include <string>

namespace scanline {

struct ProgressLine {
  int64_t step = 0;
  int64_t total_steps = 0;
  double loss = 0;  // mean over the steps since the previous line
  double lr = 0;
  double grad_norm = 0;  // of this step, before clipping
  double tokens_per_s = 0;
  std::optional<double> mfu;  // fraction of the device's peak, GPU only
  double memory_mib = 0;
  const char* memory_what = "";
  double eta_s = 0;
  int64_t skipped = 0;  // steps skipped for non-finite values so far
};

std::string format_progress(const ProgressLine& line);
// "45s", "3m07s", "2h05m".
std::string format_duration(double seconds);

}  // namespace scanline
