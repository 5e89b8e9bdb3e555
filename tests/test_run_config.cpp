#include <doctest/doctest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "models/language_model.h"
#include "trainer/config_loader.h"
#include "trainer/model_factory.h"
#include "trainer/run_config.h"

using namespace scanline;
namespace fs = std::filesystem;

namespace {

// This process's scratch folder for config files, removed at exit.
struct ScratchDir {
  fs::path path = fs::temp_directory_path() / ("scanline_test_run_config_" + std::to_string(::getpid()));
  ScratchDir() { fs::create_directories(path); }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

fs::path temp_dir() {
  static const ScratchDir dir;
  return dir.path;
}

std::string write_file(const std::string& name, const std::string& text) {
  fs::path path = temp_dir() / name;
  std::ofstream(path, std::ios::binary) << text;
  return path.string();
}

// A dataset file that exists (the loader only checks that it is there).
std::string dataset_path() {
  static const std::string path = write_file("tokens.h5", "not really HDF5");
  return path;
}

doctest::Contains contains(const std::string& text) { return doctest::Contains(doctest::String(text.c_str())); }

std::string default_yaml_path() { return (fs::path(__FILE__).parent_path().parent_path() / "configs/default.yaml").string(); }

// The ConfigError that fn throws; fails the test when it throws nothing or something else.
ConfigError config_error(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e;
  }
  FAIL("expected a ConfigError");
  return ConfigError({});
}

}  // namespace

TEST_CASE("run config defaults are the documented schema") {
  RunConfig c;
  CHECK(c.model.ssm == SsmKind::mamba1);
  CHECK(c.model.d_model == 64);
  CHECK(c.model.n_layers == 2);
  CHECK(c.model.pattern.empty());
  CHECK(c.model.hybrid.layers == 0);
  CHECK(c.model.hybrid.attention_ratio == 0.0);
  CHECK(c.model.hybrid.mlp_ratio == 0.0);
  CHECK_FALSE(c.model.uses_hybrid());
  CHECK(c.model.layer_pattern() == "MM");
  CHECK(c.model.vocab_size == 256);
  CHECK(c.model.d_state == 16);
  CHECK(c.model.d_conv == 4);
  CHECK(c.model.expand == 2);
  CHECK(c.model.dt_rank == 0);
  CHECK(c.model.resolved_dt_rank() == 4);
  CHECK(c.model.selective);
  CHECK(c.model.headdim == 64);
  CHECK(c.model.ngroups == 1);
  CHECK(c.model.chunk_size == 256);
  CHECK(c.model.tie_embeddings);
  CHECK(c.model.norm_eps == 1e-5);
  CHECK(c.data.task.empty());
  CHECK(c.data.dataset.empty());
  CHECK(c.data.seq_len == 256);
  CHECK(c.data.val_fraction == 0.01);
  CHECK(c.data.task_options.empty());
  CHECK(c.optim.lr == 1e-3);
  CHECK(c.optim.weight_decay == 0.1);
  CHECK(c.optim.beta1 == 0.9);
  CHECK(c.optim.beta2 == 0.95);
  CHECK(c.optim.eps == 1e-8);
  CHECK(c.optim.grad_clip == 1.0);
  CHECK(c.schedule.kind == ScheduleKind::cosine);
  CHECK(c.schedule.warmup_steps == 0);
  CHECK(c.schedule.min_lr_ratio == 0.1);
  CHECK(c.train.steps == 1000);
  CHECK(c.train.batch_size == 32);
  CHECK(c.train.grad_accum == 1);
  CHECK(c.train.precision == Precision::fp32);
  CHECK(c.train.seed == 0);
  CHECK(c.train.device == DeviceChoice::automatic);
  CHECK(c.train.log_every == 10);
  CHECK(c.train.on_nonfinite == NonfinitePolicy::stop);
  CHECK(c.eval.every == 0);
  CHECK(c.eval.batches == 4);
  CHECK(c.eval.lengths.empty());  // no task evaluation after training
  CHECK(c.eval.examples == 256);
  CHECK(c.eval.batch == 32);
  CHECK(c.checkpoint.every == 0);
  CHECK(c.checkpoint.keep == 3);
  CHECK(c.distributed.bucket_mb == 25.0);
  CHECK(c.distributed.reduce_dtype == Precision::fp32);

  // A file naming only the task gets every other default, and run_dir from the file's stem.
  RunConfig loaded = load_run_config(write_file("minimal.yaml", "data:\n  task: copying\n"));
  CHECK(loaded.train.run_dir == "runs/minimal");
  RunConfig expected;
  expected.data.task = "copying";
  expected.train.run_dir = "runs/minimal";
  CHECK(loaded == expected);
  CHECK(loaded.where("data.task") == loaded.source_file + ":2");
  CHECK(loaded.where("optim.lr") == loaded.source_file + ":1");  // not given, no optim section
}

