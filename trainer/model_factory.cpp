#include "trainer/model_factory.h"

namespace scanline {

namespace {
[[noreturn]] void config_problem(const RunConfig& config, const std::string& key_path, const std::string& message) {
  throw ConfigError({config.where(key_path) + ": " + key_path + ": " + message});
}
}  // namespace

LanguageModelConfig language_model_config(const RunConfig& config) {
  const ModelConfig& m = config.model;
  if (m.ssm == SsmKind::mamba2)
    config_problem(config, "model.ssm", "the Mamba-2 mixer arrives with issue 6; this build trains mamba1");
  const std::string pattern = m.layer_pattern();
  const std::string pattern_key = m.pattern.empty() ? "model.n_layers" : "model.pattern";
  for (char symbol : pattern)
    if (symbol != 'M')
      config_problem(config, pattern_key,
                     "\"" + pattern + "\" has a '" + std::string(1, symbol) +
                         "' block; attention ('*') and MLP ('-') blocks arrive with issue 7, this build has 'M' only");
  LanguageModelConfig lm;
  lm.vocab_size = m.vocab_size;
  lm.pattern = pattern;
  lm.mamba.d_model = m.d_model;
  lm.mamba.d_state = m.d_state;
  lm.mamba.d_conv = m.d_conv;
  lm.mamba.expand = m.expand;
  lm.mamba.dt_rank = m.dt_rank;
  lm.mamba.selective = m.selective;
  lm.tie_embeddings = m.tie_embeddings;
  lm.norm_eps = m.norm_eps;
  try {
    lm.validate();
  } catch (const Error& e) {
    config_problem(config, "model", e.what());
  }
  return lm;
}

}  // namespace scanline
