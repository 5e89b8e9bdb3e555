#include "trainer/checkpoint.h"

#include <fcntl.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "data/hdf5_util.h"
#include "trainer/checksum.h"

namespace scanline {

// Tensor bytes are hashed as they sit in memory; the checksum is defined over little-endian bytes.
static_assert(std::endian::native == std::endian::little, "checkpoints assume a little-endian host");

CheckpointError::CheckpointError(const std::string& path, const std::string& problem)
    : Error("checkpoint '" + path + "': " + problem), path_(path), problem_(problem) {}

namespace {

namespace fs = std::filesystem;
using h5::Handle;

constexpr const char* kFormat = "scanline-checkpoint";
constexpr int64_t kFormatVersion = 1;

// The HDF5 userblock (bytes the library reserves and ignores) holds our header: magic, version,
// a CRC32C of every byte after the header (rest of the userblock included), the file's size, and
// a CRC of the header itself, so every byte of the file is covered. It is checked before HDF5
// sees the file: truncated or corrupt files never reach the library.
constexpr size_t kUserblock = 512;
constexpr char kMagic[8] = {'S', 'L', 'C', 'K', 'P', 'T', '\r', '\n'};
constexpr uint32_t kHeaderVersion = 1;
constexpr size_t kHeaderBytes = 28;  // magic 8, version 4, file crc 4, file size 8, header crc 4

template <typename... Args>
[[noreturn]] void fail(const std::string& path, const Args&... args) {
  throw CheckpointError(path, detail::concat(args...));
}

void put_le(unsigned char* out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out[i] = static_cast<unsigned char>(value >> (8 * i));
}
uint64_t get_le(const unsigned char* in, int bytes) {
  uint64_t value = 0;
  for (int i = 0; i < bytes; ++i) value |= uint64_t(in[i]) << (8 * i);
  return value;
}

// Closes the descriptor on every path out.
struct Fd {
  int fd;
  ~Fd() { if (fd >= 0) ::close(fd); }
};

// CRC32C of bytes [kHeaderBytes, size) of an open file.
uint32_t crc_after_header(int fd, uint64_t size, const std::string& path) {
  std::vector<unsigned char> buffer(size_t(4) << 20);
  Crc32c crc;
  for (uint64_t at = kHeaderBytes; at < size;) {
    ssize_t got = ::pread(fd, buffer.data(), size_t(std::min<uint64_t>(buffer.size(), size - at)), off_t(at));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) fail(path, "read failed at byte ", at, ": ", got < 0 ? std::strerror(errno) : "unexpected end of file");
    crc.update(buffer.data(), size_t(got));
    at += uint64_t(got);
  }
  return crc.value();
}

// Stamps the header into the userblock of a closed, complete file.
void write_header(const std::string& file, const std::string& path) {
  Fd f{::open(file.c_str(), O_RDWR)};
  if (f.fd < 0) fail(path, "cannot reopen '", file, "': ", std::strerror(errno));
  struct stat st{};
  if (::fstat(f.fd, &st) != 0) fail(path, "cannot stat '", file, "': ", std::strerror(errno));
  uint64_t size = uint64_t(st.st_size);
  unsigned char header[kHeaderBytes];
  std::memcpy(header, kMagic, 8);
  put_le(header + 8, kHeaderVersion, 4);
  put_le(header + 12, crc_after_header(f.fd, size, path), 4);
  put_le(header + 16, size, 8);
  put_le(header + 24, crc32c(header, 24), 4);
  if (::pwrite(f.fd, header, kHeaderBytes, 0) != ssize_t(kHeaderBytes))
    fail(path, "cannot write the header of '", file, "': ", std::strerror(errno));
}

// Size, header and whole-file CRC: catches truncation and any flipped byte.
void check_file_bytes(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY)};
  if (f.fd < 0) fail(path, errno == ENOENT ? "file does not exist" : std::string("cannot open: ") + std::strerror(errno));
  struct stat st{};
  if (::fstat(f.fd, &st) != 0) fail(path, "cannot stat: ", std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  uint64_t size = uint64_t(st.st_size);
  if (size < kUserblock) fail(path, "truncated: ", size, " bytes, shorter than the ", kUserblock, "-byte header");
  unsigned char header[kHeaderBytes];
  if (::pread(f.fd, header, kHeaderBytes, 0) != ssize_t(kHeaderBytes)) fail(path, "cannot read the header");
  if (std::memcmp(header, kMagic, 8) != 0) fail(path, "not a scanline checkpoint (bad magic bytes)");
  if (get_le(header + 24, 4) != crc32c(header, 24)) fail(path, "corrupt header (header checksum mismatch)");
  if (get_le(header + 8, 4) != kHeaderVersion)
    fail(path, "unsupported header version ", get_le(header + 8, 4), " (this build reads ", kHeaderVersion, ")");
  uint64_t expected = get_le(header + 16, 8);
  if (size < expected) fail(path, "truncated: ", size, " of ", expected, " bytes");
  if (size > expected) fail(path, "has ", size, " bytes but its header says ", expected, " (trailing data)");
  uint32_t stored = uint32_t(get_le(header + 12, 4));
  uint32_t actual = crc_after_header(f.fd, size, path);
  if (stored != actual) {
    char text[64];
    std::snprintf(text, sizeof text, "stored crc32c %08x, computed %08x", stored, actual);
    fail(path, "corrupt: file checksum mismatch (", text, ")");
  }
}

