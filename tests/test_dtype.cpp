// dtype names and sizes, and the float -> bf16/f16 conversions: every result is checked against
// a round-to-nearest-even reference computed in double arithmetic.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <limits>
#include <random>

#include "core/dtype.h"
#include "core/tensor.h"
#include "ops/views.h"
#include "support/testing.h"

using namespace scanline;

namespace {

// "0x..." for messages (doctest does not apply stream manipulators).
std::string hex(uint32_t bits) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%x", bits);
  return buf;
}

// A binary floating format: `mant_bits` stored mantissa bits, smallest normal exponent
// `min_exp`, largest finite value `max_finite`.
struct Format {
  int mant_bits;
  int min_exp;
  double max_finite;
};
constexpr Format kHalf{10, -14, 65504.0};
constexpr Format kBF16{7, -126, 0x1.fep127};

// The value of d rounded to the format, ties to even, overflowing to infinity. All steps are
// exact in double: the quantum is a power of two, so scaling and splitting off the fraction lose
// nothing.
double round_to_format(double d, const Format& f) {
  double a = std::fabs(d);
  if (std::isinf(a)) return d;
  if (a == 0.0) return d;  // keeps the sign of zero
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e with m in [0.5, 1): floor(log2 a) = e - 1
  int exponent = std::max(e - 1, f.min_exp);
  double quantum = std::ldexp(1.0, exponent - f.mant_bits);
  double scaled = a / quantum;
  double r = std::floor(scaled);
  double frac = scaled - r;
  if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0.0)) r += 1.0;
  double result = r * quantum;
  if (result > f.max_finite) result = std::numeric_limits<double>::infinity();
  return std::copysign(result, d);
}

// Checks one conversion: NaN stays NaN, everything else equals the reference, sign of zero too.
template <typename T>
bool converts_exactly(float x, const Format& f) {
  float got = float(T(x));
  if (std::isnan(x)) return std::isnan(got);
  double want = round_to_format(x, f);
  return double(got) == want && std::signbit(got) == std::signbit(want);
}

template <typename T>
void check_random_patterns(const Format& f, uint64_t seed) {
  std::mt19937_64 rng(seed);
  int64_t failures = 0;
  uint32_t first_bad = 0;
  for (int i = 0; i < 2'000'000; ++i) {
    uint32_t bits = uint32_t(rng());
    if (!converts_exactly<T>(std::bit_cast<float>(bits), f)) {
      if (failures++ == 0) first_bad = bits;
    }
  }
  INFO("first mismatching float bits: ", hex(first_bad));
  CHECK(failures == 0);
}

// Every tie between two neighbouring values of the format (and one float ulp either side of
// it): the bit patterns of T are enumerated, so every exponent and both parities are covered.
template <typename T>
void check_all_ties(const Format& f) {
  int64_t failures = 0;
  uint32_t first_bad = 0;
  for (uint32_t h = 0; h < 0x8000u; ++h) {
    T lo;
    lo.bits = uint16_t(h);
    T hi;
    hi.bits = uint16_t(h + 1);
    float a = float(lo), b = float(hi);
    if (!std::isfinite(a) || std::isnan(b)) continue;
    double mid_d = std::isinf(b) ? f.max_finite + std::ldexp(1.0, std::ilogb(f.max_finite) - f.mant_bits - 1)
                                 : (double(a) + double(b)) / 2.0;
    float mid = float(mid_d);
    REQUIRE(double(mid) == mid_d);  // the tie is a float exactly
    for (float x : {mid, std::nextafter(mid, 0.0f), std::nextafter(mid, 1e30f)}) {
      for (float s : {x, -x}) {
        if (!converts_exactly<T>(s, f)) {
          if (failures++ == 0) first_bad = std::bit_cast<uint32_t>(s);
        }
      }
    }
  }
  INFO("first mismatching float bits: ", hex(first_bad));
  CHECK(failures == 0);
}

}  // namespace

