// The induction heads generator (Mamba paper, section 4.1): the exact layout of hand-checked
// sequences, the special token exactly twice (at s and at the end) with the key after the first,
// one scored target (the key, at the last position), spread of s and keys, the generation example,
// determinism, rank sharding, exact resume, and the config keys.
#include <doctest/doctest.h>

#include <set>

#include "core/error.h"
#include "data/induction_heads.h"
#include "trainer/batch_sources.h"
#include "trainer/config_loader.h"
#include "support/task_streams.h"

using namespace scanline;
using scanline::testing::row;
using scanline::testing::same;

namespace {

InductionHeadsOptions induction_options(int64_t seq_len, int64_t batch, int64_t n_tokens, uint64_t seed,
                                        int64_t rank = 0, int64_t world = 1) {
  return {.seq_len = seq_len, .batch = batch, .n_tokens = n_tokens, .seed = seed, .rank = rank, .world = world};
}

// Checks one sequence's layout; returns the position s of the first special token.
int64_t check_sequence(const InductionHeads& task, const std::vector<int64_t>& in, const std::vector<int64_t>& tg) {
  const int64_t L = task.options().seq_len;
  REQUIRE(int64_t(in.size()) == L);
  std::vector<int64_t> specials;
  for (int64_t p = 0; p < L; ++p) {
    CHECK(in[size_t(p)] >= 0);
    CHECK(in[size_t(p)] <= task.special_token());
    if (in[size_t(p)] == task.special_token()) specials.push_back(p);
    if (p < L - 1) CHECK(tg[size_t(p)] == kIgnoreIndex);
  }
  // The special token nowhere else: at s <= L - 3, then at the end; the answer is the key after s.
  REQUIRE(specials.size() == 2);
  CHECK(specials[0] <= L - 3);
  CHECK(specials[1] == L - 1);
  CHECK(tg[size_t(L - 1)] == in[size_t(specials[0] + 1)]);
  CHECK(tg[size_t(L - 1)] < task.special_token());
  return specials[0];
}

}  // namespace

TEST_CASE("hand-checked induction heads sequences: special, key, random tokens, special -> key") {
  InductionHeads task(induction_options(12, 1, 4, 5));
  CHECK(task.vocab_size() == 5);
  CHECK(task.special_token() == 4);
  std::vector<int64_t> in(12), tg(12);
  task.write_sequence(0, in.data(), tg.data());
  // The special token at 7, the key 1 at 8; the last position's target is that key.
  CHECK(in == std::vector<int64_t>{2, 0, 3, 1, 0, 2, 1, 4, 1, 2, 1, 4});
  CHECK(tg == std::vector<int64_t>{-100, -100, -100, -100, -100, -100, -100, -100, -100, -100, -100, 1});
  task.write_sequence(1, in.data(), tg.data());
  CHECK(in == std::vector<int64_t>{1, 1, 3, 4, 1, 2, 0, 1, 3, 0, 2, 4});
  CHECK(tg.back() == 1);

  TaskExample example = task.example(1);
  CHECK(example.prompt == in);  // the whole sequence, ending with the second special token
  CHECK(example.answer == std::vector<int64_t>{1});
  CHECK(example.forced_inputs.empty());
}