// dtype -> (type in the file, type in memory). bf16 and f16 are stored as their raw 16-bit
// patterns (uint16) with the dtype attribute telling them apart; HDF5 1.10 has no 16-bit floats.
std::pair<hid_t, hid_t> hdf5_types(DType dtype) {
  switch (dtype) {
    case DType::f64: return {H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE};
    case DType::f32: return {H5T_IEEE_F32LE, H5T_NATIVE_FLOAT};
    case DType::bf16: case DType::f16: return {H5T_STD_U16LE, H5T_NATIVE_UINT16};
    case DType::i64: return {H5T_STD_I64LE, H5T_NATIVE_INT64};
    case DType::i32: return {H5T_STD_I32LE, H5T_NATIVE_INT32};
    case DType::b8: return {H5T_STD_U8LE, H5T_NATIVE_UINT8};
  }
  SCANLINE_FAIL("checkpoint: unknown dtype");
}

// Groups remember the order their members were created in, so tensors load in saved order
// (h5py iterates such groups in that order too). No timestamps: equal contents, equal bytes.
Handle create_group(hid_t parent, const char* name, const std::string& path) {
  Handle gcpl(H5Pcreate(H5P_GROUP_CREATE));
  if (H5Pset_link_creation_order(gcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) < 0 ||
      H5Pset_obj_track_times(gcpl.get(), false) < 0)
    fail(path, "HDF5: cannot set group properties");
  Handle group(H5Gcreate2(parent, name, H5P_DEFAULT, gcpl.get(), H5P_DEFAULT));
  if (!group.valid()) fail(path, "HDF5: cannot create group '", name, "'");
  return group;
}

Handle write_dataset(hid_t parent, const std::string& name, hid_t file_type, hid_t mem_type, const Shape& shape,
                     const void* data, const std::string& path) {
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  Handle space(shape.empty() ? H5Screate(H5S_SCALAR) : H5Screate_simple(int(dims.size()), dims.data(), nullptr));
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE));
  H5Pset_obj_track_times(dcpl.get(), false);
  Handle ds(H5Dcreate2(parent, name.c_str(), file_type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT));
  if (!ds.valid()) fail(path, "HDF5: cannot create dataset '", name, "'");
  if (numel_of(shape) > 0 && H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail(path, "HDF5: cannot write dataset '", name, "'");
  return ds;
}

// Everything the contents checksum covers about one tensor: its path, dtype, shape and bytes.
void hash_tensor(Crc32c& crc, const std::string& where, const Tensor& host) {
  crc.update(where).update("\0", 1).update(dtype_name(host.dtype())).update("\0", 1).update_u64(uint64_t(host.dim()));
  for (int64_t d : host.shape()) crc.update_u64(uint64_t(d));
  if (host.nbytes() > 0) crc.update(host.raw_data(), host.nbytes());
}

void hash_state(Crc32c& crc, const TrainState& s, const std::string& config) {
  crc.update("state").update_u64(uint64_t(s.step)).update_u64(uint64_t(s.tokens_seen)).update_u64(uint64_t(s.world_size));
  crc.update_u64(s.generators.size());
  for (const auto& [name, g] : s.generators) crc.update(name).update("\0", 1).update_u64(g[0]).update_u64(g[1]);
  crc.update_u64(s.loader_position.size());
  for (int64_t p : s.loader_position) crc.update_u64(uint64_t(p));
  crc.update("config").update_u64(config.size()).update(config);
}

