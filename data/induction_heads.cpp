#include "data/induction_heads.h"

#include <algorithm>

#include "core/error.h"
#include "data/task_random.h"
#include "data/task_rows.h"

namespace scanline {

using namespace data_detail;

InductionHeads::InductionHeads(const InductionHeadsOptions& options)
    : options_(options), cursor_(options.rank, options.world) {
  const auto& o = options_;
  SCANLINE_CHECK(o.batch >= 1, "induction_heads: batch must be at least 1 but is ", o.batch);
  SCANLINE_CHECK(o.n_tokens >= 1 && o.n_tokens + 1 <= 256, "induction_heads: n_tokens must be in [1, 255] but is ",
                 o.n_tokens, " (with the special token the ids fit a 256-token vocabulary)");
  SCANLINE_CHECK(o.seq_len >= 3, "induction_heads: seq_len ", o.seq_len,
                 " is too short: the special token, key and final special token need at least 3");
  SCANLINE_CHECK(o.key_distance >= 0 && o.key_distance <= o.seq_len - 2, "induction_heads: key_distance ",
                 o.key_distance, " does not fit seq_len ", o.seq_len, ": it must be in [1, seq_len - 2] (or 0 for ",
                 "a uniformly placed key)");
  check_rank("induction_heads", o.rank, o.world);
}

void InductionHeads::write_sequence(int64_t index, int64_t* inputs, int64_t* targets) const {
  const int64_t L = options_.seq_len;
  SequenceDraws draws(options_.seed, index);
  const int64_t uniform = draws.below(L - 2);  // drawn either way: the other draws stay in step
  const int64_t s = options_.key_distance > 0 ? L - 2 - options_.key_distance : uniform;
  const int64_t key = draws.below(options_.n_tokens);
  for (int64_t p = 0; p < L - 1; ++p)
    inputs[p] = p == s ? special_token() : p == s + 1 ? key : draws.below(options_.n_tokens);
  inputs[L - 1] = special_token();
  std::fill(targets, targets + L - 1, kIgnoreIndex);
  targets[L - 1] = key;
}

TaskExample InductionHeads::example(int64_t index) const {
  return data_detail::task_example(index, options_.seq_len, false,
                                   [this](int64_t i, int64_t* in, int64_t* tg) { write_sequence(i, in, tg); });
}

Batch InductionHeads::next() {
  return data_detail::task_batch(cursor_, options_.batch, options_.seq_len,
                                 [this](int64_t i, int64_t* in, int64_t* tg) { write_sequence(i, in, tg); });
}

std::vector<int64_t> InductionHeads::position() const {
  const auto& o = options_;
  return make_position(kPositionTag, cursor_.position(), o.seed, {o.seq_len, o.n_tokens});
}

void InductionHeads::set_position(const std::vector<int64_t>& position) {
  const auto& o = options_;
  cursor_.reset(parse_position(position, "induction_heads", kPositionTag, o.seed,
                               {{"seq_len", o.seq_len}, {"n_tokens", o.n_tokens}}));
}

}  // namespace scanline
