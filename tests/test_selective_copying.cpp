// The selective copying generator: the layout of every sequence (exactly n_memorize coloured
// tokens in the region, separator, markers, answers = the colours in order, ignore elsewhere),
// spread of positions and colours, noise tokens, determinism, rank sharding and exact resume.
#include <doctest/doctest.h>

#include <set>

#include "core/error.h"
#include "data/selective_copying.h"
#include "support/task_streams.h"

using namespace scanline;
using scanline::testing::row;
using scanline::testing::same;

namespace {

SelectiveCopyingOptions task_options(int64_t seq_len, int64_t batch, int64_t n_memorize, int64_t n_colors,
                                     uint64_t seed, int64_t n_noise = 0, int64_t rank = 0, int64_t world = 1) {
  return {.seq_len = seq_len, .batch = batch, .n_memorize = n_memorize, .n_colors = n_colors, .n_noise = n_noise,
          .seed = seed, .rank = rank, .world = world};
}

// Checks one sequence's layout; returns the region positions holding colours.
std::vector<int64_t> check_sequence(const SelectiveCopying& task, const std::vector<int64_t>& in,
                                    const std::vector<int64_t>& tg) {
  const auto& o = task.options();
  const int64_t M = o.n_memorize, R = task.region_length();
  REQUIRE(int64_t(in.size()) == o.seq_len);
  REQUIRE(R == o.seq_len - 1 - M);
  std::vector<int64_t> colors, where;
  for (int64_t p = 0; p < R; ++p) {
    int64_t t = in[size_t(p)];
    if (t >= 1 && t <= o.n_colors) {
      colors.push_back(t);
      where.push_back(p);
    } else if (o.n_noise == 0) {
      CHECK(t == SelectiveCopying::kBlank);
    } else {
      CHECK(t >= task.noise_token(0));
      CHECK(t <= task.noise_token(o.n_noise - 1));
    }
    CHECK(tg[size_t(p)] == kIgnoreIndex);
  }
  CHECK(int64_t(colors.size()) == M);
  CHECK(in[size_t(R)] == task.separator_token());
  CHECK(tg[size_t(R)] == kIgnoreIndex);
  for (int64_t j = 0; j < M; ++j) {
    CHECK(in[size_t(R + 1 + j)] == task.marker_token());
    if (j < int64_t(colors.size())) CHECK(tg[size_t(R + 1 + j)] == colors[size_t(j)]);
  }
  for (int64_t t : in) CHECK((t >= 0 && t < task.vocab_size()));
  return where;
}

}  // namespace

TEST_CASE("each sequence holds n_memorize colours, a separator, markers and the answers in order") {
  SelectiveCopying task(task_options(40, 64, 5, 6, 1));
  CHECK(task.vocab_size() == 6 + 3);
  CHECK(task.separator_token() == 7);
  CHECK(task.marker_token() == 8);
  std::set<int64_t> positions, colors;
  for (int b = 0; b < 4; ++b) {
    Batch batch = task.next();
    CHECK(batch.inputs.shape() == Shape{64, 40});
    CHECK(batch.targets.shape() == Shape{64, 40});
    CHECK(batch.inputs.dtype() == DType::i64);
    CHECK(batch.targets.dtype() == DType::i64);
    for (int64_t r = 0; r < 64; ++r) {
      std::vector<int64_t> in = row(batch.inputs, r), tg = row(batch.targets, r);
      for (int64_t p : check_sequence(task, in, tg)) positions.insert(p);
      for (int64_t t : in)
        if (t >= 1 && t <= 6) colors.insert(t);
      // Exactly n_memorize positions are scored.
      int64_t scored = 0;
      for (int64_t t : tg) scored += t != kIgnoreIndex;
      CHECK(scored == 5);
    }
  }
  // Over 256 sequences every region position and every colour occurs.
  CHECK(positions.size() == size_t(task.region_length()));
  CHECK(colors.size() == 6);
}

TEST_CASE("the shortest sequence fills the whole region with colours; noise tokens fill it otherwise") {
  SelectiveCopying tight(task_options(9, 8, 4, 3, 2));
  CHECK(tight.region_length() == 4);
  Batch batch = tight.next();
  for (int64_t r = 0; r < 8; ++r) CHECK(check_sequence(tight, row(batch.inputs, r), row(batch.targets, r)).size() == 4);

  SelectiveCopying noisy(task_options(64, 32, 6, 4, 3, 5));
  CHECK(noisy.vocab_size() == 4 + 5 + 3);
  CHECK(noisy.noise_token(0) == 5);
  Batch nb = noisy.next();
  std::set<int64_t> noise;
  for (int64_t r = 0; r < 32; ++r) {
    std::vector<int64_t> in = row(nb.inputs, r);
    check_sequence(noisy, in, row(nb.targets, r));
    for (int64_t t : in)
      if (t >= noisy.noise_token(0) && t < noisy.separator_token()) noise.insert(t);
  }
  CHECK(noise.size() == 5);
}

TEST_CASE("the stream depends only on the seed, and each sequence only on its index") {
  SelectiveCopying a(task_options(50, 8, 6, 8, 7)), b(task_options(50, 8, 6, 8, 7)), c(task_options(50, 8, 6, 8, 8));
  testing::check_stream_is_pure(a, b, c, 8, 50);
}

