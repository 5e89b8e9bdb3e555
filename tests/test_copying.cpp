// The copying generator (Jelassi et al. 2024): the exact layout of a hand-checked sequence, the
// layout of every sequence (string, separator, teacher-forced copy, pad; answers = the string at
// positions n .. 2n-1), lengths over [min_len, max_len], the generation example, no copy input
// running ahead of its answer, determinism, rank sharding, exact resume, and the config keys.
#include <doctest/doctest.h>

#include <set>

#include "core/error.h"
#include "data/copying.h"
#include "trainer/batch_sources.h"
#include "trainer/config_loader.h"
#include "support/task_streams.h"

using namespace scanline;
using scanline::testing::row;
using scanline::testing::same;

namespace {

CopyingOptions copy_options(int64_t seq_len, int64_t batch, int64_t n_tokens, int64_t min_len, int64_t max_len,
                            uint64_t seed, int64_t rank = 0, int64_t world = 1) {
  return {.seq_len = seq_len, .batch = batch, .n_tokens = n_tokens, .min_len = min_len, .max_len = max_len,
          .seed = seed, .rank = rank, .world = world};
}

// Checks one sequence's layout; returns its string length n.
int64_t check_sequence(const Copying& task, const std::vector<int64_t>& in, const std::vector<int64_t>& tg) {
  const auto& o = task.options();
  REQUIRE(int64_t(in.size()) == o.seq_len);
  int64_t n = 0;
  while (n < o.seq_len && in[size_t(n)] != task.separator_token()) ++n;
  REQUIRE(n < o.seq_len);
  CHECK(n >= o.min_len);
  CHECK(n <= o.max_len);
  for (int64_t j = 0; j < n; ++j) {
    CHECK(in[size_t(j)] >= task.symbol_token(0));
    CHECK(in[size_t(j)] <= task.symbol_token(o.n_tokens - 1));
    CHECK(tg[size_t(j)] == kIgnoreIndex);
    // Answer position n + j: target s_j; its input is the separator or s_{j-1}, never s_j ahead.
    CHECK(tg[size_t(n + j)] == in[size_t(j)]);
    CHECK(in[size_t(n + j)] == (j == 0 ? task.separator_token() : in[size_t(j - 1)]));
  }
  for (int64_t p = 2 * n; p < o.seq_len; ++p) {
    CHECK(in[size_t(p)] == Copying::kPad);
    CHECK(tg[size_t(p)] == kIgnoreIndex);
  }
  return n;
}

}  // namespace

TEST_CASE("a hand-checked copying sequence: the string, the separator, the copy shifted by one, pad") {
  Copying task(copy_options(10, 1, 3, 4, 4, 5));
  CHECK(task.vocab_size() == 5);
  CHECK(task.separator_token() == 4);
  std::vector<int64_t> in(10), tg(10);
  task.write_sequence(0, in.data(), tg.data());
  // s = 2 3 1 3; the model outputs s after the separator (targets at positions 4..7).
  CHECK(in == std::vector<int64_t>{2, 3, 1, 3, 4, 2, 3, 1, 0, 0});
  CHECK(tg == std::vector<int64_t>{-100, -100, -100, -100, 2, 3, 1, 3, -100, -100});

  TaskExample example = task.example(0);
  CHECK(example.prompt == std::vector<int64_t>{2, 3, 1, 3, 4});
  CHECK(example.answer == std::vector<int64_t>{2, 3, 1, 3});
  CHECK(example.forced_inputs.empty());  // free-running: the model's own outputs are fed back
}

TEST_CASE("every copying sequence has the layout, and lengths cover [min_len, max_len]") {
  Copying task(copy_options(16, 32, 5, 2, 6, 3));
  std::set<int64_t> lengths, symbols;
  for (int b = 0; b < 4; ++b) {
    Batch batch = task.next();
    CHECK(batch.inputs.shape() == Shape{32, 16});
    CHECK(batch.targets.dtype() == DType::i64);
    for (int64_t r = 0; r < 32; ++r) {
      std::vector<int64_t> in = row(batch.inputs, r), tg = row(batch.targets, r);
      int64_t n = check_sequence(task, in, tg);
      lengths.insert(n);
      int64_t scored = 0;
      for (int64_t t : tg) scored += t != kIgnoreIndex;
      CHECK(scored == n);
      for (int64_t j = 0; j < n; ++j) symbols.insert(in[size_t(j)]);
    }
  }
  CHECK(lengths == std::set<int64_t>{2, 3, 4, 5, 6});
  CHECK(symbols == std::set<int64_t>{1, 2, 3, 4, 5});

  // The longest string fills seq_len = 2 * max_len exactly: no pad.
  Copying tight(copy_options(12, 1, 5, 6, 6, 9));
  std::vector<int64_t> in(12), tg(12);
  tight.write_sequence(4, in.data(), tg.data());
  CHECK(check_sequence(tight, in, tg) == 6);
}

TEST_CASE("a copying example is the training row: prompt = string + separator, answer = the string") {
  Copying task(copy_options(20, 1, 7, 1, 9, 4));
  for (int64_t i = 0; i < 50; ++i) {
    std::vector<int64_t> in(20), tg(20);
    task.write_sequence(i, in.data(), tg.data());
    const int64_t n = check_sequence(task, in, tg);
    TaskExample example = task.example(i);
    CHECK(example.prompt == std::vector<int64_t>(in.begin(), in.begin() + n + 1));
    CHECK(example.answer == std::vector<int64_t>(in.begin(), in.begin() + n));
    CHECK(example.forced_inputs.empty());
    // No leak: the prompt holds the string exactly once (the task), then only the separator.
    CHECK(example.prompt.back() == task.separator_token());
  }
}

