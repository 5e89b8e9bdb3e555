#pragma once
// Byte copies that involve a CUDA device. Host<->device copies of pageable memory above 1 MiB go
// through two pinned staging buffers so the DMA engine overlaps the host memcpy of the next
// chunk; the call returns once the host side may be reused (and, for device->host, read).
#include <cstddef>

#include "core/device.h"

namespace scanline::cuda {

void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);

}  // namespace scanline::cuda
