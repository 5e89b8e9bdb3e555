#include "trainer/trainer.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "autograd/engine.h"
#include "core/random.h"
#include "ops/ops.h"
#include "trainer/adamw.h"
#include "trainer/batch_sources.h"
#include "trainer/checkpoint.h"
#include "trainer/config_loader.h"
#include "trainer/device_select.h"
#include "trainer/distributed_setup.h"
#include "trainer/grad_clip.h"
#include "trainer/grad_reducer.h"
#include "trainer/lr_schedule.h"
#include "trainer/metrics_log.h"
#include "trainer/model_factory.h"
#include "trainer/progress_line.h"
#include "trainer/run_checkpoint.h"
#include "trainer/run_dir.h"

namespace scanline {

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

LrSchedule make_schedule(const RunConfig& config) {
  if (config.schedule.warmup_steps > config.train.steps)
    throw ConfigError({config.where("schedule.warmup_steps") + ": schedule.warmup_steps: " +
                       std::to_string(config.schedule.warmup_steps) + " is more than train.steps (" +
                       std::to_string(config.train.steps) + ")"});
  return LrSchedule({.kind = config.schedule.kind,
                     .lr = config.optim.lr,
                     .total_steps = config.train.steps,
                     .warmup_steps = config.schedule.warmup_steps,
                     .min_lr_ratio = config.schedule.min_lr_ratio,
                     .warmup_start = WarmupStart::one_step});  // no wasted first update at lr 0
}

// One line a section of the resolved config: "model: ssm mamba1, d_model 64, ...".
void log_config(const std::string& config_yaml) {
  std::string section, line;
  auto flush = [&] {
    if (!line.empty()) spdlog::info("  {}: {}", section, line);
    line.clear();
  };
  for (const auto& [key, value] : config_entries(config_yaml)) {
    const std::string head = key.substr(0, key.find('.'));
    if (head != section) flush(), section = head;
    line += (line.empty() ? "" : ", ") + key.substr(head.size() + 1) + " " + value;
  }
  flush();
}

// The steps since the previous progress line.
struct Interval {
  int64_t steps = 0, finite_steps = 0;
  double loss_sum = 0, seconds = 0;
  double mean_loss() const { return finite_steps ? loss_sum / double(finite_steps) : std::nan(""); }
};

}  // namespace

struct Trainer::State {
  RunConfig config;
  TrainerOptions options;
  Device device;
  DType compute = DType::f32;
  LrSchedule schedule{LrScheduleOptions{}};
  BatchSources sources;
  std::vector<int64_t> val_start;  // every evaluation replays the same validation batches
  Generator init_gen;
  std::unique_ptr<LanguageModel> model;
  std::vector<NamedParameter> params;
  std::vector<Tensor> param_tensors;
  std::unique_ptr<AdamW> optimizer;
  std::unique_ptr<GradReducer> reducer;  // with more than one rank
  int rank = 0, world = 1;
  std::unique_ptr<MetricsLog> metrics;   // rank 0 only
  std::string config_yaml;
  std::optional<std::string> resumed_from;
  std::string last_checkpoint;
  int64_t step = 0, tokens_seen = 0, skipped = 0;

  StepRecord train_step(int64_t n);
  EvalResult run_eval();
  void save(int64_t at_step, std::vector<std::string>& written);
};

