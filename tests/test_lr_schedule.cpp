// trainer/lr_schedule: the shape of each schedule at its landmarks (first step, inside and at the
// end of warmup, a quarter and half of the decay, the last step, past the end) against the
// closed forms; monotonicity; both warmup starts; degenerate lengths; option and name errors.
#include <doctest/doctest.h>

#include <cmath>
#include <numbers>
#include <string>

#include "core/error.h"
#include "trainer/lr_schedule.h"

using namespace scanline;

namespace {

// lr 1e-3, 10 warmup steps, then 100 decay steps: the decay's progress is (step - 10) / 100.
LrSchedule make(ScheduleKind kind, WarmupStart start = WarmupStart::zero) {
  return LrSchedule({.kind = kind, .lr = 1e-3, .total_steps = 111, .warmup_steps = 10, .min_lr_ratio = 0.1,
                     .warmup_start = start});
}

void check_near(double actual, double expected) {
  INFO(actual, " vs ", expected);
  CHECK(std::abs(actual - expected) <= 1e-12 * std::abs(expected) + 1e-18);
}

}  // namespace

TEST_CASE("cosine schedule: linear warmup from zero, cosine decay to min_lr_ratio * lr") {
  LrSchedule s = make(ScheduleKind::cosine);
  CHECK(s.lr_at(0) == 0.0);
  check_near(s.lr_at(5), 0.5e-3);
  check_near(s.lr_at(10), 1e-3);                                            // warmup end: the peak
  check_near(s.lr_at(35), 1e-4 + 0.9e-3 * 0.5 * (1 + std::cos(std::numbers::pi / 4)));
  check_near(s.lr_at(60), 0.55e-3);                                         // half way: the mean
  check_near(s.lr_at(110), 1e-4);                                           // the last step
  check_near(s.lr_at(500), 1e-4);                                           // past the end: stays
  for (int64_t t = 1; t < 111; ++t) {
    if (t <= 10) CHECK(s.lr_at(t) > s.lr_at(t - 1));
    else CHECK(s.lr_at(t) < s.lr_at(t - 1));
  }
}

TEST_CASE("linear schedule decays in a straight line") {
  LrSchedule s = make(ScheduleKind::linear);
  CHECK(s.lr_at(0) == 0.0);
  check_near(s.lr_at(10), 1e-3);
  check_near(s.lr_at(35), 1e-3 - 0.9e-3 * 0.25);
  check_near(s.lr_at(60), 0.55e-3);
  check_near(s.lr_at(110), 1e-4);
  check_near(s.lr_at(111), 1e-4);
}

TEST_CASE("constant schedule holds the rate after warmup") {
  LrSchedule s = make(ScheduleKind::constant);
  check_near(s.lr_at(3), 0.3e-3);
  CHECK(s.lr_at(10) == 1e-3);
  CHECK(s.lr_at(60) == 1e-3);
  CHECK(s.lr_at(110) == 1e-3);
  LrSchedule flat({.kind = ScheduleKind::constant, .lr = 2e-3, .total_steps = 5});
  CHECK(flat.lr_at(0) == 2e-3);
  CHECK(flat.lr_at(4) == 2e-3);
}

TEST_CASE("warmup from lr / warmup_steps reaches the peak one step earlier") {
  LrSchedule s = make(ScheduleKind::cosine, WarmupStart::one_step);
  check_near(s.lr_at(0), 1e-4);
  check_near(s.lr_at(4), 0.5e-3);
  check_near(s.lr_at(9), 1e-3);
  check_near(s.lr_at(10), 1e-3);  // the decay starts from the peak
  check_near(s.lr_at(110), 1e-4);
}

TEST_CASE("schedules without warmup or without room to decay") {
  LrSchedule no_warmup({.kind = ScheduleKind::cosine, .lr = 1.0, .total_steps = 3, .warmup_steps = 0,
                        .min_lr_ratio = 0.0});
  CHECK(no_warmup.lr_at(0) == 1.0);
  check_near(no_warmup.lr_at(1), 0.5);
  check_near(no_warmup.lr_at(2), 0.0);
  LrSchedule one_step({.kind = ScheduleKind::linear, .lr = 1.0, .total_steps = 1});
  CHECK(one_step.lr_at(0) == 1.0);  // a single update runs at the peak
  LrSchedule all_warmup({.kind = ScheduleKind::cosine, .lr = 1.0, .total_steps = 4, .warmup_steps = 4});
  check_near(all_warmup.lr_at(3), 0.75);
  CHECK(all_warmup.lr_at(4) == 1.0);
}

TEST_CASE("schedule names and invalid options") {
  CHECK(schedule_kind_from_name("cosine") == ScheduleKind::cosine);
  CHECK(schedule_kind_from_name("linear") == ScheduleKind::linear);
  CHECK(schedule_kind_from_name("constant") == ScheduleKind::constant);
  CHECK(std::string(schedule_kind_name(ScheduleKind::linear)) == "linear");
  CHECK_THROWS_WITH_AS(schedule_kind_from_name("cosin"),
                       doctest::Contains("unknown learning-rate schedule 'cosin': expected cosine, linear or constant"),
                       Error);
  CHECK_THROWS_WITH_AS(LrSchedule({.lr = 0.0}), doctest::Contains("lr must be finite and positive, found 0"), Error);
  CHECK_THROWS_WITH_AS(LrSchedule({.total_steps = 0}), doctest::Contains("total_steps must be >= 1, found 0"), Error);
  CHECK_THROWS_WITH_AS(LrSchedule({.total_steps = 10, .warmup_steps = 11}),
                       doctest::Contains("warmup_steps must be in [0, total_steps = 10], found 11"), Error);
  CHECK_THROWS_WITH_AS(LrSchedule({.min_lr_ratio = 1.5}), doctest::Contains("min_lr_ratio must be in [0, 1], found 1.5"),
                       Error);
  CHECK_THROWS_WITH_AS(make(ScheduleKind::cosine).lr_at(-1), doctest::Contains("step must be >= 0, found -1"), Error);
}
