#include "trainer/config_loader.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <type_traits>
#include <utility>

#include "ops/causal_conv1d.h"
#include "trainer/hybrid_pattern.h"
#include "trainer/task_eval.h"

namespace scanline {

namespace {

using config_detail::format_double;
using config_detail::join;

// One key of the schema: how to read it from YAML, check its value, and write it back.
struct Field {
  std::string section, key;
  std::function<std::string(RunConfig&, const YAML::Node&)> parse;  // "" or what is wrong
  std::function<std::string(const RunConfig&)> check;                // "" or what is wrong
  std::function<std::string(const RunConfig&)> emit;                 // the YAML scalar
  std::string path() const { return section + "." + key; }
};

template <typename S, typename T>
struct Slot {
  S RunConfig::*section;
  T S::*member;
  T& operator()(RunConfig& c) const { return (c.*section).*member; }
  const T& operator()(const RunConfig& c) const { return (c.*section).*member; }
};

// A key of a mapping inside a section (model.hybrid.layers): a member of a struct member.
template <typename S, typename G, typename T>
struct GroupSlot {
  S RunConfig::*section;
  G S::*group;
  T G::*member;
  T& operator()(RunConfig& c) const { return ((c.*section).*group).*member; }
  const T& operator()(const RunConfig& c) const { return ((c.*section).*group).*member; }
};

// The value type a slot holds.
template <typename SlotT>
using slot_value_t = std::remove_cvref_t<decltype(std::declval<SlotT>()(std::declval<RunConfig&>()))>;

std::string describe(const YAML::Node& n) {
  if (n.IsMap()) return "a mapping";
  if (n.IsSequence()) return "a list";
  if (!n.IsDefined() || n.IsNull()) return "nothing";
  return "'" + n.Scalar() + "'";
}

// A quoted scalar ("3e-3") or one tagged !!str is a string in YAML, never a number or a bool.
bool is_string_scalar(const YAML::Node& n) {
  return n.Tag() == "!" || (n.Tag().size() >= 4 && n.Tag().ends_with(":str"));
}

// The text of a plain scalar for a typed key, or the message saying what was found instead.
std::string plain_scalar(const YAML::Node& n, const std::string& expected, std::string& text) {
  if (!n.IsScalar()) return "expected " + expected + ", got " + describe(n);
  if (is_string_scalar(n)) return "expected " + expected + ", got the string \"" + n.Scalar() + "\" (remove the quotes)";
  text = n.Scalar();
  return "";
}

std::string quote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += c;
    else if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else out += c;
  }
  return out + "\"";
}

template <typename SlotT>
Field int_slot_field(const char* section, const char* key, SlotT slot, int64_t lo, int64_t hi) {
  using T = slot_value_t<SlotT>;
  Field f{section, key, {}, {}, {}};
  f.parse = [slot](RunConfig& c, const YAML::Node& n) {
    std::string text, error = plain_scalar(n, "an integer", text);
    int64_t v = 0;
    if (error.empty() && !config_detail::parse_int(text, v)) error = "expected an integer, got '" + text + "'";
    if (error.empty() && std::is_unsigned_v<T> && v < 0) error = "must be >= 0, got " + text;
    if (error.empty()) slot(c) = static_cast<T>(v);
    return error;
  };
  f.check = [slot, lo, hi](const RunConfig& c) -> std::string {
    int64_t v = static_cast<int64_t>(slot(c));
    if (v >= lo && v <= hi) return "";
    std::string bound = hi == std::numeric_limits<int64_t>::max()
                            ? ">= " + std::to_string(lo)
                            : "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
    return "must be " + bound + ", got " + std::to_string(v);
  };
  f.emit = [slot](const RunConfig& c) { return std::to_string(slot(c)); };
  return f;
}

template <typename S, typename T>
Field int_field(const char* section, const char* key, S RunConfig::*s, T S::*m, int64_t lo,
                int64_t hi = std::numeric_limits<int64_t>::max()) {
  return int_slot_field(section, key, Slot<S, T>{s, m}, lo, hi);
}

// A list of integers, each >= lo: `[256, 1024]`, one integer (a list of one), or nothing (empty).
template <typename S>
Field int_list_field(const char* section, const char* key, S RunConfig::*s, std::vector<int64_t> S::*m, int64_t lo) {
  Slot<S, std::vector<int64_t>> slot{s, m};
  Field f{section, key, {}, {}, {}};
  f.parse = [slot](RunConfig& c, const YAML::Node& n) -> std::string {
    std::vector<YAML::Node> items;
    if (n.IsSequence()) {
      for (const auto& item : n) items.push_back(item);
    } else if (!n.IsNull()) {
      items.push_back(n);
    }
    std::vector<int64_t> values;
    for (const YAML::Node& item : items) {
      std::string text, error = plain_scalar(item, "a list of integers", text);
      int64_t v = 0;
      if (error.empty() && !config_detail::parse_int(text, v)) error = "expected a list of integers, got '" + text + "'";
      if (!error.empty()) return error;
      values.push_back(v);
    }
    slot(c) = std::move(values);
    return "";
  };
  f.check = [slot, lo](const RunConfig& c) -> std::string {
    for (int64_t v : slot(c))
      if (v < lo) return "every value must be >= " + std::to_string(lo) + ", got " + std::to_string(v);
    return "";
  };
  f.emit = [slot](const RunConfig& c) {
    std::string items;
    for (int64_t v : slot(c)) items += (items.empty() ? "" : ", ") + std::to_string(v);
    return "[" + items + "]";
  };
  return f;
}