TEST_CASE("a full valid file sets every key") {
  std::string path = write_file("full.yaml",
                                "model:\n"
                                "  ssm: mamba2\n  d_model: 96\n  n_layers: 3\n  pattern: M*M-\n  vocab_size: 50\n"
                                "  d_state: 8\n  d_conv: 3\n  expand: 3\n  dt_rank: 5\n  selective: false\n"
                                "  headdim: 32\n  ngroups: 3\n  chunk_size: 64\n"
                                "  tie_embeddings: no\n  norm_eps: 1.0e-6\n"
                                "data:\n"
                                "  task: phonebook\n  dataset: \"\"\n  seq_len: 128\n  val_fraction: 0.05\n"
                                "  task_options:\n    n_entries: 20\n    name_len: 4\n"
                                "optim:\n"
                                "  lr: 3e-4\n  weight_decay: 0\n  beta1: 0.8\n  beta2: 0.99\n  eps: 1e-6\n  grad_clip: 0\n"
                                "schedule:\n  kind: linear\n  warmup_steps: 10\n  min_lr_ratio: 0\n"
                                "train:\n"
                                "  steps: 1e4\n  batch_size: 64\n  grad_accum: 4\n  precision: bf16\n  seed: 17\n"
                                "  device: cpu\n  log_every: 5\n  on_nonfinite: skip\n  run_dir: /tmp/somewhere\n"
                                "eval:\n  every: 100\n  batches: 2\n  lengths: [8, 16]\n  examples: 64\n  batch: 8\n"
                                "checkpoint:\n  every: 500\n  keep: 1\n"
                                "distributed:\n  bucket_mb: 12.5\n  reduce_dtype: bf16\n");
  RunConfig c = load_run_config(path);
  CHECK(c.model.ssm == SsmKind::mamba2);
  CHECK(c.model.d_model == 96);
  CHECK(c.model.n_layers == 3);
  CHECK(c.model.pattern == "M*M-");
  CHECK(c.model.num_layers() == 4);  // the pattern wins
  CHECK(c.model.layer_pattern() == "M*M-");
  CHECK(c.model.vocab_size == 50);
  CHECK(c.model.d_state == 8);
  CHECK(c.model.d_conv == 3);
  CHECK(c.model.expand == 3);
  CHECK(c.model.dt_rank == 5);
  CHECK(c.model.resolved_dt_rank() == 5);
  CHECK_FALSE(c.model.selective);
  CHECK(c.model.headdim == 32);  // d_inner 288 in 9 heads, 3 groups
  CHECK(c.model.ngroups == 3);
  CHECK(c.model.chunk_size == 64);
  CHECK_FALSE(c.model.tie_embeddings);
  CHECK(c.model.norm_eps == 1e-6);
  CHECK(c.data.task == "phonebook");
  CHECK(c.data.dataset.empty());
  CHECK(c.data.seq_len == 128);
  CHECK(c.data.val_fraction == 0.05);
  CHECK(c.data.task_options.values() == std::map<std::string, std::string>{{"n_entries", "20"}, {"name_len", "4"}});
  CHECK(c.optim.lr == 3e-4);
  CHECK(c.optim.weight_decay == 0.0);
  CHECK(c.optim.beta1 == 0.8);
  CHECK(c.optim.beta2 == 0.99);
  CHECK(c.optim.eps == 1e-6);
  CHECK(c.optim.grad_clip == 0.0);
  CHECK(c.schedule.kind == ScheduleKind::linear);
  CHECK(c.schedule.warmup_steps == 10);
  CHECK(c.schedule.min_lr_ratio == 0.0);
  CHECK(c.train.steps == 10000);
  CHECK(c.train.batch_size == 64);
  CHECK(c.train.grad_accum == 4);
  CHECK(c.train.precision == Precision::bf16);
  CHECK(c.train.seed == 17);
  CHECK(c.train.device == DeviceChoice::cpu);
  CHECK(c.train.log_every == 5);
  CHECK(c.train.on_nonfinite == NonfinitePolicy::skip);
  CHECK(c.train.run_dir == "/tmp/somewhere");
  CHECK(c.eval.every == 100);
  CHECK(c.eval.batches == 2);
  CHECK(c.eval.lengths == std::vector<int64_t>{8, 16});
  CHECK(c.eval.examples == 64);
  CHECK(c.eval.batch == 8);
  CHECK(c.checkpoint.every == 500);
  CHECK(c.checkpoint.keep == 1);
  CHECK(c.distributed.bucket_mb == 12.5);
  CHECK(c.distributed.reduce_dtype == Precision::bf16);
  CHECK(c.where("train.seed") == path + ":41");
  CHECK(c.where("data.task_options.name_len") == path + ":24");
}

TEST_CASE("configs/default.yaml is a small CPU-friendly selective copying run") {
  RunConfig c = load_run_config(default_yaml_path());
  CHECK(c.model.ssm == SsmKind::mamba1);
  CHECK(c.model.d_model == 64);
  CHECK(c.model.num_layers() == 2);
  CHECK(c.model.d_state == 16);
  CHECK(c.data.task == "selective_copying");
  CHECK(c.data.task_options.get_int("n_colors", 0) == 8);
  CHECK(c.data.task_options.get_int("n_memorize", 0) >= 4);
  CHECK(c.train.precision == Precision::fp32);
  CHECK(c.train.batch_size == 64);
  CHECK(c.optim.lr == 3e-3);
  CHECK(c.schedule.kind == ScheduleKind::cosine);
  CHECK(c.schedule.warmup_steps > 0);
  CHECK(c.train.run_dir == "runs/default");
}

TEST_CASE("configs/hybrid_tiny.yaml is a small Mamba-2 / attention / MLP hybrid") {
  const std::string path = (fs::path(default_yaml_path()).parent_path() / "hybrid_tiny.yaml").string();
  RunConfig c = load_run_config(path);
  CHECK(c.model.ssm == SsmKind::mamba2);
  CHECK(c.model.uses_hybrid());
  CHECK(c.model.layer_pattern() == "MM*-");
  CHECK(language_model_config(c).pattern == "MM*-");
  CHECK(c.data.task == "selective_copying");
  CHECK(c.train.precision == Precision::fp32);
  CHECK(c.train.run_dir == "runs/hybrid_tiny");
}

