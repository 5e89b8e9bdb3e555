#pragma once
// The run folder (train.run_dir): created at the start of a run, holding config.yaml (the resolved
// config), metrics.jsonl and the checkpoints; and the choice of the checkpoint a run resumes from.
#include <optional>
#include <string>
#include <vector>

namespace scanline {

// Creates the folder (and its parents) and writes <run_dir>/config.yaml atomically.
void prepare_run_dir(const std::string& run_dir, const std::string& config_yaml);

// Writes `text` to `path` through a temporary file beside it and a rename, so a reader sees the
// old file or the whole new one, never a part; an Error naming the file when it cannot.
void write_file_atomically(const std::string& path, const std::string& text);

// The checkpoint to resume from for `resume` = "" (a fresh run), "auto" or a checkpoint path:
//   ""     nullopt; an Error when run_dir already holds checkpoints, so a fresh run never mixes
//          its checkpoints with an older run's (resume it, or choose another train.run_dir);
//   "auto" the newest checkpoint of run_dir that verifies (nullopt when there is none: a fresh
//          start); each newer one that does not is skipped, its problem added to `warnings`;
//   PATH   PATH itself (loading it reports any problem).
std::optional<std::string> resume_checkpoint(const std::string& run_dir, const std::string& resume,
                                             std::vector<std::string>& warnings);

}  // namespace scanline
