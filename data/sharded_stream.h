#pragma once
// What the window loader and the task generators share: one global stream of draws (draw d is a
// pure function of (seed, d)), dealt out to ranks round-robin, and the position format that a
// checkpoint stores.
//
// Sharding: rank r of world w takes the draws d = r, r + w, r + 2w, ... of the global stream, so
// the ranks never share a draw, and when every rank has taken n draws their union is exactly
// draws [0, n*w) — the draws a 1-rank run takes with a w-times larger batch. The position is that
// global count, so a run resumed with a different world size continues the same global stream.
#include <cstdint>
#include <initializer_list>
#include <utility>
#include <vector>

#include "core/error.h"

namespace scanline::data_detail {

// An integer uniform in [0, n) from 64 random bits (multiply-shift, as randint does; the bias is
// below n / 2^64).
inline uint64_t uniform_below(uint64_t bits, uint64_t n) {
  __extension__ using u128 = unsigned __int128;
  return uint64_t((u128(bits) * n) >> 64);
}

inline uint64_t bits64(uint32_t hi, uint32_t lo) { return (uint64_t(hi) << 32) | lo; }

// Rank r's cursor into the global stream. After reset(g) it takes the draws >= g of its residue
// class, in order; position() is g + (draws taken) * world: when all ranks took the same number
// of draws, every draw below it and none above was taken by some rank.
class ShardCursor {
 public:
  ShardCursor(int64_t rank, int64_t world) : rank_(rank), world_(world) {}
  void reset(int64_t global_position) { base_ = global_position; taken_ = 0; }
  int64_t next() {
    int64_t first = base_ + ((rank_ - base_) % world_ + world_) % world_;
    return first + (taken_++) * world_;
  }
  int64_t position() const { return base_ + taken_ * world_; }

 private:
  int64_t rank_, world_;
  int64_t base_ = 0, taken_ = 0;
};

// Position layout: {magic, version, global position, seed, then the source's settings}. The
// settings are there so a position is never applied to a stream it was not saved from.
inline constexpr int64_t kPositionVersion = 1;

inline std::vector<int64_t> make_position(int64_t magic, int64_t global_position, uint64_t seed,
                                          std::initializer_list<int64_t> settings) {
  std::vector<int64_t> out{magic, kPositionVersion, global_position, int64_t(seed)};
  out.insert(out.end(), settings);
  return out;
}

// Checks a saved position against this source (its magic, seed and named settings) and returns
// the global position it holds.
inline int64_t parse_position(const std::vector<int64_t>& pos, const char* source, int64_t magic, uint64_t seed,
                              std::initializer_list<std::pair<const char*, int64_t>> settings) {
  SCANLINE_CHECK(pos.size() == 4 + settings.size() && pos[0] == magic, source,
                 ": the saved position was not written by a ", source, " (", pos.size(), " values, tag ",
                 pos.empty() ? 0 : pos[0], ")");
  SCANLINE_CHECK(pos[1] == kPositionVersion, source, ": saved position has version ", pos[1], ", expected ",
                 kPositionVersion);
  SCANLINE_CHECK(pos[2] >= 0, source, ": saved position ", pos[2], " is negative");
  SCANLINE_CHECK(pos[3] == int64_t(seed), source, ": the saved position is for seed ", uint64_t(pos[3]),
                 " but this one has seed ", seed);
  size_t i = 4;
  for (const auto& [name, value] : settings) {
    SCANLINE_CHECK(pos[i] == value, source, ": the saved position is for ", name, " = ", pos[i], " but this one has ",
                   name, " = ", value);
    ++i;
  }
  return pos[2];
}

inline void check_rank(const char* source, int64_t rank, int64_t world) {
  SCANLINE_CHECK(world >= 1 && rank >= 0 && rank < world, source, ": rank ", rank, " is not in [0, world = ", world,
                 ")");
}

}  // namespace scanline::data_detail