TEST_CASE("dtype sizes, names and parsing") {
  CHECK(dtype_size(DType::f64) == 8);
  CHECK(dtype_size(DType::f32) == 4);
  CHECK(dtype_size(DType::bf16) == 2);
  CHECK(dtype_size(DType::f16) == 2);
  CHECK(dtype_size(DType::i64) == 8);
  CHECK(dtype_size(DType::i32) == 4);
  CHECK(dtype_size(DType::b8) == 1);
  CHECK(sizeof(BFloat16) == 2);
  CHECK(sizeof(Half) == 2);
  for (DType d : {DType::f64, DType::f32, DType::bf16, DType::f16, DType::i64, DType::i32, DType::b8}) {
    CAPTURE(std::string(dtype_name(d)));
    CHECK(dtype_from_name(dtype_name(d)) == d);  // names round-trip
    CHECK(is_floating(d) == (d == DType::f64 || d == DType::f32 || d == DType::bf16 || d == DType::f16));
  }
  CHECK(dtype_from_name("float32") == DType::f32);
  CHECK(dtype_from_name("fp32") == DType::f32);
  CHECK(dtype_from_name("bfloat16") == DType::bf16);
  CHECK(dtype_from_name("float16") == DType::f16);
  CHECK(dtype_from_name("fp16") == DType::f16);
  CHECK(dtype_from_name("float64") == DType::f64);
  CHECK(dtype_from_name("int64") == DType::i64);
  CHECK(dtype_from_name("int32") == DType::i32);
  CHECK_THROWS_WITH_AS(dtype_from_name("float8"), doctest::Contains("but found 'float8'"), Error);
  CHECK_THROWS_WITH_AS(dtype_from_name(""), doctest::Contains("but found ''"), Error);
  CHECK_THROWS_WITH_AS(dtype_from_name("F32"), doctest::Contains("'F32'"), Error);  // case matters
}

TEST_CASE("dispatch rejects dtypes outside its family with the op's name") {
  auto noop = []<typename T>() { return 0; };
  CHECK_THROWS_WITH_AS(dispatch_floating(DType::i32, "myop", noop),
                       doctest::Contains("myop: expected a floating dtype (f64, f32, bf16, f16) but found i32"), Error);
  CHECK_THROWS_WITH_AS(dispatch_index(DType::f32, "gather", noop),
                       doctest::Contains("gather: expected an index dtype (i64 or i32) but found f32"), Error);
}

TEST_CASE("f16: every bit pattern round-trips through float exactly") {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    Half v;
    v.bits = uint16_t(h);
    float x = float(v);
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0x1f && mant != 0) {
      if (!std::isnan(x)) FAIL_CHECK("f16 NaN pattern ", hex(h), " did not decode to NaN");
      if (!std::isnan(float(Half(x)))) FAIL_CHECK("f16 NaN ", hex(h), " did not stay NaN");
      continue;
    }
    // Decode independently: (-1)^s * 2^(e-15) * (1 + m/1024), or 2^-14 * m/1024 for subnormals.
    double want = exp == 0x1f ? std::numeric_limits<double>::infinity()
                  : exp == 0  ? std::ldexp(double(mant), -24)
                              : std::ldexp(1.0 + mant / 1024.0, int(exp) - 15);
    if (h & 0x8000u) want = -want;
    if (double(x) != want || std::signbit(x) != bool(h & 0x8000u))
      FAIL_CHECK("f16 ", hex(h), " decoded to ", x);
    if (Half(x).bits != h) FAIL_CHECK("f16 ", hex(h), " re-encoded as ", hex(Half(x).bits));
  }
}

