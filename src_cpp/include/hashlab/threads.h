// A small persistent thread pool. Kernels call parallel_for; the pool size is
// set at run time (hashlab.set_num_threads) and survives fork (rebuilt lazily).
#pragma once
#include <cstdint>
#include <functional>

namespace hashlab {

void set_num_threads(int n);
int get_num_threads();

// Runs fn(begin, end) over chunks of [0, n) of at least `grain` items on up to
// get_num_threads() threads (the caller is one of them). The first exception a
// worker throws is rethrown in the caller after every chunk has finished.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// Index of the calling worker in [0, get_num_threads()), for per-thread scratch.
int thread_index();

}  // namespace hashlab
