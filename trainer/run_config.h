#pragma once
// The typed run configuration of `scanline train`: one struct per YAML section, with the schema's
// defaults (docs/DESIGN.md, "Training"). trainer/config_loader.h reads, overrides, validates and
// writes it back; this header is what the rest of the trainer consumes.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"

namespace scanline {

// Every problem of a run configuration. what() is one `where: key.path: message` line per problem,
// where `where` is `file:line` (the line of the offending key; for something missing, the line of
// its section) or `--set key=value` for an override. The CLI maps it to exit code 2.
class ConfigError : public Error {
 public:
  explicit ConfigError(std::vector<std::string> problems);
  const std::vector<std::string>& problems() const { return problems_; }

 private:
  std::vector<std::string> problems_;
};

enum class SsmKind { mamba1, mamba2 };
enum class ScheduleKind { cosine, linear, constant };
enum class Precision { fp32, bf16 };
// The tensor dtype a precision computes (or reduces) in.
inline DType compute_dtype(Precision p) { return p == Precision::bf16 ? DType::bf16 : DType::f32; }
enum class DeviceChoice { automatic, cpu, cuda };  // YAML: auto | cpu | cuda
enum class NonfinitePolicy { stop, skip };

// YAML spellings of the enums, and their inverse (false when the text names no value).
const char* to_string(SsmKind v);
const char* to_string(ScheduleKind v);
const char* to_string(Precision v);
const char* to_string(DeviceChoice v);
const char* to_string(NonfinitePolicy v);
template <typename E>
const std::vector<std::string>& enum_names();  // in declaration order
template <>
const std::vector<std::string>& enum_names<SsmKind>();
template <>
const std::vector<std::string>& enum_names<ScheduleKind>();
template <>
const std::vector<std::string>& enum_names<Precision>();
template <>
const std::vector<std::string>& enum_names<DeviceChoice>();
template <>
const std::vector<std::string>& enum_names<NonfinitePolicy>();
// Defined for the five enums above.
template <typename E>
bool enum_from_string(const std::string& text, E& out);

// The synthetic tasks `data.task` may name.
const std::vector<std::string>& known_tasks();

// model.hybrid: a layer pattern from block counts (trainer/hybrid_pattern.h), as Megatron-LM's
// --hybrid-attention-ratio / --hybrid-mlp-ratio. layers 0: not used.
struct HybridConfig {
  int64_t layers = 0;
  double attention_ratio = 0.0;
  double mlp_ratio = 0.0;
  bool operator==(const HybridConfig&) const = default;
};

struct ModelConfig {
  SsmKind ssm = SsmKind::mamba1;
  int64_t d_model = 64;
  int64_t n_layers = 2;
  std::string pattern;  // Megatron-style: M = Mamba, * = attention, - = MLP; when set, overrides n_layers
  HybridConfig hybrid;  // when set (layers > 0), builds the pattern; exclusive with n_layers and pattern
  int64_t vocab_size = 256;
  int64_t d_state = 16;
  int64_t d_conv = 4;
  int64_t expand = 2;
  int64_t dt_rank = 0;  // 0: ceil(d_model / 16)
  bool selective = true;
  // Mamba-2 only (ssm: mamba2): head size P, groups of B and C, and the SSD chunk length.
  int64_t headdim = 64;
  int64_t ngroups = 1;
  int64_t chunk_size = 256;
  // Attention blocks ('*'): heads (0: d_model / 64), kv heads (0: n_heads), head size (0:
  // d_model / n_heads; the CUDA kernels take 64 or 128), rotary embeddings.
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  bool rope = false;
  double rope_theta = 10000.0;
  // MLP blocks ('-'): swiglu, gelu or relu2; hidden width (0: 8/3 d_model rounded up to 64 for
  // swiglu, 4 d_model otherwise).
  std::string mlp = "swiglu";
  int64_t mlp_hidden = 0;
  bool tie_embeddings = true;
  double norm_eps = 1e-5;

  bool uses_hybrid() const { return hybrid.layers > 0; }
  int64_t num_layers() const;
  // hybrid's pattern, else pattern, else n_layers SSM blocks. Throws Error for an impossible hybrid.
  std::string layer_pattern() const;
  int64_t resolved_dt_rank() const { return dt_rank > 0 ? dt_rank : (d_model + 15) / 16; }
  bool operator==(const ModelConfig&) const = default;
};

// data.task_options: free-form scalars whose meaning belongs to the task generator, kept as their
// YAML text in key order. The typed getters throw ConfigError naming the option's file:line, so a
// generator reading its options at setup still reports like the loader does.
class TaskOptions {
 public:
  void set(const std::string& key, const std::string& value, const std::string& where = "");
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  bool empty() const { return values_.empty(); }
  const std::map<std::string, std::string>& values() const { return values_; }
  std::string where(const std::string& key) const;  // file:line (or --set ...) of the option