TEST_CASE("on a GPU, sizes the CUDA kernels do not take fail at start naming the key") {
  const std::string path = (fs::path(default_yaml_path()).parent_path() / "hybrid_tiny.yaml").string();
  const RunConfig ok = load_run_config(path);
  CHECK_NOTHROW(check_device_support(ok, language_model_config(ok), Device::cuda(0)));
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"model.chunk_size=32", "model.chunk_size: the CUDA SSD kernels take chunk_size 64, 128 or 256; found 32"},
      {"model.headdim=16", "model.headdim: the CUDA SSD kernels take headdim 32, 64 or 128; found 16"},
      {"model.d_state=8", "model.d_state: the CUDA SSD kernels take d_state 16, 32, 64 or 128"},
      {"model.n_heads=2", "model.n_heads: the CUDA attention kernels take a head size of 64 or 128; found 32"},
  };
  for (const auto& [set, message] : bad) {
    CAPTURE(set);
    const RunConfig c = load_run_config(path, {set});
    const LanguageModelConfig lm = language_model_config(c);
    CHECK_NOTHROW(check_device_support(c, lm, Device::cpu()));  // the CPU reference takes any size
    CHECK_THROWS_WITH_AS(check_device_support(c, lm, Device::cuda(0)), doctest::Contains(message.c_str()), ConfigError);
  }
}

TEST_CASE("--set overrides are applied before validation") {
  std::string path = default_yaml_path();
  RunConfig c = load_run_config(path, {"optim.lr=1e-2", "train.steps=7", "model.pattern=M*M", "train.device=cpu",
                                       "data.task_options.n_memorize=6", "data.task_options.extra=abc",
                                       "train.run_dir=out/x"});
  CHECK(c.optim.lr == 1e-2);
  CHECK(c.train.steps == 7);
  CHECK(c.model.pattern == "M*M");
  CHECK(c.train.device == DeviceChoice::cpu);
  CHECK(c.data.task_options.get_int("n_memorize", 0) == 6);
  CHECK(c.data.task_options.get_string("extra", "") == "abc");
  CHECK(c.train.run_dir == "out/x");
  CHECK(c.where("optim.lr") == "--set optim.lr=1e-2");
  CHECK(c.data.task_options.where("n_memorize") == "--set data.task_options.n_memorize=6");

  // Later overrides win; an empty value clears a string, so a task run can switch to a dataset.
  // data.task_options= (empty) drops the file's options.
  RunConfig d = load_run_config(path, {"train.steps=7", "train.steps=9", "data.task=", "data.dataset=" + dataset_path(),
                                       "data.task_options="});
  CHECK(d.train.steps == 9);
  CHECK(d.data.task.empty());
  CHECK(d.data.dataset == dataset_path());
  CHECK(d.data.task_options.empty());

  struct Bad {
    std::string set, expected;
  };
  const std::vector<Bad> bad = {
      {"optim.learning_rate=3e-3", "--set optim.learning_rate=3e-3: optim.learning_rate: unknown key; did you mean 'lr'?"},
      {"optim.lr=-1", "--set optim.lr=-1: optim.lr: must be > 0.0, got -1.0"},
      {"train.steps=many", "--set train.steps=many: train.steps: expected an integer, got 'many'"},
      {"trian.steps=3", "--set trian.steps=3: trian.steps: unknown section; did you mean 'train'?"},
      {"train.steps", "--set train.steps: expected section.key=value"},
      {"train=3", "--set train=3: train: name a key: section.key=value"},
      {"model.pattern=*M", "--set model.pattern=*M: model.pattern: the value is not a YAML scalar"},
      {"train.batch_size=[1, 2]", "--set train.batch_size=[1, 2]: train.batch_size: expected an integer, got a list"},
  };
  for (const Bad& b : bad) {
    INFO(b.set);
    CHECK_THROWS_WITH_AS(load_run_config(path, {b.set}), contains(b.expected), ConfigError);
  }
}

TEST_CASE("to_yaml writes every key and reloads to the same config") {
  RunConfig c = load_run_config(default_yaml_path(),
                                {"model.pattern=\"*M-M\"", "optim.eps=1.5e-9", "optim.lr=0.1", "train.seed=123456789",
                                 "train.run_dir=runs/with space \"and quote\"", "distributed.bucket_mb=0.3",
                                 "data.task_options.sep=\"a: b\"", "schedule.kind=constant", "model.ssm=mamba2",
                                 "model.headdim=32", "model.ngroups=2", "model.chunk_size=128",
                                 "eval.lengths=[16, 48]", "eval.examples=12", "eval.batch=3"});
  std::string text = to_yaml(c);
  for (const std::string& section : config_sections()) {
    CHECK(text.find(section + ":\n") != std::string::npos);
    for (const std::string& key : config_keys(section)) {
      INFO(section, ".", key);
      CHECK(text.find("\n  " + key + ":") != std::string::npos);
    }
  }
  RunConfig again = load_run_config(write_file("resolved.yaml", text));
  CHECK(again == c);
  CHECK(to_yaml(again) == text);
  CHECK(again.model.pattern == "*M-M");
  CHECK(again.optim.eps == 1.5e-9);
  CHECK(again.model.ssm == SsmKind::mamba2);
  CHECK(again.model.headdim == 32);
  CHECK(again.model.ngroups == 2);
  CHECK(again.model.chunk_size == 128);
  CHECK(again.data.task_options.get_string("sep", "") == "a: b");
  CHECK(again.train.run_dir == "runs/with space \"and quote\"");
  CHECK(again.eval.lengths == std::vector<int64_t>{16, 48});
  CHECK(again.eval.examples == 12);
  CHECK(again.eval.batch == 3);
  CHECK(text.find("\n  lengths: [16, 48]\n  examples: 12\n  batch: 3\n") != std::string::npos);

  // Configs differing in one setting are not equal; provenance does not count.
  RunConfig other = again;
  other.optim.beta2 = 0.96;
  CHECK_FALSE(other == again);
  other = again;
  other.locations.clear();
  other.source_file = "elsewhere.yaml";
  CHECK(other == again);

  // Floats are written so that YAML 1.1 readers (PyYAML) see floats too.
  CHECK(text.find("eps: 1.5e-09") != std::string::npos);
  CHECK(text.find("bucket_mb: 0.3\n") != std::string::npos);
  CHECK(text.find("grad_clip: 1.0\n") != std::string::npos);
  CHECK(text.find("\n  hybrid: {}\n") != std::string::npos);  // not used: an empty mapping
}

