#include "trainer/progress_line.h"

#include <fmt/format.h>

#include <cmath>

namespace scanline {

namespace {
std::string rate(double per_s) {
  if (per_s >= 1e6) return fmt::format("{:.2f}M", per_s / 1e6);
  if (per_s >= 1e3) return fmt::format("{:.1f}k", per_s / 1e3);
  return fmt::format("{:.0f}", per_s);
}
}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = int64_t(std::llround(seconds));
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

std::string format_progress(const ProgressLine& p) {
  const int width = int(fmt::formatted_size("{}", p.total_steps));
  std::string out = fmt::format("step {:>{}}/{} | loss {:.4f} | lr {:.2e} | grad norm {:.3f} | {} tok/s", p.step, width,
                                p.total_steps, p.loss, p.lr, p.grad_norm, rate(p.tokens_per_s));
  if (p.mfu) out += fmt::format(" | MFU {:.1f}%", 100.0 * *p.mfu);
  out += fmt::format(" | {} {:.0f} MiB | ETA {}", p.memory_what, p.memory_mib, format_duration(p.eta_s));
  if (p.skipped > 0) out += fmt::format(" | skipped {}", p.skipped);
  return out;
}

}  // namespace scanline
