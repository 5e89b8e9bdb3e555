#include "data/token_dataset.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"
#include "data/hdf5_util.h"

namespace scanline {

namespace fs = std::filesystem;
using h5::Handle;

namespace {

constexpr const char* kFormatName = "scanline-tokens";
constexpr int64_t kScanBlock = 1 << 20;  // tokens per block of the open-time range check
// Chunk cache of the reader: 64 MiB holds 512 chunks of 64 Ki uint16 tokens, so random windows
// mostly hit decompressed chunks; the slot count is a prime well above the chunk count.
constexpr size_t kCacheBytes = size_t(64) << 20;
constexpr size_t kCacheSlots = 12421;

// The stored type for a vocabulary: uint16 halves the file for every vocab up to 65536.
bool stores_uint16(int64_t vocab_size) { return vocab_size <= 65536; }

// Fails with the OS's reason when `path` cannot be created, before HDF5 gives a vaguer one.
void check_creatable(const std::string& path, const std::string& target) {
  fs::path parent = fs::path(target).parent_path();
  std::error_code ec;
  SCANLINE_CHECK(parent.empty() || fs::is_directory(parent, ec), "cannot write '", target, "': directory '",
                 parent.string(), "' does not exist");
  SCANLINE_CHECK(!fs::is_directory(target, ec), "cannot write '", target, "': it is a directory");
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  SCANLINE_CHECK(fd >= 0, "cannot write '", target, "': creating '", path, "' failed: ", std::strerror(errno));
  ::close(fd);
}

}  // namespace

const char* split_name(Split split) { return split == Split::train ? "train" : "val"; }

TokenRange split_range(int64_t num_tokens, Split split, double val_fraction) {
  SCANLINE_CHECK(std::isfinite(val_fraction) && val_fraction >= 0.0 && val_fraction < 1.0,
                 "split: val_fraction must be in [0, 1) but is ", val_fraction);
  SCANLINE_CHECK(num_tokens >= 0, "split: negative token count ", num_tokens);
  auto n_val = int64_t(std::floor(val_fraction * double(num_tokens)));
  int64_t boundary = num_tokens - n_val;
  return split == Split::train ? TokenRange{0, boundary} : TokenRange{boundary, num_tokens};
}

// ---------------------------------------------------------------------------------------------
// Writer

struct TokenDatasetWriter::Impl {
  std::string tmp_path;
  Handle file;
  Handle dataset;
  bool finished = false;
};

TokenDatasetWriter::TokenDatasetWriter(const std::string& path, TokenDatasetMeta meta)
    : impl_(std::make_unique<Impl>()), path_(path), meta_(std::move(meta)) {
  SCANLINE_CHECK(!meta_.tokenizer.empty(), "token dataset '", path, "': the tokenizer name is empty");
  SCANLINE_CHECK(meta_.vocab_size >= 1 && meta_.vocab_size <= INT32_MAX, "token dataset '", path,
                 "': vocab_size must be in [1, 2^31 - 1] but is ", meta_.vocab_size);
  (void)split_range(0, Split::train, meta_.val_fraction);  // validates val_fraction
  h5::QuietErrors quiet;
  impl_->tmp_path = h5::temporary_path(path);
  check_creatable(impl_->tmp_path, path);
  impl_->file = Handle(H5Fcreate(impl_->tmp_path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  if (!impl_->file.valid()) {
    ::unlink(impl_->tmp_path.c_str());
    SCANLINE_FAIL("cannot write '", path, "': HDF5 could not create '", impl_->tmp_path, "'");
  }

  // Growable 1-D dataset in fixed chunks; shuffle groups the bytes of each token so deflate
  // sees the (mostly zero) high bytes together.
  hsize_t dims = 0, maxdims = H5S_UNLIMITED, chunk = kChunkTokens;
  Handle space(H5Screate_simple(1, &dims, &maxdims));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  SCANLINE_CHECK(H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0, "token dataset: this HDF5 library has no deflate filter");
  SCANLINE_CHECK(H5Pset_chunk(dcpl.get(), 1, &chunk) >= 0 && H5Pset_shuffle(dcpl.get()) >= 0 &&
                     H5Pset_deflate(dcpl.get(), 6) >= 0,
                 "token dataset: cannot set up chunking and compression");
  hid_t file_type = stores_uint16(meta_.vocab_size) ? H5T_STD_U16LE : H5T_STD_I32LE;
  impl_->dataset = Handle(H5Dcreate2(impl_->file.get(), "tokens", file_type, space.get(), H5P_DEFAULT, dcpl.get(),
                                     H5P_DEFAULT));
  SCANLINE_CHECK(impl_->dataset.valid(), "cannot write '", path, "': creating /tokens failed");
}

TokenDatasetWriter::~TokenDatasetWriter() {
  if (impl_ && !impl_->finished) {
    h5::QuietErrors quiet;
    impl_->dataset.reset();
    impl_->file.reset();
    if (!impl_->tmp_path.empty()) ::unlink(impl_->tmp_path.c_str());
  }
}

void TokenDatasetWriter::append(std::span<const int32_t> tokens) {
  SCANLINE_CHECK(!impl_->finished, "token dataset '", path_, "': append after finish");
  if (tokens.empty()) return;
  h5::QuietErrors quiet;
  bool narrow = stores_uint16(meta_.vocab_size);
  std::vector<uint16_t> narrow_tokens(narrow ? tokens.size() : 0);
  for (size_t i = 0; i < tokens.size(); ++i) {
    SCANLINE_CHECK(tokens[i] >= 0 && tokens[i] < meta_.vocab_size, "token dataset '", path_, "': token ", tokens[i],
                   " at index ", num_tokens_ + int64_t(i), " is outside the vocabulary [0, ", meta_.vocab_size, ")");
    if (narrow) narrow_tokens[i] = uint16_t(tokens[i]);
  }
  hsize_t start = hsize_t(num_tokens_), count = tokens.size(), new_size = start + count;
  SCANLINE_CHECK(H5Dset_extent(impl_->dataset.get(), &new_size) >= 0, "token dataset '", path_,
                 "': cannot grow /tokens to ", new_size, " tokens");
  Handle file_space(H5Dget_space(impl_->dataset.get()));
  Handle mem_space(H5Screate_simple(1, &count, nullptr));
  SCANLINE_CHECK(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &count, nullptr) >= 0,
                 "token dataset: cannot select the appended range");
  herr_t rc = narrow ? H5Dwrite(impl_->dataset.get(), H5T_NATIVE_UINT16, mem_space.get(), file_space.get(),
                                H5P_DEFAULT, narrow_tokens.data())
                     : H5Dwrite(impl_->dataset.get(), H5T_NATIVE_INT32, mem_space.get(), file_space.get(),
                                H5P_DEFAULT, tokens.data());
  SCANLINE_CHECK(rc >= 0, "token dataset '", path_, "': writing ", count, " tokens failed (disk full?)");
  num_tokens_ = int64_t(new_size);
}

void TokenDatasetWriter::finish() {
  SCANLINE_CHECK(!impl_->finished, "token dataset '", path_, "': finish called twice");
  {
    h5::QuietErrors quiet;
    Handle root(H5Gopen2(impl_->file.get(), "/", H5P_DEFAULT));
    SCANLINE_CHECK(root.valid(), "token dataset '", path_, "': cannot open the root group");
    h5::write_attr(root.get(), "format", std::string(kFormatName));
    h5::write_attr(root.get(), "format_version", TokenDataset::kFormatVersion);
    h5::write_attr(root.get(), "tokenizer", meta_.tokenizer);
    h5::write_attr(root.get(), "vocab_size", meta_.vocab_size);
    h5::write_attr(root.get(), "num_tokens", num_tokens_);
    h5::write_attr(root.get(), "source_files", meta_.source_files);
    h5::write_attr(root.get(), "val_fraction", meta_.val_fraction);
    root.reset();
    SCANLINE_CHECK(impl_->dataset.close() && H5Fflush(impl_->file.get(), H5F_SCOPE_GLOBAL) >= 0 &&
                       impl_->file.close(),
                   "token dataset '", path_, "': flushing '", impl_->tmp_path, "' failed (disk full?)");
  }
  h5::commit_file(impl_->tmp_path, path_);
  impl_->finished = true;
}

void write_token_dataset(const std::string& path, std::span<const int32_t> tokens, const TokenDatasetMeta& meta) {
  TokenDatasetWriter writer(path, meta);
  writer.append(tokens);
  writer.finish();
}

// ---------------------------------------------------------------------------------------------
// Reader

struct TokenDataset::Impl {
  Handle file;
  Handle dataset;
};

TokenDataset::~TokenDataset() = default;
TokenDataset::TokenDataset(TokenDataset&&) noexcept = default;
TokenDataset& TokenDataset::operator=(TokenDataset&&) noexcept = default;

TokenDataset::TokenDataset(const std::string& path) : impl_(std::make_unique<Impl>()), path_(path) {
  const std::string where = "token dataset '" + path + "'";
  std::error_code ec;
  SCANLINE_CHECK(fs::exists(path, ec), where, ": file not found");
  SCANLINE_CHECK(fs::is_regular_file(path, ec), where, ": not a regular file");
  h5::QuietErrors quiet;
  SCANLINE_CHECK(H5Fis_hdf5(path.c_str()) > 0, where, ": not an HDF5 file");
  impl_->file = Handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  SCANLINE_CHECK(impl_->file.valid(), where, ": cannot be opened by HDF5 (corrupt or truncated?)");
  hid_t file = impl_->file.get();

  SCANLINE_CHECK(H5Lexists(file, "tokens", H5P_DEFAULT) > 0, where,
                 ": no /tokens dataset (expected a file written by `scanline prepare`)");
  {
    // H5Oopen + H5Iget_type, not H5Oget_info: its signature differs between HDF5 1.10 and 1.12.
    hid_t object = H5Oopen(file, "tokens", H5P_DEFAULT);
    bool is_dataset = object >= 0 && H5Iget_type(object) == H5I_DATASET;
    if (object >= 0) H5Oclose(object);
    SCANLINE_CHECK(is_dataset, where, ": /tokens is not a dataset");
  }
  Handle dapl(H5Pcreate(H5P_DATASET_ACCESS));
  H5Pset_chunk_cache(dapl.get(), kCacheSlots, kCacheBytes, 1.0);
  impl_->dataset = Handle(H5Dopen2(file, "tokens", dapl.get()));
  SCANLINE_CHECK(impl_->dataset.valid(), where, ": cannot open /tokens");

  Handle space(H5Dget_space(impl_->dataset.get()));
  int rank = H5Sget_simple_extent_ndims(space.get());
  std::vector<hsize_t> dims(size_t(std::max(rank, 0)));
  if (rank > 0) H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  SCANLINE_CHECK(rank == 1, where, ": /tokens must be 1-D but has shape ", std::vector<uint64_t>(dims.begin(), dims.end()));
  Handle type(H5Dget_type(impl_->dataset.get()));
  stored_dtype_ = h5::describe_type(type.get());
  SCANLINE_CHECK(stored_dtype_ == "uint16" || stored_dtype_ == "int32", where, ": /tokens has dtype ", stored_dtype_,
                 "; expected uint16 or int32");

  Handle root(H5Gopen2(file, "/", H5P_DEFAULT));
  hid_t r = root.get();
  if (h5::has_attr(r, "format")) {
    std::string format = h5::read_string_attr(r, "format", where);
    SCANLINE_CHECK(format == kFormatName, where, ": format is '", format, "', expected '", kFormatName, "'");
  }
  format_version_ = h5::read_int_attr(r, "format_version", where);
  SCANLINE_CHECK(format_version_ >= 1 && format_version_ <= kFormatVersion, where, ": format_version ",
                 format_version_, " is not supported (this build reads 1 to ", kFormatVersion, ")");
  tokenizer_ = h5::read_string_attr(r, "tokenizer", where);
  vocab_size_ = h5::read_int_attr(r, "vocab_size", where);
  int64_t dtype_limit = stored_dtype_ == "uint16" ? 65536 : INT32_MAX;
  SCANLINE_CHECK(vocab_size_ >= 1 && vocab_size_ <= dtype_limit, where, ": vocab_size ", vocab_size_,
                 " does not fit the stored dtype ", stored_dtype_, " (expected 1 to ", dtype_limit, ")");
  num_tokens_ = h5::read_int_attr(r, "num_tokens", where);
  SCANLINE_CHECK(num_tokens_ == int64_t(dims[0]), where, ": the num_tokens attribute says ", num_tokens_,
                 " but /tokens holds ", dims[0], " tokens");
  if (h5::has_attr(r, "source_files")) source_files_ = h5::read_string_array_attr(r, "source_files", where);
  val_fraction_ = h5::has_attr(r, "val_fraction") ? h5::read_double_attr(r, "val_fraction", where) : 0.0;

  // Every token must index the embedding: check them all now rather than fail mid-run.
  std::vector<int64_t> block;
  for (int64_t start = 0; start < num_tokens_; start += kScanBlock) {
    int64_t count = std::min(kScanBlock, num_tokens_ - start);
    block.resize(size_t(count));
    read(start, count, block.data());
    for (int64_t i = 0; i < count; ++i)
      SCANLINE_CHECK(block[size_t(i)] >= 0 && block[size_t(i)] < vocab_size_, where, ": token ", block[size_t(i)],
                     " at index ", start + i, " is outside the vocabulary [0, ", vocab_size_, ")");
  }
}

void TokenDataset::read(int64_t start, int64_t count, int64_t* out) const {
  SCANLINE_CHECK(start >= 0 && count >= 0 && start <= num_tokens_ - count, "token dataset '", path_,
                 "': cannot read tokens [", start, ", ", start + count, ") of ", num_tokens_);
  if (count == 0) return;
  h5::QuietErrors quiet;
  // A fresh file dataspace per call: the selection lives in it, so concurrent readers never share one.
  Handle file_space(H5Dget_space(impl_->dataset.get()));
  hsize_t offset = hsize_t(start), n = hsize_t(count);
  Handle mem_space(H5Screate_simple(1, &n, nullptr));
  SCANLINE_CHECK(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &offset, nullptr, &n, nullptr) >= 0 &&
                     H5Dread(impl_->dataset.get(), H5T_NATIVE_INT64, mem_space.get(), file_space.get(), H5P_DEFAULT,
                             out) >= 0,
                 "token dataset '", path_, "': reading tokens [", start, ", ", start + count,
                 ") failed (corrupt file?)");
}

std::vector<int64_t> TokenDataset::read(int64_t start, int64_t count) const {
  SCANLINE_CHECK(count >= 0, "token dataset '", path_, "': negative read count ", count);
  std::vector<int64_t> out(static_cast<size_t>(count));
  read(start, count, out.data());
  return out;
}

}  // namespace scanline