TEST_CASE("bf16: every bit pattern round-trips through float exactly") {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    BFloat16 v;
    v.bits = uint16_t(h);
    float x = float(v);
    if (std::bit_cast<uint32_t>(x) != (h << 16)) FAIL_CHECK("bf16 ", hex(h), " decoded to ", x);
    if (std::isnan(x)) {
      CHECK(std::isnan(float(BFloat16(x))));
      continue;
    }
    if (BFloat16(x).bits != h) FAIL_CHECK("bf16 ", hex(h), " re-encoded as ", hex(BFloat16(x).bits));
  }
}

TEST_CASE("f16: float conversion rounds to nearest even") {
  check_random_patterns<Half>(kHalf, 20240601);
  check_all_ties<Half>(kHalf);
  // Named edge cases, checked against literal expectations as well as the reference.
  CHECK(Half(65504.0f).bits == 0x7bff);                             // max finite
  CHECK(Half(65519.996f).bits == 0x7bff);                           // just below the tie
  CHECK(Half(65520.0f).bits == 0x7c00);                             // tie with odd 65504: inf
  CHECK(Half(-65520.0f).bits == 0xfc00);
  CHECK(Half(1e10f).bits == 0x7c00);
  CHECK(Half(std::numeric_limits<float>::infinity()).bits == 0x7c00);
  CHECK(Half(-std::numeric_limits<float>::infinity()).bits == 0xfc00);
  CHECK(Half(-0.0f).bits == 0x8000);
  CHECK(Half(0.0f).bits == 0x0000);
  CHECK(Half(std::ldexp(1.0f, -24)).bits == 0x0001);                // smallest subnormal
  CHECK(Half(std::ldexp(1.0f, -25)).bits == 0x0000);                // tie with 0: even is 0
  CHECK(Half(std::ldexp(1.5f, -25)).bits == 0x0001);
  CHECK(Half(std::ldexp(3.0f, -25)).bits == 0x0002);                // tie 1.5 ulp: to even 2
  CHECK(Half(-std::ldexp(1.0f, -26)).bits == 0x8000);               // underflow keeps the sign
  CHECK(Half(std::ldexp(1023.5f, -24)).bits == 0x0400);             // rounds up into normals
  CHECK(Half(std::ldexp(1.0f, -14)).bits == 0x0400);                // smallest normal
  CHECK(Half(std::numeric_limits<float>::denorm_min()).bits == 0x0000);
  CHECK(Half(1.0f + std::ldexp(1.0f, -11)).bits == 0x3c00);         // tie, even mantissa stays
  CHECK(Half(1.0f + 3 * std::ldexp(1.0f, -11)).bits == 0x3c02);     // tie, odd rounds up
  CHECK(Half(2047.0f / 1024.0f + std::ldexp(1.0f, -11)).bits == 0x4000);  // carry into exponent
  float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(float(Half(nan))));
  CHECK(std::isnan(float(Half(std::bit_cast<float>(0x7f800001u)))));  // signalling NaN
  CHECK(std::isnan(float(Half(std::bit_cast<float>(0xffc00000u)))));
  CHECK(std::isnan(float(Half(std::bit_cast<float>(0x7f802000u)))));  // payload only in low bits
}

TEST_CASE("bf16: float conversion rounds to nearest even") {
  check_random_patterns<BFloat16>(kBF16, 777);
  check_all_ties<BFloat16>(kBF16);
  CHECK(BFloat16(1.0f + std::ldexp(1.0f, -8)).bits == 0x3f80);     // tie, even stays
  CHECK(BFloat16(1.0f + 3 * std::ldexp(1.0f, -8)).bits == 0x3f82);  // tie, odd rounds up
  CHECK(BFloat16(0x1.fep127f).bits == 0x7f7f);                      // max finite
  CHECK(BFloat16(0x1.ffp127f).bits == 0x7f80);                      // tie above max: inf
  CHECK(BFloat16(std::numeric_limits<float>::max()).bits == 0x7f80);
  CHECK(BFloat16(-std::numeric_limits<float>::infinity()).bits == 0xff80);
  CHECK(BFloat16(-0.0f).bits == 0x8000);
  CHECK(BFloat16(std::numeric_limits<float>::denorm_min()).bits == 0x0000);
  CHECK(BFloat16(std::ldexp(1.0f, -133)).bits == 0x0001);           // smallest bf16 subnormal
  CHECK(BFloat16(std::ldexp(1.0f, -134)).bits == 0x0000);           // tie with 0
  CHECK(BFloat16(std::ldexp(3.0f, -134)).bits == 0x0002);
  float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(float(BFloat16(nan))));
  CHECK(std::isnan(float(BFloat16(-nan))));
  // NaNs whose payload lives only in the low 16 bits must not truncate to infinity.
  CHECK(std::isnan(float(BFloat16(std::bit_cast<float>(0x7f800001u)))));
  CHECK(std::isnan(float(BFloat16(std::bit_cast<float>(0xff80ffffu)))));
  CHECK(std::isnan(float(BFloat16(std::bit_cast<float>(0x7fffffffu)))));
}