TEST_CASE("bad configs name the file, the line and the key") {
  const std::string ds = dataset_path();
  struct Case {
    std::string yaml;
    int line;
    std::string key;      // key path, right after "file:line: "
    std::string message;  // the rest of the message (a prefix of it)
  };
  const std::string task = "data:\n  task: copying\n";  // two lines
  const std::vector<Case> cases = {
      {task + "optim:\n  learning_rate: 3e-3\n", 4, "optim.learning_rate", "unknown key; did you mean 'lr'?"},
      {"modle:\n  d_model: 64\n" + task, 1, "modle", "unknown section; did you mean 'model'?"},
      {task + "model:\n  d_modle: 32\n", 4, "model.d_modle", "unknown key; did you mean 'd_model'?"},
      {task + "train:\n  warmup_steps: 10\n", 4, "train.warmup_steps", "unknown key; did you mean 'schedule.warmup_steps'?"},
      {task + "lr: 0.1\n", 3, "lr", "unknown section; did you mean 'optim.lr'?"},
      {task + "train:\n  steps: abc\n", 4, "train.steps", "expected an integer, got 'abc'"},
      {task + "train:\n  steps: 10.5\n", 4, "train.steps", "expected an integer, got '10.5'"},
      {task + "optim:\n  lr: \"3e-3\"\n", 4, "optim.lr", "expected a number, got the string \"3e-3\""},
      {task + "model:\n  selective: maybe\n", 4, "model.selective", "expected true or false, got 'maybe'"},
      {task + "optim: 3\n", 3, "optim", "expected a mapping of keys, got '3'"},
      {task + "model:\n  norm_eps: .nan\n", 4, "model.norm_eps", "expected a finite number, got '.nan'"},
      {task + "optim:\n  lr: -1e-3\n", 4, "optim.lr", "must be > 0.0, got -0.001"},
      {task + "optim:\n  lr: 0\n", 4, "optim.lr", "must be > 0.0, got 0.0"},
      {task + "optim:\n  beta2: 1.0\n", 4, "optim.beta2", "must be in [0.0, 1.0), got 1.0"},
      {task + "train:\n  steps: 0\n", 4, "train.steps", "must be >= 1, got 0"},
      {task + "train:\n  grad_accum: 4\n  batch_size: 30\n", 5, "train.batch_size",
       "batch_size 30 is not divisible by grad_accum 4"},
      {task + "train:\n  grad_accum: 5\n", 4, "train.grad_accum", "batch_size 32 is not divisible by grad_accum 5"},
      {task + "model:\n  d_model: 0\n", 4, "model.d_model", "must be >= 1, got 0"},
      {task + "model:\n  d_conv: 9\n", 4, "model.d_conv", "must be in [2, 8], got 9"},
      {task + "model:\n  headdim: 0\n", 4, "model.headdim", "must be >= 1, got 0"},
      {task + "model:\n  chunk_size: 0\n", 4, "model.chunk_size", "must be >= 1, got 0"},
      {task + "model:\n  ssm: mamba2\n  headdim: 48\n", 5, "model.headdim",
       "headdim 48 does not divide d_model * expand = 128"},
      {task + "model:\n  ssm: mamba2\n  headdim: 64\n  ngroups: 3\n", 6, "model.ngroups",
       "ngroups 3 does not divide the 2 heads"},
      {task + "model:\n  pattern: MM*x-\n", 4, "model.pattern", "symbol 'x' at position 4 of 'MM*x-' is not one of M"},
      {task + "model:\n  pattern: \"M m\"\n", 4, "model.pattern", "symbol ' ' at position 2"},
      {task + "model:\n  mlp: swigl\n", 4, "model.mlp", "unknown MLP kind 'swigl'; did you mean 'swiglu'?"},
      // model.hybrid (trainer/hybrid_pattern.h) and the keys it excludes.
      {task + "model:\n  pattern: M*M\n  hybrid:\n    layers: 4\n", 5, "model.hybrid",
       "model.hybrid and model.pattern are both set; keep one"},
      {task + "model:\n  n_layers: 4\n  hybrid: {layers: 4}\n", 5, "model.hybrid",
       "model.hybrid and model.n_layers are both set; keep one"},
      {task + "model:\n  hybrid:\n    layers: 8\n    attention_ratio: 1.5\n", 6, "model.hybrid.attention_ratio",
       "must be in [0.0, 1.0), got 1.5"},
      {task + "model:\n  hybrid:\n    layers: 8\n    mlp_ratio: -0.1\n", 6, "model.hybrid.mlp_ratio",
       "must be in [0.0, 1.0), got -0.1"},
      {task + "model:\n  hybrid:\n    layers: 8\n    attention_ratio: 0.5\n    mlp_ratio: 0.5\n", 4, "model.hybrid",
       "attention_ratio 0.5 + mlp_ratio 0.5 must be < 1"},
      {task + "model:\n  hybrid: {layers: 2, attention_ratio: 0.3, mlp_ratio: 0.3}\n", 4, "model.hybrid",
       "2 layers get round(layers * attention_ratio) = 1 attention and round(layers * mlp_ratio) = 1 MLP blocks, "
       "which leaves no SSM block"},
      {task + "model:\n  hybrid:\n    attention_ratio: 0.25\n", 4, "model.hybrid.layers",
       "missing: model.hybrid needs layers"},
      {task + "model:\n  hybrid:\n    layers: 0\n", 5, "model.hybrid.layers", "must be >= 1 for a hybrid, got 0"},
      {task + "model:\n  hybrid:\n    layers: 8\n    attention: 0.25\n", 6, "model.hybrid.attention",
       "unknown key; did you mean 'attention_ratio'? (model.hybrid keys: layers, attention_ratio, mlp_ratio)"},
      {task + "model:\n  hybrid: 8\n", 4, "model.hybrid", "expected a mapping of layers, attention_ratio, mlp_ratio, got '8'"},
      {task + "model:\n  hybrid:\n    layers: 8\n    layers: 9\n", 6, "model.hybrid.layers", "duplicate key (first at "},
      {task + "model:\n  hybrids: {layers: 8}\n", 4, "model.hybrids", "unknown key; did you mean 'hybrid'?"},
      // The attention blocks' heads, checked when the pattern has one.
      {task + "model:\n  pattern: M*\n  n_heads: 4\n  n_kv_heads: 3\n", 6, "model.n_kv_heads",
       "n_kv_heads 3 does not divide n_heads 4"},
      {task + "model:\n  n_kv_heads: 2\n  hybrid: {layers: 4, attention_ratio: 0.25}\n", 4, "model.n_kv_heads",
       "n_kv_heads 2 does not divide n_heads 1"},  // "MM*M"; d_model 64 / 64 = 1 head
      {task + "model:\n  pattern: M*\n  n_heads: 3\n", 5, "model.n_heads",
       "n_heads 3 does not divide d_model 64 into heads of head_dim = d_model / n_heads; choose n_heads dividing "
       "d_model or set model.head_dim"},
      {task + "model:\n  d_model: 200\n  pattern: M*\n", 3, "model.n_heads",
       "n_heads 0 (d_model / 64 = 3 heads) does not divide d_model 200"},
      {task + "model:\n  d_model: 32\n  pattern: M*\n", 3, "model.n_heads", "0 means d_model / 64 heads, none for d_model 32"},
      {task + "model:\n  pattern: M*\n  n_heads: 2\n  head_dim: 33\n  rope: true\n", 7, "model.rope",
       "rotary embeddings rotate pairs of channels, so the head size must be even, got head_dim 33"},
      {task + "model:\n  n_heads: -1\n", 4, "model.n_heads", "must be >= 0, got -1"},
      {task + "model:\n  rope_theta: 0\n", 4, "model.rope_theta", "must be > 0.0, got 0.0"},
      {"data:\n  task: copying\n  seq_len: 1\n", 3, "data.seq_len", "must be >= 2, got 1"},
      {task + "data_extra: 1\n", 3, "data_extra", "unknown section; did you mean 'data'?"},
      {task + "checkpoint:\n  keep: 0\n", 4, "checkpoint.keep", "must be >= 1, got 0"},
      {task + "train:\n  precision: fp16\n", 4, "train.precision", "'fp16' is not one of fp32, bf16"},
      {task + "schedule:\n  kind: cosin\n", 4, "schedule.kind", "'cosin' is not one of cosine, linear, constant; did you mean 'cosine'?"},
      {task + "model:\n  ssm: mamba3\n", 4, "model.ssm", "'mamba3' is not one of mamba1, mamba2"},
      {task + "train:\n  device: gpu\n", 4, "train.device", "'gpu' is not one of auto, cpu, cuda; did you mean 'cuda'?"},
      {task + "train:\n  on_nonfinite: ignore\n", 4, "train.on_nonfinite", "'ignore' is not one of stop, skip"},
      {"data:\n  task: copying\n  dataset: " + ds + "\n", 3, "data.dataset", "data.task ('copying') and data.dataset"},
      {"model:\n  d_model: 8\ndata:\n  seq_len: 64\n", 3, "data", "set data.task (a synthetic task"},
      {"data:\n  dataset: /nonexistent/tokens.h5\n", 2, "data.dataset", "file '/nonexistent/tokens.h5' does not exist"},
      {"data:\n  task: copying\n  task: phonebook\n", 3, "data.task", "duplicate key (first at "},
      {"data:\n  task: selective_copy\n", 2, "data.task", "unknown task 'selective_copy'; did you mean 'selective_copying'?"},
      {"data:\n  task: copying\n  task_options:\n    n: [1, 2]\n", 4, "data.task_options.n", "expected a scalar value, got a list"},
      {"data:\n  dataset: " + ds + "\n  task_options:\n    n: 1\n", 3, "data.task_options",
       "options are for a synthetic task, but data.task is not set"},
      {task + "data:\n  seq_len: 8\n", 3, "data", "duplicate section (first at "},
      {task + "train:\n  run_dir: \"\"\n", 4, "train.run_dir", "must not be empty"},
      {task + "distributed:\n  reduce_dtype: f32\n", 4, "distributed.reduce_dtype", "'f32' is not one of fp32, bf16; did you mean 'fp32'?"},
      // eval.lengths, eval.examples, eval.batch: the task evaluation after training.
      {task + "eval:\n  lengths: [16, 0]\n", 4, "eval.lengths", "every value must be >= 1, got 0"},
      {task + "eval:\n  lengths: [16, x]\n", 4, "eval.lengths", "expected a list of integers, got 'x'"},
      {task + "eval:\n  lengths: [16, \"32\"]\n", 4, "eval.lengths", "expected a list of integers, got the string \"32\""},
      {task + "eval:\n  lengths: [[16]]\n", 4, "eval.lengths", "expected a list of integers, got a list"},
      {task + "eval:\n  lengths: {a: 1}\n", 4, "eval.lengths", "expected a list of integers, got a mapping"},
      {task + "eval:\n  examples: 0\n", 4, "eval.examples", "must be >= 1, got 0"},
      {task + "eval:\n  batch: 0\n", 4, "eval.batch", "must be >= 1, got 0"},
      {"data:\n  dataset: " + ds + "\neval:\n  lengths: [64]\n", 4, "eval.lengths",
       "the task evaluation needs a synthetic task (data.task), but this run trains on the dataset '" + ds + "'"},
      // A length the task cannot use fails at load, not after training.
      {"data:\n  task: induction_heads\neval:\n  lengths: [16, 2]\n", 4, "eval.lengths",
       "induction_heads cannot be evaluated at length 2: data.seq_len: induction_heads: seq_len 2 is too short"},
      {"data:\n  task: selective_copying\n  task_options: {n_memorize: 4}\neval:\n  lengths: [8, 9]\n", 5,
       "eval.lengths", "selective_copying cannot be evaluated at length 8: data.seq_len: selective_copying: seq_len 8 is "
       "too short for n_memorize = 4"},
      {"data:\n  task: phonebook\n  task_options: {digits: 1, entries: 3}\neval:\n  lengths: [5, 6]\n", 5,
       "eval.lengths", "phonebook cannot be evaluated at length 6: data.task_options.entries: 6 entries need unique "
       "1-digit numbers; at most 5 are allowed"},
  };
  CHECK(cases.size() >= 15);
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    std::string name = "bad_" + std::to_string(i) + ".yaml";
    std::string path = write_file(name, c.yaml);
    INFO("case ", i, ":\n", c.yaml);
    ConfigError e = config_error([&] { load_run_config(path); });
    std::string expected = path + ":" + std::to_string(c.line) + ": " + c.key + ": " + c.message;
    INFO("message: ", std::string(e.what()));
    CHECK(std::string(e.what()).find(expected) != std::string::npos);
    CHECK(std::string(e.what()).find(name) != std::string::npos);
    CHECK(e.problems().size() == 1);  // nothing else is reported
  }
}

