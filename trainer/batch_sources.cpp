#include "trainer/batch_sources.h"

#include <sstream>

#include "data/copying.h"
#include "data/induction_heads.h"
#include "data/phonebook.h"
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

// What every task shares: the train source at this rank (its own problems, e.g. seq_len too short
// for the task, reported at data.seq_len) and the validation source under its own seed.
template <typename Task, typename Options>
BatchSources task_sources(const RunConfig& config, Options o, int64_t micro_batch, int64_t eval_batch, int64_t rank,
                          int64_t world) {
  o.seq_len = config.data.seq_len;
  o.seed = config.train.seed;
  o.rank = rank;
  o.world = world;
  o.batch = micro_batch;
  BatchSources sources;
  sources.train = checked(config, "data.seq_len", [&] { return std::make_unique<Task>(o); });
  Options v = o;
  v.seed = validation_seed(config.train.seed);
  v.batch = eval_batch;
  v.rank = 0;  // every rank evaluates the same batches
  v.world = 1;
  auto val = std::make_unique<Task>(v);
  sources.vocab_size = val->vocab_size();
  sources.val = std::move(val);
  return sources;
}

// An option that must not exceed another: reported at the option the config sets (`low` first).
void check_order(const RunConfig& config, const std::string& low, int64_t low_value, const std::string& high,
                 int64_t high_value, const std::string& message) {
  if (low_value <= high_value) return;
  const TaskOptions& options = config.data.task_options;
  config_problem(config, "data.task_options." + (options.has(low) || !options.has(high) ? low : high), message);
}

BatchSources selective_copying_sources(const RunConfig& config, int64_t micro_batch, int64_t eval_batch,
                                       int64_t rank, int64_t world) {
  const TaskOptions& task_options = config.data.task_options;
  task_options.check_known({"n_memorize", "n_colors", "n_noise"});
  SelectiveCopyingOptions o;
  o.n_memorize = task_options.get_int("n_memorize", 16, 1);
  o.n_colors = task_options.get_int("n_colors", 8, 1);
  o.n_noise = task_options.get_int("n_noise", 0, 0);
  BatchSources sources = task_sources<SelectiveCopying>(config, o, micro_batch, eval_batch, rank, world);
  std::ostringstream text;
  text << "selective_copying: seq_len " << config.data.seq_len << ", " << o.n_memorize << " tokens to recall among "
       << config.data.seq_len - 1 - o.n_memorize << " positions, " << o.n_colors << " colours, " << o.n_noise
       << " noise tokens; vocab " << sources.vocab_size << "; validation seed " << validation_seed(config.train.seed);
  sources.description = text.str();
  return sources;
}

BatchSources copying_sources(const RunConfig& config, int64_t micro_batch, int64_t eval_batch, int64_t rank,
                             int64_t world) {
  const TaskOptions& task_options = config.data.task_options;
  task_options.check_known({"n_tokens", "min_len", "max_len"});
  CopyingOptions o;
  o.n_tokens = task_options.get_int("n_tokens", o.n_tokens, 1, 254);
  o.min_len = task_options.get_int("min_len", o.min_len, 1);
  o.max_len = task_options.get_int("max_len", o.max_len, 1);
  check_order(config, "min_len", o.min_len, "max_len", o.max_len,
              "min_len " + std::to_string(o.min_len) + " is greater than max_len " + std::to_string(o.max_len));
  BatchSources sources = task_sources<Copying>(config, o, micro_batch, eval_batch, rank, world);
  std::ostringstream text;
  text << "copying: seq_len " << config.data.seq_len << ", strings of " << o.min_len << ".." << o.max_len
       << " tokens over " << o.n_tokens << " symbols; vocab " << sources.vocab_size << "; validation seed "
       << validation_seed(config.train.seed);
  sources.description = text.str();
  return sources;
}

BatchSources induction_heads_sources(const RunConfig& config, int64_t micro_batch, int64_t eval_batch, int64_t rank,
                                     int64_t world) {
  const TaskOptions& task_options = config.data.task_options;
  task_options.check_known({"n_tokens", "key_distance"});
  InductionHeadsOptions o;
  o.n_tokens = task_options.get_int("n_tokens", o.n_tokens, 1, 255);
  o.key_distance = task_options.get_int("key_distance", o.key_distance, 0);  // its upper bound: the generator's
  BatchSources sources = task_sources<InductionHeads>(config, o, micro_batch, eval_batch, rank, world);
  std::ostringstream text;
  text << "induction_heads: seq_len " << config.data.seq_len << ", " << o.n_tokens
       << " ordinary tokens and a special one; vocab " << sources.vocab_size << "; validation seed "
       << validation_seed(config.train.seed);
  if (o.key_distance > 0) text << "; the key " << o.key_distance << " tokens before the end";
  sources.description = text.str();
  return sources;
}

BatchSources phonebook_sources(const RunConfig& config, int64_t micro_batch, int64_t eval_batch, int64_t rank,
                               int64_t world) {
  const TaskOptions& task_options = config.data.task_options;
  task_options.check_known({"entries", "digits", "shots"});
  PhonebookOptions o;
  o.digits = task_options.get_int("digits", o.digits, 1, 18);
  int64_t numbers = 1;
  for (int64_t d = 0; d < o.digits; ++d) numbers *= 10;
  o.entries = task_options.get_int("entries", o.entries, 1, Phonebook::kMaxEntries);
  check_order(config, "entries", o.entries, "digits", numbers / 2,
              std::to_string(o.entries) + " entries need unique " + std::to_string(o.digits) +
                  "-digit numbers; at most " + std::to_string(numbers / 2) + " are allowed");
  o.shots = task_options.get_int("shots", o.shots, 0);
  check_order(config, "shots", o.shots, "entries", o.entries - 1,
              "shots " + std::to_string(o.shots) + " must be below entries = " + std::to_string(o.entries) +
                  " (distinct entries besides the queried one)");
  BatchSources sources = task_sources<Phonebook>(config, o, micro_batch, eval_batch, rank, world);
  std::ostringstream text;
  text << "phonebook: seq_len " << config.data.seq_len << " (the longest book needs "
       << Phonebook::required_seq_len(o) << "), " << o.entries << " entries, " << o.digits << "-digit numbers, "
       << o.shots << " shots; byte vocab " << sources.vocab_size << "; validation seed "
       << validation_seed(config.train.seed);
  sources.description = text.str();
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
  v.rank = 0;  // every rank evaluates the same batches
  v.world = 1;
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
  } else if (config.data.task == "copying") {
    sources = copying_sources(config, micro_batch, eval_batch, rank, world);
  } else if (config.data.task == "induction_heads") {
    sources = induction_heads_sources(config, micro_batch, eval_batch, rank, world);
  } else if (config.data.task == "phonebook") {
    sources = phonebook_sources(config, micro_batch, eval_batch, rank, world);
  } else {
    config_problem(config, "data.task", "no generator streams the task '" + config.data.task + "'");
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
