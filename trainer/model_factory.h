#pragma once
// The model a run configuration describes: model.* mapped onto LanguageModelConfig, with what this
// build cannot train yet (the Mamba-2 mixer, attention and MLP blocks) refused as a ConfigError at
// the key's line before any work.
#include "models/language_model.h"
#include "trainer/run_config.h"

namespace scanline {

// Throws ConfigError (model.ssm, model.pattern, or the model section for any other impossible
// value the model's own validation finds).
LanguageModelConfig language_model_config(const RunConfig& config);

}  // namespace scanline
