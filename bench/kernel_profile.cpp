#include "bench/kernel_profile.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

#include "core/cuda/cuda_check.h"
#include "core/error.h"

#ifdef SCANLINE_HAVE_CUPTI
#include <cupti.h>
#include <cxxabi.h>
#endif

namespace scanline::bench {
namespace {

#ifdef SCANLINE_HAVE_CUPTI

#define CUPTI_CHECK(call)                                                                    \
  do {                                                                                       \
    CUptiResult status_ = (call);                                                            \
    const char* text_ = "?";                                                                 \
    if (status_ != CUPTI_SUCCESS) cuptiGetResultString(status_, &text_);                     \
    SCANLINE_CHECK(status_ == CUPTI_SUCCESS, "CUPTI error in ", #call, ": ", text_);          \
  } while (0)

constexpr size_t kBufferBytes = 8u << 20;
constexpr CUpti_ActivityKind kKinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL, CUPTI_ACTIVITY_KIND_MEMCPY,
                                         CUPTI_ACTIVITY_KIND_MEMSET};

// CUPTI hands records to C callbacks on its own thread: they add into one process-wide table.
struct Records {
  std::mutex mutex;
  std::map<std::string, KernelProfile::Row> by_name;  // raw (mangled) name
  bool registered = false;
  bool recording = false;
};
Records& records() {
  static Records r;
  return r;
}

void add(const std::string& name, uint64_t start, uint64_t end) {
  Records& r = records();
  std::lock_guard<std::mutex> lock(r.mutex);
  KernelProfile::Row& row = r.by_name[name];
  row.total_ms += double(end - start) * 1e-6;
  ++row.count;
}

const char* memcpy_kind(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD: return "[memcpy HtoD]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH: return "[memcpy DtoH]";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD: return "[memcpy DtoD]";
    default: return "[memcpy other]";
  }
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;
}

void CUPTIAPI buffer_completed(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  CUpti_Activity* record = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
    if (record->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || record->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      add(k->name ? k->name : "?", k->start, k->end);
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemcpy6*>(record);
      add(memcpy_kind(m->copyKind), m->start, m->end);
    } else if (record->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      const auto* m = reinterpret_cast<const CUpti_ActivityMemset4*>(record);
      add("[memset]", m->start, m->end);
    }
  }
  std::free(buffer);
}

// Demangled, without the namespaces that every kernel here shares.
std::string readable(const std::string& raw) {
  int status = 0;
  char* d = abi::__cxa_demangle(raw.c_str(), nullptr, nullptr, &status);
  std::string name = status == 0 && d ? d : raw;
  std::free(d);
  for (const std::string drop : {"scanline::", "(anonymous namespace)::", "cuda::", "void "}) {
    for (size_t at = name.find(drop); at != std::string::npos; at = name.find(drop)) name.erase(at, drop.size());
  }
  return name;
}

#endif  // SCANLINE_HAVE_CUPTI

}  // namespace

bool KernelProfile::available() {
#ifdef SCANLINE_HAVE_CUPTI
  return true;
#else
  return false;
#endif
}

void KernelProfile::start() {
  rows_.clear();
#ifdef SCANLINE_HAVE_CUPTI
  Records& r = records();
  SCANLINE_CHECK(!r.recording, "KernelProfile: another profile is already recording");
  if (!r.registered) {
    CUPTI_CHECK(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    r.registered = true;
  }
  {
    std::lock_guard<std::mutex> lock(r.mutex);
    r.by_name.clear();
  }
  CUDA_CHECK(cudaDeviceSynchronize());  // only work issued from here on counts
  for (CUpti_ActivityKind kind : kKinds) CUPTI_CHECK(cuptiActivityEnable(kind));
  r.recording = true;
#endif
}

void KernelProfile::stop() {
#ifdef SCANLINE_HAVE_CUPTI
  Records& r = records();
  SCANLINE_CHECK(r.recording, "KernelProfile: stop() without start()");
  CUDA_CHECK(cudaDeviceSynchronize());
  for (CUpti_ActivityKind kind : kKinds) CUPTI_CHECK(cuptiActivityDisable(kind));
  CUPTI_CHECK(cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED));
  r.recording = false;
  // Merge by readable name: instantiations that demangle alike are one row.
  std::map<std::string, Row> merged;
  std::lock_guard<std::mutex> lock(r.mutex);
  for (const auto& [raw, row] : r.by_name) {
    Row& m = merged[readable(raw)];
    m.total_ms += row.total_ms;
    m.count += row.count;
  }
  r.by_name.clear();
  for (auto& [name, row] : merged) {
    row.name = name;
    rows_.push_back(row);
  }
  std::sort(rows_.begin(), rows_.end(), [](const Row& a, const Row& b) { return a.total_ms > b.total_ms; });
#endif
}

std::vector<KernelProfile::Row> KernelProfile::rows() const { return rows_; }

double KernelProfile::total_ms() const {
  double t = 0;
  for (const Row& r : rows_) t += r.total_ms;
  return t;
}

void KernelProfile::print(int64_t steps, size_t n) const {
  if (!available()) {
    std::printf("\n(top kernels: this build has no CUPTI)\n");
    return;
  }
  const double total = total_ms();
  int64_t launches = 0;
  for (const Row& r : rows_) launches += r.count;
  std::printf("\n### top kernels (CUPTI, %lld steps: %.1f ms of GPU work and %.0f kernels, copies and fills a step)\n\n",
              (long long)steps, total / double(steps), double(launches) / double(steps));
  std::printf("| ms/step | share | calls/step | kernel |\n| ---: | ---: | ---: | --- |\n");
  constexpr size_t kWidth = 110;
  for (size_t i = 0; i < std::min(n, rows_.size()); ++i) {
    const Row& r = rows_[i];
    const std::string name = r.name.size() > kWidth ? r.name.substr(0, kWidth) + "..." : r.name;
    std::printf("| %.2f | %.1f%% | %.1f | `%s` |\n", r.total_ms / double(steps), 100.0 * r.total_ms / total,
                double(r.count) / double(steps), name.c_str());
  }
}

}  // namespace scanline::bench