Trainer::Trainer(RunConfig config, TrainerOptions options) : s_(std::make_unique<State>()) {
  State& s = *s_;
  // Everything that can be wrong is found before the run folder is touched.
  validate_run_config(config);
  if (options.comm) s.rank = options.comm->rank(), s.world = options.comm->world_size();
  validate_for_world(config, s.world);
  const LanguageModelConfig lm_config = language_model_config(config);
  s.schedule = make_schedule(config);
  s.device = options.device ? *options.device : resolve_device(config);
  check_device_support(config, lm_config, s.device);
  s.compute = compute_dtype(config.train.precision);
  // Each rank: batch_size / world sequences a step (its shard of the global batch), in grad_accum
  // micro-batches. Every rank evaluates the same validation batches.
  const int64_t micro_batch = config.train.batch_size / s.world / config.train.grad_accum;
  const int64_t eval_batch = config.train.batch_size / config.train.grad_accum;  // as a 1-rank run's
  s.sources = make_batch_sources(config, micro_batch, eval_batch, s.rank, s.world);
  s.val_start = s.sources.val->position();

  std::vector<std::string> warnings;
  std::optional<std::string> resume_path = resume_checkpoint(config.train.run_dir, options.resume, warnings);
  for (const std::string& w : warnings) spdlog::warn("warning: {}", w);
  std::optional<Checkpoint> checkpoint;
  if (resume_path) {
    checkpoint = load_checkpoint(*resume_path);
    check_resume_config(config, checkpoint->config_yaml, *resume_path);
  } else if (options.resume == "auto") {
    spdlog::info("no checkpoint in '{}' to resume from: starting a fresh run", config.train.run_dir);
  }
  std::optional<LoopPositions> positions;
  if (checkpoint) positions = LoopPositions::decode(checkpoint->state.loader_position, *resume_path);

  s.config = std::move(config);
  s.options = std::move(options);
  s.config_yaml = to_yaml(s.config);
  if (s.rank == 0) {
    prepare_run_dir(s.config.train.run_dir, s.config_yaml);
    spdlog::info("run folder {} (resolved config in config.yaml):", s.config.train.run_dir);
    log_config(s.config_yaml);
  }
  spdlog::info("device {}, precision {}{}", describe_device(s.device), to_string(s.config.train.precision),
               s.world > 1 ? fmt::format(", rank {} of {}", s.rank, s.world) : std::string());
  spdlog::info("data: {}", s.sources.description);

  s.init_gen = Generator(s.config.train.seed);
  s.model = std::make_unique<LanguageModel>(lm_config, s.init_gen, TensorOptions{}.with_device(s.device));
  const std::string summary = s.model->summary();
  for (std::string_view rest = summary; !rest.empty();) {
    const size_t end = rest.find('\n');
    spdlog::info("{}", rest.substr(0, end));
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end + 1);
  }
  s.params = s.model->named_parameters();
  s.param_tensors = s.model->parameters();
  const OptimConfig& o = s.config.optim;
  s.optimizer = std::make_unique<AdamW>(
      s.params, AdamWOptions{.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = o.eps, .weight_decay = o.weight_decay});

  if (checkpoint) {
    load_parameters(s.params, *checkpoint, *resume_path);
    s.optimizer->load_state(positions->optimizer_steps, optimizer_moments(*checkpoint));
    s.sources.train->set_position(positions->train);
    s.sources.val->set_position(positions->val);
    for (const auto& [name, state] : checkpoint->state.generators)
      if (name == "model_init") s.init_gen.set_state(state[0], state[1]);
    s.step = checkpoint->state.step;
    s.tokens_seen = checkpoint->state.tokens_seen;
    s.skipped = positions->skipped_steps;
    s.resumed_from = *resume_path;
    s.last_checkpoint = *resume_path;
    spdlog::info("resumed from {} at step {} ({} tokens seen)", *resume_path, s.step, s.tokens_seen);
  }
  if (s.world > 1) s.reducer = replicate_and_reduce(s.param_tensors, *s.options.comm, s.config.distributed);
  if (s.rank == 0) {
    const std::string metrics_path = (std::filesystem::path(s.config.train.run_dir) / "metrics.jsonl").string();
    s.metrics = std::make_unique<MetricsLog>(metrics_path, checkpoint ? s.step : -1);
  }
}

Trainer::~Trainer() = default;

const LanguageModel& Trainer::model() const { return *s_->model; }
const RunConfig& Trainer::config() const { return s_->config; }
Device Trainer::device() const { return s_->device; }

