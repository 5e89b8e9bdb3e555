#pragma once
// parallel_for over an index range on a fixed pool of CPU threads. Work is split into chunks
// whose boundaries depend only on n and grain, never on the thread count, so a kernel that writes
// each output from one chunk gives the same bits on 1 or 64 threads.
#include <cstdint>
#include <functional>

namespace scanline {

// Calls fn(begin, end) over [0, n) in chunks of at least `grain` indices. Runs inline when the
// range is small or when called from inside another parallel_for.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

int num_threads();
void set_num_threads(int n);  // default: SCANLINE_NUM_THREADS or the hardware's thread count

}  // namespace scanline
