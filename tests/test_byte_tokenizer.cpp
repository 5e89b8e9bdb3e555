// The byte-level tokenizer: every byte value maps to its own id and back, and decode names the
// position of an id outside the byte vocabulary.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "core/error.h"
#include "data/byte_tokenizer.h"

using namespace scanline;

TEST_CASE("every byte value is its own token and round-trips") {
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(char(b));
  std::vector<int32_t> ids = ByteTokenizer::encode(all);
  REQUIRE(ids.size() == 256);
  for (int b = 0; b < 256; ++b) CHECK(ids[size_t(b)] == b);  // bytes >= 128 read as unsigned
  CHECK(ByteTokenizer::decode(ids) == all);
  std::vector<int64_t> wide(ids.begin(), ids.end());
  CHECK(ByteTokenizer::decode(wide) == all);
  CHECK(ByteTokenizer::kVocabSize == 256);
  CHECK(ByteTokenizer::kName == "bytes");
}

TEST_CASE("text, UTF-8 and empty input round-trip") {
  std::string text = "Mamba: selective state spaces \xce\xbb\xe2\x86\x92 \n\t\0 end";
  text += std::string("\0\xff", 2);
  std::vector<int32_t> ids = ByteTokenizer::encode(text);
  CHECK(ids.size() == text.size());
  CHECK(ids[0] == 'M');
  CHECK(ids.back() == 255);
  CHECK(ByteTokenizer::decode(ids) == text);
  CHECK(ByteTokenizer::encode("").empty());
  CHECK(ByteTokenizer::decode(std::vector<int64_t>{}).empty());
}

TEST_CASE("decode rejects ids outside [0, 256) naming the position") {
  CHECK_THROWS_WITH_AS(ByteTokenizer::decode(std::vector<int64_t>{104, 105, 256}),
                       doctest::Contains("token id 256 at position 2 is outside the byte vocabulary [0, 256)"), Error);
  CHECK_THROWS_WITH_AS(ByteTokenizer::decode(std::vector<int32_t>{-1}),
                       doctest::Contains("token id -1 at position 0"), Error);
}
