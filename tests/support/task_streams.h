#pragma once
// The stream properties every synthetic task generator shares (data/copying.h,
// data/induction_heads.h, data/phonebook.h, data/selective_copying.h), checked once here:
// a sequence is a pure function of (seed, index), ranks deal the global stream round-robin, and
// position() resumes a stream exactly. Each task's test file adds what is particular to it.
#include <doctest/doctest.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "data/batch_source.h"

namespace scanline::testing {

// Row r of a (batch, L) token tensor.
inline std::vector<int64_t> row(const Tensor& t, int64_t r) {
  const std::vector<int64_t> all = t.to_vector<int64_t>();
  const int64_t L = t.size(1);
  return {all.begin() + r * L, all.begin() + (r + 1) * L};
}

inline bool same(const Batch& a, const Batch& b) {
  return a.inputs.to_vector<int64_t>() == b.inputs.to_vector<int64_t>() &&
         a.targets.to_vector<int64_t>() == b.targets.to_vector<int64_t>();
}

// a and b built alike, other_seed with another seed, `batch` rows of seq_len each: equal
// streams, a different one, and every row equal to write_sequence(its global index).
template <class Task>
void check_stream_is_pure(Task& a, Task& b, Task& other_seed, int64_t batch, int64_t seq_len) {
  for (int i = 0; i < 3; ++i) {
    const Batch ba = a.next(), bb = b.next(), bc = other_seed.next();
    CHECK(same(ba, bb));
    CHECK_FALSE(same(ba, bc));
    for (int64_t r = 0; r < batch; ++r) {
      std::vector<int64_t> in(static_cast<size_t>(seq_len)), tg(static_cast<size_t>(seq_len));
      a.write_sequence(i * batch + r, in.data(), tg.data());
      CHECK(in == row(ba.inputs, r));
      CHECK(tg == row(ba.targets, r));
    }
  }
}

// make(batch, rank, world) builds a generator; `world` ranks of per_rank rows together give the
// 1-rank stream of per_rank * world rows, row j on rank j % world, and end at its position.
template <class Task>
void check_ranks_partition(const std::function<std::unique_ptr<Task>(int64_t, int64_t, int64_t)>& make,
                           int64_t world, int64_t per_rank) {
  const std::unique_ptr<Task> single = make(per_rank * world, 0, 1);
  std::vector<std::unique_ptr<Task>> ranks;
  for (int64_t r = 0; r < world; ++r) ranks.push_back(make(per_rank, r, world));
  for (int b = 0; b < 3; ++b) {
    const Batch whole = single->next();
    std::vector<Batch> parts;
    for (auto& task : ranks) parts.push_back(task->next());
    for (int64_t j = 0; j < per_rank * world; ++j) {
      CHECK(row(whole.inputs, j) == row(parts[size_t(j % world)].inputs, j / world));
      CHECK(row(whole.targets, j) == row(parts[size_t(j % world)].targets, j / world));
    }
  }
  for (auto& task : ranks) CHECK(task->position() == single->position());
}

// task and restored built alike: task advances `skip` batches; restored, set to task's position,
// replays task's next `replay` batches exactly. Returns the saved position.
template <class Task>
std::vector<int64_t> check_position_restores(Task& task, Task& restored, int skip, int replay) {
  for (int i = 0; i < skip; ++i) task.next();
  const std::vector<int64_t> saved = task.position();
  std::vector<Batch> expected;
  for (int i = 0; i < replay; ++i) expected.push_back(task.next());
  restored.set_position(saved);
  for (int i = 0; i < replay; ++i) CHECK(same(restored.next(), expected[size_t(i)]));
  CHECK(restored.position() == task.position());
  return saved;
}

}  // namespace scanline::testing
