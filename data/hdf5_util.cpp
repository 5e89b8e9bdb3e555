#include "data/hdf5_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace scanline::h5 {

namespace {

// A variable-length UTF-8 string type (what h5py writes for str).
Handle vlen_string_type() {
  Handle type(H5Tcopy(H5T_C_S1));
  SCANLINE_CHECK(type.valid() && H5Tset_size(type.get(), H5T_VARIABLE) >= 0 &&
                     H5Tset_cset(type.get(), H5T_CSET_UTF8) >= 0,
                 "HDF5: cannot make a string type");
  return type;
}

// Creates (replacing any old one) attribute `name` of `type` over `space` and writes `buffer`.
void write_raw_attr(hid_t object, const char* name, hid_t file_type, hid_t mem_type, hid_t space,
                    const void* buffer) {
  if (H5Aexists(object, name) > 0) H5Adelete(object, name);
  Handle attr(H5Acreate2(object, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT));
  SCANLINE_CHECK(attr.valid(), "HDF5: cannot create attribute '", name, "'");
  SCANLINE_CHECK(H5Awrite(attr.get(), mem_type, buffer) >= 0, "HDF5: cannot write attribute '", name, "'");
  SCANLINE_CHECK(attr.close(), "HDF5: cannot close attribute '", name, "'");
}

Handle open_attr(hid_t object, const char* name, const std::string& where) {
  SCANLINE_CHECK(H5Aexists(object, name) > 0, where, ": missing attribute '", name, "'");
  Handle attr(H5Aopen(object, name, H5P_DEFAULT));
  SCANLINE_CHECK(attr.valid(), where, ": cannot open attribute '", name, "'");
  return attr;
}

int64_t attr_points(const Handle& attr) {
  Handle space(H5Aget_space(attr.get()));
  return space.valid() ? int64_t(H5Sget_simple_extent_npoints(space.get())) : -1;
}

// Reads a string attribute's values, variable-length or fixed-length.
std::vector<std::string> read_strings(hid_t object, const char* name, const std::string& where, bool scalar) {
  Handle attr = open_attr(object, name, where);
  Handle type(H5Aget_type(attr.get()));
  SCANLINE_CHECK(H5Tget_class(type.get()) == H5T_STRING, where, ": attribute '", name,
                 "' should be a string but is ", describe_type(type.get()));
  int64_t n = attr_points(attr);
  SCANLINE_CHECK(n >= 0 && (!scalar || n == 1), where, ": attribute '", name, "' should hold ",
                 scalar ? "one string" : "a string array", " but holds ", n, " values");
  std::vector<std::string> out;
  if (n == 0) return out;
  if (H5Tis_variable_str(type.get()) > 0) {
    Handle mem = vlen_string_type();
    std::vector<char*> ptrs(size_t(n), nullptr);
    SCANLINE_CHECK(H5Aread(attr.get(), mem.get(), ptrs.data()) >= 0, where, ": cannot read attribute '", name, "'");
    for (char* p : ptrs) {
      out.emplace_back(p ? p : "");
      if (p) H5free_memory(p);
    }
  } else {
    size_t size = H5Tget_size(type.get());
    // Read the stored bytes as they are (h5py pads with NULs, C writers may terminate with one).
    Handle mem(H5Tcopy(type.get()));
    H5Tset_strpad(mem.get(), H5T_STR_NULLPAD);
    std::vector<char> buffer(size * size_t(n));
    SCANLINE_CHECK(H5Aread(attr.get(), mem.get(), buffer.data()) >= 0, where, ": cannot read attribute '", name, "'");
    for (int64_t i = 0; i < n; ++i) {
      const char* begin = buffer.data() + size_t(i) * size;
      out.emplace_back(begin, strnlen(begin, size));  // fixed strings may be NUL-padded
    }
  }
  return out;
}

void fsync_path(const std::string& path, int flags, const std::string& what) {
  int fd = ::open(path.c_str(), flags);
  SCANLINE_CHECK(fd >= 0, "cannot open ", what, " '", path, "' to flush it: ", std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  SCANLINE_CHECK(rc == 0, "cannot flush ", what, " '", path, "' to disk: ", std::strerror(err));
}

}  // namespace

Handle& Handle::operator=(Handle&& other) noexcept {
  if (this != &other) {
    reset();
    id_ = other.id_;
    other.id_ = H5I_INVALID_HID;
  }
  return *this;
}

bool Handle::close() {
  if (id_ < 0) return true;
  herr_t rc;
  switch (H5Iget_type(id_)) {
    case H5I_FILE: rc = H5Fclose(id_); break;
    case H5I_GROUP: rc = H5Gclose(id_); break;
    case H5I_DATASET: rc = H5Dclose(id_); break;
    case H5I_DATASPACE: rc = H5Sclose(id_); break;
    case H5I_DATATYPE: rc = H5Tclose(id_); break;
    case H5I_GENPROP_LST: rc = H5Pclose(id_); break;
    case H5I_ATTR: rc = H5Aclose(id_); break;
    default: rc = H5Idec_ref(id_) < 0 ? -1 : 0; break;
  }
  id_ = H5I_INVALID_HID;
  return rc >= 0;
}

QuietErrors::QuietErrors() {
  H5Eget_auto2(H5E_DEFAULT, &saved_func_, &saved_data_);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
}

QuietErrors::~QuietErrors() { H5Eset_auto2(H5E_DEFAULT, saved_func_, saved_data_); }

void write_attr(hid_t object, const char* name, int64_t value) {
  Handle space(H5Screate(H5S_SCALAR));
  write_raw_attr(object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, space.get(), &value);
}

void write_attr(hid_t object, const char* name, double value) {
  Handle space(H5Screate(H5S_SCALAR));
  write_raw_attr(object, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, space.get(), &value);
}

void write_attr(hid_t object, const char* name, const std::string& value) {
  Handle space(H5Screate(H5S_SCALAR));
  Handle type = vlen_string_type();
  const char* ptr = value.c_str();
  write_raw_attr(object, name, type.get(), type.get(), space.get(), &ptr);
}

void write_attr(hid_t object, const char* name, const std::vector<std::string>& values) {
  hsize_t n = values.size();
  Handle space(H5Screate_simple(1, &n, nullptr));
  Handle type = vlen_string_type();
  std::vector<const char*> ptrs;
  for (const std::string& v : values) ptrs.push_back(v.c_str());
  const char* none = "";
  write_raw_attr(object, name, type.get(), type.get(), space.get(), ptrs.empty() ? &none : ptrs.data());
}

bool has_attr(hid_t object, const char* name) { return H5Aexists(object, name) > 0; }

int64_t read_int_attr(hid_t object, const char* name, const std::string& where) {
  Handle attr = open_attr(object, name, where);
  Handle type(H5Aget_type(attr.get()));
  SCANLINE_CHECK(H5Tget_class(type.get()) == H5T_INTEGER && attr_points(attr) == 1, where, ": attribute '", name,
                 "' should be one integer but is ", describe_type(type.get()), " with ", attr_points(attr), " values");
  int64_t value = 0;
  SCANLINE_CHECK(H5Aread(attr.get(), H5T_NATIVE_INT64, &value) >= 0, where, ": cannot read attribute '", name, "'");
  return value;
}

double read_double_attr(hid_t object, const char* name, const std::string& where) {
  Handle attr = open_attr(object, name, where);
  Handle type(H5Aget_type(attr.get()));
  H5T_class_t cls = H5Tget_class(type.get());
  SCANLINE_CHECK((cls == H5T_FLOAT || cls == H5T_INTEGER) && attr_points(attr) == 1, where, ": attribute '", name,
                 "' should be one number but is ", describe_type(type.get()), " with ", attr_points(attr), " values");
  double value = 0;
  SCANLINE_CHECK(H5Aread(attr.get(), H5T_NATIVE_DOUBLE, &value) >= 0, where, ": cannot read attribute '", name, "'");
  return value;
}

std::string read_string_attr(hid_t object, const char* name, const std::string& where) {
  return read_strings(object, name, where, true).front();
}

std::vector<std::string> read_string_array_attr(hid_t object, const char* name, const std::string& where) {
  return read_strings(object, name, where, false);
}

std::string describe_type(hid_t type) {
  size_t bits = H5Tget_size(type) * 8;
  switch (H5Tget_class(type)) {
    case H5T_INTEGER:
      return (H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int") + std::to_string(bits);
    case H5T_FLOAT: return "float" + std::to_string(bits);
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    case H5T_ENUM: return "enum";
    default: return "an unsupported HDF5 type (class " + std::to_string(int(H5Tget_class(type))) + ")";
  }
}

void commit_file(const std::string& tmp_path, const std::string& path) {
  fsync_path(tmp_path, O_RDONLY, "file");
  SCANLINE_CHECK(std::rename(tmp_path.c_str(), path.c_str()) == 0, "cannot rename '", tmp_path, "' to '", path,
                 "': ", std::strerror(errno));
  // The rename itself lives in the directory: flush it so a crash cannot undo it.
  std::string dir = std::filesystem::path(path).parent_path().string();
  fsync_path(dir.empty() ? "." : dir, O_RDONLY | O_DIRECTORY, "directory");
}

std::string temporary_path(const std::string& path) {
  return path + ".tmp." + std::to_string(::getpid());
}

}  // namespace scanline::h5
