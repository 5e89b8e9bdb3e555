// parallel_for: exact coverage of [0, n), chunk boundaries fixed by (n, grain) alone, errors
// carried back to the caller, nesting, and the thread-count setting.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "support/testing.h"

using namespace scanline;

namespace {

struct ThreadCountGuard {
  int saved = num_threads();
  ~ThreadCountGuard() { set_num_threads(saved); }
};

// The (begin, end) chunks one parallel_for call made, sorted.
std::vector<std::pair<int64_t, int64_t>> chunks_of(int64_t n, int64_t grain) {
  std::mutex m;
  std::vector<std::pair<int64_t, int64_t>> chunks;
  parallel_for(n, grain, [&](int64_t b, int64_t e) {
    std::lock_guard<std::mutex> lock(m);
    chunks.emplace_back(b, e);
  });
  std::sort(chunks.begin(), chunks.end());
  return chunks;
}

}  // namespace

TEST_CASE("parallel_for visits every index of [0, n) exactly once") {
  ThreadCountGuard guard;
  for (int threads : {1, 2, 3, 7}) {
    set_num_threads(threads);
    CHECK(num_threads() == threads);
    for (int64_t n : {0, 1, 2, 7, 100, 1000, 4097, 100003}) {
      for (int64_t grain : {-3, 0, 1, 3, 64, 1000, 200000}) {
        CAPTURE(threads);
        CAPTURE(n);
        CAPTURE(grain);
        std::vector<std::atomic<int>> hits(size_t(std::max<int64_t>(n, 1)));
        std::atomic<int64_t> calls{0}, bad_ranges{0};
        parallel_for(n, grain, [&](int64_t b, int64_t e) {
          ++calls;
          if (!(0 <= b && b < e && e <= n)) ++bad_ranges;
          for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
        });
        int64_t wrong = 0;
        for (int64_t i = 0; i < n; ++i) wrong += hits[size_t(i)].load() != 1;
        CHECK(wrong == 0);
        CHECK(bad_ranges == 0);
        int64_t g = std::max<int64_t>(grain, 1);
        CHECK(calls == (n + g - 1) / g);  // one call per chunk, none empty
      }
    }
  }
}

TEST_CASE("chunk boundaries depend only on n and grain") {
  ThreadCountGuard guard;
  for (auto [n, grain] : {std::pair<int64_t, int64_t>{10, 3}, {1000, 7}, {65536, 4096}, {100001, 999}}) {
    CAPTURE(n);
    CAPTURE(grain);
    std::vector<std::pair<int64_t, int64_t>> expected;
    for (int64_t b = 0; b < n; b += grain) expected.emplace_back(b, std::min(n, b + grain));
    for (int threads : {1, 2, 7}) {
      set_num_threads(threads);
      CAPTURE(threads);
      CHECK(chunks_of(n, grain) == expected);
    }
  }
}

TEST_CASE("an error thrown inside reaches the caller as scanline::Error") {
  ThreadCountGuard guard;
  for (int threads : {1, 2, 7}) {
    set_num_threads(threads);
    CAPTURE(threads);
    auto failing = [] {
      parallel_for(10000, 10, [](int64_t b, int64_t e) {
        SCANLINE_CHECK(!(b <= 5000 && 5000 < e), "kernel: bad value at index ", 5000);
      });
    };
    CHECK_THROWS_WITH_AS(failing(), doctest::Contains("kernel: bad value at index 5000"), Error);
    // Every chunk throwing still gives one error, and the pool keeps working afterwards.
    CHECK_THROWS_AS(parallel_for(1000, 1, [](int64_t, int64_t) { SCANLINE_FAIL("everywhere"); }), Error);
    // Other exception types come through unchanged.
    CHECK_THROWS_AS(parallel_for(1000, 1, [](int64_t b, int64_t) {
                      if (b == 999) throw std::out_of_range("last");
                    }), std::out_of_range);
    std::atomic<int64_t> total{0};
    parallel_for(1000, 10, [&](int64_t b, int64_t e) { total += e - b; });
    CHECK(total == 1000);
  }
}

TEST_CASE("nested parallel_for runs the inner loops completely") {
  ThreadCountGuard guard;
  for (int threads : {1, 2, 7}) {
    set_num_threads(threads);
    CAPTURE(threads);
    const int64_t outer = 37, inner = 1001;
    std::vector<std::atomic<int>> hits(size_t(outer * inner));
    parallel_for(outer, 1, [&](int64_t ob, int64_t oe) {
      for (int64_t o = ob; o < oe; ++o)
        parallel_for(inner, 16, [&](int64_t ib, int64_t ie) {
          for (int64_t i = ib; i < ie; ++i) hits[size_t(o * inner + i)].fetch_add(1);
        });
    });
    int64_t wrong = 0;
    for (auto& h : hits) wrong += h.load() != 1;
    CHECK(wrong == 0);
    // An error in a nested loop propagates through both levels.
    CHECK_THROWS_WITH_AS(parallel_for(8, 1, [](int64_t, int64_t) {
                           parallel_for(100, 1, [](int64_t b, int64_t) { SCANLINE_CHECK(b != 50, "inner failed"); });
                         }),
                         doctest::Contains("inner failed"), Error);
  }
}

TEST_CASE("the pool uses several threads and serves callers from other threads") {
  ThreadCountGuard guard;
  set_num_threads(4);
  // Chunks that wait for each other only finish if they really run at the same time.
  std::atomic<int> arrived{0};
  std::mutex m;
  std::vector<std::thread::id> ids;
  parallel_for(4, 1, [&](int64_t, int64_t) {
    ++arrived;
    for (int spin = 0; spin < 2000 && arrived.load() < 2; ++spin)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    std::lock_guard<std::mutex> lock(m);
    ids.push_back(std::this_thread::get_id());
  });
  std::sort(ids.begin(), ids.end());
  CHECK(std::unique(ids.begin(), ids.end()) - ids.begin() >= 2);
  // Two user threads calling parallel_for at once each get all their chunks.
  std::atomic<int64_t> sum_a{0}, sum_b{0};
  std::thread other([&] {
    for (int r = 0; r < 50; ++r) parallel_for(1000, 7, [&](int64_t b, int64_t e) { sum_a += e - b; });
  });
  for (int r = 0; r < 50; ++r) parallel_for(1000, 7, [&](int64_t b, int64_t e) { sum_b += e - b; });
  other.join();
  CHECK(sum_a == 50000);
  CHECK(sum_b == 50000);
  set_num_threads(0);  // clamps to one thread
  CHECK(num_threads() == 1);
}
