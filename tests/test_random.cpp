// Philox4x32-10 and the tensor draws built on it: known answers, reproducibility from
// (seed, offset), independence of the thread count, ranges and distribution moments.
#include <cmath>
#include <cstring>
#include <set>

#include "core/parallel.h"
#include "core/random.h"
#include "support/testing.h"

using namespace scanline;

namespace {

// Restores the thread count a test changed, so later tests see the environment's setting.
struct ThreadCountGuard {
  int saved = num_threads();
  ~ThreadCountGuard() { set_num_threads(saved); }
};

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() &&
         std::memcmp(a.raw_data(), b.raw_data(), a.nbytes()) == 0;
}

// The documented mapping of Philox words to a double in [0, 1): 53 bits, high word first.
double uniform_from_words(uint32_t hi, uint32_t lo) {
  return double((uint64_t(hi) << 21) ^ (lo >> 11)) * 0x1.0p-53;
}

}  // namespace

TEST_CASE("philox4x32-10 matches the Random123 known-answer vectors") {
  using W = std::array<uint32_t, 4>;
  CHECK(philox4x32({0, 0, 0, 0}, {0, 0}) == W{0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u});
  CHECK(philox4x32({0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}, {0xffffffffu, 0xffffffffu}) ==
        W{0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu});
  CHECK(philox4x32({0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, {0xa4093822u, 0x299f31d0u}) ==
        W{0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u});
}

TEST_CASE("generator words are philox of (index, seed) split into 32-bit halves") {
  Generator gen(0x123456789abcdefull);
  uint64_t index = 0xfedcba9876ull;
  CHECK(gen.words(index) == philox4x32({0xdcba9876u, 0xfeu, 0u, 0u}, {0x89abcdefu, 0x1234567u}));
  // Seeds differing only in the high 32 bits give different streams.
  CHECK(Generator(1).words(0) != Generator(1 + (1ull << 32)).words(0));
  // advance reserves counters: the next draw starts after them.
  Generator g(3);
  CHECK(g.advance(10) == 0);
  CHECK(g.advance(5) == 10);
  CHECK(g.offset() == 15);
}

TEST_CASE("element i of a draw uses counter offset + i") {
  Generator gen(99);
  gen.set_state(99, 1000);
  Tensor x = rand({3, 5}, gen, {.dtype = DType::f64}, -2.0, 3.0);
  CHECK(gen.offset() == 1015);
  std::vector<double> v = x.to_vector<double>();
  for (uint64_t i = 0; i < 15; ++i) {
    auto w = Generator(99).words(1000 + i);
    CHECK(v[i] == -2.0 + 5.0 * uniform_from_words(w[0], w[1]));
  }
}

TEST_CASE("same seed and offset give the same tensor; successive draws differ") {
  Generator a(42), b(42);
  Tensor xa = randn({64, 33}, a), xb = randn({64, 33}, b);
  CHECK(same_bits(xa, xb));
  Tensor ya = randn({64, 33}, a);
  CHECK_FALSE(same_bits(xa, ya));  // the offset moved on
  // Replaying from the saved offset reproduces the second draw, whatever the shape.
  Generator c(0);
  c.set_state(42, 64 * 33);
  Tensor yc = randn({64 * 33}, c);
  CHECK(std::memcmp(yc.raw_data(), ya.raw_data(), ya.nbytes()) == 0);
  // Different seeds give different values.
  Generator s1(1), s2(2);
  CHECK_FALSE(same_bits(rand({100}, s1), rand({100}, s2)));
  // The default generator follows manual_seed.
  manual_seed(5);
  Tensor d1 = rand({10});
  Tensor d2 = rand({10});
  manual_seed(5);
  CHECK(same_bits(rand({10}), d1));
  CHECK(same_bits(rand({10}), d2));
  Generator five(5);
  CHECK(same_bits(rand({10}, five), d1));
}

TEST_CASE("draws do not depend on the thread count") {
  ThreadCountGuard guard;
  // Sizes around and well above the generator's chunk size.
  for (int64_t n : {int64_t(1), int64_t(16383), int64_t(16385), int64_t(200001)}) {
    CAPTURE(n);
    std::vector<Tensor> by_threads[3];
    int counts[3] = {1, 2, 7};
    for (int k = 0; k < 3; ++k) {
      set_num_threads(counts[k]);
      REQUIRE(num_threads() == counts[k]);
      Generator gen(2024);
      by_threads[k].push_back(rand({n}, gen));
      by_threads[k].push_back(randn({n}, gen, {.dtype = DType::f64}));
      by_threads[k].push_back(randint(-1000, 1000, {n}, gen));
      by_threads[k].push_back(randn({n}, gen, {.dtype = DType::bf16}));
    }
    for (int k = 1; k < 3; ++k)
      for (size_t t = 0; t < by_threads[0].size(); ++t) CHECK(same_bits(by_threads[0][t], by_threads[k][t]));
  }
}

TEST_CASE("rand stays in [low, high) in every floating dtype") {
  for (DType dtype : {DType::f64, DType::f32, DType::bf16, DType::f16}) {
    CAPTURE(std::string(dtype_name(dtype)));
    for (auto [low, high] : {std::pair{0.0, 1.0}, std::pair{-1.0, 1.0}, std::pair{2.0, 3.0}}) {
      CAPTURE(low);
      CAPTURE(high);
      Generator gen(11);
      std::vector<double> v = rand({1'000'000}, gen, {.dtype = dtype}, low, high).to_vector<double>();
      int64_t below = 0, at_or_above = 0;
      for (double e : v) {
        below += e < low;
        at_or_above += e >= high;
      }
      CHECK(below == 0);
      CHECK(at_or_above == 0);
    }
  }
}

TEST_CASE("rand in f32 never rounds up to high") {
  // Counter 20922799 of seed 7 gives u = 1 - 2^-28 or so: closer to 1 than half a float ulp.
  Generator probe(7);
  auto w = probe.words(20922799);
  double u = uniform_from_words(w[0], w[1]);
  REQUIRE(u < 1.0);
  REQUIRE(float(u) == 1.0f);
  Generator gen(7);
  gen.set_state(7, 20922799);
  float value = rand({1}, gen).item<float>();
  CHECK(value < 1.0f);
}

TEST_CASE("rand is uniform: mean, variance and a 100-bin histogram") {
  const int64_t n = 1'000'000;
  Generator gen(5);
  std::vector<double> v = rand({n}, gen, {.dtype = DType::f64}).to_vector<double>();
  double sum = 0.0, sum2 = 0.0;
  std::vector<int64_t> bins(100, 0);
  for (double e : v) {
    sum += e;
    sum2 += (e - 0.5) * (e - 0.5);
    ++bins[size_t(e * 100.0)];
  }
  // Five standard errors: sd of the mean is sqrt(1/12/n), of the variance sqrt(1/180/n).
  CHECK(std::abs(sum / double(n) - 0.5) < 5.0 * std::sqrt(1.0 / 12.0 / double(n)));
  CHECK(std::abs(sum2 / double(n) - 1.0 / 12.0) < 5.0 * std::sqrt(1.0 / 180.0 / double(n)));
  // Chi-square with 99 degrees of freedom: mean 99, sd sqrt(198) ~ 14; five sd above the mean.
  double chi2 = 0.0, expected = double(n) / 100.0;
  for (int64_t c : bins) chi2 += (double(c) - expected) * (double(c) - expected) / expected;
  CHECK(chi2 < 99.0 + 5.0 * std::sqrt(198.0));
}

TEST_CASE("randn has the normal moments and tail fractions") {
  const int64_t n = 1'000'000;
  const double dn = double(n);
  Generator gen(8);
  std::vector<double> v = randn({n}, gen, {.dtype = DType::f64}, 3.0, 2.0).to_vector<double>();
  double m1 = 0.0, m2 = 0.0, m3 = 0.0, m4 = 0.0;
  int64_t within1 = 0, within2 = 0;
  for (double e : v) {
    REQUIRE(std::isfinite(e));
    double z = (e - 3.0) / 2.0;  // standardized with the requested mean and std
    m1 += z;
    m2 += z * z;
    m3 += z * z * z;
    m4 += z * z * z * z;
    within1 += std::abs(z) < 1.0;
    within2 += std::abs(z) < 2.0;
  }
  m1 /= dn, m2 /= dn, m3 /= dn, m4 /= dn;
  // Five standard errors each: Var(z) = 1, Var(z^2) = 2, Var(z^3) = 15, Var(z^4) = 96.
  CHECK(std::abs(m1) < 5.0 * std::sqrt(1.0 / dn));
  CHECK(std::abs(m2 - 1.0) < 5.0 * std::sqrt(2.0 / dn));
  CHECK(std::abs(m3) < 5.0 * std::sqrt(15.0 / dn));
  CHECK(std::abs(m4 - 3.0) < 5.0 * std::sqrt(96.0 / dn));
  const double p1 = std::erf(1.0 / std::sqrt(2.0)), p2 = std::erf(2.0 / std::sqrt(2.0));
  CHECK(std::abs(double(within1) / dn - p1) < 5.0 * std::sqrt(p1 * (1.0 - p1) / dn));
  CHECK(std::abs(double(within2) / dn - p2) < 5.0 * std::sqrt(p2 * (1.0 - p2) / dn));
}

TEST_CASE("randint covers [low, high) and nothing else") {
  Generator gen(17);
  Tensor small = randint(-5, 7, {10000}, gen);
  CHECK(small.dtype() == DType::i64);
  std::set<int64_t> seen;
  for (int64_t e : small.to_vector<int64_t>()) {
    CHECK(e >= -5);
    CHECK(e < 7);
    seen.insert(e);
  }
  CHECK(seen.size() == 12);  // every value hit
  Tensor one = randint(3, 4, {100}, gen, {.dtype = DType::i32});
  CHECK(one.dtype() == DType::i32);
  for (int32_t e : one.to_vector<int32_t>()) CHECK(e == 3);
  // A range wider than 32 bits still stays inside and reaches its upper part.
  const int64_t big = int64_t(1) << 40;
  std::vector<int64_t> wide = randint(0, big, {10000}, gen).to_vector<int64_t>();
  int64_t upper_half = 0;
  for (int64_t e : wide) {
    CHECK(e >= 0);
    CHECK(e < big);
    upper_half += e >= big / 2;
  }
  CHECK(upper_half > 4500);  // ~5000 expected, sd 50
  CHECK(upper_half < 5500);
}

TEST_CASE("random draws reject bad arguments with the op's name") {
  Generator gen(1);
  CHECK_THROWS_WITH_AS(randint(3, 3, {2}, gen), doctest::Contains("randint: expected low < high but found [3, 3)"), Error);
  CHECK_THROWS_WITH_AS(randint(5, -1, {2}, gen), doctest::Contains("randint: expected low < high"), Error);
  CHECK_THROWS_WITH_AS(rand({2}, gen, {}, 1.0, 1.0), doctest::Contains("rand: expected low < high but found [1, 1)"), Error);
  CHECK_THROWS_WITH_AS(rand({2}, gen, {}, 2.0, -1.0), doctest::Contains("rand: expected low < high"), Error);
  CHECK_THROWS_WITH_AS(randn({2}, gen, {.dtype = DType::i64}),
                       doctest::Contains("randn: expected a floating dtype but found i64"), Error);
  CHECK_THROWS_WITH_AS(rand({2}, gen, {.dtype = DType::i32}),
                       doctest::Contains("rand: expected a floating dtype but found i32"), Error);
  CHECK(gen.offset() == 0);  // a rejected draw consumes no counters
}

TEST_CASE("requires_grad in the options makes a leaf") {
  Generator gen(3);
  Tensor x = randn({4}, gen, {.dtype = DType::f64, .requires_grad = true});
  CHECK(x.requires_grad());
  CHECK(x.is_leaf());
}
