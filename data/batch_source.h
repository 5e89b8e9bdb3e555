#pragma once
// BatchSource: what the trainer pulls training and evaluation batches from — the window loader
// over a token dataset and the synthetic task generators alike. A source is a deterministic
// stream: its position() is a handful of integers that the checkpoint stores, and
// set_position() on a freshly built source with the same settings continues the stream exactly.
#include <cstdint>
#include <vector>

#include "core/tensor.h"

namespace scanline {

// inputs and targets are (batch, seq_len) i64 CPU tensors; a target of kIgnoreIndex contributes
// no loss (pass it as cross_entropy's ignore_index).
struct Batch {
  Tensor inputs;
  Tensor targets;
};

inline constexpr int64_t kIgnoreIndex = -100;

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  virtual Batch next() = 0;
  virtual std::vector<int64_t> position() const = 0;
  // Throws a scanline::Error when the position was saved by a different kind of source or with
  // settings that would change the stream (seed, sequence length, dataset size, task options).
  virtual void set_position(const std::vector<int64_t>& position) = 0;
};

}  // namespace scanline
