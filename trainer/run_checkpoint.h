#pragma once
// What the training loop puts into a checkpoint and takes back out of one: the parameters, the
// AdamW moments, the TrainState, and the check that a checkpoint belongs to the run resuming it.
//
// TrainState::loader_position is the trainer's own encoding (the checkpoint stores it opaquely):
//   {kLoopStateTag, version, optimizer steps, skipped steps,
//    n_train, <n_train values: the train source's position>, n_val, <n_val values: the val source's>}
// The optimizer's step count is kept because it differs from the run's step once steps were
// skipped (train.on_nonfinite: skip), and AdamW's bias corrections depend on it.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "models/module.h"
#include "trainer/adamw.h"
#include "trainer/checkpoint.h"
#include "trainer/run_config.h"

namespace scanline {

struct LoopPositions {
  static constexpr int64_t kTag = 0x4c4f4f50;  // "LOOP"
  static constexpr int64_t kVersion = 1;
  int64_t optimizer_steps = 0;
  int64_t skipped_steps = 0;
  std::vector<int64_t> train;
  std::vector<int64_t> val;

  std::vector<int64_t> encode() const;
  // Throws Error naming `path` when the values are not such an encoding.
  static LoopPositions decode(const std::vector<int64_t>& values, const std::string& path);
};

// The checkpoint of the live run (tensors are referenced, not copied: save it right away).
Checkpoint make_checkpoint(const std::vector<NamedParameter>& params, const AdamW& optimizer, TrainState state,
                           const std::string& config_yaml);

// Refuses (Error) a checkpoint whose config differs from `config` in the model or data sections,
// listing each differing key with both values. Other sections (steps, lr, intervals, ...) may
// change on resume.
void check_resume_config(const RunConfig& config, const std::string& checkpoint_config_yaml, const std::string& path);

// Copies the checkpoint's parameters into the live ones (any device; the values are converted to
// the parameter's device and dtype). Every live parameter must be in the checkpoint with its shape,
// and the checkpoint may hold no other; nothing is written before all of that is checked.
void load_parameters(const std::vector<NamedParameter>& params, const Checkpoint& checkpoint, const std::string& path);

// The checkpoint's AdamW moments in the form AdamW::load_state takes.
std::vector<AdamWMoments> optimizer_moments(const Checkpoint& checkpoint);

// The entries of a to_yaml() text in order, as ("section.key", value text); task options appear as
// ("data.task_options.NAME", value).
std::vector<std::pair<std::string, std::string>> config_entries(const std::string& config_yaml);

}  // namespace scanline
