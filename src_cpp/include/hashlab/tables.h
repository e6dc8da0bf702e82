// L hash tables over precomputed uint32 keys. Each table has 2^range_bits buckets
// of at most `capacity` int32 ids. Keys wider than range_bits are folded to a bucket
// with a multiplicative hash; narrower keys index buckets directly.
//
// Thread safety: one reader-writer lock per index. insert/remove/clear/freeze/thaw
// take it exclusively, queries shared, so calls from several threads at once are
// correct. Inside one call the work is split over the pool (tables for inserts,
// queries for queries) in a fixed order, so results are deterministic.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace hashlab {

enum class Policy { fifo = 0, reservoir = 1 };

struct QueryResult {
  std::vector<int64_t> indptr;  // (nq + 1)
  std::vector<int32_t> ids;     // candidates of query i: ids[indptr[i]:indptr[i+1]]
  std::vector<int32_t> counts;  // in how many tables each candidate collided
};

struct TableStats {
  std::vector<int64_t> size_histogram;  // [s] = number of buckets holding s ids, s = 0..capacity
  int64_t full_buckets = 0;
  int64_t stored = 0;    // ids stored over all tables
  int64_t dropped = 0;   // arrivals not stored (or evicted) because a bucket was full
};

class LSHTablesCore {
 public:
  LSHTablesCore(int l, int key_bits, int range_bits, int capacity, Policy policy, uint64_t seed);
  ~LSHTablesCore();
  // keys (n, l) uint32 row-major. ids must be >= 0, unique in the batch and not present.
  void insert(const int32_t* ids, const uint32_t* keys, int64_t n);
  // ids not present are ignored; returns how many were removed.
  int64_t remove(const int32_t* ids, int64_t n);
  void clear();
  // Candidates with >= min_collisions collisions, ordered by count (descending) then
  // by first discovery (table order, then bucket order); at most max_candidates
  // (<= 0: no limit) per query.
  QueryResult query(const uint32_t* keys, int64_t nq, int min_collisions, int64_t max_candidates) const;
  void freeze();  // read-optimised layout (ids sorted by bucket + offsets); inserts then fail
  void thaw();
  bool frozen() const;
  int64_t size() const;  // ids inserted and not removed
  int64_t nbytes() const;
  TableStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hashlab
