#include "core/random.h"

#include <cmath>
#include <limits>
#include <type_traits>
#include <numbers>

#include "core/parallel.h"

namespace scanline {

std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(kMul0) * c[0];
    uint64_t p1 = uint64_t(kMul1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ k[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ k[1], uint32_t(p0)};
    k[0] += kWeyl0;
    k[1] += kWeyl1;
  }
  return c;
}

std::array<uint32_t, 4> Generator::words(uint64_t index) const {
  return philox4x32({uint32_t(index), uint32_t(index >> 32), 0u, 0u},
                    {uint32_t(seed_), uint32_t(seed_ >> 32)});
}

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

void manual_seed(uint64_t seed) { default_generator().set_state(seed, 0); }

namespace {

// 53 random bits as a double in [0, 1).
double uniform01(uint32_t hi, uint32_t lo) {
  return double((uint64_t(hi) << 21) ^ (lo >> 11)) * 0x1.0p-53;
}

// Fills a fresh CPU tensor element by element from the element's counter, then moves it.
template <typename ValueFn>
Tensor generate(const Shape& shape, Generator& gen, TensorOptions options, const char* op, ValueFn value) {
  Tensor host = empty(shape, options.with_device(Device::cpu()).with_requires_grad(false));
  uint64_t first = gen.advance(uint64_t(host.numel()));
  dispatch_all(options.dtype, op, [&]<typename T>() {
    T* out = host.data_ptr<T>();
    parallel_for(host.numel(), 16384, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) out[i] = value.template operator()<T>(gen.words(first + uint64_t(i)));
    });
  });
  Tensor t = options.device.is_cpu() ? host : contiguous_copy(host, options.dtype, options.device);
  if (options.requires_grad) t.set_requires_grad(true);
  return t;
}

// The next representable value below v (bf16/f16 bit patterns order like sign-magnitude ints).
template <typename T>
T next_down(T v) {
  if constexpr (std::is_same_v<T, BFloat16> || std::is_same_v<T, Half>) {
    T out;
    out.bits = (v.bits & 0x7fffu) == 0 ? uint16_t(0x8001u)
               : (v.bits & 0x8000u)    ? uint16_t(v.bits + 1u)
                                       : uint16_t(v.bits - 1u);
    return out;
  } else {
    return std::nextafter(v, -std::numeric_limits<T>::infinity());
  }
}

}  // namespace

Tensor rand(const Shape& shape, Generator& gen, TensorOptions options, double low, double high) {
  SCANLINE_CHECK(is_floating(options.dtype), "rand: expected a floating dtype but found ", options.dtype);
  SCANLINE_CHECK(low < high, "rand: expected low < high but found [", low, ", ", high, ")");
  return generate(shape, gen, options, "rand", [=]<typename T>(std::array<uint32_t, 4> w) {
    T v = T(low + (high - low) * uniform01(w[0], w[1]));
    if constexpr (!std::is_integral_v<T>) {
      // Rounding into the dtype can land on high itself: step down to the value just below it.
      while (double(v) >= high) v = next_down(v);
    }
    return v;
  });
}

Tensor randn(const Shape& shape, Generator& gen, TensorOptions options, double mean, double std) {
  SCANLINE_CHECK(is_floating(options.dtype), "randn: expected a floating dtype but found ", options.dtype);
  return generate(shape, gen, options, "randn", [=]<typename T>(std::array<uint32_t, 4> w) {
    double u1 = 1.0 - uniform01(w[0], w[1]);  // (0, 1]: log stays finite
    double u2 = uniform01(w[2], w[3]);
    return T(mean + std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2));
  });
}

Tensor randint(int64_t low, int64_t high, const Shape& shape, Generator& gen, TensorOptions options) {
  SCANLINE_CHECK(low < high, "randint: expected low < high but found [", low, ", ", high, ")");
  uint64_t range = uint64_t(high - low);
  return generate(shape, gen, options, "randint", [=]<typename T>(std::array<uint32_t, 4> w) {
    uint64_t bits = (uint64_t(w[0]) << 32) | w[1];
    // Multiply-shift keeps the bias below 2^-64 * range: negligible for any real range.
    __extension__ using u128 = unsigned __int128;
    auto scaled = uint64_t((u128(bits) * range) >> 64);
    return T(low + int64_t(scaled));
  });
}

Tensor rand(const Shape& shape, TensorOptions options) { return rand(shape, default_generator(), options); }
Tensor randn(const Shape& shape, TensorOptions options) { return randn(shape, default_generator(), options); }

}  // namespace scanline