std::string checksum_text(uint32_t value) {
  char text[24];
  std::snprintf(text, sizeof text, "crc32c:%08x", value);
  return text;
}

void write_tensor(hid_t group, const std::string& name, const std::string& where, const Tensor& t, Crc32c& crc,
                  const std::string& path) {
  if (!t.defined()) fail(path, "tensor '", where, "' is undefined");
  Tensor host = t.device().is_cpu() ? as_contiguous(t) : contiguous_copy(t, t.dtype(), Device::cpu());
  auto [file_type, mem_type] = hdf5_types(host.dtype());
  Handle ds = write_dataset(group, name, file_type, mem_type, host.shape(), host.raw_data(), path);
  h5::write_attr(ds.get(), "dtype", std::string(dtype_name(host.dtype())));
  hash_tensor(crc, where, host);
}

void check_names(const std::vector<std::string>& names, const char* group, const std::string& path) {
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& n = names[i];
    if (n.empty() || n == "." || n == ".." || n.find('/') != std::string::npos || n.find('\0') != std::string::npos)
      fail(path, "invalid name '", n, "' in ", group, " (names must be non-empty and contain no '/')");
    for (size_t j = 0; j < i; ++j)
      if (names[j] == n) fail(path, "duplicate name '", n, "' in ", group);
  }
}

template <typename Pairs>
std::vector<std::string> names_of(const Pairs& pairs) {
  std::vector<std::string> out;
  for (const auto& entry : pairs) out.push_back(entry.first);
  return out;
}

// Writes every group and dataset; returns the contents checksum.
uint32_t write_contents(hid_t file, const Checkpoint& c, const std::string& path) {
  Crc32c crc;
  Handle model = create_group(file, "model", path);
  for (const auto& [name, t] : c.model) write_tensor(model.get(), name, "/model/" + name, t, crc, path);
  Handle optim = create_group(file, "optim", path);
  for (const auto& [name, mv] : c.optim) {
    Handle group = create_group(optim.get(), name.c_str(), path);
    write_tensor(group.get(), "m", "/optim/" + name + "/m", mv.first, crc, path);
    write_tensor(group.get(), "v", "/optim/" + name + "/v", mv.second, crc, path);
  }
  const TrainState& s = c.state;
  Handle state = create_group(file, "state", path);
  h5::write_attr(state.get(), "step", s.step);
  h5::write_attr(state.get(), "tokens_seen", s.tokens_seen);
  h5::write_attr(state.get(), "world_size", s.world_size);
  write_dataset(state.get(), "loader_position", H5T_STD_I64LE, H5T_NATIVE_INT64,
                {int64_t(s.loader_position.size())}, s.loader_position.data(), path);
  Handle gens = create_group(state.get(), "generators", path);
  for (const auto& [name, g] : s.generators)
    write_dataset(gens.get(), name, H5T_STD_U64LE, H5T_NATIVE_UINT64, {2}, g.data(), path);

  Handle str(H5Tcopy(H5T_C_S1));
  H5Tset_size(str.get(), H5T_VARIABLE);
  H5Tset_cset(str.get(), H5T_CSET_UTF8);
  const char* text = c.config_yaml.c_str();
  write_dataset(file, "config", str.get(), str.get(), {}, &text, path);

  hash_state(crc, s, c.config_yaml);
  return crc.value();
}

// ----- reading -----

std::vector<std::string> member_names(hid_t group, const std::string& where, const std::string& path) {
  H5G_info_t info;
  if (H5Gget_info(group, &info) < 0) fail(path, "cannot list group '", where, "'");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    ssize_t n = H5Lget_name_by_idx(group, ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (n < 0) fail(path, "cannot list group '", where, "' in creation order");
    std::string name(size_t(n) + 1, '\0');
    H5Lget_name_by_idx(group, ".", H5_INDEX_CRT_ORDER, H5_ITER_INC, i, name.data(), name.size(), H5P_DEFAULT);
    name.resize(size_t(n));
    names.push_back(std::move(name));
  }
  return names;
}

