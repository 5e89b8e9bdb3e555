#include "core/cuda/caching_allocator.h"

#include <algorithm>
#include <mutex>
#include <set>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "core/cuda/cuda_check.h"
#include "core/cuda/stream.h"

namespace scanline::cuda {
namespace {

constexpr size_t kRound = 512;                   // every size is a multiple of this
constexpr size_t kSmallLimit = 1 << 20;          // requests up to 1 MiB use the small pool
constexpr size_t kSmallSegment = 2 << 20;        // small pool grows 2 MiB at a time
constexpr size_t kLargeRound = 2 << 20;          // large segments are multiples of 2 MiB
constexpr size_t kLargeSplitMin = 1 << 20;       // don't split a large block for less than this

struct Block {
  int device;
  cudaStream_t stream;
  size_t size;
  char* ptr;
  bool allocated = false;
  bool small;
  Block* prev = nullptr;  // neighbours within one cudaMalloc segment
  Block* next = nullptr;
};

struct BlockOrder {
  bool operator()(const Block* a, const Block* b) const {
    if (a->stream != b->stream) return a->stream < b->stream;
    if (a->size != b->size) return a->size < b->size;
    return a->ptr < b->ptr;
  }
};

struct DeviceCache {
  std::set<Block*, BlockOrder> small_free, large_free;
  AllocatorStats stats;
};

class CachingAllocator {
 public:
  void* allocate(size_t nbytes, int device, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mutex_);
    DeviceCache& cache = caches_[device];
    size_t size = round_size(nbytes);
    bool small = size <= kSmallLimit;
    auto& pool = small ? cache.small_free : cache.large_free;
    Block key{device, stream, size, nullptr, false, small};
    auto it = pool.lower_bound(&key);
    Block* block = nullptr;
    if (it != pool.end() && (*it)->stream == stream) {
      block = *it;
      pool.erase(it);
    } else {
      block = new_segment(device, stream, small ? kSmallSegment : round_up(size, kLargeRound), small);
    }
    size_t rest = block->size - size;
    if (rest >= (small ? kRound : kLargeSplitMin)) {
      auto* tail = new Block{device, stream, rest, block->ptr + size, false, small, block, block->next};
      if (block->next) block->next->prev = tail;
      block->next = tail;
      block->size = size;
      pool.insert(tail);
    }
    block->allocated = true;
    live_[block->ptr] = block;
    cache.stats.allocated += block->size;
    cache.stats.peak_allocated = std::max(cache.stats.peak_allocated, cache.stats.allocated);
    ++cache.stats.allocations;
    return block->ptr;
  }

  void free(void* ptr) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = live_.find(ptr);
    SCANLINE_CHECK(it != live_.end(), "cuda allocator: free of a pointer it did not allocate");
    Block* block = it->second;
    live_.erase(it);
    DeviceCache& cache = caches_[block->device];
    cache.stats.allocated -= block->size;
    block->allocated = false;
    auto& pool = block->small ? cache.small_free : cache.large_free;
    // Merge with free neighbours of the same segment so large requests can reuse the space.
    for (Block* n : {block->prev, block->next}) {
      if (!n || n->allocated) continue;
      pool.erase(n);
      if (n == block->prev) {
        n->size += block->size;
        n->next = block->next;
        if (block->next) block->next->prev = n;
        delete block;
        block = n;
      } else {
        block->size += n->size;
        block->next = n->next;
        if (n->next) n->next->prev = block;
        delete n;
      }
    }
    pool.insert(block);
  }

  AllocatorStats stats(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    return caches_[device].stats;
  }

  void reset_peak(int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    caches_[device].stats.peak_allocated = caches_[device].stats.allocated;
  }

  void empty_cache() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [device, cache] : caches_) release_free_segments(device, cache);
  }

 private:
  static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }
  static size_t round_size(size_t n) { return n == 0 ? kRound : round_up(n, kRound); }

  Block* new_segment(int device, cudaStream_t stream, size_t size, bool small) {
    DeviceCache& cache = caches_[device];
    DeviceGuard guard(device);
    void* ptr = nullptr;
    cudaError_t status = cudaMalloc(&ptr, size);
    if (status != cudaSuccess) {
      // Out of memory: give cached free segments back to the driver and try once more.
      (void)cudaGetLastError();
      release_free_segments(device, cache);
      status = cudaMalloc(&ptr, size);
    }
    if (status != cudaSuccess) {
      (void)cudaGetLastError();
      size_t free_bytes = 0, total_bytes = 0;
      (void)cudaMemGetInfo(&free_bytes, &total_bytes);
      SCANLINE_FAIL("cuda allocator: out of memory on cuda:", device, " allocating ", size, " bytes (",
                    cache.stats.allocated, " allocated by scanline, ", cache.stats.reserved,
                    " reserved, ", free_bytes, " free of ", total_bytes, ")");
    }
    cache.stats.reserved += size;
    ++cache.stats.segments;
    return new Block{device, stream, size, static_cast<char*>(ptr), false, small};
  }

  // A segment is wholly free when its block has no neighbours: free it and forget it.
  void release_free_segments(int device, DeviceCache& cache) {
    DeviceGuard guard(device);
    for (auto* pool : {&cache.small_free, &cache.large_free}) {
      for (auto it = pool->begin(); it != pool->end();) {
        Block* b = *it;
        if (b->prev || b->next) { ++it; continue; }
        CUDA_CHECK(cudaFree(b->ptr));
        cache.stats.reserved -= b->size;
        it = pool->erase(it);
        delete b;
      }
    }
  }

  std::mutex mutex_;
  std::unordered_map<int, DeviceCache> caches_;
  std::unordered_map<void*, Block*> live_;
};

CachingAllocator& instance() {
  // Never destroyed: tensors freed during static destruction still find their allocator.
  static auto* allocator = new CachingAllocator();
  return *allocator;
}

}  // namespace

void* device_allocate(size_t nbytes, int device, cudaStream_t stream) {
  return instance().allocate(nbytes, device, stream);
}
void device_free(void* ptr) { instance().free(ptr); }
AllocatorStats allocator_stats(int device) { return instance().stats(device); }
void reset_peak(int device) { instance().reset_peak(device); }
void empty_cache() { instance().empty_cache(); }

}  // namespace scanline::cuda