StepRecord Trainer::State::train_step(int64_t n) {
  StepRecord rec;
  rec.step = n;
  rec.lr = schedule.lr_at(n - 1);
  if (options.hooks.before_step) options.hooks.before_step(n, params);
  optimizer->zero_grad();
  const int64_t accum = config.train.grad_accum;
  double loss_sum = 0;
  bool loss_finite = true;
  for (int64_t i = 0; i < accum; ++i) {
    Batch batch = sources.train->next();  // drawn even after a non-finite loss: the stream stays in step
    if (!loss_finite) continue;
    Tensor logits = model->forward(to_device(batch.inputs, device), compute);
    // The loss is f32 whatever the logits' dtype; the logits' gradient comes back in their dtype.
    Tensor loss = cross_entropy(reshape(logits, {-1, logits.size(-1)}), reshape(to_device(batch.targets, device), {-1}),
                                kIgnoreIndex, Reduction::mean, DType::f32);
    const double value = loss.item<double>();
    if (!std::isfinite(value)) {
      loss_finite = false;
      loss_sum = value;
      continue;
    }
    loss_sum += value;
    // The last micro-batch's backward hands each finished gradient bucket to the reducer.
    const Tensor scaled = accum > 1 ? mul(loss, 1.0 / double(accum)) : loss;
    if (reducer && i + 1 == accum && config.distributed.overlap) backward(scaled, Tensor(), false, reducer->hook());
    else backward(scaled);
  }
  rec.loss = loss_finite ? loss_sum / double(accum) : loss_sum;
  if (reducer) {
    // Reduce what is left and wait; then the mean loss over the ranks, which also makes a
    // non-finite loss on any rank non-finite on all, so every rank takes the same decision.
    reducer->finish();
    Tensor mean_loss = full({1}, rec.loss, {.dtype = DType::f32, .device = device});
    options.comm->all_reduce(mean_loss, ReduceOp::average);
    options.comm->wait_pending();
    rec.loss = mean_loss.item<double>();
    loss_finite = std::isfinite(rec.loss);
  }
  if (options.hooks.after_backward) options.hooks.after_backward(n, params);
  const double clip = config.optim.grad_clip;
  rec.grad_norm = !loss_finite ? std::numeric_limits<double>::quiet_NaN()
                  : clip > 0   ? clip_grad_norm(param_tensors, clip)
                               : global_grad_norm(param_tensors);
  const char* bad = !loss_finite ? "loss" : !std::isfinite(rec.grad_norm) ? "gradient norm" : nullptr;
  if (!bad) {
    optimizer->step(rec.lr);
    return rec;
  }
  const std::string what = fmt::format("step {}: the {} is {}", n, bad, !loss_finite ? rec.loss : rec.grad_norm);
  if (config.train.on_nonfinite == NonfinitePolicy::stop)
    throw NonfiniteError(
        what + "; stopping (train.on_nonfinite: stop). " +
            (last_checkpoint.empty() ? std::string("No checkpoint was written yet.")
                                     : "The newest checkpoint is " + last_checkpoint + ".") +
            " Lower optim.lr, raise schedule.warmup_steps or optim.grad_clip, or set train.on_nonfinite: skip, "
            "then --resume auto",
        n);
  optimizer->zero_grad();
  rec.skipped = true;
  ++skipped;
  spdlog::warn("warning: {}; skipping this update (train.on_nonfinite: skip), {} skipped so far", what, skipped);
  return rec;
}

EvalResult Trainer::State::run_eval() {
  const auto start = Clock::now();
  sources.val->set_position(val_start);
  EvalResult e = evaluate(*model, *sources.val, config.eval.batches, compute, device);
  spdlog::info("eval  step {}/{} | loss {:.4f} | accuracy {:.2f}% ({} scored targets in {} batches, {:.1f}s)", step,
               config.train.steps, e.loss, 100.0 * e.accuracy, e.targets, e.batches, seconds_since(start));
  if (metrics) metrics->eval(step, e.loss, e.accuracy);
  return e;
}

void Trainer::State::save(int64_t at_step, std::vector<std::string>& written) {
  if (rank != 0) return;  // every rank holds the same parameters and moments: rank 0 writes them
  const auto start = Clock::now();
  LoopPositions positions{.optimizer_steps = optimizer->step_count(),
                          .skipped_steps = skipped,
                          .train = sources.train->position(),
                          .val = sources.val->position()};
  TrainState state{.step = at_step,
                   .tokens_seen = tokens_seen,
                   .world_size = world,
                   .generators = {{"model_init", {init_gen.seed(), init_gen.offset()}}},
                   .loader_position = positions.encode()};
  const std::string path = checkpoint_path(config.train.run_dir, at_step);
  save_checkpoint(path, make_checkpoint(params, *optimizer, std::move(state), config_yaml));
  last_checkpoint = path;
  written.push_back(path);
  std::vector<std::string> warnings;
  const auto removed = prune_checkpoints(config.train.run_dir, config.checkpoint.keep, &warnings);
  for (const std::string& w : warnings) spdlog::warn("warning: {}", w);
  spdlog::info("checkpoint {} ({:.1f} MiB, {:.2f}s){}", path, double(std::filesystem::file_size(path)) / (1 << 20),
               seconds_since(start), removed.empty() ? "" : fmt::format(", {} older removed", removed.size()));
}

