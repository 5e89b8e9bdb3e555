#pragma once
// HDF5 checkpoints: model parameters, AdamW moments, the training state (step, tokens, RNG
// generators, data loader position) and the resolved YAML config, in one file that is written
// atomically and verified completely before anything in it is used. Layout: docs/CHECKPOINTS.md.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/tensor.h"

namespace scanline {

// Any problem with a checkpoint file: missing, truncated, corrupt, or not what the trainer wrote.
// what() reads "checkpoint '<path>': <problem>".
class CheckpointError : public Error {
 public:
  CheckpointError(const std::string& path, const std::string& problem);
  const std::string& path() const { return path_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string path_;
  std::string problem_;
};

struct TrainState {
  int64_t step = 0;         // optimizer steps completed
  int64_t tokens_seen = 0;  // training tokens consumed, all ranks together
  int64_t world_size = 1;   // ranks the run had when it saved
  // Philox generators by name: (seed, offset), i.e. Generator::set_state's arguments.
  std::vector<std::pair<std::string, std::array<uint64_t, 2>>> generators;
  std::vector<int64_t> loader_position;  // opaque to the checkpoint; the loader defines it

  bool operator==(const TrainState&) const = default;
};

struct Checkpoint {
  std::vector<std::pair<std::string, Tensor>> model;                     // parameter name -> value
  std::vector<std::pair<std::string, std::pair<Tensor, Tensor>>> optim;  // parameter name -> (m, v)
  TrainState state;
  std::string config_yaml;  // the resolved config, as printed
};

// Writes `checkpoint` to `path` atomically: everything goes to a temporary file beside it
// ("<path>.tmp.<pid>"), which is flushed, fsynced and renamed over `path`; the directory is then
// fsynced. If anything fails the temporary file is removed and an existing `path` is untouched.
// Tensors may live on any device and have any strides; they are stored contiguous with their
// dtype and shape. Names must be non-empty, unique within their group and contain no '/'.
void save_checkpoint(const std::string& path, const Checkpoint& checkpoint);

// Reads and verifies a checkpoint (file size, whole-file CRC32C, structure, dtypes, shapes and
// the contents checksum); tensors come back contiguous on the CPU in the order they were saved.
// Throws CheckpointError on any problem.
Checkpoint load_checkpoint(const std::string& path);

// The same checks as load_checkpoint without keeping the tensors in memory (the file's bytes are
// still read once, for the CRC). Throws CheckpointError.
void verify_checkpoint(const std::string& path);

// "<run_dir>/ckpt-<step, 8 digits or more>.h5".
std::string checkpoint_path(const std::string& run_dir, int64_t step);
// The step of a checkpoint file name ("ckpt-00000120.h5" -> 120); nullopt for anything else,
// temporary files included.
std::optional<int64_t> checkpoint_step(const std::string& file_name);
// The checkpoint files of run_dir as (step, path), oldest first; none when the folder is missing.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir);

// The newest checkpoint of run_dir that verifies. Each newer one that does not is skipped and
// adds "skipping checkpoint '<path>': <problem>" to `warnings` (when given).
std::optional<std::string> latest_valid_checkpoint(const std::string& run_dir,
                                                   std::vector<std::string>* warnings = nullptr);

// Keeps the newest `keep` (at least 1) checkpoints that verify and deletes every checkpoint older
// than the oldest of them. A corrupt file newer than that is left (and warned about); the newest
// valid checkpoint is never deleted, and nothing is deleted when none verifies. Leftover temporary
// files of interrupted saves are removed. Returns the removed paths.
std::vector<std::string> prune_checkpoints(const std::string& run_dir, int64_t keep,
                                           std::vector<std::string>* warnings = nullptr);

}  // namespace scanline