TEST_CASE("eval.lengths: a list from the file or --set, checked against the task at load") {
  const std::string task = "data:\n  task: induction_heads\n";
  auto lengths = [&](const std::string& eval, const std::vector<std::string>& overrides = {}) {
    return load_run_config(write_file("lengths.yaml", task + "eval:\n" + eval), overrides).eval.lengths;
  };
  using L = std::vector<int64_t>;
  CHECK(lengths("  lengths: [256, 1024, 4096]\n") == L{256, 1024, 4096});
  CHECK(lengths("  lengths:\n    - 64\n    - 1e3\n") == L{64, 1000});
  CHECK(lengths("  lengths: 64\n") == L{64});  // one length
  CHECK(lengths("  lengths: []\n").empty());
  CHECK(lengths("  lengths:\n").empty());
  // --set takes a YAML list (or one integer), replacing the file's; an empty value clears it.
  CHECK(lengths("  lengths: [64]\n", {"eval.lengths=[256,1024]"}) == L{256, 1024});
  CHECK(lengths("  lengths: [64]\n", {"eval.lengths=32"}) == L{32});
  CHECK(lengths("  lengths: [64]\n", {"eval.lengths="}).empty());
  ConfigError e = config_error([&] { lengths("  every: 5\n", {"eval.lengths=[64,2]"}); });
  REQUIRE(e.problems().size() == 1);
  CHECK(e.problems()[0].starts_with("--set eval.lengths=[64,2]: eval.lengths: induction_heads cannot be evaluated at "
                                    "length 2: data.seq_len: induction_heads: seq_len 2 is too short: the special "
                                    "token, key and final special token need at least 3"));
  // Copying's lengths are its string lengths, any of them usable.
  CHECK(load_run_config(write_file("copy.yaml", "data:\n  task: copying\neval:\n  lengths: [1, 500]\n")).eval.lengths ==
        L{1, 500});
  // While the task's own settings fail, the lengths are not tried: the trainer reports the setting.
  CHECK_NOTHROW(load_run_config(write_file("small_vocab.yaml", "model:\n  vocab_size: 32\ndata:\n  task: phonebook\n"
                                                               "eval:\n  lengths: [4]\n")));
  // A resolved config from before these keys existed still loads, with no evaluation.
  RunConfig c = load_run_config(default_yaml_path());
  std::string text = to_yaml(c);
  CHECK(text.find("\n  lengths: []\n  examples: 256\n  batch: 32\n") != std::string::npos);
  for (const char* line : {"  lengths: []\n", "  examples: 256\n", "  batch: 32\n"}) text.erase(text.find(line), strlen(line));
  CHECK(load_run_config(write_file("old.yaml", text)) == c);
}