TrainResult Trainer::run() {
  State& s = *s_;
  const RunConfig& c = s.config;
  const int64_t total = c.train.steps;
  const int64_t tokens_per_step = c.train.batch_size * c.data.seq_len;
  const double n_params = double(s.model->parameter_count());
  const std::optional<double> peak = peak_flops(s.device, c.train.precision);
  TrainResult r;
  r.start_step = s.step;
  r.resumed_from = s.resumed_from;
  if (s.step >= total)
    spdlog::info("the checkpoint is at step {} and train.steps is {}: nothing left to train (raise train.steps to "
                 "continue)", s.step, total);
  else
    spdlog::info("training steps {}..{}: {} sequences of {} tokens a step (grad_accum {}), AdamW lr {} ({} "
                 "schedule, {} warmup steps)", s.step + 1, total, c.train.batch_size, c.data.seq_len,
                 c.train.grad_accum, c.optim.lr, to_string(c.schedule.kind), c.schedule.warmup_steps);
  if (peak) spdlog::info("MFU: 6 x {} parameters x tokens/s over a {:.0f} TFLOP/s peak (H100/H200 SXM dense {})",
                         n_params, *peak / 1e12, to_string(c.train.precision));
  int64_t last_saved = s.resumed_from ? s.step : -1;
  Interval interval;
  const auto run_start = Clock::now();
  while (s.step < total) {
    const auto start = Clock::now();
    StepRecord rec = s.train_step(s.step + 1);
    ++s.step;
    s.tokens_seen += tokens_per_step;
    interval.seconds += seconds_since(start);
    ++interval.steps;
    if (std::isfinite(rec.loss)) interval.loss_sum += rec.loss, ++interval.finite_steps;
    r.steps.push_back(rec);

    if (s.step % c.train.log_every == 0 || s.step == total || s.step == 1) {
      const double tokens_per_s = double(interval.steps * tokens_per_step) / interval.seconds;
      const MemoryUse memory = peak_memory(s.device);
      ProgressLine line;
      line.step = s.step;
      line.total_steps = total;
      line.loss = interval.mean_loss();
      line.lr = rec.lr;
      line.grad_norm = rec.grad_norm;
      line.tokens_per_s = tokens_per_s;
      line.memory_mib = memory.mib;
      line.memory_what = memory.what;
      line.eta_s = double(total - s.step) * interval.seconds / double(interval.steps);
      line.skipped = s.skipped;
      if (peak) line.mfu = 6.0 * n_params * tokens_per_s / *peak;
      spdlog::info("{}", format_progress(line));
      if (s.metrics) s.metrics->train(s.step, line.loss, rec.lr, rec.grad_norm, tokens_per_s, s.tokens_seen);
      interval = Interval{};
    }
    if (c.eval.every > 0 && s.step % c.eval.every == 0 && s.step < total) s.run_eval();
    if (c.checkpoint.every > 0 && s.step % c.checkpoint.every == 0 && s.step < total) {
      s.save(s.step, r.checkpoints_written);
      last_saved = s.step;
    }
    if (s.options.stop_after_step > 0 && s.step >= s.options.stop_after_step) {
      r.end_step = s.step;
      r.skipped_steps = s.skipped;
      return r;
    }
  }
  r.final_eval = s.run_eval();
  if (last_saved != s.step) s.save(s.step, r.checkpoints_written);
  r.end_step = s.step;
  r.skipped_steps = s.skipped;
  spdlog::info("trained {} steps in {}{}", r.steps.size(), format_duration(seconds_since(run_start)),
               s.skipped ? fmt::format(" ({} skipped for non-finite values)", s.skipped) : "");
  spdlog::info("final: step {}, eval loss {:.4f}, accuracy {:.1f}%", s.step, r.final_eval->loss,
               100.0 * r.final_eval->accuracy);
  return r;
}

}  // namespace scanline