Handle open_group(hid_t parent, const char* name, const std::string& where, const std::string& path) {
  if (H5Lexists(parent, name, H5P_DEFAULT) <= 0) fail(path, "missing group '", where, "'");
  Handle group(H5Gopen2(parent, name, H5P_DEFAULT));
  if (!group.valid()) fail(path, "'", where, "' is not a group");
  return group;
}

Handle open_dataset(hid_t parent, const std::string& name, const std::string& where, const std::string& path) {
  if (H5Lexists(parent, name.c_str(), H5P_DEFAULT) <= 0) fail(path, "missing dataset '", where, "'");
  Handle ds(H5Dopen2(parent, name.c_str(), H5P_DEFAULT));
  if (!ds.valid()) fail(path, "'", where, "' is not a dataset");
  return ds;
}

Shape dataset_shape(hid_t ds, const std::string& where, const std::string& path) {
  Handle space(H5Dget_space(ds));
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail(path, "cannot read the shape of '", where, "'");
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return Shape(dims.begin(), dims.end());
}

void check_type(hid_t ds, hid_t expected, const std::string& what, const std::string& where, const std::string& path) {
  Handle type(H5Dget_type(ds));
  if (H5Tequal(type.get(), expected) <= 0)
    fail(path, "bad dtype: '", where, "' is stored as ", h5::describe_type(type.get()), " but ", what, " needs ",
         h5::describe_type(expected));
}

