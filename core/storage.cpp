#include "core/storage.h"

#include "core/allocator.h"

namespace scanline {

Storage::Storage(size_t nbytes, Device device) : nbytes_(nbytes), device_(device) {
  data_ = allocator_for(device).allocate(nbytes, device);
}

Storage::~Storage() {
  if (data_) allocator_for(device_).deallocate(data_, nbytes_, device_);
}

}  // namespace scanline
