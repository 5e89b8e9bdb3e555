#pragma once
// Token datasets: one HDF5 file per corpus, written by `scanline prepare` and read by the window
// loader. Layout (format version 1; readable with h5py):
//
//   /tokens            1-D, chunked (64 Ki tokens), shuffle + deflate; uint16 when vocab_size <=
//                      65536 (every byte-level dataset), int32 otherwise. Reading accepts exactly
//                      these two dtypes.
//   attributes of "/": format = "scanline-tokens", format_version = 1 (int64),
//                      tokenizer = "bytes" (str), vocab_size (int64), num_tokens (int64, equals
//                      the length of /tokens), source_files (1-D str array, in input order),
//                      val_fraction (float64: the split `prepare` was asked for, informational;
//                      the run's data.val_fraction decides the split used).
//
// Train/validation split: the LAST floor(val_fraction * num_tokens) tokens are validation, the
// rest is training (a contiguous tail, so no window straddles text from both when it fits inside
// one range). Files are written to "<out>.tmp.<pid>", flushed and renamed over <out>.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace scanline {

struct TokenDatasetMeta {
  std::string tokenizer = "bytes";
  int64_t vocab_size = 256;
  std::vector<std::string> source_files;
  double val_fraction = 0.01;
};

// Streams tokens into a new dataset file. Nothing appears at `path` until finish(); a writer
// destroyed before finish() removes its temporary file.
class TokenDatasetWriter {
 public:
  static constexpr int64_t kChunkTokens = 1 << 16;

  TokenDatasetWriter(const std::string& path, TokenDatasetMeta meta);
  ~TokenDatasetWriter();
  TokenDatasetWriter(const TokenDatasetWriter&) = delete;
  TokenDatasetWriter& operator=(const TokenDatasetWriter&) = delete;

  // Appends tokens; each must lie in [0, vocab_size).
  void append(std::span<const int32_t> tokens);
  // Writes the attributes, closes the file and renames it into place.
  void finish();
  int64_t num_tokens() const { return num_tokens_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  TokenDatasetMeta meta_;
  int64_t num_tokens_ = 0;
};

// One-shot form of the writer.
void write_token_dataset(const std::string& path, std::span<const int32_t> tokens, const TokenDatasetMeta& meta);

enum class Split { train, val };
const char* split_name(Split split);

// Half-open token range [begin, end) of the dataset.
struct TokenRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

// The split of a dataset of num_tokens tokens (see the header comment); val_fraction in [0, 1).
TokenRange split_range(int64_t num_tokens, Split split, double val_fraction);

// An open, validated dataset file. Opening checks everything a training run relies on, so a bad
// file fails before any work, with a message naming the file: missing, not HDF5, no /tokens,
// /tokens not 1-D or of another dtype, missing or inconsistent attributes, and any token outside
// [0, vocab_size) (a full pass over the tokens, in blocks).
class TokenDataset {
 public:
  static constexpr int64_t kFormatVersion = 1;

  explicit TokenDataset(const std::string& path);
  ~TokenDataset();
  TokenDataset(TokenDataset&&) noexcept;
  TokenDataset& operator=(TokenDataset&&) noexcept;

  const std::string& path() const { return path_; }
  int64_t size() const { return num_tokens_; }
  int64_t vocab_size() const { return vocab_size_; }
  const std::string& tokenizer() const { return tokenizer_; }
  const std::vector<std::string>& source_files() const { return source_files_; }
  double val_fraction() const { return val_fraction_; }  // as recorded by prepare
  int64_t format_version() const { return format_version_; }
  const std::string& stored_dtype() const { return stored_dtype_; }  // "uint16" or "int32"
  TokenRange split(Split which, double val_fraction) const { return split_range(num_tokens_, which, val_fraction); }

  // Tokens [start, start + count) into out (count values): one hyperslab read, through a chunk
  // cache sized for random windows. Concurrent calls are serialized by libhdf5 when it is built
  // thread-safe (Debian's is); with another build, keep one dataset per thread.
  void read(int64_t start, int64_t count, int64_t* out) const;
  std::vector<int64_t> read(int64_t start, int64_t count) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
  int64_t num_tokens_ = 0;
  int64_t vocab_size_ = 0;
  int64_t format_version_ = 0;
  double val_fraction_ = 0;
  std::string tokenizer_;
  std::string stored_dtype_;
  std::vector<std::string> source_files_;
};

}  // namespace scanline
