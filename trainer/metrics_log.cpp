#include "trainer/metrics_log.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <sstream>
#include <vector>

#include "core/error.h"

namespace scanline {

namespace {

std::string number(double v) { return std::isfinite(v) ? fmt::format("{}", v) : std::string("null"); }

// The step of a record this class wrote ({"step": N, ...}); -1 for anything else.
int64_t record_step(const std::string& line) {
  const std::string key = "{\"step\": ";
  if (line.rfind(key, 0) != 0) return -1;
  char* end = nullptr;
  long long step = std::strtoll(line.c_str() + key.size(), &end, 10);
  return end && *end == ',' ? int64_t(step) : -1;
}

}  // namespace

MetricsLog::MetricsLog(const std::string& path, int64_t resume_step) : path_(path) {
  std::vector<std::string> kept;
  if (resume_step >= 0) {
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      int64_t step = record_step(line);
      if (step >= 0 && step <= resume_step) kept.push_back(line);
    }
  }
  out_.open(path, std::ios::trunc);
  SCANLINE_CHECK(out_.good(), "cannot write the metrics file '", path, "'");
  for (const std::string& line : kept) write_line(line);
}

void MetricsLog::train(int64_t step, double loss, double lr, double grad_norm, double tokens_per_s, int64_t tokens) {
  write_line(fmt::format("{{\"step\": {}, \"loss\": {}, \"lr\": {}, \"grad_norm\": {}, \"tokens_per_s\": {}, "
                         "\"tokens\": {}}}",
                         step, number(loss), number(lr), number(grad_norm), number(tokens_per_s), tokens));
}

void MetricsLog::eval(int64_t step, double loss, double accuracy) {
  write_line(fmt::format("{{\"step\": {}, \"eval_loss\": {}, \"eval_accuracy\": {}}}", step, number(loss),
                         number(accuracy)));
}

void MetricsLog::write_line(const std::string& line) {
  out_ << line << '\n';
  out_.flush();  // a killed run keeps every record it printed
  SCANLINE_CHECK(out_.good(), "writing the metrics file '", path_, "' failed");
}

}  // namespace scanline
