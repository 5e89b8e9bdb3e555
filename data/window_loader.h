#pragma once
// WindowLoader: random windows of a token dataset split, for language-model training.
//
// Each batch holds `batch` windows of seq_len + 1 consecutive tokens; inputs are a window's first
// seq_len tokens and targets its last seq_len (the same tokens shifted by one), both
// (batch, seq_len) i64 on the CPU. Window starts are uniform over the split (any start whose
// window fits inside it): draw d of the global stream uses the Philox counter d of
// Generator(seed) — 64 bits of it, mapped to [0, split size - seq_len) by multiply-shift — and
// ranks deal the draws round-robin (data/sharded_stream.h): rank r of world w takes draws r,
// r + w, ..., so with a per-rank batch b the union of the ranks' batch k is the 1-rank batch k of
// size b*w, row j of it coming from rank j % w, row j / w.
//
// position() = {tag, version, global draw count, seed, split size, seq_len}; set_position() on a
// loader over the same split, seed and seq_len continues the stream exactly, for any world size.
#include <memory>

#include "data/batch_source.h"
#include "data/sharded_stream.h"
#include "data/token_dataset.h"
#include "core/random.h"

namespace scanline {

struct WindowLoaderOptions {
  int64_t seq_len = 256;
  int64_t batch = 32;  // windows per batch on this rank
  uint64_t seed = 0;
  int64_t rank = 0;
  int64_t world = 1;
  Split split = Split::train;
  double val_fraction = 0.01;
};

class WindowLoader : public BatchSource {
 public:
  static constexpr int64_t kPositionTag = 0x574c4452;  // "WLDR"

  WindowLoader(std::shared_ptr<const TokenDataset> dataset, const WindowLoaderOptions& options);

  Batch next() override;
  std::vector<int64_t> position() const override;
  void set_position(const std::vector<int64_t>& position) override;

  // The dataset index of the first token of global draw d's window (for tests and tools).
  int64_t window_start(int64_t draw) const;
  const TokenRange& range() const { return range_; }
  const WindowLoaderOptions& options() const { return options_; }

 private:
  std::shared_ptr<const TokenDataset> dataset_;
  WindowLoaderOptions options_;
  TokenRange range_;
  Generator generator_;
  data_detail::ShardCursor cursor_;
};

}  // namespace scanline