TEST_CASE("model.hybrid builds the layer pattern") {
  std::string path = write_file("hybrid.yaml",
                                "data:\n  task: copying\n"
                                "model:\n  ssm: mamba2\n  d_model: 64\n  headdim: 32\n  d_state: 8\n"
                                "  hybrid:\n    layers: 8\n    attention_ratio: 0.25\n    mlp_ratio: 0.25\n");
  RunConfig c = load_run_config(path);
  CHECK(c.model.uses_hybrid());
  CHECK(c.model.hybrid == HybridConfig{8, 0.25, 0.25});
  CHECK(c.model.pattern.empty());
  CHECK(c.model.num_layers() == 8);
  // 2 attention blocks with runs of 6/3 = 2 SSM blocks ("MM*MM*MM"), then 2 MLP blocks with runs
  // of 4/2 = 2 among the SSM blocks.
  CHECK(c.model.layer_pattern() == "MM*-M*M-");
  CHECK(c.where("model.hybrid") == path + ":8");
  CHECK(c.where("model.hybrid.mlp_ratio") == path + ":11");

  // The model factory builds that pattern with Mamba-2 `M` blocks; the start-of-run summary shows
  // the pattern, the parameter count and one line a block.
  const LanguageModelConfig lm_config = language_model_config(c);
  CHECK(lm_config.pattern == "MM*-M*M-");
  CHECK(lm_config.is_mamba2());
  Generator gen(0);
  LanguageModel model(lm_config, gen);
  const std::string summary = model.summary();
  INFO(summary);
  CHECK(summary.find(std::to_string(model.parameter_count()) + " parameters") != std::string::npos);
  CHECK(summary.find("8 blocks \"MM*-M*M-\" (4 SSM, 2 attention, 2 MLP)") != std::string::npos);
  CHECK(summary.find("layers.0       M (mamba2") != std::string::npos);
  CHECK(summary.find("layers.2       * (attention") != std::string::npos);
  CHECK(summary.find("layers.7       - (mlp swiglu") != std::string::npos);

  // The resolved config writes the mapping and leaves out the keys it decides; it reloads equal.
  const std::string text = to_yaml(c);
  CHECK(text.find("\n  hybrid:\n    layers: 8\n    attention_ratio: 0.25\n    mlp_ratio: 0.25\n") != std::string::npos);
  CHECK(text.find("n_layers:") == std::string::npos);
  CHECK(text.find("pattern:") == std::string::npos);
  RunConfig again = load_run_config(write_file("hybrid_resolved.yaml", text));
  CHECK(again == c);
  CHECK(to_yaml(again) == text);

  // Overrides: one key, the whole mapping (the keys left out return to their defaults), or none
  // at all, which frees model.pattern.
  RunConfig more = load_run_config(path, {"model.hybrid.layers=12"});
  CHECK(more.model.layer_pattern() == "MM*-MM*-M*M-");
  CHECK(more.where("model.hybrid.layers") == "--set model.hybrid.layers=12");
  RunConfig whole = load_run_config(path, {"model.hybrid={layers: 4, attention_ratio: 0.25}"});
  CHECK(whole.model.hybrid == HybridConfig{4, 0.25, 0.0});
  CHECK(whole.model.layer_pattern() == "MM*M");
  RunConfig dropped = load_run_config(path, {"model.hybrid=", "model.pattern=M*M-"});
  CHECK_FALSE(dropped.model.uses_hybrid());
  CHECK(dropped.model.layer_pattern() == "M*M-");
  // A hybrid given on the command line alone.
  RunConfig cli = load_run_config(write_file("task_only.yaml", "data:\n  task: copying\n"),
                                  {"model.hybrid.layers=6", "model.hybrid.mlp_ratio=0.5"});
  CHECK(cli.model.layer_pattern() == "M-M-M-");
  ConfigError e = config_error([&] { load_run_config(path, {"model.hybrid.attention=0.1"}); });
  CHECK(std::string(e.what()).find("--set model.hybrid.attention=0.1: model.hybrid.attention: unknown key; did you "
                                   "mean 'attention_ratio'?") != std::string::npos);
  e = config_error([&] { load_run_config(path, {"model.pattern=MM"}); });
  REQUIRE(e.problems().size() == 1);
  CHECK(e.problems()[0] == path + ":8: model.hybrid: model.hybrid and model.pattern are both set; keep one (hybrid "
                           "builds the pattern)");

  // An empty or null hybrid is not in use (what to_yaml writes then), so a pattern may sit beside it.
  for (const char* unused : {"  hybrid: {}\n", "  hybrid:\n"}) {
    const std::string text = std::string("data:\n  task: copying\nmodel:\n  pattern: M*\n") + unused;
    RunConfig off = load_run_config(write_file("unused.yaml", text));
    CHECK_FALSE(off.model.uses_hybrid());
    CHECK(off.model.layer_pattern() == "M*");
  }

  // Attention settings are only checked when there are attention blocks to use them.
  RunConfig pure = load_run_config(write_file("pure.yaml", "data:\n  task: copying\nmodel:\n  n_heads: 4\n"
                                                           "  n_kv_heads: 3\n"));
  CHECK(pure.model.layer_pattern() == "MM");
}