struct Range {
  double lo;
  bool lo_open;
  double hi = std::numeric_limits<double>::infinity();
  bool hi_open = false;
  bool contains(double v) const { return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi); }
  std::string text() const {
    if (std::isinf(hi)) return std::string(lo_open ? "> " : ">= ") + format_double(lo);
    return std::string(lo_open ? "in (" : "in [") + format_double(lo) + ", " + format_double(hi) + (hi_open ? ")" : "]");
  }
};
constexpr Range kPositive{0.0, true};
constexpr Range kNonNegative{0.0, false};
constexpr Range kFraction{0.0, false, 1.0, true};  // [0, 1)
constexpr Range kUnit{0.0, false, 1.0, false};     // [0, 1]

template <typename SlotT>
Field real_slot_field(const char* section, const char* key, SlotT slot, Range range) {
  Field f{section, key, {}, {}, {}};
  f.parse = [slot](RunConfig& c, const YAML::Node& n) {
    std::string text, error = plain_scalar(n, "a number", text);
    double v = 0;
    if (error.empty() && !config_detail::parse_double(text, v)) error = "expected a finite number, got '" + text + "'";
    if (error.empty()) slot(c) = v;
    return error;
  };
  f.check = [slot, range](const RunConfig& c) -> std::string {
    return range.contains(slot(c)) ? "" : "must be " + range.text() + ", got " + format_double(slot(c));
  };
  f.emit = [slot](const RunConfig& c) { return format_double(slot(c)); };
  return f;
}

template <typename S>
Field real_field(const char* section, const char* key, S RunConfig::*s, double S::*m, Range range) {
  return real_slot_field(section, key, Slot<S, double>{s, m}, range);
}

template <typename S>
Field bool_field(const char* section, const char* key, S RunConfig::*s, bool S::*m) {
  Slot<S, bool> slot{s, m};
  Field f{section, key, {}, {}, {}};
  f.parse = [slot](RunConfig& c, const YAML::Node& n) {
    std::string text, error = plain_scalar(n, "true or false", text);
    bool v = false;
    if (error.empty() && !config_detail::parse_bool(text, v)) error = "expected true or false, got '" + text + "'";
    if (error.empty()) slot(c) = v;
    return error;
  };
  f.check = [](const RunConfig&) { return std::string(); };
  f.emit = [slot](const RunConfig& c) { return std::string(slot(c) ? "true" : "false"); };
  return f;
}

// Strings take any scalar as text; an empty value (`key:`) is the empty string.
template <typename S>
Field string_field(const char* section, const char* key, S RunConfig::*s, std::string S::*m,
                   std::function<std::string(const std::string&)> check) {
  Slot<S, std::string> slot{s, m};
  Field f{section, key, {}, {}, {}};
  f.parse = [slot](RunConfig& c, const YAML::Node& n) -> std::string {
    if (!n.IsNull() && !n.IsScalar()) return "expected a string, got " + describe(n);
    slot(c) = n.IsNull() ? std::string() : n.Scalar();
    return "";
  };
  f.check = [slot, check](const RunConfig& c) { return check(slot(c)); };
  f.emit = [slot](const RunConfig& c) { return quote(slot(c)); };
  return f;
}

template <typename S, typename E>
Field enum_field(const char* section, const char* key, S RunConfig::*s, E S::*m) {
  Slot<S, E> slot{s, m};
  Field f{section, key, {}, {}, {}};
  f.parse = [slot](RunConfig& c, const YAML::Node& n) -> std::string {
    const std::vector<std::string>& names = enum_names<E>();
    if (!n.IsScalar()) return "expected one of " + join(names) + ", got " + describe(n);
    if (enum_from_string(n.Scalar(), slot(c))) return "";
    std::string hint = config_detail::suggest(n.Scalar(), names);
    return "'" + n.Scalar() + "' is not one of " + join(names) + (hint.empty() ? "" : "; did you mean '" + hint + "'?");
  };
  f.check = [](const RunConfig&) { return std::string(); };
  f.emit = [slot](const RunConfig& c) { return std::string(to_string(slot(c))); };
  return f;
}

std::string check_pattern(const std::string& pattern) {
  for (size_t i = 0; i < pattern.size(); ++i) {
    char ch = pattern[i];
    if (ch == 'M' || ch == '*' || ch == '-') continue;
    return "symbol '" + std::string(1, ch) + "' at position " + std::to_string(i + 1) + " of '" + pattern +
           "' is not one of M (Mamba), * (attention), - (MLP)" + (ch == 'm' ? "; did you mean 'M'?" : "");
  }
  return "";
}