TEST_CASE("the copying stream depends only on the seed, and each sequence only on its index") {
  Copying a(copy_options(24, 8, 6, 3, 10, 7)), b(copy_options(24, 8, 6, 3, 10, 7)), c(copy_options(24, 8, 6, 3, 10, 8));
  testing::check_stream_is_pure(a, b, c, 8, 24);
}

TEST_CASE("copying ranks take every world-th sequence: their union is the 1-rank stream") {
  testing::check_ranks_partition<Copying>(
      [](int64_t batch, int64_t rank, int64_t world) {
        return std::make_unique<Copying>(copy_options(20, batch, 5, 2, 8, 11, rank, world));
      },
      3, 4);
}

TEST_CASE("a copying generator restored from position() continues exactly") {
  Copying task(copy_options(20, 4, 5, 2, 8, 12)), restored(copy_options(20, 4, 5, 2, 8, 12));
  const std::vector<int64_t> saved = testing::check_position_restores(task, restored, 5, 5);
  CHECK(saved == std::vector<int64_t>{Copying::kPositionTag, 1, 20, 12, 20, 5, 2, 8});

  Copying other_len(copy_options(20, 4, 5, 2, 9, 12));
  CHECK_THROWS_WITH_AS(other_len.set_position(saved),
                       doctest::Contains("copying: the saved position is for max_len = 8 but this one has max_len = 9"),
                       Error);
  CHECK_THROWS_WITH_AS(task.set_position({1, 2, 3}), doctest::Contains("not written by a copying"), Error);
}

TEST_CASE("impossible copying settings are rejected with the option named") {
  CHECK_THROWS_WITH_AS(Copying(copy_options(15, 1, 5, 1, 8, 0)),
                       doctest::Contains("copying: seq_len 15 is too short for max_len = 8: the string, separator and "
                                         "copy need at least 16"),
                       Error);
  CHECK_THROWS_WITH_AS(Copying(copy_options(64, 1, 5, 9, 8, 0)),
                       doctest::Contains("min_len 9 is greater than max_len 8"), Error);
  CHECK_THROWS_WITH_AS(Copying(copy_options(64, 1, 5, 0, 8, 0)), doctest::Contains("min_len must be at least 1"),
                       Error);
  CHECK_THROWS_WITH_AS(Copying(copy_options(64, 1, 255, 1, 8, 0)), doctest::Contains("n_tokens must be in [1, 254]"),
                       Error);
  CHECK_THROWS_WITH_AS(Copying(copy_options(64, 0, 5, 1, 8, 0)), doctest::Contains("batch must be at least 1"),
                       Error);
  CHECK_THROWS_WITH_AS(Copying(copy_options(64, 1, 5, 1, 8, 0, 2, 2)),
                       doctest::Contains("rank 2 is not in [0, world = 2)"), Error);
  CHECK(Copying(copy_options(64, 1, 254, 1, 8, 0)).vocab_size() == 256);
}

TEST_CASE("data.task: copying reads its options, and bad ones are ConfigErrors at their line") {
  const std::string yaml =
      "model:\n  vocab_size: 16\ndata:\n  task: copying\n  seq_len: 40\n  task_options:\n    n_tokens: 10\n"
      "    min_len: 3\n    max_len: 20\n";
  BatchSources sources = make_batch_sources(parse_run_config(yaml, "copy.yaml"), 4, 8);
  CHECK(sources.vocab_size == 12);
  CHECK(sources.description.starts_with("copying: seq_len 40, strings of 3..20 tokens over 10 symbols; vocab 12"));
  CHECK(sources.train->next().inputs.shape() == Shape{4, 40});
  CHECK(sources.val->next().inputs.shape() == Shape{8, 40});

  // The error text for the config with `from` replaced by `to`.
  auto problem = [&](const std::string& from, const std::string& to) {
    std::string text = yaml;
    text.replace(text.find(from), from.size(), to);
    try {
      make_batch_sources(parse_run_config(text, "copy.yaml"), 4, 8);
    } catch (const ConfigError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  CHECK(problem("max_len: 20", "max_len: 21")
            .starts_with("copy.yaml:5: data.seq_len: copying: seq_len 40 is too short for max_len = 21: the string, "
                         "separator and copy need at least 42"));
  CHECK(problem("min_len: 3", "min_len: 30") ==
        "copy.yaml:8: data.task_options.min_len: min_len 30 is greater than max_len 20");
  CHECK(problem("n_tokens: 10", "n_token: 10") ==
        "copy.yaml:7: data.task_options.n_token: unknown option; did you mean 'n_tokens'? (this task's options: "
        "n_tokens, min_len, max_len)");
  CHECK(problem("n_tokens: 10", "n_tokens: 300") == "copy.yaml:7: data.task_options.n_tokens: must be <= 254, got 300");
  CHECK(problem("vocab_size: 16", "vocab_size: 11").starts_with(
      "copy.yaml:2: model.vocab_size: 11 is smaller than the data's vocabulary of 12 tokens"));
}
