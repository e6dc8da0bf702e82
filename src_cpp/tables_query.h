// Working memory of the LSH tables' queries: per-worker counters (Scratch), per-chunk
// results (OutBuf), and the pools that keep them between calls.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

namespace hashlab {
namespace tbl {

// The ids of one bucket as seen by a query: ids[head..n) then ids[0..head).
struct Span {
  const int32_t* ids;
  uint32_t n;
  uint32_t head;
};

// Working memory of one query worker. Invariant between uses: every counter is zero.
struct Scratch {
  uint16_t* dense = nullptr;  // calloc'd counters, dense_n entries
  int64_t dense_n = 0;
  struct HSlot {
    int32_t id;
    uint32_t count;
  };
  std::vector<HSlot> hashed;  // every id = -1 between uses
  std::vector<int32_t> touched, cnts, idx;
  std::vector<int64_t> hist;
  std::vector<uint32_t> qb[2];  // bucket of each table, current and next query
  std::vector<Span> spans;
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(dense); }
  int64_t nbytes() const {
    return (int64_t)sizeof(Scratch) + dense_n * 2 +
           (int64_t)(hashed.capacity() * sizeof(HSlot) +
                     (touched.capacity() + cnts.capacity() + idx.capacity()) * 4 + hist.capacity() * 8 +
                     (qb[0].capacity() + qb[1].capacity()) * 4 + spans.capacity() * sizeof(Span));
  }
  void ensure_dense(int64_t n) {
    if (n <= dense_n) return;
    std::free(dense);
    dense = nullptr;
    dense_n = 0;
    int64_t want = std::max<int64_t>(n + n / 8, 1024);  // room for some growth
    dense = static_cast<uint16_t*>(std::calloc((size_t)want, sizeof(uint16_t)));
    if (!dense) throw std::bad_alloc();
    dense_n = want;
  }
};

// Output of one chunk of queries, kept until the results are assembled.
struct OutBuf {
  int64_t begin = 0;
  std::vector<int64_t> lens;
  std::vector<int32_t> ids, counts;
  int64_t nbytes() const {
    return (int64_t)sizeof(OutBuf) + (int64_t)(lens.capacity() * 8 + (ids.capacity() + counts.capacity()) * 4);
  }
};

template <typename T>
class Pool {
 public:
  std::unique_ptr<T> take() {
    std::lock_guard<std::mutex> g(mu_);
    if (items_.empty()) return std::unique_ptr<T>(new T());
    auto p = std::move(items_.back());
    items_.pop_back();
    return p;
  }
  void give(std::unique_ptr<T> p) {
    std::lock_guard<std::mutex> g(mu_);
    items_.push_back(std::move(p));
  }
  void clear() {
    std::lock_guard<std::mutex> g(mu_);
    items_.clear();
  }
  int64_t nbytes() const {
    std::lock_guard<std::mutex> g(mu_);
    int64_t b = 0;
    for (const auto& p : items_) b += p->nbytes();
    return b;
  }

 private:
  mutable std::mutex mu_;
  std::vector<std::unique_ptr<T>> items_;
};

}  // namespace tbl
}  // namespace hashlab
