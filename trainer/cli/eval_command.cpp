// `scanline eval --checkpoint PATH|RUN_DIR [options]`: a trained model's accuracy on a synthetic
// task at several lengths, by greedy generation through step() (trainer/task_eval.h). The model
// is loaded as `generate` loads it (trainer/load_model.h). Every command-line problem is exit
// code 2 naming the flag; a corrupt checkpoint is reported by main (exit 1).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "trainer/cli/usage.h"
#include "trainer/config_loader.h"
#include "trainer/device_select.h"
#include "trainer/load_model.h"
#include "trainer/task_eval.h"
#include "trainer/task_eval_report.h"

namespace scanline::cli {

namespace {

namespace fs = std::filesystem;

constexpr const char* kUsage =
    "usage: scanline eval --checkpoint PATH [--config CONFIG.yaml] [--task T] [--lengths L,L,...]\n"
    "                     [--examples N] [--batch B] [--device auto|cpu|cuda] [--dtype f32|bf16]\n"
    "                     [--json OUT.json] [--name NAME] [--set data.task_options.KEY=VALUE ...]\n"
    "\n"
    "  --checkpoint PATH  a checkpoint file, or a run folder (its newest valid checkpoint)\n"
    "  --config FILE      build the model from this config instead of the one saved in the checkpoint\n"
    "  --task T           selective_copying, copying, induction_heads or phonebook\n"
    "                     (default: the run's data.task, with its data.task_options)\n"
    "  --lengths L,...    the lengths to test (default: the run's own); a length is\n"
    "                       selective_copying, induction_heads  the sequence length (seq_len)\n"
    "                       copying                             the string length (seq_len 2L)\n"
    "                       phonebook                           the entries in the book (seq_len to fit)\n"
    "  --examples N       examples a length (default 256): sequences 0..N-1 of the task's validation\n"
    "                     stream (the run's validation seed), which training never sees\n"
    "  --batch B          sequences run together (default 32; prompts of one length only)\n"
    "  --set data.task_options.KEY=VALUE\n"
    "                     a task option (e.g. data.task_options.digits=4); may repeat\n"
    "  --device D         auto (default: a GPU when present), cpu or cuda\n"
    "  --dtype D          f32 or bf16 activations (default: the run's train.precision)\n"
    "  --json FILE        also write the scores as JSON (tools/plot_eval.py draws them)\n"
    "  --name NAME        the name in the JSON and on plots (default: the run folder's name)\n"
    "\n"
    "Each example's prompt is prefilled, then every answer token is generated greedily, the model\n"
    "fed its own previous output (or, in selective copying, the next marker). Prints a Markdown\n"
    "table: answer exact match (every token of the answer right) and per-token accuracy a length.\n"
    "Exit codes: 0 done, 1 error (e.g. a corrupt checkpoint), 2 invalid command line.\n";

struct Args {
  ModelRequest model;
  std::string task, json, name;
  std::vector<int64_t> lengths;
  std::vector<std::string> sets;  // "KEY=VALUE" after data.task_options.
  int64_t examples = 256, batch = 32;
};

std::vector<int64_t> parse_lengths(const std::string& text) {
  std::vector<int64_t> lengths;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const int64_t length = parse_int("--lengths", item);
    if (length < 1) usage_problem("--lengths: every length must be at least 1, found " + item);
    lengths.push_back(length);
    if (comma == std::string::npos) return lengths;
    start = comma + 1;
  }
}

Args parse_args(int argc, char** argv) {
  Args a;
  auto value = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) usage_problem(flag + " expects a value");
    return argv[++i];
  };
  const std::string prefix = "data.task_options.";
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--checkpoint") a.model.checkpoint = value(i, flag);
    else if (flag == "--config") a.model.config = value(i, flag);
    else if (flag == "--task") {
      a.task = value(i, flag);
      const auto& names = eval_task_names();
      if (std::find(names.begin(), names.end(), a.task) == names.end())
        usage_problem("--task must be selective_copying, copying, induction_heads or phonebook, found '" + a.task +
                      "'");
    } else if (flag == "--lengths") a.lengths = parse_lengths(value(i, flag));
    else if (flag == "--examples") {
      a.examples = parse_int(flag, value(i, flag));
      if (a.examples < 1) usage_problem("--examples must be at least 1");
    } else if (flag == "--batch") {
      a.batch = parse_int(flag, value(i, flag));
      if (a.batch < 1) usage_problem("--batch must be at least 1");
    } else if (flag == "--set") {
      const std::string set = value(i, flag);
      if (set.rfind(prefix, 0) != 0 || set.find('=') == std::string::npos || set.find('=') == prefix.size())
        usage_problem("--set expects data.task_options.KEY=VALUE (eval overrides task options only), found '" + set +
                      "'");
      a.sets.push_back(set.substr(prefix.size()));
    } else if (flag == "--device") {
      a.model.device = value(i, flag);
      if (a.model.device != "auto" && a.model.device != "cpu" && a.model.device != "cuda")
        usage_problem("--device must be auto, cpu or cuda, found '" + a.model.device + "'");
    } else if (flag == "--dtype") {
      a.model.dtype = value(i, flag);
      if (a.model.dtype != "f32" && a.model.dtype != "bf16")
        usage_problem("--dtype must be f32 or bf16, found '" + a.model.dtype + "'");
    } else if (flag == "--json") a.json = value(i, flag);
    else if (flag == "--name") a.name = value(i, flag);
    else usage_problem("unknown option '" + flag + "'");
  }
  if (a.model.checkpoint.empty()) usage_problem("no checkpoint (--checkpoint PATH)");
  std::error_code ec;
  if (!fs::exists(a.model.checkpoint, ec)) usage_problem("--checkpoint '" + a.model.checkpoint + "' does not exist");
  if (!a.model.config.empty() && !fs::is_regular_file(a.model.config, ec))
    usage_problem("--config '" + a.model.config + "' does not exist");
  return a;
}

