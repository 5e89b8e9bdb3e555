#pragma once
// CRC32C (Castagnoli polynomial, the one iSCSI, ext4 and Google's crc32c library use), computed
// incrementally. Checkpoints use it twice: over the whole file and over their decoded contents.
// The x86 CRC32 instruction is used when the CPU has it; the table version gives the same values.
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace scanline {

class Crc32c {
 public:
  Crc32c& update(const void* data, size_t size);
  Crc32c& update(std::string_view text) { return update(text.data(), text.size()); }
  // Fixed-width little-endian integers, so the value does not depend on the host's byte order.
  Crc32c& update_u64(uint64_t value);
  uint32_t value() const { return ~state_; }

 private:
  uint32_t state_ = 0xFFFFFFFFu;
};

uint32_t crc32c(const void* data, size_t size);

namespace detail {
// The portable table-driven path, exposed so tests can compare it with the hardware one.
uint32_t crc32c_update_portable(uint32_t state, const unsigned char* data, size_t size);
}  // namespace detail

}  // namespace scanline
