#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace scanline {
namespace {

thread_local bool inside_parallel_region = false;

int default_threads() {
  if (const char* env = std::getenv("SCANLINE_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

// A pool of persistent workers. Each run() publishes a Job with its own chunk counter; a worker
// that wakes late holds the old Job, finds its counter spent, and cannot touch the new one.
class ThreadPool {
 public:
  explicit ThreadPool(int threads) { resize(threads); }
  ~ThreadPool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }  // the calling thread works too

  void resize(int threads) {
    stop();
    stopping_ = false;
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_loop(); });
  }

  void run(int64_t chunks, const std::function<void(int64_t)>& chunk_fn) {
    std::lock_guard<std::mutex> serial(run_mutex_);  // one job at a time
    auto job = std::make_shared<Job>(chunk_fn, chunks);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      job_ = job;
    }
    wake_.notify_all();
    work(*job);
    std::unique_lock<std::mutex> lock(mutex_);
    finished_.wait(lock, [&] { return job->done == job->total; });
    job_.reset();
    if (job->error) std::rethrow_exception(job->error);
  }

 private:
  struct Job {
    Job(const std::function<void(int64_t)>& f, int64_t n) : fn(f), total(n) {}
    const std::function<void(int64_t)>& fn;
    const int64_t total;
    std::atomic<int64_t> next{0};
    int64_t done = 0;  // guarded by mutex_
    std::exception_ptr error;
  };

  void work(Job& job) {
    inside_parallel_region = true;
    for (;;) {
      int64_t chunk = job.next.fetch_add(1);
      if (chunk >= job.total) break;
      std::exception_ptr error;
      try {
        job.fn(chunk);
      } catch (...) {
        error = std::current_exception();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (error && !job.error) job.error = error;
      if (++job.done == job.total) finished_.notify_all();
    }
    inside_parallel_region = false;
  }

  void worker_loop() {
    std::shared_ptr<Job> seen;
    for (;;) {
      std::shared_ptr<Job> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || (job_ && job_ != seen); });
        if (stopping_) return;
        job = seen = job_;
      }
      work(*job);
    }
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex run_mutex_, mutex_;
  std::condition_variable wake_, finished_;
  std::shared_ptr<Job> job_;
  bool stopping_ = false;
};

ThreadPool& pool() {
  static ThreadPool instance(default_threads());
  return instance;
}

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(std::max(1, n)); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int64_t chunks = (n + grain - 1) / grain;
  if (chunks == 1 || inside_parallel_region || pool().size() == 1) {
    // Same chunk boundaries as the parallel path, so results match bit for bit.
    for (int64_t c = 0; c < chunks; ++c) fn(c * grain, std::min(n, (c + 1) * grain));
    return;
  }
  pool().run(chunks, [&](int64_t c) { fn(c * grain, std::min(n, (c + 1) * grain)); });
}

}  // namespace scanline