std::string check_task(const std::string& task) {
  const std::vector<std::string>& tasks = known_tasks();
  if (task.empty() || std::find(tasks.begin(), tasks.end(), task) != tasks.end()) return "";
  std::string hint = config_detail::suggest(task, tasks);
  return "unknown task '" + task + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?") + " (tasks: " +
         join(tasks) + ")";
}

std::string check_mlp_kind(const std::string& kind) {
  static const std::vector<std::string> kinds = {"swiglu", "gelu", "relu2"};
  if (std::find(kinds.begin(), kinds.end(), kind) != kinds.end()) return "";
  std::string hint = config_detail::suggest(kind, kinds);
  return "unknown MLP kind '" + kind + "'" + (hint.empty() ? "" : "; did you mean '" + hint + "'?") + " (kinds: " +
         join(kinds) + ")";
}

std::string check_dataset(const std::string& path) {
  if (path.empty()) return "";
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return "'" + path + "' is a directory, not a token file";
  if (!std::filesystem::exists(path, ec))
    return "file '" + path + "' does not exist (make it with `scanline prepare`; relative paths start at the working directory)";
  return "";
}

std::string check_not_empty(const std::string& s) { return s.empty() ? "must not be empty" : ""; }

using R = RunConfig;
using MC = ModelConfig;
using DC = DataConfig;
using OC = OptimConfig;
using SC = ScheduleConfig;
using TC = TrainConfig;
using EC = EvalConfig;
using CC = CheckpointConfig;
using XC = DistributedConfig;
using HC = HybridConfig;

// The schema, in the order to_yaml writes it. A dotted key ("hybrid.layers") belongs to a mapping
// inside its section (model.hybrid: {layers: ...}); data.task_options is handled on its own.
const std::vector<Field>& schema() {
  static const std::vector<Field> fields = {
      enum_field("model", "ssm", &R::model, &MC::ssm),
      int_field("model", "d_model", &R::model, &MC::d_model, 1),
      int_field("model", "n_layers", &R::model, &MC::n_layers, 1),
      string_field("model", "pattern", &R::model, &MC::pattern, check_pattern),
      int_slot_field("model", "hybrid.layers", GroupSlot<MC, HC, int64_t>{&R::model, &MC::hybrid, &HC::layers}, 0,
                     std::numeric_limits<int64_t>::max()),
      real_slot_field("model", "hybrid.attention_ratio",
                      GroupSlot<MC, HC, double>{&R::model, &MC::hybrid, &HC::attention_ratio}, kFraction),
      real_slot_field("model", "hybrid.mlp_ratio", GroupSlot<MC, HC, double>{&R::model, &MC::hybrid, &HC::mlp_ratio},
                      kFraction),
      int_field("model", "vocab_size", &R::model, &MC::vocab_size, 2),
      int_field("model", "d_state", &R::model, &MC::d_state, 1),
      int_field("model", "d_conv", &R::model, &MC::d_conv, 2, kMaxCausalConvWidth),
      int_field("model", "expand", &R::model, &MC::expand, 1),
      int_field("model", "dt_rank", &R::model, &MC::dt_rank, 0),
      bool_field("model", "selective", &R::model, &MC::selective),
      int_field("model", "headdim", &R::model, &MC::headdim, 1),
      int_field("model", "ngroups", &R::model, &MC::ngroups, 1),
      int_field("model", "chunk_size", &R::model, &MC::chunk_size, 1),
      int_field("model", "n_heads", &R::model, &MC::n_heads, 0),
      int_field("model", "n_kv_heads", &R::model, &MC::n_kv_heads, 0),
      int_field("model", "head_dim", &R::model, &MC::head_dim, 0),
      bool_field("model", "rope", &R::model, &MC::rope),
      real_field("model", "rope_theta", &R::model, &MC::rope_theta, kPositive),
      string_field("model", "mlp", &R::model, &MC::mlp, check_mlp_kind),
      int_field("model", "mlp_hidden", &R::model, &MC::mlp_hidden, 0),
      bool_field("model", "tie_embeddings", &R::model, &MC::tie_embeddings),
      real_field("model", "norm_eps", &R::model, &MC::norm_eps, kPositive),
      string_field("data", "task", &R::data, &DC::task, check_task),
      string_field("data", "dataset", &R::data, &DC::dataset, check_dataset),
      int_field("data", "seq_len", &R::data, &DC::seq_len, 2),
      real_field("data", "val_fraction", &R::data, &DC::val_fraction, kFraction),
      real_field("optim", "lr", &R::optim, &OC::lr, kPositive),
      real_field("optim", "weight_decay", &R::optim, &OC::weight_decay, kNonNegative),
      real_field("optim", "beta1", &R::optim, &OC::beta1, kFraction),
      real_field("optim", "beta2", &R::optim, &OC::beta2, kFraction),
      real_field("optim", "eps", &R::optim, &OC::eps, kPositive),
      real_field("optim", "grad_clip", &R::optim, &OC::grad_clip, kNonNegative),
      enum_field("schedule", "kind", &R::schedule, &SC::kind),
      int_field("schedule", "warmup_steps", &R::schedule, &SC::warmup_steps, 0),
      real_field("schedule", "min_lr_ratio", &R::schedule, &SC::min_lr_ratio, kUnit),
      int_field("train", "steps", &R::train, &TC::steps, 1),
      int_field("train", "batch_size", &R::train, &TC::batch_size, 1),
      int_field("train", "grad_accum", &R::train, &TC::grad_accum, 1),
      enum_field("train", "precision", &R::train, &TC::precision),
      int_field("train", "seed", &R::train, &TC::seed, 0),
      enum_field("train", "device", &R::train, &TC::device),
      int_field("train", "log_every", &R::train, &TC::log_every, 1),
      enum_field("train", "on_nonfinite", &R::train, &TC::on_nonfinite),
      string_field("train", "run_dir", &R::train, &TC::run_dir, check_not_empty),
      int_field("eval", "every", &R::eval, &EC::every, 0),
      int_field("eval", "batches", &R::eval, &EC::batches, 1),
      int_list_field("eval", "lengths", &R::eval, &EC::lengths, 1),
      int_field("eval", "examples", &R::eval, &EC::examples, 1),
      int_field("eval", "batch", &R::eval, &EC::batch, 1),
      int_field("checkpoint", "every", &R::checkpoint, &CC::every, 0),
      int_field("checkpoint", "keep", &R::checkpoint, &CC::keep, 1),
      real_field("distributed", "bucket_mb", &R::distributed, &XC::bucket_mb, kPositive),
      enum_field("distributed", "reduce_dtype", &R::distributed, &XC::reduce_dtype),
      bool_field("distributed", "overlap", &R::distributed, &XC::overlap),
  };
  return fields;
}

constexpr const char* kTaskOptions = "task_options";

// The keys of a mapping inside a section (model.hybrid: layers, attention_ratio, mlp_ratio); empty
// when `group` is a plain key.
std::vector<std::string> group_keys(const std::string& section, const std::string& group) {
  std::vector<std::string> keys;
  for (const Field& field : schema())
    if (field.section == section && field.key.starts_with(group + "."))
      keys.push_back(field.key.substr(group.size() + 1));
  return keys;
}

bool is_group(const std::string& section, const std::string& key) { return !group_keys(section, key).empty(); }

// Whether to_yaml writes a group's keys: model.hybrid only when it builds the pattern.
bool group_in_use(const RunConfig& config, const std::string& path) {
  return path != "model.hybrid" || config.model.uses_hybrid();
}

// Keys to_yaml leaves out because another decides them: a hybrid builds the pattern.
bool superseded(const RunConfig& config, const Field& field) {
  return config.model.uses_hybrid() && field.section == "model" && (field.key == "n_layers" || field.key == "pattern");
}

// ---- reading ------------------------------------------------------------------------------------

struct Entry {
  YAML::Node value;
  std::string where;
};

// The file's keys before typing, so that overrides can replace them first.
struct RawConfig {
  std::map<std::string, std::map<std::string, Entry>> sections;
  std::map<std::string, Entry> task_options;
  std::string task_options_where;
  std::map<std::string, std::string> group_where;  // "model.hybrid" -> where its mapping was given
};

class Loader {
 public:
  explicit Loader(std::string source) : source_(std::move(source)) {}

  std::vector<std::string> problems;
  std::set<std::string> failed;  // key paths whose value could not be typed: skip their checks

  void problem(const std::string& where, const std::string& path, const std::string& message) {
    problems.push_back(where + ": " + path + ": " + message);
  }

  std::string at(const YAML::Mark& mark) const { return source_ + ":" + std::to_string(std::max(mark.line, 0) + 1); }

  void read_document(const YAML::Node& root, RawConfig& raw, RunConfig& cfg) {
    if (root.IsNull()) return;
    if (!root.IsMap()) {
      problems.push_back(at(root.Mark()) + ": the file must be a mapping of sections (" + join(config_sections()) +
                         "), got " + describe(root));
      return;
    }
    std::map<std::string, std::string> seen;
    for (auto it = root.begin(); it != root.end(); ++it) {
      std::string where = at(it->first.Mark());
      if (!it->first.IsScalar()) {
        problems.push_back(where + ": section names must be plain words, got " + describe(it->first));
        continue;
      }
      // Copies: yaml-cpp's iterator hands out a temporary pair, so references into it dangle.
      const std::string name = it->first.Scalar();
      if (seen.count(name)) {
        problem(where, name, "duplicate section (first at " + seen[name] + ")");
        continue;
      }
      seen[name] = where;
      const auto& sections = config_sections();
      if (std::find(sections.begin(), sections.end(), name) == sections.end()) {
        problem(where, name, unknown_section(name));
        continue;
      }
      cfg.locations[name] = where;
      const YAML::Node body = it->second;
      if (body.IsNull()) continue;
      if (!body.IsMap()) {
        problem(where, name, "expected a mapping of keys, got " + describe(body));
        continue;
      }
      read_section(name, body, raw);
    }
  }

  void apply_overrides(const std::vector<std::string>& overrides, RawConfig& raw) {
    for (const std::string& text : overrides) {
      std::string where = "--set " + text;
      size_t eq = text.find('=');
      if (eq == std::string::npos || eq == 0) {
        problems.push_back(where + ": expected section.key=value");
        continue;
      }
      std::string path = text.substr(0, eq), value_text = text.substr(eq + 1);
      std::vector<std::string> parts;
      for (size_t start = 0;;) {
        size_t dot = path.find('.', start);
        parts.push_back(path.substr(start, dot - start));
        if (dot == std::string::npos) break;
        start = dot + 1;
      }
      const auto& sections = config_sections();
      if (std::find(sections.begin(), sections.end(), parts[0]) == sections.end()) {
        problem(where, path, unknown_section(parts[0]));
        continue;
      }
      bool option = parts.size() == 3 && parts[0] == "data" && parts[1] == kTaskOptions && !parts[2].empty();
      bool grouped = parts.size() == 3 && is_group(parts[0], parts[1]) && !parts[2].empty();
      if (parts.size() != 2 && !option && !grouped) {
        problem(where, path,
                parts.size() == 1 ? "name a key: section.key=value"
                : parts.size() >= 2 && parts[1] == kTaskOptions
                    ? "set one option at a time: data.task_options.NAME=value"
                    : "expected section.key=value");
        continue;
      }
      std::vector<std::string> keys = config_keys(parts[0]);
      if (!option && std::find(keys.begin(), keys.end(), parts[1]) == keys.end()) {
        problem(where, path, unknown_key(parts[0], parts[1]));
        continue;
      }
      if (grouped && !is_group_key(parts[0], parts[1], parts[2])) {
        problem(where, path, unknown_group_key(parts[0], parts[1], parts[2]));
        continue;
      }
      YAML::Node value;
      try {
        value = YAML::Load(value_text);
      } catch (const YAML::Exception& e) {
        problem(where, path, "the value is not a YAML scalar (" + e.msg + "); quote it, e.g. --set '" + path + "=\"" +
                                 value_text + "\"'");
        continue;
      }
      if (option) raw.task_options[parts[2]] = Entry{value, where};
      else if (grouped) raw.sections[parts[0]][parts[1] + "." + parts[2]] = Entry{value, where};
      else if (is_group(parts[0], parts[1])) read_group(parts[0], parts[1], value, where, false, raw);
      else if (parts[1] == kTaskOptions && value.IsNull()) raw.task_options.clear();  // data.task_options= drops them
      else if (parts[1] == kTaskOptions) problem(where, path, "set one option at a time: data.task_options.NAME=value");
      else raw.sections[parts[0]][parts[1]] = Entry{value, where};
    }
  }

  // Types every given key into cfg and records where it came from.
  void convert(const RawConfig& raw, RunConfig& cfg) {
    for (const Field& field : schema()) {
      auto section = raw.sections.find(field.section);
      if (section == raw.sections.end()) continue;
      auto entry = section->second.find(field.key);
      if (entry == section->second.end()) continue;
      cfg.locations[field.path()] = entry->second.where;
      std::string error = field.parse(cfg, entry->second.value);
      if (!error.empty()) {
        problem(entry->second.where, field.path(), error);
        failed.insert(field.path());
      }
    }
    if (!raw.task_options_where.empty()) cfg.locations["data.task_options"] = raw.task_options_where;
    for (const auto& [path, where] : raw.group_where) cfg.locations[path] = where;
    for (const auto& [name, entry] : raw.task_options) {
      std::string path = "data.task_options." + name;
      cfg.locations[path] = entry.where;
      if (!entry.value.IsScalar()) {
        problem(entry.where, path, "expected a scalar value, got " + describe(entry.value));
        failed.insert(path);
        continue;
      }
      cfg.data.task_options.set(name, entry.value.Scalar(), entry.where);
    }
  }

 private:
  void read_section(const std::string& section, const YAML::Node& body, RawConfig& raw) {
    std::vector<std::string> keys = config_keys(section);
    std::map<std::string, std::string> seen;
    for (auto it = body.begin(); it != body.end(); ++it) {
      std::string where = at(it->first.Mark());
      if (!it->first.IsScalar()) {
        problem(where, section, "keys must be plain names, got " + describe(it->first));
        continue;
      }
      const std::string key = it->first.Scalar();  // a copy: the iterator's pair is a temporary
      std::string path = section + "." + key;
      if (seen.count(key)) {
        problem(where, path, "duplicate key (first at " + seen[key] + ")");
        continue;
      }
      seen[key] = where;
      if (std::find(keys.begin(), keys.end(), key) == keys.end()) {
        problem(where, path, unknown_key(section, key));
      } else if (section == "data" && key == kTaskOptions) {
        read_task_options(it->second, where, raw);
      } else if (is_group(section, key)) {
        read_group(section, key, it->second, where, true, raw);
      } else {
        raw.sections[section][key] = Entry{it->second, where};
      }
    }
  }

  void read_task_options(const YAML::Node& body, const std::string& where, RawConfig& raw) {
    raw.task_options_where = where;
    if (body.IsNull()) return;
    if (!body.IsMap()) {
      problem(where, "data.task_options", "expected a mapping of option: value, got " + describe(body));
      return;
    }
    for (auto it = body.begin(); it != body.end(); ++it) {
      std::string key_where = at(it->first.Mark());
      std::string key = it->first.IsScalar() ? it->first.Scalar() : describe(it->first);
      if (raw.task_options.count(key)) {
        problem(key_where, "data.task_options." + key, "duplicate option (first at " + raw.task_options[key].where + ")");
        continue;
      }
      raw.task_options[key] = Entry{it->second, key_where};
    }
  }

  // A mapping such as model.hybrid, from the file (each key's own line) or from one --set (every
  // key at the override): it replaces the group whole, and null (`hybrid:`) leaves it unused.
  void read_group(const std::string& section, const std::string& group, const YAML::Node& body,
                  const std::string& where, bool from_file, RawConfig& raw) {
    const std::string path = section + "." + group;
    raw.group_where[path] = where;
    std::map<std::string, Entry>& entries = raw.sections[section];
    std::erase_if(entries, [&](const auto& entry) { return entry.first.starts_with(group + "."); });
    if (body.IsNull()) return;
    if (!body.IsMap()) {
      problem(where, path, "expected a mapping of " + join(group_keys(section, group)) + ", got " + describe(body));
      return;
    }
    std::map<std::string, std::string> seen;
    for (auto it = body.begin(); it != body.end(); ++it) {
      std::string key_where = from_file ? at(it->first.Mark()) : where;
      if (!it->first.IsScalar()) {
        problem(key_where, path, "keys must be plain names, got " + describe(it->first));
        continue;
      }
      const std::string key = it->first.Scalar();
      if (seen.count(key)) {
        problem(key_where, path + "." + key, "duplicate key (first at " + seen[key] + ")");
        continue;
      }
      seen[key] = key_where;
      if (is_group_key(section, group, key)) entries[group + "." + key] = Entry{it->second, key_where};
      else problem(key_where, path + "." + key, unknown_group_key(section, group, key));
    }
  }

  static bool is_group_key(const std::string& section, const std::string& group, const std::string& key) {
    std::vector<std::string> keys = group_keys(section, group);
    return std::find(keys.begin(), keys.end(), key) != keys.end();
  }

  static std::string unknown_group_key(const std::string& section, const std::string& group, const std::string& key) {
    std::vector<std::string> keys = group_keys(section, group);
    std::string hint = config_detail::suggest(key, keys);
    return "unknown key" + (hint.empty() ? "" : "; did you mean '" + hint + "'?") + " (" + section + "." + group +
           " keys: " + join(keys) + ")";
  }

  // Exact matches in other sections beat a near miss in this one: train.warmup_steps is schedule's.
  static std::string unknown_key(const std::string& section, const std::string& key) {
    std::vector<std::string> keys = config_keys(section), elsewhere;
    for (const std::string& other : config_sections()) {
      std::vector<std::string> other_keys = config_keys(other);
      if (other != section && std::find(other_keys.begin(), other_keys.end(), key) != other_keys.end())
        elsewhere.push_back("'" + other + "." + key + "'");
    }
    std::string message = "unknown key";
    std::string hint = config_detail::suggest(key, keys);
    if (!elsewhere.empty()) message += "; did you mean " + join(elsewhere, " or ") + "?";
    else if (!hint.empty()) message += "; did you mean '" + hint + "'?";
    return message + " (" + section + " keys: " + join(keys) + ")";
  }

  static std::string unknown_section(const std::string& name) {
    std::vector<std::string> owners;
    for (const std::string& section : config_sections()) {
      std::vector<std::string> keys = config_keys(section);
      if (std::find(keys.begin(), keys.end(), name) != keys.end()) owners.push_back("'" + section + "." + name + "'");
    }
    std::string message = "unknown section";
    std::string hint = config_detail::suggest(name, config_sections());
    if (!owners.empty()) message += "; did you mean " + join(owners, " or ") + "? (keys go inside their section)";
    else if (!hint.empty()) message += "; did you mean '" + hint + "'?";
    return message + " (sections: " + join(config_sections()) + ")";
  }

  std::string source_;
};

// model.hybrid is in use when any of its keys is given (or, in a config built in code, set).
bool hybrid_given(const RunConfig& cfg) {
  const HybridConfig& h = cfg.model.hybrid;
  bool given = h.layers != 0 || h.attention_ratio != 0.0 || h.mlp_ratio != 0.0;
  for (const std::string& key : group_keys("model", "hybrid"))
    given = given || cfg.locations.count("model.hybrid." + key);
  return given;
}

// The ratio and block-count checks of model.hybrid beyond each key's range, and its exclusion of
// model.pattern and model.n_layers.
void check_hybrid(const RunConfig& cfg, const std::set<std::string>& failed, std::vector<std::string>& problems) {
  if (!hybrid_given(cfg)) return;
  const HybridConfig& h = cfg.model.hybrid;
  // Where model.hybrid was written: its mapping, else (--set model.hybrid.KEY=...) its first key given.
  std::string where = cfg.where("model.hybrid");
  if (!cfg.locations.count("model.hybrid"))
    for (const std::string& key : group_keys("model", "hybrid"))
      if (cfg.locations.count("model.hybrid." + key)) {
        where = cfg.locations.at("model.hybrid." + key);
        break;
      }
  auto problem = [&](const std::string& path, const std::string& message) {
    problems.push_back((path == "model.hybrid" ? where : cfg.where(path)) + ": " + path + ": " + message);
  };
  if (!cfg.model.pattern.empty() && !failed.count("model.pattern"))
    problem("model.hybrid", "model.hybrid and model.pattern are both set; keep one (hybrid builds the pattern)");
  if (cfg.locations.count("model.n_layers") && !failed.count("model.n_layers"))
    problem("model.hybrid", "model.hybrid and model.n_layers are both set; keep one (model.hybrid.layers is the "
                            "number of blocks)");
  for (const std::string& key : group_keys("model", "hybrid"))
    if (failed.count("model.hybrid." + key)) return;
  if (h.layers < 1) {
    problem("model.hybrid.layers", cfg.locations.count("model.hybrid.layers")
                                       ? "must be >= 1 for a hybrid, got " + std::to_string(h.layers)
                                       : "missing: model.hybrid needs layers (the number of blocks)");
    return;
  }
  const auto in_range = [](double r) { return r >= 0.0 && r < 1.0; };
  if (!in_range(h.attention_ratio) || !in_range(h.mlp_ratio)) return;  // the key's own check said so
  if (h.attention_ratio + h.mlp_ratio >= 1.0) {
    problem("model.hybrid", "attention_ratio " + format_double(h.attention_ratio) + " + mlp_ratio " +
                                format_double(h.mlp_ratio) + " must be < 1 (the rest of the blocks are SSM blocks)");
    return;
  }
  const int64_t attention = hybrid_block_count(h.layers, h.attention_ratio);
  const int64_t mlp = hybrid_block_count(h.layers, h.mlp_ratio);
  if (attention + mlp >= h.layers)
    problem("model.hybrid", std::to_string(h.layers) + " layers get round(layers * attention_ratio) = " +
                                std::to_string(attention) + " attention and round(layers * mlp_ratio) = " +
                                std::to_string(mlp) + " MLP blocks, which leaves no SSM block; add layers or lower "
                                "a ratio");
}

// The blocks the model will have, or "" while the keys deciding them have a problem of their own.
std::string checked_layer_pattern(const RunConfig& cfg, const std::set<std::string>& failed) {
  const ModelConfig& m = cfg.model;
  if (hybrid_given(cfg)) {
    try {
      return m.uses_hybrid() ? hybrid_pattern(m.hybrid.layers, m.hybrid.attention_ratio, m.hybrid.mlp_ratio) : "";
    } catch (const Error&) {
      return "";  // check_hybrid reports it
    }
  }
  if (failed.count("model.pattern") || failed.count("model.n_layers") || !check_pattern(m.pattern).empty()) return "";
  return m.pattern.empty() ? std::string(size_t(std::max<int64_t>(m.n_layers, 0)), 'M') : m.pattern;
}

// The attention blocks' head layout (models/attention.h), checked only when the pattern has one:
// n_kv_heads divides n_heads, and without head_dim the heads split d_model evenly (mamba_ssm's
// MHA asserts the same); rope rotates pairs, so an even head size.
void check_attention(const RunConfig& cfg, const std::set<std::string>& failed, std::vector<std::string>& problems) {
  const ModelConfig& m = cfg.model;
  for (const char* key : {"model.d_model", "model.n_heads", "model.n_kv_heads", "model.head_dim", "model.rope"})
    if (failed.count(key)) return;
  if (checked_layer_pattern(cfg, failed).find('*') == std::string::npos) return;
  if (m.d_model < 1 || m.n_heads < 0 || m.n_kv_heads < 0 || m.head_dim < 0) return;  // reported as out of range
  auto problem = [&](const std::string& path, const std::string& message) {
    problems.push_back(cfg.where(path) + ": " + path + ": " + message);
  };
  const std::string d = std::to_string(m.d_model);
  const int64_t heads = m.n_heads > 0 ? m.n_heads : m.d_model / 64;
  if (heads < 1) {
    problem("model.n_heads", "0 means d_model / 64 heads, none for d_model " + d +
                                 "; set n_heads for the attention blocks");
    return;
  }
  const int64_t kv_heads = m.n_kv_heads > 0 ? m.n_kv_heads : heads;
  if (heads % kv_heads != 0)
    problem("model.n_kv_heads", "n_kv_heads " + std::to_string(kv_heads) + " does not divide n_heads " +
                                    std::to_string(heads) + " (each kv head serves n_heads / n_kv_heads query heads)");
  if (m.head_dim == 0 && m.d_model % heads != 0) {
    const std::string n = m.n_heads > 0 ? "n_heads " + std::to_string(heads)
                                        : "n_heads 0 (d_model / 64 = " + std::to_string(heads) + " heads)";
    problem("model.n_heads", n + " does not divide d_model " + d + " into heads of head_dim = d_model / n_heads; "
                                 "choose n_heads dividing d_model or set model.head_dim");
    return;
  }
  const int64_t head_dim = m.head_dim > 0 ? m.head_dim : m.d_model / heads;
  if (m.rope && head_dim % 2 != 0)
    problem("model.rope", "rotary embeddings rotate pairs of channels, so the head size must be even, got head_dim " +
                              std::to_string(head_dim));
}

// eval.lengths: one example of the run's task at every length now, so that a length the task cannot
// use (induction_heads below 3 tokens, more phonebook entries than its digits allow) stops the run
// before training rather than after it. Skipped while the training task's own settings fail: the
// trainer reports those at their keys.
void check_eval_lengths(const RunConfig& cfg, const std::set<std::string>& failed, std::vector<std::string>& problems) {
  const DataConfig& d = cfg.data;
  if (cfg.eval.lengths.empty() || failed.count("eval.lengths") || failed.count("data.task")) return;
  const std::string where = cfg.where("eval.lengths");
  if (d.task.empty()) {
    if (!d.dataset.empty())
      problems.push_back(where + ": eval.lengths: the task evaluation needs a synthetic task (data.task), but this run "
                                 "trains on the dataset '" + d.dataset + "'");
    return;
  }
  if (!d.dataset.empty() || !check_task(d.task).empty()) return;
  try {
    task_examples(cfg, 1);
  } catch (const Error&) {
    return;
  }
  RunConfig plain = cfg;  // no file lines: the problem is the length, not the line a key is on
  plain.locations.clear();
  plain.source_file.clear();
  for (int64_t length : cfg.eval.lengths) {
    if (length < 1) continue;  // the key's own check says so
    std::vector<std::string> why;
    try {
      task_examples(task_config_at_length(plain, d.task, d.task_options, length), 1);
    } catch (const ConfigError& e) {
      why = e.problems();
    } catch (const Error& e) {
      why = {e.what()};
    }
    for (std::string& w : why)
      if (w.starts_with("<config>: ")) w.erase(0, 10);
    if (!why.empty())
      problems.push_back(where + ": eval.lengths: " + d.task + " cannot be evaluated at length " +
                         std::to_string(length) + ": " + join(why, "; "));
  }
}

// Value checks and the checks that involve several keys; `failed` keys are not checked again.
void check_values(const RunConfig& cfg, const std::set<std::string>& failed, std::vector<std::string>& problems) {
  auto ok = [&](const std::string& path) { return !failed.count(path); };
  auto problem = [&](const std::string& path, const std::string& message) {
    problems.push_back(cfg.where(path) + ": " + path + ": " + message);
  };
  for (const Field& field : schema()) {
    if (!ok(field.path())) continue;
    std::string error = field.check(cfg);
    if (!error.empty()) problem(field.path(), error);
  }
  const ModelConfig& m = cfg.model;
  check_hybrid(cfg, failed, problems);
  check_attention(cfg, failed, problems);
  // Mamba-2 splits d_inner = expand * d_model into heads of headdim, and the heads into ngroups.
  if (m.ssm == SsmKind::mamba2 && ok("model.ssm") && ok("model.d_model") && ok("model.expand") &&
      ok("model.headdim") && ok("model.ngroups") && m.d_model >= 1 && m.expand >= 1 && m.headdim >= 1 &&
      m.ngroups >= 1) {
    const int64_t d_inner = m.d_model * m.expand;
    if (d_inner % m.headdim != 0)
      problem("model.headdim", "headdim " + std::to_string(m.headdim) + " does not divide d_model * expand = " +
                                   std::to_string(d_inner) + " (Mamba-2 splits it into heads of headdim channels)");
    else if ((d_inner / m.headdim) % m.ngroups != 0)
      problem("model.ngroups", "ngroups " + std::to_string(m.ngroups) + " does not divide the " +
                                   std::to_string(d_inner / m.headdim) + " heads (d_model * expand / headdim)");
  }
  const TrainConfig& t = cfg.train;
  if (ok("train.batch_size") && ok("train.grad_accum") && t.batch_size >= 1 && t.grad_accum >= 1 &&
      t.batch_size % t.grad_accum != 0) {
    bool at_accum = !cfg.locations.count("train.batch_size") && cfg.locations.count("train.grad_accum");
    problem(at_accum ? "train.grad_accum" : "train.batch_size",
            "batch_size " + std::to_string(t.batch_size) + " is not divisible by grad_accum " +
                std::to_string(t.grad_accum) + " (each micro-batch must have the same number of sequences)");
  }
  const DataConfig& d = cfg.data;
  if (ok("data.task") && ok("data.dataset")) {
    if (d.task.empty() && d.dataset.empty())
      problem("data", "set data.task (a synthetic task: " + join(known_tasks()) +
                          ") or data.dataset (a token file made by `scanline prepare`)");
    else if (!d.task.empty() && !d.dataset.empty())
      problem("data.dataset", "data.task ('" + d.task + "') and data.dataset ('" + d.dataset +
                                  "') are both set; keep one");
  }
  if (d.task.empty() && !d.dataset.empty() && !d.task_options.empty() && ok("data.task"))
    problem("data.task_options", "options are for a synthetic task, but data.task is not set");
  check_eval_lengths(cfg, failed, problems);
}

int problem_line(const std::string& problem, const std::string& source) {
  if (problem.starts_with("--set ")) return std::numeric_limits<int>::max();
  if (!problem.starts_with(source + ":")) return 0;
  return std::atoi(problem.c_str() + source.size() + 1);
}

// File problems by line, then override problems in the order given.
std::vector<std::string> in_reading_order(std::vector<std::string> problems, const std::string& source) {
  std::stable_sort(problems.begin(), problems.end(), [&](const std::string& a, const std::string& b) {
    return problem_line(a, source) < problem_line(b, source);
  });
  return problems;
}

}  // namespace

