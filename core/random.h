#pragma once
// Philox4x32-10 counter-based random numbers. Element i of a draw uses counter (offset + i), so a
// tensor's values depend only on (seed, offset, shape), never on thread count or device.
#include <array>
#include <cstdint>

#include "core/tensor.h"

namespace scanline {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void set_state(uint64_t seed, uint64_t offset) { seed_ = seed; offset_ = offset; }
  // Reserves n counters and returns the first; the next draw starts after them.
  uint64_t advance(uint64_t n) { uint64_t first = offset_; offset_ += n; return first; }
  // Four 32-bit words for the counter at `index`.
  std::array<uint32_t, 4> words(uint64_t index) const;

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

Generator& default_generator();
void manual_seed(uint64_t seed);  // reseeds the default generator

// Uniform in [low, high), standard normal * std + mean, integers in [low, high).
Tensor rand(const Shape& shape, Generator& gen, TensorOptions options = {}, double low = 0.0, double high = 1.0);
Tensor randn(const Shape& shape, Generator& gen, TensorOptions options = {}, double mean = 0.0, double std = 1.0);
Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen,
               TensorOptions options = {.dtype = DType::i64});
Tensor rand(const Shape& shape, TensorOptions options = {});
Tensor randn(const Shape& shape, TensorOptions options = {});

}  // namespace scanline
