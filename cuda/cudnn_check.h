#pragma once
// cuDNN backend-API helpers (only for files compiled when SCANLINE_HAVE_CUDNN is defined):
// CUDNN_CHECK for plain calls, and BackendDescriptor, an owning handle on a
// cudnnBackendDescriptor_t whose setters and finalize() throw scanline::Error naming the
// descriptor (a node of a graph: "attention forward: S = Q·Kᵀ"), the attribute, the cuDNN status
// and cuDNN's last error string (cudnnGetLastErrorString, which says which check failed).
#if __has_include(<cudnn_graph.h>)
#include <cudnn_graph.h>
#else
#include <cudnn_graph_v9.h>
#endif

#include <string>
#include <utility>
#include <vector>

#include "core/error.h"

namespace scanline::cuda {

// cuDNN's last error message on this thread ("" when it has none).
inline std::string cudnn_last_error() {
  char message[2048] = {0};
  cudnnGetLastErrorString(message, sizeof(message));
  return message;
}

// "CUDNN_STATUS_BAD_PARAM (cuDNN: <last error>)".
inline std::string cudnn_status_text(cudnnStatus_t status) {
  std::string text = cudnnGetErrorString(status);
  const std::string last = cudnn_last_error();
  if (!last.empty()) text += " (cuDNN says: " + last + ")";
  return text;
}

}  // namespace scanline::cuda

#define CUDNN_CHECK(call)                                                                         \
  do {                                                                                            \
    cudnnStatus_t status_ = (call);                                                               \
    SCANLINE_CHECK(status_ == CUDNN_STATUS_SUCCESS, "cuDNN error in ", #call, ": ",               \
                   ::scanline::cuda::cudnn_status_text(status_));                                 \
  } while (0)

namespace scanline::cuda {

class BackendDescriptor {
 public:
  BackendDescriptor() = default;
  BackendDescriptor(cudnnBackendDescriptorType_t type, const char* type_name, std::string what)
      : what_(std::move(what)), type_name_(type_name) {
    const cudnnStatus_t status = cudnnBackendCreateDescriptor(type, &desc_);
    SCANLINE_CHECK(status == CUDNN_STATUS_SUCCESS, "cuDNN: cudnnBackendCreateDescriptor(", type_name_, ") for ",
                   what_, " failed: ", cudnn_status_text(status));
  }
  ~BackendDescriptor() {
    if (desc_) cudnnBackendDestroyDescriptor(desc_);
  }
  BackendDescriptor(BackendDescriptor&& other) noexcept
      : desc_(std::exchange(other.desc_, nullptr)), what_(std::move(other.what_)), type_name_(other.type_name_) {}
  BackendDescriptor& operator=(BackendDescriptor&& other) noexcept {
    if (this != &other) {
      if (desc_) cudnnBackendDestroyDescriptor(desc_);
      desc_ = std::exchange(other.desc_, nullptr);
      what_ = std::move(other.what_);
      type_name_ = other.type_name_;
    }
    return *this;
  }
  BackendDescriptor(const BackendDescriptor&) = delete;
  BackendDescriptor& operator=(const BackendDescriptor&) = delete;

  cudnnBackendDescriptor_t get() const { return desc_; }
  const std::string& what() const { return what_; }

  // cudnnBackendSetAttribute; attr_name is the attribute's enum name for messages.
  void set(cudnnBackendAttributeName_t attr, const char* attr_name, cudnnBackendAttributeType_t type, int64_t count,
           const void* values) {
    const cudnnStatus_t status = cudnnBackendSetAttribute(desc_, attr, type, count, values);
    SCANLINE_CHECK(status == CUDNN_STATUS_SUCCESS, "cuDNN: setting ", attr_name, " on ", what_, " (", type_name_,
                   ") failed: ", cudnn_status_text(status));
  }
  void set_int64(cudnnBackendAttributeName_t attr, const char* name, int64_t value) {
    set(attr, name, CUDNN_TYPE_INT64, 1, &value);
  }
  void set_int64s(cudnnBackendAttributeName_t attr, const char* name, const std::vector<int64_t>& values) {
    set(attr, name, CUDNN_TYPE_INT64, int64_t(values.size()), values.data());
  }
  void set_bool(cudnnBackendAttributeName_t attr, const char* name, bool value) {
    set(attr, name, CUDNN_TYPE_BOOLEAN, 1, &value);
  }
  void set_data_type(cudnnBackendAttributeName_t attr, const char* name, cudnnDataType_t value) {
    set(attr, name, CUDNN_TYPE_DATA_TYPE, 1, &value);
  }
  void set_desc(cudnnBackendAttributeName_t attr, const char* name, cudnnBackendDescriptor_t value) {
    set(attr, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &value);
  }
  void set_descs(cudnnBackendAttributeName_t attr, const char* name, const std::vector<cudnnBackendDescriptor_t>& v) {
    set(attr, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, int64_t(v.size()), v.data());
  }
  void set_handle(cudnnBackendAttributeName_t attr, const char* name, cudnnHandle_t handle) {
    set(attr, name, CUDNN_TYPE_HANDLE, 1, &handle);
  }

  void finalize() {
    const cudnnStatus_t status = cudnnBackendFinalize(desc_);
    SCANLINE_CHECK(status == CUDNN_STATUS_SUCCESS, "cuDNN: finalizing ", what_, " (", type_name_,
                   ") failed: ", cudnn_status_text(status));
  }
  // finalize() without throwing: the status (for trying engine configs one after another).
  cudnnStatus_t try_finalize() { return cudnnBackendFinalize(desc_); }

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
  std::string what_;
  const char* type_name_ = "";
};

}  // namespace scanline::cuda

// BackendDescriptor(CUDNN_DESC(CUDNN_BACKEND_TENSOR_DESCRIPTOR), "Q") and d.set_int64(CUDNN_ATTR(X), v):
// the enum and its name for messages.
#define CUDNN_DESC(type) type, #type
#define CUDNN_ATTR(attr) attr, #attr