TEST_CASE("tensor dtype conversion uses the same rounding") {
  // A tensor of float ties and near-ties converts element-wise exactly as the scalar types do.
  std::vector<float> values;
  for (float base : {1.0f, 3.0f, 1000.0f, 65504.0f, 1e-5f, -7.0f}) {
    values.push_back(base);
    values.push_back(std::nextafter(base, 1e30f));
    values.push_back(base * (1.0f + std::ldexp(1.0f, -11)));
    values.push_back(base * (1.0f + std::ldexp(1.0f, -8)));
  }
  Tensor x = from_vector<float>(values, {int64_t(values.size())});
  std::vector<float> h = to_dtype(to_dtype(x, DType::f16), DType::f32).to_vector<float>();
  std::vector<float> b = to_dtype(to_dtype(x, DType::bf16), DType::f32).to_vector<float>();
  for (size_t i = 0; i < values.size(); ++i) {
    CAPTURE(values[i]);
    CHECK(double(h[i]) == round_to_format(values[i], kHalf));
    CHECK(double(b[i]) == round_to_format(values[i], kBF16));
  }
}

TEST_CASE("f64 to bf16 and f16 rounds once, to the nearest value") {
  // Going through float first would round twice: 1 + 2^-8 + 2^-30 becomes the tie 1 + 2^-8 in
  // float, which then rounds to even (1.0) instead of up to the nearest bf16, 1 + 2^-7.
  std::vector<double> values{1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30),
                             -(1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30)),
                             1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40),
                             65520.0 - std::ldexp(1.0, -20),  // just below the f16 overflow tie
                             std::ldexp(1.0, -25) + std::ldexp(1.0, -60)};  // above the f16 subnormal tie
  std::mt19937_64 rng(99);
  std::uniform_int_distribution<int> exponent(-150, 20);
  for (int i = 0; i < 200000; ++i) {
    double m = double(rng() >> 11) * 0x1.0p-53;  // [0, 1) with 53 bits
    values.push_back(std::ldexp((rng() & 1) ? m : -m, exponent(rng)));
  }
  Tensor x = from_vector<double>(values, {int64_t(values.size())});
  std::vector<double> h = to_dtype(to_dtype(x, DType::f16), DType::f64).to_vector<double>();
  std::vector<double> b = to_dtype(to_dtype(x, DType::bf16), DType::f64).to_vector<double>();
  int64_t bad_h = 0, bad_b = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    if (h[i] != round_to_format(values[i], kHalf) && bad_h++ == 0)
      FAIL_CHECK("f16 of ", values[i], " is ", h[i], ", nearest is ", round_to_format(values[i], kHalf));
    if (b[i] != round_to_format(values[i], kBF16) && bad_b++ == 0)
      FAIL_CHECK("bf16 of ", values[i], " is ", b[i], ", nearest is ", round_to_format(values[i], kBF16));
  }
  CHECK(bad_h == 0);
  CHECK(bad_b == 0);
}
