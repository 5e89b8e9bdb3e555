#include "trainer/batch_sources.h"

#include <sstream>

#include "data/selective_copying.h"
#include "data/token_dataset.h"
#include "data/window_loader.h"

namespace scanline {

namespace {

[[noreturn]] void config_problem(const RunConfig& config, const std::string& key_path, const std::string& message) {
  throw ConfigError({config.where(key_path) + ": " + key_path + ": " + message});
}

// A generator's own check (e.g. seq_len too short for the task) reported at the config's line.
template <typename Make>
auto checked(const RunConfig& config, const std::string& key_path, Make make) {
  try {
    return make();
  } catch (const ConfigError&) {
    throw;
  } catch (const Error& e) {
    config_problem(config, key_path, e.what());
  }
}

BatchSources selective_copying_sources(const RunConfig& config, int64_t micro_batch, int64_t eval_batch,
                                       int64_t rank, int64_t world) {
  const TaskOptions& task_options = config.data.task_options;
  task_options.check_known({"n_memorize", "n_colors", "n_noise"});
  SelectiveCopyingOptions o;
  o.seq_len = config.data.seq_len;
  o.n_memorize = task_options.get_int("n_memorize", 16, 1);
  o.n_colors = task_options.get_int("n_colors", 8, 1);
  o.n_noise = task_options.get_int("n_noise", 0, 0);
  o.seed = config.train.seed;
  o.rank = rank;
  o.world = world;
  o.batch = micro_batch;
  BatchSources sources;
  sources.train = checked(config, "data.seq_len", [&] { return std::make_unique<SelectiveCopying>(o); });
  SelectiveCopyingOptions v = o;
  v.seed = validation_seed(config.train.seed);
  v.batch = eval_batch;
  auto val = std::make_unique<SelectiveCopying>(v);
  sources.vocab_size = val->vocab_size();
  std::ostringstream text;
  text << "selective_copying: seq_len " << o.seq_len << ", " << o.n_memorize << " tokens to recall among "
       << val->region_length() << " positions, " << o.n_colors << " colours, " << o.n_noise
       << " noise tokens; vocab " << sources.vocab_size << "; validation seed " << v.seed;
  sources.description = text.str();
  sources.val = std::move(val);
  return sources;
}

BatchSources dataset_sources(const RunConfig& config, int64_t micro_batch, int64_t eval_batch, int64_t rank,
                             int64_t world) {
  auto dataset = checked(config, "data.dataset",
                         [&] { return std::make_shared<const TokenDataset>(config.data.dataset); });
  WindowLoaderOptions o;
  o.seq_len = config.data.seq_len;
  o.batch = micro_batch;
  o.seed = config.train.seed;
  o.rank = rank;
  o.world = world;
  o.val_fraction = config.data.val_fraction;
  o.split = Split::train;
  BatchSources sources;
  sources.train = checked(config, "data.dataset", [&] { return std::make_unique<WindowLoader>(dataset, o); });
  WindowLoaderOptions v = o;
  v.split = Split::val;
  v.batch = eval_batch;
  auto val = checked(config, "data.val_fraction", [&] { return std::make_unique<WindowLoader>(dataset, v); });
  sources.vocab_size = dataset->vocab_size();
  std::ostringstream text;
  text << "dataset '" << dataset->path() << "': " << dataset->size() << " tokens (tokenizer " << dataset->tokenizer()
       << ", vocab " << dataset->vocab_size() << "), train " << val->range().begin << " / val "
       << val->range().size() << " tokens, seq_len " << o.seq_len;
  sources.description = text.str();
  sources.val = std::move(val);
  return sources;
}

}  // namespace

uint64_t validation_seed(uint64_t train_seed) { return train_seed ^ 0x9e3779b97f4a7c15ull; }

BatchSources make_batch_sources(const RunConfig& config, int64_t micro_batch, int64_t eval_batch, int64_t rank,
                                int64_t world) {
  BatchSources sources;
  if (!config.data.dataset.empty()) {
    sources = dataset_sources(config, micro_batch, eval_batch, rank, world);
  } else if (config.data.task == "selective_copying") {
    sources = selective_copying_sources(config, micro_batch, eval_batch, rank, world);
  } else {
    config_problem(config, "data.task",
                   "the '" + config.data.task +
                       "' generator arrives with the evaluation issue; this build streams selective_copying "
                       "(or set data.dataset)");
  }
  if (config.model.vocab_size < sources.vocab_size)
    config_problem(config, "model.vocab_size",
                   std::to_string(config.model.vocab_size) + " is smaller than the data's vocabulary of " +
                       std::to_string(sources.vocab_size) + " tokens (" +
                       (config.data.dataset.empty() ? "task " + config.data.task : "dataset " + config.data.dataset) +
                       "); set it to at least " + std::to_string(sources.vocab_size));
  return sources;
}

}  // namespace scanline
