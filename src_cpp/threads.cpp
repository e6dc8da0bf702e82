// Persistent pool: workers sleep on a condition variable between jobs. A job is
// a range split into chunks claimed from an atomic counter, so uneven chunks
// balance themselves. After fork() the child starts a fresh pool on first use.
//
// Waking a sleeping thread costs tens of microseconds (more in a VM, where the vCPU may
// be halted), paid twice per job: the workers at the start, the caller at the end. A
// decode step runs a few short jobs back to back, so both sides first spin for a short
// while (SPIN) before they block.
#include "hashlab/threads.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <vector>

namespace hashlab {
namespace {

thread_local int t_index = 0;
constexpr std::chrono::microseconds SPIN(100);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until done() or SPIN has passed; returns done().
template <typename Pred>
bool spin_until(Pred&& done) {
  const auto until = std::chrono::steady_clock::now() + SPIN;
  for (int i = 1;; ++i) {
    if (done()) return true;
    cpu_relax();
    if ((i & 63) == 0 && std::chrono::steady_clock::now() >= until) return done();
  }
}
thread_local bool t_in_parallel = false;

int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? (int)hw : 1;
}

struct Pool {
  std::mutex mu;  // guards the job fields; generation changes under it
  std::condition_variable wake, done;
  std::vector<std::thread> workers;
  pid_t owner = 0;
  std::atomic<uint64_t> generation{0};
  std::atomic<bool> stop{false};
  // current job
  const std::function<void(int64_t, int64_t)>* fn = nullptr;
  int64_t n = 0, chunk = 1;
  std::atomic<int64_t> next{0};
  std::atomic<int> active{0};  // workers still running the job (the last one notifies `done`)
  int job_threads = 0;
  std::exception_ptr error;
  std::mutex call_mu;  // one parallel_for at a time; nested calls run inline

  void run_chunks() {
    for (;;) {
      int64_t b = next.fetch_add(chunk);
      if (b >= n) return;
      int64_t e = std::min(n, b + chunk);
      try {
        (*fn)(b, e);
      } catch (...) {
        std::lock_guard<std::mutex> g(mu);
        if (!error) error = std::current_exception();
        next.store(n);
      }
    }
  }

  void worker(int idx) {
    t_index = idx;
    t_in_parallel = true;  // a kernel nested in a worker runs inline
    uint64_t seen = 0;
    for (;;) {
      spin_until([&] {
        return stop.load(std::memory_order_acquire) || generation.load(std::memory_order_acquire) != seen;
      });
      std::unique_lock<std::mutex> lk(mu);
      wake.wait(lk, [&] { return stop || generation != seen; });
      if (stop) return;
      seen = generation;
      if (idx >= job_threads) continue;  // not needed for this job
      lk.unlock();
      run_chunks();
      if (active.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        lk.lock();
        done.notify_all();
      }
    }
  }

  void shutdown() {
    {
      std::lock_guard<std::mutex> g(mu);
      stop = true;
    }
    wake.notify_all();
    for (auto& t : workers)
      if (t.joinable()) t.join();
    workers.clear();
    stop = false;
  }

  void ensure(int nthreads) {
    if (owner != getpid()) {  // forked child: the parent's threads do not exist here
      for (auto& t : workers) t.detach();
      workers.clear();
      owner = getpid();
    }
    while ((int)workers.size() < nthreads - 1) {
      int idx = (int)workers.size() + 1;
      workers.emplace_back([this, idx] { worker(idx); });
    }
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: no join at static destruction
  return *p;
}

std::atomic<int> g_threads{0};

}  // namespace

void set_num_threads(int n) {
  if (n < 1 || n > 1024) throw std::invalid_argument("num_threads: expected 1..1024, got " + std::to_string(n));
  g_threads.store(n);
}

int get_num_threads() {
  int n = g_threads.load();
  if (n <= 0) {
    n = std::min(default_threads(), 1024);
    g_threads.store(n);
  }
  return n;
}

int thread_index() { return t_index; }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int nthreads = (int)std::min<int64_t>(get_num_threads(), (n + grain - 1) / grain);
  if (nthreads <= 1 || t_in_parallel) {
    fn(0, n);
    return;
  }
  Pool& p = pool();
  std::lock_guard<std::mutex> call(p.call_mu);
  p.ensure(nthreads);
  {
    std::lock_guard<std::mutex> g(p.mu);
    p.fn = &fn;
    p.n = n;
    // about 4 chunks per thread, never below the grain
    p.chunk = std::max<int64_t>(grain, (n + 4 * nthreads - 1) / (4 * nthreads));
    p.next.store(0);
    p.error = nullptr;
    p.active = nthreads - 1;
    p.job_threads = nthreads;
    ++p.generation;
  }
  p.wake.notify_all();
  t_in_parallel = true;
  t_index = 0;
  p.run_chunks();
  t_in_parallel = false;
  spin_until([&] { return p.active.load(std::memory_order_acquire) == 0; });
  std::unique_lock<std::mutex> lk(p.mu);
  p.done.wait(lk, [&] { return p.active == 0; });
  if (p.error) std::rethrow_exception(p.error);
}

}  // namespace hashlab
