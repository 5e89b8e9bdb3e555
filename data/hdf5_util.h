#pragma once
// Small helpers over the HDF5 C API for data/ (and anyone else writing scanline's HDF5 files):
// an owning handle, a guard that keeps HDF5's own error stack off stderr (we throw scanline::Error
// with a message instead), attribute reads and writes, and the atomic-rename finish.
#include <hdf5.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace scanline::h5 {

// Owns one HDF5 identifier (file, group, dataset, dataspace, datatype, property list, attribute)
// and closes it with the matching H5?close.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  ~Handle() { reset(); }
  Handle(Handle&& other) noexcept : id_(other.id_) { other.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& other) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  // Closes now and reports whether HDF5 accepted it (a file close flushes: it can fail).
  bool close();
  void reset() { (void)close(); }

 private:
  hid_t id_ = H5I_INVALID_HID;
};

// While alive, HDF5 prints nothing on failure (the calling thread's automatic error printing is
// switched off and restored afterwards).
class QuietErrors {
 public:
  QuietErrors();
  ~QuietErrors();
  QuietErrors(const QuietErrors&) = delete;
  QuietErrors& operator=(const QuietErrors&) = delete;

 private:
  H5E_auto2_t saved_func_ = nullptr;
  void* saved_data_ = nullptr;
};

// Attributes on any object (file, group, dataset). Strings are variable-length UTF-8, which h5py
// reads as str. `where` names the file in error messages.
void write_attr(hid_t object, const char* name, int64_t value);
void write_attr(hid_t object, const char* name, double value);
void write_attr(hid_t object, const char* name, const std::string& value);
void write_attr(hid_t object, const char* name, const std::vector<std::string>& values);

bool has_attr(hid_t object, const char* name);
// Each throws naming `where` and the attribute when it is missing or of another kind.
int64_t read_int_attr(hid_t object, const char* name, const std::string& where);
double read_double_attr(hid_t object, const char* name, const std::string& where);
std::string read_string_attr(hid_t object, const char* name, const std::string& where);
std::vector<std::string> read_string_array_attr(hid_t object, const char* name, const std::string& where);

// Readable name of an HDF5 datatype for messages: "uint16", "int64", "float32", "string", ...
std::string describe_type(hid_t type);

// Makes a closed temporary file durable and moves it over `path` in one step: fsync the file,
// rename, fsync the directory. A reader sees the old file or the new one, never a partial one.
void commit_file(const std::string& tmp_path, const std::string& path);
// "<path>.tmp.<pid>": beside the target, so the rename stays within one filesystem.
std::string temporary_path(const std::string& path);

}  // namespace scanline::h5
