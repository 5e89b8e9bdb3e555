#pragma once
// A tiny LanguageModel config of any pattern for the generation and evaluation tests: d_model 8,
// Mamba-1 or Mamba-2 mixers (N 4; Mamba-2 heads of 4, chunk 4), attention with 2 query heads
// sharing one kv head, MLPs of 16. The head is untied and the vocabulary 37 (padded to 40): a
// random tied model mostly repeats its input token, which would let a teacher-forcing bug hide.
#include <string>

#include "models/language_model.h"

namespace scanline::testing {

inline LanguageModelConfig tiny_untied_config(const std::string& pattern, const std::string& ssm, bool rope) {
  LanguageModelConfig c;
  c.vocab_size = 37;
  c.pad_vocab_multiple = 8;
  c.tie_embeddings = false;
  c.pattern = pattern;
  c.ssm = ssm;
  c.mamba.d_model = 8;
  c.mamba.d_state = 4;
  c.mamba2.d_state = 4;
  c.mamba2.headdim = 4;
  c.mamba2.chunk_size = 4;
  c.attention.n_heads = 2;
  c.attention.n_kv_heads = 1;
  c.attention.rope = rope;
  c.mlp.hidden = 16;
  return c;
}

}  // namespace scanline::testing
