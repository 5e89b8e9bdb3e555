#pragma once
// metrics.jsonl: one JSON object a line in the run folder, for tools/plot.py and anyone with jq.
//   {"step": 100, "loss": 0.52, "lr": 0.003, "grad_norm": 0.8, "tokens_per_s": 41000, "tokens": 204800}
//   {"step": 100, "eval_loss": 0.31, "eval_accuracy": 0.93}
// "loss" is the mean training loss over the steps since the previous record (the progress line's
// value); a non-finite number is written as null (JSON has no NaN). Numbers are written in the
// shortest form that reads back as the same double.
#include <cstdint>
#include <fstream>
#include <string>

namespace scanline {

class MetricsLog {
 public:
  // A fresh run starts the file anew. A resumed run (resume_step >= 0) keeps the records up to and
  // including resume_step and drops later ones, which the interrupted run wrote after the
  // checkpoint it resumes from, so the file reads as one uninterrupted run.
  explicit MetricsLog(const std::string& path, int64_t resume_step = -1);

  void train(int64_t step, double loss, double lr, double grad_norm, double tokens_per_s, int64_t tokens);
  void eval(int64_t step, double loss, double accuracy);
  const std::string& path() const { return path_; }

 private:
  void write_line(const std::string& line);
  std::string path_;
  std::ofstream out_;
};

}  // namespace scanline