const std::vector<std::string>& config_sections() {
  static const std::vector<std::string> sections = {"model", "data",  "optim",      "schedule",
                                                    "train", "eval", "checkpoint", "distributed"};
  return sections;
}

std::vector<std::string> config_keys(const std::string& section) {
  std::vector<std::string> keys;
  for (const Field& field : schema()) {
    if (field.section != section) continue;
    std::string key = field.key.substr(0, field.key.find('.'));  // a group's keys are one key
    if (keys.empty() || keys.back() != key) keys.push_back(key);
  }
  if (section == "data") keys.push_back(kTaskOptions);
  return keys;
}

RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides) {
  RunConfig cfg;
  cfg.source_file = source_name;
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError({source_name + ":" + std::to_string(std::max(e.mark.line, 0) + 1) + ": invalid YAML: " + e.msg});
  }
  Loader loader(source_name);
  RawConfig raw;
  loader.read_document(root, raw, cfg);
  loader.apply_overrides(overrides, raw);
  loader.convert(raw, cfg);
  if (!cfg.locations.count("train.run_dir")) {
    std::string stem = std::filesystem::path(source_name).stem().string();
    cfg.train.run_dir = "runs/" + (stem.empty() ? std::string("run") : stem);
  }
  check_values(cfg, loader.failed, loader.problems);
  if (!loader.problems.empty()) throw ConfigError(in_reading_order(std::move(loader.problems), source_name));
  return cfg;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError({path + ": cannot read the config file: " + std::strerror(errno)});
  std::ostringstream text;
  text << in.rdbuf();
  return parse_run_config(text.str(), path, overrides);
}

