// `scanline train CONFIG.yaml [--resume auto|PATH] [--set key=value ...]`: loads and validates the
// config, runs the Trainer, then (eval.lengths) the task evaluation of the trained model. Exit
// codes (trainer/cli/main.cpp): 0 done, 1 error, 2 bad config, 3 stopped on a non-finite loss or
// gradient (train.on_nonfinite: stop).
#include <spdlog/spdlog.h>

#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "trainer/config_loader.h"
#include "trainer/distributed_setup.h"
#include "trainer/task_eval_report.h"
#include "trainer/trainer.h"

namespace scanline::cli {

namespace {
void print_usage() {
  std::printf(
      "usage: scanline train CONFIG.yaml [--resume auto|PATH] [--set section.key=value ...]\n"
      "\n"
      "  --resume auto    continue from the newest valid checkpoint of train.run_dir (a fresh start\n"
      "                   when there is none); corrupt or truncated ones are skipped with a warning\n"
      "  --resume PATH    continue from that checkpoint (model and data sections must match)\n"
      "  --set K=V        override a config key, e.g. --set train.steps=100 --set optim.lr=1e-3\n"
      "\n"
      "with eval.lengths set (a synthetic task), the trained model's greedy accuracy at those lengths\n"
      "follows, as scanline eval measures it: a table on stdout and <train.run_dir>/eval.json\n"
      "\n"
      "exit codes: 0 done, 1 error, 2 invalid config, 3 stopped on a non-finite loss or gradient\n"
      "\n"
      "several GPUs: scanline launch --nproc N -- train CONFIG.yaml, or set RANK, WORLD_SIZE,\n"
      "LOCAL_RANK, MASTER_ADDR and MASTER_PORT as torchrun does (mpirun and srun variables work too)\n");
}
}  // namespace

int train(int argc, char** argv) {
  std::string config_path;
  TrainerOptions options;
  std::vector<std::string> overrides;
  auto usage_error = [](const std::string& message) {
    std::fprintf(stderr, "scanline train: %s (see scanline train --help)\n", message.c_str());
    return 2;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      print_usage();
      return 0;
    }
    if (arg == "--resume" || arg == "--set") {
      if (i + 1 >= argc || argv[i + 1][0] == '\0') return usage_error(arg + " expects a value");
      (arg == "--resume" ? options.resume : overrides.emplace_back()) = argv[++i];
    } else if (arg.starts_with("--resume=")) {
      options.resume = arg.substr(9);
      if (options.resume.empty()) return usage_error("--resume expects auto or a path");
    } else if (arg.starts_with("--set=")) {
      overrides.push_back(arg.substr(6));
    } else if (arg.starts_with("-")) {
      return usage_error("unknown option '" + arg + "' (expected --resume or --set)");
    } else if (!config_path.empty()) {
      return usage_error("one config file expected, got '" + config_path + "' and '" + arg + "'");
    } else {
      config_path = arg;
    }
  }
  if (config_path.empty()) {
    print_usage();
    return 2;
  }
  spdlog::set_pattern("[%T] %^%v%$");  // warnings say "warning:" themselves
  RunConfig config = load_run_config(config_path, overrides);  // ConfigError: exit code 2
  // Launched as one rank of several (scanline launch, torchrun-style variables, mpirun, srun):
  // this rank's GPU and communicator; rank 0 alone logs progress, the others warnings and errors.
  const std::unique_ptr<DistributedRun> dist = start_distributed(config);
  if (dist) {
    spdlog::set_pattern(fmt::format("[%T] [rank {}] %^%v%$", dist->info.rank));
    if (dist->info.rank != 0) spdlog::set_level(spdlog::level::warn);
    options.comm = dist->comm.get();
    options.device = dist->device;
  }
  Trainer trainer(std::move(config), options);
  const TrainResult result = trainer.run();
  if (dist) dist->finish();
  // eval.lengths: the task evaluation of the final parameters, by rank 0 alone and after the
  // others are released (a long evaluation must not run into their collective timeout).
  const RunConfig& c = trainer.config();
  if (!c.eval.lengths.empty() && !c.data.task.empty() && (!dist || dist->info.rank == 0)) {
    // The final checkpoint: written at the end, or the one resumed from when nothing was left to train.
    const std::string checkpoint =
        result.checkpoints_written.empty() ? result.resumed_from.value_or("") : result.checkpoints_written.back();
    evaluate_trained_model(trainer.model(), trainer.device(), c, checkpoint, result.end_step);
  }
  return 0;
}

}  // namespace scanline::cli