void read_into(hid_t ds, hid_t mem_type, void* out, int64_t numel, const std::string& where, const std::string& path) {
  if (numel > 0 && H5Dread(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    fail(path, "cannot read dataset '", where, "'");
}

Tensor read_tensor(hid_t group, const std::string& name, const std::string& where, Crc32c& crc, const std::string& path) {
  Handle ds = open_dataset(group, name, where, path);
  if (!h5::has_attr(ds.get(), "dtype")) fail(path, "bad dtype: dataset '", where, "' has no 'dtype' attribute");
  std::string dtype_text = h5::read_string_attr(ds.get(), "dtype", where);
  DType dtype;
  try {
    dtype = dtype_from_name(dtype_text);
  } catch (const Error&) {
    fail(path, "bad dtype: dataset '", where, "' has unknown dtype '", dtype_text, "'");
  }
  auto [file_type, mem_type] = hdf5_types(dtype);
  check_type(ds.get(), file_type, std::string("dtype ") + dtype_name(dtype), where, path);
  Tensor t = empty(dataset_shape(ds.get(), where, path), {.dtype = dtype});
  read_into(ds.get(), mem_type, t.raw_data(), t.numel(), where, path);
  hash_tensor(crc, where, t);
  return t;
}

template <typename T>
std::vector<T> read_vector(hid_t group, const std::string& name, hid_t file_type, hid_t mem_type,
                           const std::string& where, const std::string& path) {
  Handle ds = open_dataset(group, name, where, path);
  check_type(ds.get(), file_type, "'" + where + "'", where, path);
  Shape shape = dataset_shape(ds.get(), where, path);
  if (shape.size() != 1) fail(path, "'", where, "' should be one-dimensional but has shape ", shape);
  std::vector<T> values(static_cast<size_t>(shape[0]));
  read_into(ds.get(), mem_type, values.data(), shape[0], where, path);
  return values;
}

std::string read_config(hid_t file, const std::string& path) {
  Handle ds = open_dataset(file, "config", "/config", path);
  Handle type(H5Dget_type(ds.get()));
  if (H5Tget_class(type.get()) != H5T_STRING || H5Tis_variable_str(type.get()) <= 0)
    fail(path, "'/config' should be a variable-length string but is ", h5::describe_type(type.get()));
  if (!dataset_shape(ds.get(), "/config", path).empty()) fail(path, "'/config' should be a scalar string");
  Handle mem(H5Tcopy(H5T_C_S1));
  H5Tset_size(mem.get(), H5T_VARIABLE);
  H5Tset_cset(mem.get(), H5T_CSET_UTF8);
  char* text = nullptr;
  if (H5Dread(ds.get(), mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, &text) < 0) fail(path, "cannot read '/config'");
  std::string out = text ? text : "";
  if (text) H5free_memory(text);
  return out;
}

// keep_tensors = false checks everything but drops each tensor after hashing it.
Checkpoint read_checkpoint(const std::string& path, bool keep_tensors) {
  check_file_bytes(path);
  try {
    h5::QuietErrors quiet;
    Checkpoint c;
    Handle file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    if (!file.valid()) fail(path, "HDF5 cannot open the file");
    std::string format = h5::has_attr(file.get(), "format") ? h5::read_string_attr(file.get(), "format", "/") : "";
    if (format != kFormat) fail(path, "not a scanline checkpoint (root attribute 'format' is '", format, "')");
    int64_t version = h5::read_int_attr(file.get(), "format_version", "/");
    if (version != kFormatVersion)
      fail(path, "unsupported format_version ", version, " (this build reads ", kFormatVersion, ")");

    Crc32c crc;
    Handle model = open_group(file.get(), "model", "/model", path);
    for (const std::string& name : member_names(model.get(), "/model", path)) {
      Tensor t = read_tensor(model.get(), name, "/model/" + name, crc, path);
      c.model.emplace_back(name, keep_tensors ? t : Tensor());
    }
    Handle optim = open_group(file.get(), "optim", "/optim", path);
    for (const std::string& name : member_names(optim.get(), "/optim", path)) {
      std::string where = "/optim/" + name;
      Handle group = open_group(optim.get(), name.c_str(), where, path);
      Tensor m = read_tensor(group.get(), "m", where + "/m", crc, path);
      Tensor v = read_tensor(group.get(), "v", where + "/v", crc, path);
      if (keep_tensors) c.optim.emplace_back(name, std::make_pair(m, v));
    }
    Handle state = open_group(file.get(), "state", "/state", path);
    TrainState& s = c.state;
    s.step = h5::read_int_attr(state.get(), "step", "/state");
    s.tokens_seen = h5::read_int_attr(state.get(), "tokens_seen", "/state");
    s.world_size = h5::read_int_attr(state.get(), "world_size", "/state");
    s.loader_position = read_vector<int64_t>(state.get(), "loader_position", H5T_STD_I64LE, H5T_NATIVE_INT64,
                                             "/state/loader_position", path);
    Handle gens = open_group(state.get(), "generators", "/state/generators", path);
    for (const std::string& name : member_names(gens.get(), "/state/generators", path)) {
      std::string where = "/state/generators/" + name;
      auto g = read_vector<uint64_t>(gens.get(), name, H5T_STD_U64LE, H5T_NATIVE_UINT64, where, path);
      if (g.size() != 2) fail(path, "'", where, "' should hold (seed, offset) but has ", g.size(), " values");
      s.generators.push_back({name, {g[0], g[1]}});
    }
    c.config_yaml = read_config(file.get(), path);
    hash_state(crc, s, c.config_yaml);

    std::string stored = h5::read_string_attr(file.get(), "checksum", "/");
    if (stored != checksum_text(crc.value()))
      fail(path, "contents checksum mismatch (stored ", stored, ", computed ", checksum_text(crc.value()), ")");
    if (!file.close()) fail(path, "HDF5 cannot close the file");
    return c;
  } catch (const CheckpointError&) {
    throw;
  } catch (const Error& e) {  // from the attribute helpers or tensor allocation
    throw CheckpointError(path, e.what());
  }
}

}  // namespace

void save_checkpoint(const std::string& path, const Checkpoint& checkpoint) {
  check_names(names_of(checkpoint.model), "/model", path);
  check_names(names_of(checkpoint.optim), "/optim", path);
  check_names(names_of(checkpoint.state.generators), "/state/generators", path);
  const std::string tmp = h5::temporary_path(path);
  try {
    {
      h5::QuietErrors quiet;
      Handle fcpl(H5Pcreate(H5P_FILE_CREATE));
      Handle fapl(H5Pcreate(H5P_FILE_ACCESS));
      // 1.8 file format: metadata blocks carry checksums and any HDF5 >= 1.8 (and h5py) reads it.
      // The root group gets the same order tracking and (absent) timestamps as every other group.
      if (H5Pset_userblock(fcpl.get(), kUserblock) < 0 || H5Pset_obj_track_times(fcpl.get(), false) < 0 ||
          H5Pset_link_creation_order(fcpl.get(), H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) < 0 ||
          H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_V18) < 0 ||
          H5Pset_fclose_degree(fapl.get(), H5F_CLOSE_SEMI) < 0)
        fail(path, "HDF5: cannot set file properties");
      Handle file(H5Fcreate(tmp.c_str(), H5F_ACC_TRUNC, fcpl.get(), fapl.get()));
      if (!file.valid()) fail(path, "cannot create temporary file '", tmp, "'");
      uint32_t crc = write_contents(file.get(), checkpoint, path);
      h5::write_attr(file.get(), "format", std::string(kFormat));
      h5::write_attr(file.get(), "format_version", kFormatVersion);
      h5::write_attr(file.get(), "checksum", checksum_text(crc));
      if (H5Fflush(file.get(), H5F_SCOPE_GLOBAL) < 0 || !file.close())
        fail(path, "HDF5 cannot flush and close '", tmp, "' (disk full?)");
    }
    write_header(tmp, path);
    h5::commit_file(tmp, path);
  } catch (const CheckpointError&) {
    std::remove(tmp.c_str());
    throw;
  } catch (const Error& e) {
    std::remove(tmp.c_str());
    throw CheckpointError(path, e.what());
  } catch (...) {
    std::remove(tmp.c_str());
    throw;
  }
}

