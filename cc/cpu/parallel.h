// A small parallel-for over std::thread.
//
// Work items (e.g. one (batch, head, query-block) tile) are handed out one
// at a time from an atomic counter rather than split statically: with causal
// or windowed masks the tiles differ a lot in cost, and dynamic hand-out
// balances that without any cost model. Items are heavy (a full row of key
// blocks), so one atomic increment per item is negligible.
//
// Each worker gets a stable index in [0, workers) so callers can give it a
// private scratch buffer, allocated up front on the calling thread (any
// std::bad_alloc then surfaces there, not inside a worker).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace jax_fa3::cpu {

// Threads to use: JAX_FA3_CPU_THREADS if set to a positive integer (handy to
// pin CI or benchmarks), else std::thread::hardware_concurrency().
inline int max_threads() {
  if (const char* env = std::getenv("JAX_FA3_CPU_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

// How many workers parallel_for will use for n items.
inline int plan_workers(int64_t n) {
  int64_t w = std::min<int64_t>(max_threads(), n);
  return w < 1 ? 1 : static_cast<int>(w);
}

// Calls body(item, worker) for every item in [0, n) across `workers`
// threads (the calling thread is one of them). Returns "" or the message of
// the first exception a body threw; after a failure the remaining items are
// skipped.
template <class Body>
std::string parallel_for(int64_t n, int workers, Body&& body) {
  if (n <= 0) return "";
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex err_mu;
  std::string err;

  auto run = [&](int worker) {
    try {
      for (;;) {
        if (failed.load(std::memory_order_relaxed)) return;
        int64_t i = next.fetch_add(1, std::memory_order_relaxed);
        if (i >= n) return;
        body(i, worker);
      }
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!failed.exchange(true)) err = e.what();
    } catch (...) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!failed.exchange(true)) err = "unknown exception in a CPU worker";
    }
  };

  std::vector<std::thread> threads;
  if (workers > 1) threads.reserve(workers - 1);
  for (int w = 1; w < workers; ++w) {
    try {
      threads.emplace_back(run, w);
    } catch (...) {
      // Could not start another thread (resource limits): the ones already
      // running, plus this one, still drain the whole counter.
      break;
    }
  }
  run(0);
  for (auto& t : threads) t.join();
  return err;
}

}  // namespace jax_fa3::cpu
