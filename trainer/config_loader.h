#pragma once
// Reads a run configuration from YAML, applies `--set section.key=value` overrides, and validates
// everything before any work starts. Every problem found is reported at once in one ConfigError,
// one `file:line: key.path: message` line each (an unknown key gets the nearest valid name).
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/run_config.h"

namespace scanline {

// `overrides` are "section.key=value" (or "data.task_options.NAME=value", "model.hybrid.KEY=value")
// strings, applied in order on top of the file; each value is parsed as a YAML scalar (a flow
// mapping, or nothing, replaces a whole model.hybrid; eval.lengths takes a flow list, [256,1024]).
// train.run_dir defaults to "runs/<stem of path>". Throws ConfigError.
RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The same from YAML text (e.g. the /config saved in a checkpoint); `source_name` stands for the
// file name in messages and in the run_dir default.
RunConfig parse_run_config(const std::string& yaml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides = {});

// The value checks of the loader on a config built or modified in code. Throws ConfigError.
// Both also make one example of the task at every eval.lengths length (trainer/task_eval.h), so a
// length the task cannot use fails here, before training.
void validate_run_config(const RunConfig& config);

// Checks what depends on the number of data-parallel ranks: the global batch must split evenly
// into grad_accum micro-batches on each rank. Throws ConfigError at train.batch_size's location.
void validate_for_world(const RunConfig& config, int64_t world_size);

// The resolved configuration, every key present, in schema order, except that a model.hybrid in
// use replaces model.n_layers and model.pattern (and one not in use is `hybrid: {}`).
// parse_run_config(to_yaml(c)) gives back a config equal to c.
std::string to_yaml(const RunConfig& config);

// The sections and, per section, the keys the schema accepts (for help texts and tests).
const std::vector<std::string>& config_sections();
std::vector<std::string> config_keys(const std::string& section);

}  // namespace scanline
