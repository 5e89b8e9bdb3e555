#pragma once
// The induction heads task (Olsson et al. 2022; Mamba paper, Gu & Dao 2023, section 4.1 and
// appendix E.1.2, after H3's associative recall): a special token appears once among random
// tokens and is followed by a key; at the end the special token comes again and the model must
// output the key. Trained at one length (the paper: 256, vocabulary 16), tested at longer ones.
//
// A sequence of seq_len = L tokens, with s uniform in [0, L - 3]:
//   position s                  the special token;
//   position s + 1              the key, uniform over the n_tokens ordinary tokens;
//   position L - 1              the special token again;
//   every other position        ordinary tokens drawn uniformly (with repetition).
// One scored target: position L - 1 (the final special token), whose target is the key; every
// other target is kIgnoreIndex. The special token occurs exactly twice. The key may also occur
// elsewhere as a random token (by design: were it absent, "the token never seen" would be a
// shortcut); what identifies it is only its place right after the first special token.
//
// key_distance D >= 1 places the pair instead at s = L - 2 - D: the key D positions before the
// final special token (for measuring recall against distance; the draws are the same, only s is
// overridden). It must leave the pair inside the sequence: D <= L - 2.
//
// Token ids (vocab_size() = n_tokens + 1 <= 256): 0..n_tokens-1 ordinary, n_tokens the special
// token. Draws per sequence: s, the key, then the other positions in order (data/task_random.h).
// Ranks deal the sequences round-robin and position() works as for the window loader.
#include "data/batch_source.h"
#include "data/sharded_stream.h"
#include "data/task_example.h"

namespace scanline {

struct InductionHeadsOptions {
  int64_t seq_len = 256;
  int64_t batch = 32;     // sequences per batch on this rank
  int64_t n_tokens = 16;  // ordinary tokens
  int64_t key_distance = 0;  // 0: the pair anywhere (uniform s); D >= 1: the key D before the end
  uint64_t seed = 0;
  int64_t rank = 0;
  int64_t world = 1;
};

class InductionHeads : public BatchSource, public TaskExampleSource {
 public:
  static constexpr int64_t kPositionTag = 0x494e4448;  // "INDH"

  explicit InductionHeads(const InductionHeadsOptions& options);

  Batch next() override;
  std::vector<int64_t> position() const override;
  void set_position(const std::vector<int64_t>& position) override;
  // Prompt: the whole sequence (ending with the second special token); answer: the key.
  TaskExample example(int64_t index) const override;

  // Writes sequence `index` of the global stream: seq_len inputs and seq_len targets.
  void write_sequence(int64_t index, int64_t* inputs, int64_t* targets) const;

  int64_t special_token() const { return options_.n_tokens; }
  int64_t vocab_size() const { return options_.n_tokens + 1; }
  const InductionHeadsOptions& options() const { return options_; }

 private:
  InductionHeadsOptions options_;
  data_detail::ShardCursor cursor_;
};

}  // namespace scanline
