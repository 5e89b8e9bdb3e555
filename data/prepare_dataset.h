#pragma once
// Text files -> a byte-level token dataset (what `scanline prepare` runs): the files' bytes are
// concatenated in the order given, with nothing in between, and written as one dataset.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace scanline {

struct PrepareSummary {
  int64_t num_tokens = 0;
  std::vector<int64_t> tokens_per_file;  // in input order
};

// Throws a scanline::Error naming the file when an input cannot be read, when the inputs hold no
// bytes at all, or when the output cannot be written. `on_file` (optional) hears each finished
// input with its token count.
PrepareSummary prepare_byte_dataset(const std::vector<std::string>& inputs, const std::string& out,
                                    double val_fraction,
                                    const std::function<void(const std::string&, int64_t)>& on_file = {});

}  // namespace scanline