// The task options: the run's for its own task, none for another, then --set on top.
TaskOptions task_options(const Args& a, const RunConfig& config, const std::string& task) {
  TaskOptions options = task == config.data.task ? config.data.task_options : TaskOptions{};
  for (const std::string& set : a.sets) {
    const size_t eq = set.find('=');
    const std::string key = set.substr(0, eq);
    if ((task == "copying" && (key == "min_len" || key == "max_len")) || (task == "phonebook" && key == "entries"))
      usage_problem("--set data.task_options." + key + ": for " + task + " the length (--lengths) sets " + key);
    options.set(key, set.substr(eq + 1), "--set data.task_options." + set);
  }
  return options;
}

std::string join(const std::vector<std::string>& lines, const char* separator) {
  std::string out;
  for (const std::string& line : lines) out += (out.empty() ? "" : separator) + line;
  return out;
}

int run(const Args& a) {
  LoadedModel loaded;
  try {
    loaded = load_model(a.model);
  } catch (const ModelRequestError& e) {
    usage_problem(e.what());
  }
  const RunConfig& config = loaded.config;
  const std::string task = a.task.empty() ? config.data.task : a.task;
  if (task.empty()) usage_problem("--task: the run trained on a dataset; name a task to evaluate");
  const TaskOptions options = task_options(a, config, task);
  std::vector<int64_t> lengths = a.lengths;
  if (lengths.empty()) {
    if (task != config.data.task) usage_problem("--lengths: give the lengths to test " + task + " at");
    lengths.push_back(training_length(config));
  }
  const std::string name =
      !a.name.empty() ? a.name : fs::path(loaded.path).parent_path().filename().string();

  // Every length's examples first: a length the task cannot use stops before any work.
  std::vector<std::vector<TaskExample>> all_examples;
  for (int64_t length : lengths) {
    try {
      all_examples.push_back(task_examples(task_config_at_length(config, task, options, length), a.examples));
    } catch (const ConfigError& e) {
      usage_problem("--lengths " + std::to_string(length) + " (" + task + "): " + join(e.problems(), "; "));
    }
  }
  const std::string summary = loaded.model->summary();
  std::printf("%s (step %lld of %s) on %s, %s; task %s, %lld examples a length\n\n",
              summary.substr(0, summary.find('\n')).c_str(), (long long)loaded.step, loaded.path.c_str(),
              describe_device(loaded.device).c_str(), dtype_name(loaded.compute), task.c_str(),
              (long long)a.examples);
  // Opened before the work, so an unwritable path costs no evaluation.
  std::ofstream json;
  if (!a.json.empty()) {
    json.open(a.json);
    if (!json) usage_problem("--json '" + a.json + "' cannot be written");
  }
  ModelStepper stepper(*loaded.model, loaded.compute);
  const std::vector<LengthScore> scores = score_lengths(lengths, all_examples, stepper, a.batch);
  if (!a.json.empty()) {
    write_task_eval_json(json, {name, task, options, loaded.path, loaded.step, loaded.compute}, scores);
    if (!json.flush()) usage_problem("--json '" + a.json + "' cannot be written");
  }
  return 0;
}

}  // namespace

int eval(int argc, char** argv) {
  return run_command("eval", kUsage, argc, argv, [](int n, char** v) { return run(parse_args(n, v)); });
}

}  // namespace scanline::cli
