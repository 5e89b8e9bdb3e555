#include "data/prepare_dataset.h"

#include <fstream>

#include "core/error.h"
#include "data/byte_tokenizer.h"
#include "data/token_dataset.h"

namespace scanline {

PrepareSummary prepare_byte_dataset(const std::vector<std::string>& inputs, const std::string& out,
                                    double val_fraction,
                                    const std::function<void(const std::string&, int64_t)>& on_file) {
  SCANLINE_CHECK(!inputs.empty(), "prepare: no input files");
  TokenDatasetMeta meta{.tokenizer = std::string(ByteTokenizer::kName), .vocab_size = ByteTokenizer::kVocabSize,
                        .source_files = inputs, .val_fraction = val_fraction};
  TokenDatasetWriter writer(out, meta);
  PrepareSummary summary;
  // Blocks of 16 MiB keep memory flat whatever the corpus size.
  std::string block(size_t(16) << 20, '\0');
  for (const std::string& input : inputs) {
    std::ifstream file(input, std::ios::binary);
    SCANLINE_CHECK(file.is_open(), "prepare: cannot open input '", input, "'");
    int64_t before = writer.num_tokens();
    while (file) {
      file.read(block.data(), std::streamsize(block.size()));
      std::streamsize got = file.gcount();
      if (got > 0) writer.append(ByteTokenizer::encode(std::string_view(block.data(), size_t(got))));
    }
    SCANLINE_CHECK(file.eof(), "prepare: reading input '", input, "' failed");
    summary.tokens_per_file.push_back(writer.num_tokens() - before);
    if (on_file) on_file(input, summary.tokens_per_file.back());
  }
  SCANLINE_CHECK(writer.num_tokens() > 0, "prepare: the input files hold no bytes, so there is nothing to write");
  writer.finish();
  summary.num_tokens = writer.num_tokens();
  return summary;
}

}  // namespace scanline
