#pragma once
// A task evaluation's report (trainer/task_eval.h), one for `scanline eval` and for the end of
// `scanline train` (eval.lengths): the Markdown table on stdout, a row as each length finishes,
// and the JSON that tools/plot_eval.py reads.
#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "models/language_model.h"
#include "trainer/run_config.h"
#include "trainer/task_eval.h"

namespace scanline {

// One length's scores and the seconds its examples took.
struct LengthScore {
  int64_t length = 0;
  TaskScore score;
  double seconds = 0;
};

// What the JSON records besides the scores.
struct TaskEvalInfo {
  std::string name;  // on plots: the run folder's name unless given
  std::string task;
  TaskOptions options;
  std::string checkpoint;  // the parameters evaluated, and their optimizer step
  int64_t step = 0;
  DType compute = DType::f32;
};

// Scores examples[i] (made at lengths[i]) through stepper, `batch` sequences at a time: prints
// the table's header, then each length's row once it is done.
std::vector<LengthScore> score_lengths(const std::vector<int64_t>& lengths,
                                       const std::vector<std::vector<TaskExample>>& examples, GreedyStepper& stepper,
                                       int64_t batch);

// {"name", "task", "checkpoint", "step", "dtype", "task_options": {...}, "lengths": [{"length",
// "examples", "exact_match", "token_accuracy", "seconds"}, ...]}. The caller checks the stream.
void write_task_eval_json(std::ostream& out, const TaskEvalInfo& info, const std::vector<LengthScore>& scores);

// The end of a training run with eval.lengths: the trained model (in memory, on its training
// device, in the run's precision) on the run's own task and options at every length, the table
// on stdout and the JSON in <run_dir>/eval.json. `checkpoint` holds these parameters at `step`.
// Throws Error when eval.json cannot be written.
void evaluate_trained_model(const LanguageModel& model, Device device, const RunConfig& config,
                            const std::string& checkpoint, int64_t step);

}  // namespace scanline
