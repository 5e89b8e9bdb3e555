#pragma once
// Learning-rate schedules: linear warmup, then cosine or linear decay to min_lr_ratio * lr at the
// last step, or a constant rate. Steps are 0-based optimizer updates: lr_at(0) is the rate of the
// first update, lr_at(total_steps - 1) the rate of the last.
#include <cstdint>
#include <string>

#include "trainer/run_config.h"  // ScheduleKind: one enum for the YAML schema and the schedule

namespace scanline {

// "cosine", "linear", "constant" (run_config's spellings); anything else is an Error listing the
// valid names.
ScheduleKind schedule_kind_from_name(const std::string& name);
const char* schedule_kind_name(ScheduleKind kind);

// Where the warmup ramp starts.
enum class WarmupStart {
  zero,     // lr * step / warmup_steps: lr_at(0) = 0, lr reached at step warmup_steps
  one_step  // lr * (step + 1) / warmup_steps: lr_at(0) = lr / warmup_steps, lr reached at warmup_steps - 1
};

struct LrScheduleOptions {
  ScheduleKind kind = ScheduleKind::cosine;
  double lr = 1e-3;           // the peak rate
  int64_t total_steps = 1000;  // updates in the run (train.steps)
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;  // decay ends at min_lr_ratio * lr (ignored by constant)
  WarmupStart warmup_start = WarmupStart::zero;
};

class LrSchedule {
 public:
  // Checks lr > 0, total_steps >= 1, 0 <= warmup_steps <= total_steps, min_lr_ratio in [0, 1].
  explicit LrSchedule(LrScheduleOptions options);

  // The rate of update `step` (>= 0). Warmup ramps linearly for steps < warmup_steps; the decay
  // runs from lr at step warmup_steps to min_lr_ratio * lr at step total_steps - 1 (with
  // progress (step - warmup_steps) / (total_steps - 1 - warmup_steps)); steps past the end keep
  // the final rate.
  double lr_at(int64_t step) const;

  const LrScheduleOptions& options() const { return options_; }

 private:
  LrScheduleOptions options_;
};

}  // namespace scanline
