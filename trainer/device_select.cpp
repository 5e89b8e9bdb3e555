#include "trainer/device_select.h"

#include <sys/resource.h>

#include <sstream>

#include "core/parallel.h"

#ifdef SCANLINE_HAVE_CUDA
#include "core/cuda/caching_allocator.h"
#include "cuda/device_query.h"
#endif

namespace scanline {

namespace {
int cuda_devices() {
#ifdef SCANLINE_HAVE_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}
}  // namespace

Device resolve_device(const RunConfig& config) {
  const DeviceChoice choice = config.train.device;
  if (choice == DeviceChoice::cpu) return Device::cpu();
  const int gpus = cuda_devices();
  if (gpus > 0) return Device::cuda(0);
  if (choice == DeviceChoice::automatic) return Device::cpu();
#ifdef SCANLINE_HAVE_CUDA
  const char* why = "no CUDA device is visible to this process";
#else
  const char* why = "this build has no CUDA backend (configure with -DSCANLINE_CUDA=ON)";
#endif
  throw ConfigError({config.where("train.device") + ": train.device: cuda was asked for, but " + why +
                     "; use auto or cpu"});
}

std::string describe_device(Device device) {
  std::ostringstream out;
  out << device.str();
#ifdef SCANLINE_HAVE_CUDA
  if (device.is_cuda()) out << " (" << cuda::device_name(device.index) << ")";
#endif
  if (device.is_cpu()) out << " (" << num_threads() << " threads)";
  return out.str();
}

MemoryUse peak_memory(Device device) {
#ifdef SCANLINE_HAVE_CUDA
  if (device.is_cuda()) return {double(cuda::allocator_stats(device.index).peak_allocated) / (1 << 20), "gpu peak"};
#endif
  (void)device;
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return {double(usage.ru_maxrss) / 1024.0, "rss peak"};  // Linux reports kilobytes
}

std::optional<double> peak_flops(Device device, Precision precision) {
  if (!device.is_cuda()) return std::nullopt;
  return precision == Precision::bf16 ? 989e12 : 67e12;
}

}  // namespace scanline