  int64_t get_int(const std::string& key, int64_t fallback, int64_t min = INT64_MIN, int64_t max = INT64_MAX) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  // Throws ConfigError for each option not in `known` (nearest name suggested): a task generator
  // calls this before any work so a misspelled option is never silently ignored.
  void check_known(const std::vector<std::string>& known) const;

  // Locations are provenance, not configuration: two option sets are equal when their values are.
  bool operator==(const TaskOptions& other) const { return values_ == other.values_; }

 private:
  std::map<std::string, std::string> values_;
  std::map<std::string, std::string> where_;
};

struct DataConfig {
  std::string task;     // selective_copying | copying | induction_heads | phonebook; empty: dataset
  std::string dataset;  // token .h5 written by `scanline prepare`; empty: task
  int64_t seq_len = 256;
  double val_fraction = 0.01;
  TaskOptions task_options;
  bool operator==(const DataConfig&) const = default;
};

struct OptimConfig {
  double lr = 1e-3;
  double weight_decay = 0.1;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;  // global grad-norm bound; 0 = off
  bool operator==(const OptimConfig&) const = default;
};

struct ScheduleConfig {
  ScheduleKind kind = ScheduleKind::cosine;
  int64_t warmup_steps = 0;
  double min_lr_ratio = 0.1;  // the decay ends at lr * min_lr_ratio
  bool operator==(const ScheduleConfig&) const = default;
};

struct TrainConfig {
  int64_t steps = 1000;
  int64_t batch_size = 32;  // global, in sequences, per optimizer step
  int64_t grad_accum = 1;
  Precision precision = Precision::fp32;
  uint64_t seed = 0;
  DeviceChoice device = DeviceChoice::automatic;
  int64_t log_every = 10;
  NonfinitePolicy on_nonfinite = NonfinitePolicy::stop;
  std::string run_dir;  // the loader fills "runs/<config file stem>" when the file leaves it out
  bool operator==(const TrainConfig&) const = default;
};

struct EvalConfig {
  int64_t every = 0;  // 0: only at the end
  int64_t batches = 4;
  // After training, a synthetic task's accuracy by greedy generation at each of these lengths, as
  // `scanline eval` measures it (trainer/task_eval.h); empty: none. examples a length, batch
  // sequences generated together.
  std::vector<int64_t> lengths;
  int64_t examples = 256;
  int64_t batch = 32;
  bool operator==(const EvalConfig&) const = default;
};

struct CheckpointConfig {
  int64_t every = 0;  // 0: only at the end
  int64_t keep = 3;
  bool operator==(const CheckpointConfig&) const = default;
};

struct DistributedConfig {
  double bucket_mb = 25;
  Precision reduce_dtype = Precision::fp32;
  // true: each bucket is all-reduced as soon as the backward finishes it (overlapping the rest of
  // the backward); false: every bucket after the backward (to measure what the overlap saves).
  bool overlap = true;
  bool operator==(const DistributedConfig&) const = default;
};

struct RunConfig {
  ModelConfig model;
  DataConfig data;
  OptimConfig optim;
  ScheduleConfig schedule;
  TrainConfig train;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  DistributedConfig distributed;

  // Provenance for messages after loading (validate_for_world, task generators): the config file
  // and the `file:line` or `--set ...` of every key path given explicitly and of every section.
  std::string source_file;
  std::map<std::string, std::string> locations;
  // Where key_path ("train.batch_size") came from: its own location, else its section's, else
  // `file:1` (or "<config>" for a config built in code).
  std::string where(const std::string& key_path) const;

  // Equal when every setting is; the provenance fields are ignored.
  bool operator==(const RunConfig& other) const;
};

// Shared by the loader and TaskOptions.
namespace config_detail {
// The candidate the user most likely meant by `word` (aliases, prefixes, initials, edit distance),
// or "" when none is close.
std::string suggest(const std::string& word, const std::vector<std::string>& candidates);
// Strict scalar parsing: the whole text must be the value. Integers also accept an exact
// integral float such as 1e4; doubles reject nan and inf.
bool parse_int(const std::string& text, int64_t& out);
bool parse_double(const std::string& text, double& out);
bool parse_bool(const std::string& text, bool& out);
// Shortest text that parses back to exactly v, always with a '.' so YAML 1.1 readers see a float.
std::string format_double(double v);
std::string join(const std::vector<std::string>& items, const char* separator = ", ");
}  // namespace config_detail

}  // namespace scanline
