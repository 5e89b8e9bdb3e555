#include "trainer/checksum.h"

#include <array>
#include <bit>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define SCANLINE_CRC32C_X86 1
#endif

namespace scanline {

namespace {

constexpr uint32_t kPolynomial = 0x82F63B78u;  // Castagnoli, bit-reversed

// Slicing-by-8 tables: tables[k][b] is the CRC of byte b followed by k zero bytes.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables make_tables() {
  Tables t{};
  for (uint32_t b = 0; b < 256; ++b) {
    uint32_t crc = b;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1u) ? kPolynomial : 0u);
    t[0][b] = crc;
  }
  for (size_t k = 1; k < 8; ++k)
    for (size_t b = 0; b < 256; ++b) t[k][b] = (t[k - 1][b] >> 8) ^ t[0][t[k - 1][b] & 0xFFu];
  return t;
}

constexpr Tables kTables = make_tables();

uint64_t load_le64(const unsigned char* p) {
  uint64_t word;
  std::memcpy(&word, p, 8);
  if constexpr (std::endian::native == std::endian::big) word = __builtin_bswap64(word);
  return word;
}

#ifdef SCANLINE_CRC32C_X86
__attribute__((target("sse4.2"))) uint32_t update_x86(uint32_t state, const unsigned char* data, size_t size) {
  uint64_t crc = state;
  for (; size >= 8; data += 8, size -= 8) crc = _mm_crc32_u64(crc, load_le64(data));
  uint32_t crc32 = uint32_t(crc);
  for (; size > 0; ++data, --size) crc32 = _mm_crc32_u8(crc32, *data);
  return crc32;
}

bool have_x86_crc() {
  static const bool have = __builtin_cpu_supports("sse4.2");
  return have;
}
#endif

}  // namespace

namespace detail {

uint32_t crc32c_update_portable(uint32_t state, const unsigned char* data, size_t size) {
  const Tables& t = kTables;
  for (; size >= 8; data += 8, size -= 8) {
    uint64_t w = load_le64(data) ^ state;
    state = t[7][w & 0xFF] ^ t[6][(w >> 8) & 0xFF] ^ t[5][(w >> 16) & 0xFF] ^ t[4][(w >> 24) & 0xFF] ^
            t[3][(w >> 32) & 0xFF] ^ t[2][(w >> 40) & 0xFF] ^ t[1][(w >> 48) & 0xFF] ^ t[0][w >> 56];
  }
  for (; size > 0; ++data, --size) state = (state >> 8) ^ t[0][(state ^ *data) & 0xFFu];
  return state;
}

}  // namespace detail

Crc32c& Crc32c::update(const void* data, size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(data);
#ifdef SCANLINE_CRC32C_X86
  if (have_x86_crc()) {
    state_ = update_x86(state_, bytes, size);
    return *this;
  }
#endif
  state_ = detail::crc32c_update_portable(state_, bytes, size);
  return *this;
}

Crc32c& Crc32c::update_u64(uint64_t value) {
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(value >> (8 * i));
  return update(bytes, 8);
}

uint32_t crc32c(const void* data, size_t size) { return Crc32c().update(data, size).value(); }

}  // namespace scanline