Checkpoint load_checkpoint(const std::string& path) { return read_checkpoint(path, true); }

void verify_checkpoint(const std::string& path) { (void)read_checkpoint(path, false); }

std::string checkpoint_path(const std::string& run_dir, int64_t step) {
  SCANLINE_CHECK(step >= 0, "checkpoint_path: step must be >= 0 but is ", step);
  char name[40];
  std::snprintf(name, sizeof name, "ckpt-%08lld.h5", static_cast<long long>(step));
  return (fs::path(run_dir) / name).string();
}

std::optional<int64_t> checkpoint_step(const std::string& file_name) {
  const std::string_view prefix = "ckpt-", suffix = ".h5";
  std::string_view s = file_name;
  if (s.size() < prefix.size() + 8 + suffix.size() || !s.starts_with(prefix) || !s.ends_with(suffix)) return std::nullopt;
  std::string_view digits = s.substr(prefix.size(), s.size() - prefix.size() - suffix.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) return std::nullopt;
  int64_t step = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), step);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return step;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& run_dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  for (fs::directory_iterator it(run_dir, ec), end; !ec && it != end; it.increment(ec))
    if (auto step = checkpoint_step(it->path().filename().string())) out.emplace_back(*step, it->path().string());
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<std::string> latest_valid_checkpoint(const std::string& run_dir, std::vector<std::string>* warnings) {
  auto all = list_checkpoints(run_dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      verify_checkpoint(it->second);
      return it->second;
    } catch (const CheckpointError& e) {
      if (warnings) warnings->push_back("skipping checkpoint '" + it->second + "': " + e.problem());
    }
  }
  return std::nullopt;
}

std::vector<std::string> prune_checkpoints(const std::string& run_dir, int64_t keep, std::vector<std::string>* warnings) {
  keep = std::max<int64_t>(keep, 1);
  std::vector<std::string> removed;
  auto remove = [&](const std::string& file) {
    std::error_code ec;
    if (fs::remove(file, ec)) removed.push_back(file);
    else if (ec && warnings) warnings->push_back("cannot remove '" + file + "': " + ec.message());
  };
  // Temporary files of saves that never finished ("ckpt-<step>.h5.tmp.<pid>").
  std::error_code ec;
  for (fs::directory_iterator it(run_dir, ec), end; !ec && it != end; it.increment(ec)) {
    std::string name = it->path().filename().string();
    size_t at = name.find(".h5.tmp");
    if (at != std::string::npos && checkpoint_step(name.substr(0, at + 3))) remove(it->path().string());
  }
  auto all = list_checkpoints(run_dir);
  int64_t valid = 0;
  size_t oldest_kept = all.size();
  for (size_t i = all.size(); i-- > 0 && valid < keep;) {
    try {
      verify_checkpoint(all[i].second);
      ++valid;
      oldest_kept = i;
    } catch (const CheckpointError& e) {
      if (warnings) warnings->push_back("not counting invalid checkpoint '" + all[i].second + "': " + e.problem());
    }
  }
  if (valid < keep) return removed;  // everything that exists is still needed
  for (size_t i = 0; i < oldest_kept; ++i) remove(all[i].second);
  return removed;
}

}  // namespace scanline