TEST_CASE("ranks take every world-th sequence: their union is the 1-rank stream") {
  testing::check_ranks_partition<SelectiveCopying>(
      [](int64_t batch, int64_t rank, int64_t world) {
        return std::make_unique<SelectiveCopying>(task_options(30, batch, 4, 5, 11, 0, rank, world));
      },
      4, 3);
}

TEST_CASE("a generator restored from position() continues exactly") {
  SelectiveCopying task(task_options(33, 4, 5, 8, 12, 2)), restored(task_options(33, 4, 5, 8, 12, 2));
  const std::vector<int64_t> saved = testing::check_position_restores(task, restored, 5, 5);
  CHECK(saved[2] == 20);

  SelectiveCopying other_colors(task_options(33, 4, 5, 9, 12, 2));
  CHECK_THROWS_WITH_AS(other_colors.set_position(saved),
                       doctest::Contains("selective_copying: the saved position is for n_colors = 8 but this one has "
                                         "n_colors = 9"),
                       Error);
  SelectiveCopying other_seed(task_options(33, 4, 5, 8, 13, 2));
  CHECK_THROWS_WITH_AS(other_seed.set_position(saved), doctest::Contains("is for seed 12 but this one has seed 13"),
                       Error);
  CHECK_THROWS_WITH_AS(task.set_position({1, 2, 3}), doctest::Contains("not written by a selective_copying"), Error);
}

TEST_CASE("impossible task settings are rejected with the option named") {
  CHECK_THROWS_WITH_AS(SelectiveCopying(task_options(8, 1, 4, 8, 0)),
                       doctest::Contains("seq_len 8 is too short for n_memorize = 4"), Error);
  CHECK_THROWS_WITH_AS(SelectiveCopying(task_options(64, 1, 4, 250, 0, 4)),
                       doctest::Contains("n_colors + n_noise + 3 = 257 token ids do not fit a 256-token vocabulary"),
                       Error);
  CHECK_THROWS_WITH_AS(SelectiveCopying(task_options(64, 1, 0, 8, 0)),
                       doctest::Contains("n_memorize must be at least 1"), Error);
  CHECK_THROWS_WITH_AS(SelectiveCopying(task_options(64, 1, 4, 0, 0)),
                       doctest::Contains("n_colors must be at least 1"), Error);
  CHECK_THROWS_WITH_AS(SelectiveCopying(task_options(64, 0, 4, 8, 0)), doctest::Contains("batch must be at least 1"),
                       Error);
  CHECK_THROWS_WITH_AS(SelectiveCopying(task_options(64, 1, 4, 8, 0, -1)),
                       doctest::Contains("n_noise must be at least 0"), Error);
  CHECK_THROWS_WITH_AS(SelectiveCopying(task_options(64, 1, 4, 8, 0, 0, 3, 3)),
                       doctest::Contains("rank 3 is not in [0, world = 3)"), Error);
  SelectiveCopying largest(task_options(64, 1, 4, 253, 0));
  CHECK(largest.vocab_size() == 256);
}

TEST_CASE("a selective copying example: the prompt runs through the first marker, the other markers are forced") {
  SelectiveCopying task(task_options(9, 1, 3, 4, 5));
  std::vector<int64_t> in(9), tg(9);
  task.write_sequence(0, in.data(), tg.data());
  // Region 0 1 4 2 0 (colours 1, 4, 2 at 1..3), separator 5, markers 6; answers 1 4 2.
  CHECK(in == std::vector<int64_t>{0, 1, 4, 2, 0, 5, 6, 6, 6});
  CHECK(tg == std::vector<int64_t>{-100, -100, -100, -100, -100, -100, 1, 4, 2});
  TaskExample example = task.example(0);
  CHECK(example.prompt == std::vector<int64_t>{0, 1, 4, 2, 0, 5, 6});
  CHECK(example.answer == std::vector<int64_t>{1, 4, 2});
  CHECK(example.forced_inputs == std::vector<int64_t>{6, 6});

  // On every sequence: prompt, then forced inputs, are the row's inputs up to the last answer.
  SelectiveCopying noisy(task_options(40, 1, 5, 6, 3, 4));
  for (int64_t i = 0; i < 30; ++i) {
    std::vector<int64_t> row_in(40), row_tg(40);
    noisy.write_sequence(i, row_in.data(), row_tg.data());
    TaskExample e = noisy.example(i);
    const int64_t R = noisy.region_length();
    CHECK(e.prompt == std::vector<int64_t>(row_in.begin(), row_in.begin() + R + 2));
    CHECK(e.answer == std::vector<int64_t>(row_tg.begin() + R + 1, row_tg.end()));
    CHECK(e.forced_inputs == std::vector<int64_t>(4, noisy.marker_token()));
    // No leak: every answer colour was seen in the region, none after it (the prompt's tail is
    // the separator and a marker).
    CHECK(e.prompt[size_t(R)] == noisy.separator_token());
    CHECK(e.prompt[size_t(R + 1)] == noisy.marker_token());
  }
}
