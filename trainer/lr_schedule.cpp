#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "core/error.h"

namespace scanline {

ScheduleKind schedule_kind_from_name(const std::string& name) {
  ScheduleKind kind{};
  if (enum_from_string(name, kind)) return kind;
  SCANLINE_FAIL("unknown learning-rate schedule '", name, "': expected cosine, linear or constant");
}

const char* schedule_kind_name(ScheduleKind kind) { return to_string(kind); }

LrSchedule::LrSchedule(LrScheduleOptions options) : options_(options) {
  const LrScheduleOptions& o = options_;
  SCANLINE_CHECK(std::isfinite(o.lr) && o.lr > 0.0, "LrSchedule: lr must be finite and positive, found ", o.lr);
  SCANLINE_CHECK(o.total_steps >= 1, "LrSchedule: total_steps must be >= 1, found ", o.total_steps);
  SCANLINE_CHECK(o.warmup_steps >= 0 && o.warmup_steps <= o.total_steps,
                 "LrSchedule: warmup_steps must be in [0, total_steps = ", o.total_steps, "], found ",
                 o.warmup_steps);
  SCANLINE_CHECK(o.min_lr_ratio >= 0.0 && o.min_lr_ratio <= 1.0, "LrSchedule: min_lr_ratio must be in [0, 1], found ",
                 o.min_lr_ratio);
}

double LrSchedule::lr_at(int64_t step) const {
  const LrScheduleOptions& o = options_;
  SCANLINE_CHECK(step >= 0, "LrSchedule: step must be >= 0, found ", step);
  if (step < o.warmup_steps) {
    const int64_t reached = o.warmup_start == WarmupStart::zero ? step : step + 1;
    return o.lr * double(reached) / double(o.warmup_steps);
  }
  if (o.kind == ScheduleKind::constant) return o.lr;
  const double min_lr = o.min_lr_ratio * o.lr;
  const int64_t decay_steps = o.total_steps - 1 - o.warmup_steps;  // steps after the first at peak
  if (decay_steps <= 0) return o.lr;  // warmup covers the whole run: no room to decay
  const double progress = std::min(1.0, double(step - o.warmup_steps) / double(decay_steps));
  if (o.kind == ScheduleKind::linear) return o.lr - (o.lr - min_lr) * progress;
  return min_lr + (o.lr - min_lr) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
}

}  // namespace scanline
