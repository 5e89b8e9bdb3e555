#pragma once
// The model a run configuration describes: model.* mapped onto LanguageModelConfig (ssm mamba1 or
// mamba2), with what this build cannot train yet (attention and MLP blocks) and Mamba-1-only
// settings given for a Mamba-2 model refused as a ConfigError at the key's line before any work.
#include "models/language_model.h"
#include "trainer/run_config.h"

namespace scanline {

// Throws ConfigError (model.pattern, model.dt_rank or model.selective set for mamba2, or the model
// section for any other impossible value the model's own validation finds).
LanguageModelConfig language_model_config(const RunConfig& config);

}  // namespace scanline
