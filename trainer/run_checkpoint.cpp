#include "trainer/run_checkpoint.h"

#include <map>
#include <sstream>

#include "autograd/grad_mode.h"
#include "trainer/config_loader.h"

namespace scanline {

std::vector<int64_t> LoopPositions::encode() const {
  std::vector<int64_t> out{kTag, kVersion, optimizer_steps, skipped_steps, int64_t(train.size())};
  out.insert(out.end(), train.begin(), train.end());
  out.push_back(int64_t(val.size()));
  out.insert(out.end(), val.begin(), val.end());
  return out;
}

LoopPositions LoopPositions::decode(const std::vector<int64_t>& v, const std::string& path) {
  auto bad = [&](const std::string& why) {
    SCANLINE_FAIL("checkpoint '", path, "': its loader position was not written by this trainer (", why, ")");
  };
  if (v.size() < 6 || v[0] != kTag) bad("tag or length");
  if (v[1] != kVersion) bad("version " + std::to_string(v[1]) + ", expected " + std::to_string(kVersion));
  LoopPositions p;
  p.optimizer_steps = v[2];
  p.skipped_steps = v[3];
  size_t i = 4;
  auto take = [&](std::vector<int64_t>& out) {
    if (i >= v.size() || v[i] < 0 || size_t(v[i]) > v.size() - i - 1) bad("source position length");
    const size_t n = size_t(v[i++]);
    out.assign(v.begin() + ptrdiff_t(i), v.begin() + ptrdiff_t(i + n));
    i += n;
  };
  take(p.train);
  take(p.val);
  if (i != v.size()) bad("trailing values");
  if (p.optimizer_steps < 0 || p.skipped_steps < 0) bad("negative step counts");
  return p;
}

Checkpoint make_checkpoint(const std::vector<NamedParameter>& params, const AdamW& optimizer, TrainState state,
                           const std::string& config_yaml) {
  Checkpoint c;
  for (const NamedParameter& p : params) c.model.emplace_back(p.name, p.tensor.detach());
  for (const AdamWMoments& m : optimizer.named_state()) c.optim.push_back({m.name, {m.m, m.v}});
  c.state = std::move(state);
  c.config_yaml = config_yaml;
  return c;
}

std::vector<std::pair<std::string, std::string>> config_entries(const std::string& config_yaml) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(config_yaml);
  std::string section, parent;
  for (std::string line; std::getline(in, line);) {
    const size_t indent = line.find_first_not_of(' ');
    const size_t colon = line.find(':');
    if (indent == std::string::npos || colon == std::string::npos || line[indent] == '#') continue;
    std::string key = line.substr(indent, colon - indent);
    const size_t start = line.find_first_not_of(' ', colon + 1);
    std::string value = start == std::string::npos ? "" : line.substr(start);
    if (indent == 0) {
      section = key;
      continue;
    }
    if (indent == 2) {
      parent = key;
      if (!value.empty()) out.emplace_back(section + "." + key, value);  // "task_options: {}" included
      continue;
    }
    out.emplace_back(section + "." + parent + "." + key, value);
  }
  return out;
}

void check_resume_config(const RunConfig& config, const std::string& checkpoint_config_yaml, const std::string& path) {
  auto relevant = [](const std::string& yaml) {
    std::map<std::string, std::string> kept;
    for (auto& [key, value] : config_entries(yaml))
      if (key.starts_with("model.") || key.starts_with("data.")) kept[key] = value;
    return kept;
  };
  // Both sides through to_yaml, so spelling and defaults cannot make equal settings look different.
  std::string saved_yaml;
  try {
    saved_yaml = to_yaml(parse_run_config(checkpoint_config_yaml, path + " /config"));
  } catch (const Error& e) {
    SCANLINE_FAIL("checkpoint '", path, "': its saved config does not load: ", e.what());
  }
  const auto saved = relevant(saved_yaml), now = relevant(to_yaml(config));
  std::vector<std::string> differences;
  for (const auto& [key, value] : now) {
    auto it = saved.find(key);
    if (it == saved.end()) differences.push_back(key + ": not set in the checkpoint, " + value + " now");
    else if (it->second != value) differences.push_back(key + ": " + it->second + " in the checkpoint, " + value + " now");
  }
  for (const auto& [key, value] : saved)
    if (!now.count(key)) differences.push_back(key + ": " + value + " in the checkpoint, not set now");
  if (differences.empty()) return;
  std::string list;
  for (const std::string& d : differences) list += "\n  " + d;
  SCANLINE_FAIL("cannot resume from '", path, "': the model and data sections must match the checkpoint's "
                "(only other sections, e.g. train.steps, may change):", list);
}

void load_parameters(const std::vector<NamedParameter>& params, const Checkpoint& checkpoint, const std::string& path) {
  std::map<std::string, const Tensor*> saved;
  for (const auto& [name, tensor] : checkpoint.model) saved[name] = &tensor;
  for (const NamedParameter& p : params) {
    auto it = saved.find(p.name);
    SCANLINE_CHECK(it != saved.end(), "checkpoint '", path, "' has no parameter '", p.name, "'");
    SCANLINE_CHECK(it->second->shape() == p.tensor.shape(), "checkpoint '", path, "': parameter '", p.name,
                   "' has shape ", it->second->shape(), " but the model's is ", p.tensor.shape());
  }
  SCANLINE_CHECK(saved.size() == params.size(), "checkpoint '", path, "' holds ", saved.size(),
                 " parameters but the model has ", params.size());
  NoGradGuard no_grad;
  for (const NamedParameter& p : params) copy_into(p.tensor, *saved[p.name]);
}

std::vector<AdamWMoments> optimizer_moments(const Checkpoint& checkpoint) {
  std::vector<AdamWMoments> out;
  for (const auto& [name, moments] : checkpoint.optim) out.push_back({name, moments.first, moments.second});
  return out;
}

}  // namespace scanline