TEST_CASE("every induction heads sequence has the layout; s and the key cover their ranges") {
  InductionHeads task(induction_options(10, 64, 3, 2));
  std::set<int64_t> starts, keys;
  for (int b = 0; b < 4; ++b) {
    Batch batch = task.next();
    CHECK(batch.inputs.shape() == Shape{64, 10});
    CHECK(batch.targets.dtype() == DType::i64);
    for (int64_t r = 0; r < 64; ++r) {
      std::vector<int64_t> in = row(batch.inputs, r), tg = row(batch.targets, r);
      starts.insert(check_sequence(task, in, tg));
      keys.insert(tg.back());
    }
  }
  CHECK(starts == std::set<int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(keys == std::set<int64_t>{0, 1, 2});

  // The shortest sequence: special, key, special.
  InductionHeads shortest(induction_options(3, 1, 16, 1));
  std::vector<int64_t> in(3), tg(3);
  shortest.write_sequence(0, in.data(), tg.data());
  CHECK(check_sequence(shortest, in, tg) == 0);
}

TEST_CASE("an induction heads example is the training row: the whole sequence, then the key") {
  InductionHeads task(induction_options(256, 1, 16, 4));
  CHECK(task.vocab_size() == 17);  // the paper's defaults: 16 tokens + the special one, length 256
  for (int64_t i = 0; i < 20; ++i) {
    std::vector<int64_t> in(256), tg(256);
    task.write_sequence(i, in.data(), tg.data());
    const int64_t s = check_sequence(task, in, tg);
    TaskExample example = task.example(i);
    CHECK(example.prompt == in);
    CHECK(example.answer == std::vector<int64_t>{in[size_t(s + 1)]});
  }
}

TEST_CASE("the induction heads stream depends only on the seed, and each sequence only on its index") {
  InductionHeads a(induction_options(30, 8, 16, 7)), b(induction_options(30, 8, 16, 7)), c(induction_options(30, 8, 16, 8));
  testing::check_stream_is_pure(a, b, c, 8, 30);
}

TEST_CASE("induction heads ranks take every world-th sequence: their union is the 1-rank stream") {
  testing::check_ranks_partition<InductionHeads>(
      [](int64_t batch, int64_t rank, int64_t world) {
        return std::make_unique<InductionHeads>(induction_options(20, batch, 16, 11, rank, world));
      },
      4, 2);
}

TEST_CASE("an induction heads generator restored from position() continues exactly") {
  InductionHeads task(induction_options(20, 3, 16, 12)), restored(induction_options(20, 3, 16, 12));
  const std::vector<int64_t> saved = testing::check_position_restores(task, restored, 4, 4);
  CHECK(saved == std::vector<int64_t>{InductionHeads::kPositionTag, 1, 12, 12, 20, 16});

  InductionHeads longer(induction_options(40, 3, 16, 12));
  CHECK_THROWS_WITH_AS(longer.set_position(saved),
                       doctest::Contains("induction_heads: the saved position is for seq_len = 20 but this one has "
                                         "seq_len = 40"),
                       Error);
  CHECK_THROWS_WITH_AS(task.set_position({1, 2, 3}), doctest::Contains("not written by a induction_heads"), Error);
}

TEST_CASE("key_distance puts the key that far before the final special token, in every sequence") {
  for (int64_t distance : {int64_t(1), int64_t(7), int64_t(30)}) {
    CAPTURE(distance);
    InductionHeadsOptions o = induction_options(32, 4, 5, 11);
    o.key_distance = distance;
    InductionHeads task(o);
    for (int b = 0; b < 3; ++b) {
      const Batch batch = task.next();
      for (int64_t r = 0; r < 4; ++r) {
        const std::vector<int64_t> in = row(batch.inputs, r), tg = row(batch.targets, r);
        const int64_t s = check_sequence(task, in, tg);
        CHECK(s == 32 - 2 - distance);
        CHECK(tg[31] == in[size_t(s + 1)]);
      }
    }
  }
  InductionHeadsOptions o = induction_options(32, 1, 5, 11);
  o.key_distance = 31;
  CHECK_THROWS_WITH_AS(InductionHeads{o}, doctest::Contains("key_distance 31 does not fit seq_len 32"), Error);
  o.key_distance = -1;
  CHECK_THROWS_WITH_AS(InductionHeads{o}, doctest::Contains("key_distance -1 does not fit"), Error);
}

TEST_CASE("impossible induction heads settings are rejected with the option named") {
  CHECK_THROWS_WITH_AS(InductionHeads(induction_options(2, 1, 16, 0)),
                       doctest::Contains("induction_heads: seq_len 2 is too short: the special token, key and final "
                                         "special token need at least 3"),
                       Error);
  CHECK_THROWS_WITH_AS(InductionHeads(induction_options(64, 1, 256, 0)),
                       doctest::Contains("n_tokens must be in [1, 255] but is 256"), Error);
  CHECK_THROWS_WITH_AS(InductionHeads(induction_options(64, 0, 16, 0)), doctest::Contains("batch must be at least 1"),
                       Error);
  CHECK_THROWS_WITH_AS(InductionHeads(induction_options(64, 1, 16, 0, -1, 2)),
                       doctest::Contains("rank -1 is not in [0, world = 2)"), Error);
  CHECK(InductionHeads(induction_options(64, 1, 255, 0)).vocab_size() == 256);
}

TEST_CASE("data.task: induction_heads reads its options, and bad ones are ConfigErrors at their line") {
  const std::string yaml =
      "model:\n  vocab_size: 24\ndata:\n  task: induction_heads\n  seq_len: 64\n  task_options:\n    n_tokens: 20\n";
  BatchSources sources = make_batch_sources(parse_run_config(yaml, "ih.yaml"), 4, 8);
  CHECK(sources.vocab_size == 21);
  CHECK(sources.description.starts_with("induction_heads: seq_len 64, 20 ordinary tokens and a special one; vocab 21"));
  CHECK(sources.train->next().inputs.shape() == Shape{4, 64});
  CHECK(sources.val->next().inputs.shape() == Shape{8, 64});

  auto problem = [&](const std::string& from, const std::string& to) {
    std::string text = yaml;
    text.replace(text.find(from), from.size(), to);
    try {
      make_batch_sources(parse_run_config(text, "ih.yaml"), 4, 8);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(problem("seq_len: 64", "seq_len: 2")
            .starts_with("ih.yaml:5: data.seq_len: induction_heads: seq_len 2 is too short"));
  CHECK(problem("n_tokens: 20", "vocab: 20") ==
        "ih.yaml:7: data.task_options.vocab: unknown option (this task's options: n_tokens, key_distance)");
  CHECK(problem("n_tokens: 20", "key_distance: -2") ==
        "ih.yaml:7: data.task_options.key_distance: must be >= 0, got -2");
  CHECK(problem("n_tokens: 20", "key_distance: 63").find("key_distance 63 does not fit seq_len 64") !=
        std::string::npos);
  BatchSources placed = make_batch_sources(parse_run_config(yaml + "    key_distance: 10\n", "ih.yaml"), 4, 8);
  CHECK(placed.description.ends_with("; the key 10 tokens before the end"));
  CHECK(problem("n_tokens: 20", "n_tokens: 0") == "ih.yaml:7: data.task_options.n_tokens: must be >= 1, got 0");
  CHECK(problem("vocab_size: 24", "vocab_size: 16").starts_with(
      "ih.yaml:2: model.vocab_size: 16 is smaller than the data's vocabulary of 21 tokens"));
}
