#include "data/byte_tokenizer.h"

#include "core/error.h"

namespace scanline {

namespace {

template <typename Id>
std::string decode_ids(std::span<const Id> ids) {
  std::string text(ids.size(), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    SCANLINE_CHECK(ids[i] >= 0 && ids[i] < ByteTokenizer::kVocabSize, "ByteTokenizer::decode: token id ",
                   int64_t(ids[i]), " at position ", i, " is outside the byte vocabulary [0, 256)");
    text[i] = char(static_cast<unsigned char>(ids[i]));
  }
  return text;
}

}  // namespace

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(std::span<const int64_t> ids) { return decode_ids(ids); }
std::string ByteTokenizer::decode(std::span<const int32_t> ids) { return decode_ids(ids); }

}  // namespace scanline
