#pragma once
// The byte-level tokenizer, scanline's default: every byte is its own token (ids 0..255), so any
// file round-trips exactly and no vocabulary file is needed.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace scanline {

class ByteTokenizer {
 public:
  static constexpr int64_t kVocabSize = 256;
  static constexpr std::string_view kName = "bytes";  // the `tokenizer` attribute of a dataset

  // Byte b of `text` becomes token id b (0..255, the byte read as unsigned).
  static std::vector<int32_t> encode(std::string_view text);
  // The inverse; throws naming the position when an id is outside [0, 256).
  static std::string decode(std::span<const int64_t> ids);
  static std::string decode(std::span<const int32_t> ids);
};

}  // namespace scanline