TEST_CASE("validate_run_config checks a hybrid built in code") {
  RunConfig c;
  c.data.task = "copying";
  c.train.run_dir = "runs/x";
  c.model.hybrid = {8, 0.25, 0.25};
  validate_run_config(c);
  c.model.pattern = "MM";
  c.model.hybrid.mlp_ratio = 0.8;
  ConfigError e = config_error([&] { validate_run_config(c); });
  REQUIRE(e.problems().size() == 2);
  CHECK(e.problems()[0] == "<config>: model.hybrid: model.hybrid and model.pattern are both set; keep one (hybrid "
                           "builds the pattern)");
  CHECK(e.problems()[1] == "<config>: model.hybrid: attention_ratio 0.25 + mlp_ratio 0.8 must be < 1 (the rest of "
                           "the blocks are SSM blocks)");
  c.model.pattern.clear();
  c.model.hybrid = {0, 0.25, 0.0};  // a ratio without layers
  e = config_error([&] { validate_run_config(c); });
  REQUIRE(e.problems().size() == 1);
  CHECK(e.problems()[0] == "<config>: model.hybrid.layers: missing: model.hybrid needs layers (the number of blocks)");
}

TEST_CASE("every problem of a file is reported at once, in line order") {
  std::string path = write_file("many.yaml",
                                "train:\n  steps: -3\n  batch_size: big\n"
                                "optim:\n  lr: 0\n  betta1: 0.9\n"
                                "data:\n  task: copying\n");
  ConfigError e = config_error([&] { load_run_config(path, {"eval.batches=0"}); });
  REQUIRE(e.problems().size() == 5);
  CHECK(e.problems()[0] == path + ":2: train.steps: must be >= 1, got -3");
  CHECK(e.problems()[1] == path + ":3: train.batch_size: expected an integer, got 'big'");
  CHECK(e.problems()[2] == path + ":5: optim.lr: must be > 0.0, got 0.0");
  CHECK(e.problems()[3].starts_with(path + ":6: optim.betta1: unknown key; did you mean 'beta1'?"));
  CHECK(e.problems()[4] == "--set eval.batches=0: eval.batches: must be >= 1, got 0");
  CHECK(std::string(e.what()).find('\n') != std::string::npos);  // one line per problem
  CHECK(dynamic_cast<const Error*>(&e) != nullptr);
}

