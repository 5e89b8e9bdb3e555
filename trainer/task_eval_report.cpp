#include "trainer/task_eval_report.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "trainer/device_select.h"
#include "trainer/run_dir.h"

namespace scanline {

namespace {

std::string json_string(const std::string& text) {
  std::string out = "\"";
  for (unsigned char c : text) {
    if (c == '"' || c == '\\') out += std::string("\\") + char(c);
    else if (c < 0x20) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\u%04x", c);
      out += hex;
    } else out += char(c);
  }
  return out + "\"";
}

}  // namespace

std::vector<LengthScore> score_lengths(const std::vector<int64_t>& lengths,
                                       const std::vector<std::vector<TaskExample>>& examples, GreedyStepper& stepper,
                                       int64_t batch) {
  SCANLINE_CHECK(lengths.size() == examples.size(), "score_lengths: ", lengths.size(), " lengths but ",
                 examples.size(), " sets of examples");
  std::printf("| length | examples | answer exact match | token accuracy | seconds |\n");
  std::printf("| ---: | ---: | ---: | ---: | ---: |\n");
  std::fflush(stdout);
  std::vector<LengthScore> scores;
  for (size_t i = 0; i < lengths.size(); ++i) {
    const auto start = std::chrono::steady_clock::now();
    LengthScore row{lengths[i], score_examples(examples[i], stepper, batch), 0};
    row.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("| %lld | %lld | %.4f | %.4f | %.2f |\n", (long long)row.length, (long long)row.score.examples,
                row.score.exact_match(), row.score.token_accuracy(), row.seconds);
    std::fflush(stdout);  // a long evaluation shows each length as it ends
    scores.push_back(std::move(row));
  }
  return scores;
}

void write_task_eval_json(std::ostream& out, const TaskEvalInfo& info, const std::vector<LengthScore>& scores) {
  out << "{\"name\": " << json_string(info.name) << ", \"task\": " << json_string(info.task)
      << ", \"checkpoint\": " << json_string(info.checkpoint) << ", \"step\": " << info.step
      << ", \"dtype\": " << json_string(dtype_name(info.compute)) << ", \"task_options\": {";
  bool first = true;
  for (const auto& [key, value] : info.options.values()) {
    out << (first ? "" : ", ") << json_string(key) << ": " << json_string(value);
    first = false;
  }
  out << "},\n \"lengths\": [";
  char buffer[256];
  for (size_t i = 0; i < scores.size(); ++i) {
    const TaskScore& s = scores[i].score;
    std::snprintf(buffer, sizeof buffer,
                  "%s\n  {\"length\": %lld, \"examples\": %lld, \"exact_match\": %.15g, \"token_accuracy\": %.15g, "
                  "\"seconds\": %.3f}",
                  i ? "," : "", (long long)scores[i].length, (long long)s.examples, s.exact_match(),
                  s.token_accuracy(), scores[i].seconds);
    out << buffer;
  }
  out << "]}\n";
}

void evaluate_trained_model(const LanguageModel& model, Device device, const RunConfig& config,
                            const std::string& checkpoint, int64_t step) {
  namespace fs = std::filesystem;
  const EvalConfig& e = config.eval;
  TaskEvalInfo info;
  fs::path run_dir(config.train.run_dir);
  if (!run_dir.has_filename()) run_dir = run_dir.parent_path();  // "runs/x/" is named x too
  info.name = run_dir.filename().string();
  info.task = config.data.task;
  info.options = config.data.task_options;
  info.checkpoint = checkpoint;
  info.step = step;
  info.compute = compute_dtype(config.train.precision);  // as trained
  // The loader made one example at every length, so these cannot fail on a length.
  std::vector<std::vector<TaskExample>> examples;
  for (int64_t length : e.lengths)
    examples.push_back(task_examples(task_config_at_length(config, info.task, info.options, length), e.examples));
  spdlog::info("task evaluation (eval.lengths): {} at step {}, {} examples a length, greedy through step() on {}, {}",
               info.task, step, e.examples, describe_device(device), dtype_name(info.compute));
  ModelStepper stepper(model, info.compute);
  const std::vector<LengthScore> scores = score_lengths(e.lengths, examples, stepper, e.batch);
  const fs::path path = fs::path(config.train.run_dir) / "eval.json";
  std::ostringstream json;
  write_task_eval_json(json, info, scores);
  write_file_atomically(path.string(), json.str());
  spdlog::info("task evaluation written to {}", path.string());
}

}  // namespace scanline