void validate_run_config(const RunConfig& config) {
  std::vector<std::string> problems;
  check_values(config, {}, problems);
  if (!problems.empty()) throw ConfigError(std::move(problems));
}

void validate_for_world(const RunConfig& config, int64_t world_size) {
  SCANLINE_CHECK(world_size >= 1, "validate_for_world: world size must be >= 1, got ", world_size);
  int64_t per_step = config.train.grad_accum * world_size;
  if (config.train.batch_size % per_step == 0) return;
  throw ConfigError({config.where("train.batch_size") + ": train.batch_size: " +
                     std::to_string(config.train.batch_size) + " sequences do not split evenly into grad_accum " +
                     std::to_string(config.train.grad_accum) + " micro-batches on each of " +
                     std::to_string(world_size) + " ranks; use a multiple of " + std::to_string(per_step)});
}

std::string to_yaml(const RunConfig& config) {
  // Option names and values are written plain when YAML reads them back as the same text.
  auto plain_safe = [](const std::string& s) {
    if (s.empty() || s == "-" || s == "null" || s == "~") return false;
    if (s.front() == '-' && !std::isdigit(static_cast<unsigned char>(s[1])) && s[1] != '.') return false;
    return std::all_of(s.begin(), s.end(), [](char c) {
      return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' || c == '+' || c == '-' || c == '/';
    });
  };
  std::ostringstream out;
  for (const std::string& section : config_sections()) {
    out << section << ":\n";
    std::string group;  // the mapping being written
    for (const Field& field : schema()) {
      if (field.section != section || superseded(config, field)) continue;
      const size_t dot = field.key.find('.');
      if (dot == std::string::npos) {
        out << "  " << field.key << ": " << field.emit(config) << "\n";
        continue;
      }
      const bool first = field.key.substr(0, dot) != group;
      group = field.key.substr(0, dot);
      const bool in_use = group_in_use(config, section + "." + group);
      if (first) out << "  " << group << ":" << (in_use ? "" : " {}") << "\n";
      if (in_use) out << "    " << field.key.substr(dot + 1) << ": " << field.emit(config) << "\n";
    }
    if (section != "data") continue;
    const auto& options = config.data.task_options.values();
    out << "  " << kTaskOptions << ":" << (options.empty() ? " {}" : "") << "\n";
    for (const auto& [key, value] : options)
      out << "    " << (plain_safe(key) ? key : quote(key)) << ": " << (plain_safe(value) ? value : quote(value)) << "\n";
  }
  return out.str();
}

}  // namespace scanline
