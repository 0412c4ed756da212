// A minimal parallel-for for the CPU backend. Threads live only for the duration of one call (no global pool
// whose state could leak between calls or across fork()), and tasks are handed out one index at a time.
//
// Determinism: a task's result may depend only on its index, never on which worker ran it or in which order, so
// the output of a call is bitwise identical for any thread count. The `worker` argument exists only to select
// per-thread scratch memory.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace sla {
namespace cpu {

// Exec::num_threads, with 0 meaning all hardware threads.
inline int resolve_thread_count(int requested) {
  if (requested > 0) return requested;
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// Runs fn(task, worker) for every task in [0, n), on at most `threads` threads, the caller being worker 0.
// The first exception thrown by any task is rethrown here after every thread has joined.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn&& fn) {
  if (n <= 0) return;
  const int workers = static_cast<int>(std::min<int64_t>(std::max(threads, 1), n));
  if (workers == 1) {
    for (int64_t t = 0; t < n; ++t) fn(t, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&](int worker) {
    try {
      for (int64_t t = next.fetch_add(1); t < n; t = next.fetch_add(1)) fn(t, worker);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
      next.store(n);  // stop handing out tasks
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  try {
    for (int w = 1; w < workers; ++w) pool.emplace_back(work, w);
  } catch (const std::system_error&) {
    // Could not start every thread: the ones that did start, and the caller, still finish all tasks.
  }
  work(0);
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// Per-worker scratch buffers, sized once per call: scratch(w) belongs to worker w only.
template <class T>
class WorkerScratch {
 public:
  WorkerScratch(int workers, std::size_t elems) : elems_(elems), data_(static_cast<std::size_t>(workers) * elems) {}
  T* operator()(int worker) { return data_.data() + static_cast<std::size_t>(worker) * elems_; }

 private:
  std::size_t elems_;
  std::vector<T> data_;
};

}  // namespace cpu
}  // namespace sla
