// The random-window loader: batch shapes, targets as inputs shifted by one, windows inside their
// split and every start reachable, determinism from the seed, rank sharding whose union is the
// 1-rank stream, and exact resume from position() (also with another world size).
#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <set>

#include "core/error.h"
#include "core/random.h"
#include "data/selective_copying.h"
#include "data/window_loader.h"
#include "support/task_streams.h"

using namespace scanline;
using scanline::testing::row;
using scanline::testing::same;
namespace fs = std::filesystem;

namespace {

// One dataset file for the whole test file: n random byte tokens, removed at exit.
struct Fixture {
  std::string path;
  std::vector<int64_t> tokens;
  std::shared_ptr<const TokenDataset> dataset;
  explicit Fixture(int64_t n) {
    path = (fs::temp_directory_path() / ("scanline_test_window_loader_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(n) + ".h5"))
               .string();
    Generator gen(77);
    tokens = randint(0, 256, {n}, gen).to_vector<int64_t>();
    std::vector<int32_t> narrow(tokens.begin(), tokens.end());
    write_token_dataset(path, narrow, {});
    dataset = std::make_shared<const TokenDataset>(path);
  }
  ~Fixture() { fs::remove(path); }
};

Fixture& fixture() {
  static Fixture f(20000);
  return f;
}

WindowLoaderOptions options(int64_t seq_len, int64_t batch, uint64_t seed, int64_t rank = 0, int64_t world = 1,
                            Split split = Split::train, double val_fraction = 0.1) {
  return {.seq_len = seq_len, .batch = batch, .seed = seed, .rank = rank, .world = world, .split = split,
          .val_fraction = val_fraction};
}

}  // namespace

TEST_CASE("batches are windows of the split: inputs and targets shifted by one") {
  Fixture& f = fixture();
  for (Split split : {Split::train, Split::val}) {
    WindowLoader loader(f.dataset, options(33, 5, 3, 0, 1, split));
    TokenRange range = loader.range();
    CHECK(range.size() == (split == Split::train ? 18000 : 2000));
    for (int64_t b = 0; b < 4; ++b) {
      Batch batch = loader.next();
      CHECK(batch.inputs.shape() == Shape{5, 33});
      CHECK(batch.targets.shape() == Shape{5, 33});
      CHECK(batch.inputs.dtype() == DType::i64);
      CHECK(batch.targets.dtype() == DType::i64);
      for (int64_t r = 0; r < 5; ++r) {
        int64_t start = loader.window_start(b * 5 + r);
        REQUIRE(start >= range.begin);
        REQUIRE(start + 34 <= range.end);
        std::vector<int64_t> in(f.tokens.begin() + start, f.tokens.begin() + start + 33);
        std::vector<int64_t> tg(f.tokens.begin() + start + 1, f.tokens.begin() + start + 34);
        CHECK(row(batch.inputs, r) == in);
        CHECK(row(batch.targets, r) == tg);
      }
    }
  }
}

TEST_CASE("every window start of the split is drawn, and none outside it") {
  Fixture& f = fixture();
  // val split of 20000 * 0.005 = 100 tokens; windows of 11 tokens have 90 possible starts.
  WindowLoader loader(f.dataset, options(10, 1, 9, 0, 1, Split::val, 0.005));
  CHECK(loader.range().begin == 19900);
  std::set<int64_t> starts;
  for (int64_t d = 0; d < 3000; ++d) starts.insert(loader.window_start(d));
  CHECK(starts.size() == 90);
  CHECK(*starts.begin() == 19900);
  CHECK(*starts.rbegin() == 19989);
}

TEST_CASE("the same seed draws the same batches; another seed others") {
  Fixture& f = fixture();
  WindowLoader a(f.dataset, options(16, 4, 42)), b(f.dataset, options(16, 4, 42)), c(f.dataset, options(16, 4, 43));
  for (int i = 0; i < 3; ++i) {
    Batch ba = a.next(), bb = b.next(), bc = c.next();
    CHECK(same(ba, bb));
    CHECK_FALSE(same(ba, bc));
  }
}

TEST_CASE("ranks take every world-th draw: their union is the 1-rank stream") {
  Fixture& f = fixture();
  const int64_t world = 3, per_rank = 2;
  WindowLoader single(f.dataset, options(12, per_rank * world, 5));
  std::vector<std::unique_ptr<WindowLoader>> ranks;
  for (int64_t r = 0; r < world; ++r)
    ranks.push_back(std::make_unique<WindowLoader>(f.dataset, options(12, per_rank, 5, r, world)));
  for (int64_t b = 0; b < 4; ++b) {
    Batch whole = single.next();
    std::vector<Batch> parts;
    for (auto& loader : ranks) parts.push_back(loader->next());
    // Row j of the 1-rank batch is row j / world of rank j % world; no draw is shared.
    for (int64_t j = 0; j < per_rank * world; ++j) {
      CHECK(row(whole.inputs, j) == row(parts[size_t(j % world)].inputs, j / world));
      CHECK(row(whole.targets, j) == row(parts[size_t(j % world)].targets, j / world));
    }
  }
  for (auto& loader : ranks) CHECK(loader->position() == single.position());
}

TEST_CASE("a loader restored from position() draws exactly what the original drew next") {
  Fixture& f = fixture();
  WindowLoader loader(f.dataset, options(20, 3, 8));
  for (int i = 0; i < 5; ++i) loader.next();
  std::vector<int64_t> saved = loader.position();
  CHECK(saved[2] == 15);  // the global draw count
  std::vector<Batch> expected;
  for (int i = 0; i < 5; ++i) expected.push_back(loader.next());

  WindowLoader restored(f.dataset, options(20, 3, 8));
  restored.set_position(saved);
  for (int i = 0; i < 5; ++i) CHECK(same(restored.next(), expected[size_t(i)]));
  CHECK(restored.position() == loader.position());
}

TEST_CASE("a position saved by one world size resumes the same global stream with another") {
  Fixture& f = fixture();
  // Two ranks with batch 3 for one step (global draws 0..5), then three ranks with batch 2.
  WindowLoader first_rank0(f.dataset, options(8, 3, 21, 0, 2));
  first_rank0.next();
  std::vector<int64_t> saved = first_rank0.position();
  CHECK(saved[2] == 6);

  WindowLoader reference(f.dataset, options(8, 6, 21));
  reference.next();
  Batch expected = reference.next();  // global draws 6..11
  for (int64_t r = 0; r < 3; ++r) {
    WindowLoader resumed(f.dataset, options(8, 2, 21, r, 3));
    resumed.set_position(saved);
    Batch got = resumed.next();
    for (int64_t i = 0; i < 2; ++i) CHECK(row(got.inputs, i) == row(expected.inputs, i * 3 + r));
  }
}

TEST_CASE("a position from another stream is refused with the reason") {
  Fixture& f = fixture();
  WindowLoader loader(f.dataset, options(20, 3, 8));
  loader.next();
  std::vector<int64_t> saved = loader.position();
  WindowLoader other_seed(f.dataset, options(20, 3, 9));
  CHECK_THROWS_WITH_AS(other_seed.set_position(saved),
                       doctest::Contains("WindowLoader: the saved position is for seed 8 but this one has seed 9"), Error);
  WindowLoader other_len(f.dataset, options(21, 3, 8));
  CHECK_THROWS_WITH_AS(other_len.set_position(saved),
                       doctest::Contains("is for seq_len = 20 but this one has seq_len = 21"), Error);
  WindowLoader other_split(f.dataset, options(20, 3, 8, 0, 1, Split::train, 0.2));
  CHECK_THROWS_WITH_AS(other_split.set_position(saved),
                       doctest::Contains("is for split size = 18000 but this one has split size = 16000"), Error);
  SelectiveCopying task({.seq_len = 20, .batch = 3, .n_memorize = 4, .n_colors = 8, .n_noise = 0, .seed = 8,
                         .rank = 0, .world = 1});
  CHECK_THROWS_WITH_AS(loader.set_position(task.position()),
                       doctest::Contains("the saved position was not written by a WindowLoader"), Error);
  CHECK_THROWS_WITH_AS(loader.set_position({}), doctest::Contains("not written by a WindowLoader"), Error);
}

TEST_CASE("impossible loader settings are rejected") {
  Fixture& f = fixture();
  CHECK_THROWS_WITH_AS(WindowLoader(f.dataset, options(2000, 1, 0, 0, 1, Split::val, 0.1)),
                       doctest::Contains(("the val split of '" + f.path + "' has 2000 tokens").c_str()), Error);
  CHECK_THROWS_WITH_AS(WindowLoader(f.dataset, options(2000, 1, 0, 0, 1, Split::val, 0.1)),
                       doctest::Contains("a window needs seq_len + 1 = 2001"), Error);
  CHECK_THROWS_WITH_AS(WindowLoader(f.dataset, options(10, 1, 0, 0, 1, Split::val, 0.0)),
                       doctest::Contains("has 0 tokens"), Error);
  CHECK_THROWS_WITH_AS(WindowLoader(f.dataset, options(0, 1, 0)), doctest::Contains("seq_len must be at least 1"), Error);
  CHECK_THROWS_WITH_AS(WindowLoader(f.dataset, options(8, 0, 0)), doctest::Contains("batch must be at least 1"), Error);
  CHECK_THROWS_WITH_AS(WindowLoader(f.dataset, options(8, 1, 0, 2, 2)),
                       doctest::Contains("rank 2 is not in [0, world = 2)"), Error);
}