TEST_CASE("unreadable and malformed files are config errors") {
  std::string missing = (temp_dir() / "does_not_exist.yaml").string();
  CHECK_THROWS_WITH_AS(load_run_config(missing), contains(missing + ": cannot read the config file"),
                       ConfigError);
  std::string broken = write_file("broken.yaml", "data:\n  task: copying\nmodel:\n  pattern: [M, \n");
  CHECK_THROWS_WITH_AS(load_run_config(broken), contains(broken + ":"), ConfigError);
  CHECK_THROWS_WITH_AS(load_run_config(broken), doctest::Contains("invalid YAML"), ConfigError);
  std::string list = write_file("list.yaml", "- model\n- data\n");
  CHECK_THROWS_WITH_AS(load_run_config(list), contains(list + ":1: the file must be a mapping of sections"),
                       ConfigError);
  // An empty file is all defaults, which lack a data source.
  std::string empty = write_file("empty.yaml", "");
  CHECK_THROWS_WITH_AS(load_run_config(empty), contains(empty + ":1: data: set data.task"), ConfigError);
}

TEST_CASE("validate_for_world needs the batch to split over ranks and micro-batches") {
  std::string path = write_file("world.yaml", "data:\n  task: copying\ntrain:\n  batch_size: 24\n  grad_accum: 2\n");
  RunConfig c = load_run_config(path);
  validate_for_world(c, 1);
  validate_for_world(c, 2);
  validate_for_world(c, 3);
  CHECK_THROWS_WITH_AS(validate_for_world(c, 5),
                       contains(path + ":4: train.batch_size: 24 sequences do not split evenly into "
                                                "grad_accum 2 micro-batches on each of 5 ranks; use a multiple of 10"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(validate_for_world(c, 0), doctest::Contains("world size must be >= 1"), Error);
}

TEST_CASE("validate_run_config checks a config built in code") {
  RunConfig c;
  c.data.task = "copying";
  c.train.run_dir = "runs/x";
  validate_run_config(c);
  c.optim.lr = -1;
  c.model.pattern = "MQ";
  ConfigError e = config_error([&] { validate_run_config(c); });
  REQUIRE(e.problems().size() == 2);
  CHECK(e.problems()[0].starts_with("<config>: model.pattern: symbol 'Q' at position 2"));
  CHECK(e.problems()[1] == "<config>: optim.lr: must be > 0.0, got -1.0");
}

TEST_CASE("task options: typed getters and unknown options report the option's line") {
  std::string path = write_file("options.yaml",
                                "data:\n  task: selective_copying\n  task_options:\n    n_memorize: 16\n"
                                "    n_colors: eight\n    ratio: 0.5\n    flag: true\n    name: \"abc\"\n"
                                "    n_memorise: 3\n");
  RunConfig c = load_run_config(path);
  const TaskOptions& o = c.data.task_options;
  CHECK(o.get_int("n_memorize", 0) == 16);
  CHECK(o.get_int("absent", 42) == 42);
  CHECK(o.get_double("ratio", 0.0) == 0.5);
  CHECK(o.get_bool("flag", false));
  CHECK(o.get_string("name", "") == "abc");
  CHECK_THROWS_WITH_AS(o.get_int("n_colors", 8),
                       contains(path + ":5: data.task_options.n_colors: expected an integer, got 'eight'"),
                       ConfigError);
  CHECK_THROWS_WITH_AS(o.get_int("n_memorize", 0, 1, 8),
                       contains(path + ":4: data.task_options.n_memorize: must be <= 8, got 16"), ConfigError);
  CHECK_THROWS_WITH_AS(o.get_bool("name", false), doctest::Contains("expected true or false, got 'abc'"), ConfigError);
  ConfigError e = config_error([&] { o.check_known({"n_memorize", "n_colors", "ratio", "flag", "name"}); });
  REQUIRE(e.problems().size() == 1);
  CHECK(e.problems()[0].starts_with(path + ":9: data.task_options.n_memorise: unknown option; did you mean 'n_memorize'?"));
}

TEST_CASE("key suggestions") {
  using config_detail::suggest;
  const std::vector<std::string> optim = {"lr", "weight_decay", "beta1", "beta2", "eps", "grad_clip"};
  CHECK(suggest("learning_rate", optim) == "lr");
  CHECK(suggest("wd", optim) == "weight_decay");
  CHECK(suggest("clip", optim) == "grad_clip");
  CHECK(suggest("beta_1", optim) == "beta1");
  CHECK(suggest("LR", optim) == "lr");
  CHECK(suggest("momentum", optim) == "");
  const std::vector<std::string> train = {"steps", "batch_size", "grad_accum", "precision", "seed", "device"};
  CHECK(suggest("max_steps", train) == "steps");
  CHECK(suggest("batch", train) == "batch_size");
  CHECK(suggest("batchsize", train) == "batch_size");
  CHECK(suggest("dtype", train) == "precision");
  CHECK(suggest("gradient_accumulation_steps", train) == "grad_accum");
}

TEST_CASE("strict scalar parsing") {
  int64_t i = 0;
  double d = 0;
  CHECK((config_detail::parse_int("1e3", i) && i == 1000));
  CHECK((config_detail::parse_int("+7", i) && i == 7));
  CHECK((config_detail::parse_int("-12", i) && i == -12));
  CHECK_FALSE(config_detail::parse_int("1.5", i));
  CHECK_FALSE(config_detail::parse_int("12abc", i));
  CHECK_FALSE(config_detail::parse_int("", i));
  CHECK((config_detail::parse_double("3e-3", d) && d == 3e-3));
  CHECK((config_detail::parse_double("-0.5", d) && d == -0.5));
  CHECK_FALSE(config_detail::parse_double("inf", d));
  CHECK_FALSE(config_detail::parse_double("-nan", d));
  CHECK_FALSE(config_detail::parse_double("1e999", d));
  CHECK_FALSE(config_detail::parse_double("0x10", d));
  for (double v : {1e-5, 0.1, 3e-3, 25.0, 1e20, -2.5e-300, 0.0})
    CHECK((config_detail::parse_double(config_detail::format_double(v), d) && d == v));
  CHECK(config_detail::format_double(1e-5) == "1.0e-05");
  CHECK(config_detail::format_double(25.0) == "25.0");
}
