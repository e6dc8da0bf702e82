// LSH tables over precomputed uint32 keys (interface and contract: include/hashlab/tables.h).
// State, layout and bucket operations: tables_impl.h; queries: tables_query.cpp.
#include "hashlab/tables.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <shared_mutex>
#include <stdexcept>
#include <string>

#include "hashlab/common.h"
#include "hashlab/threads.h"
#include "tables_impl.h"

namespace hashlab {
using namespace tbl;
namespace {

constexpr int kMaxRangeBits = 28;
constexpr int kMaxL = 65535;
constexpr int kMaxCapacity = 65535;
constexpr const char* kFrozenMsg = "index is frozen; call thaw() first";

inline void prefetch_w(const void* p) { __builtin_prefetch(p, 1, 3); }

// Generator of table t: state0 = mix64(seed + gamma * (t + 1)).
uint64_t table_seed(uint64_t seed, int t) { return mix64(seed + kGolden64 * (uint64_t)(t + 1)); }

}  // namespace

LSHTablesCore::LSHTablesCore(int l, int key_bits, int range_bits, int capacity, Policy policy,
                             uint64_t seed) {
  if (l < 1 || l > kMaxL) fail("l: expected 1..65535 tables, got " + std::to_string(l));
  if (key_bits < 1 || key_bits > 32) fail("key_bits: expected 1..32, got " + std::to_string(key_bits));
  int max_range = std::min(key_bits, kMaxRangeBits);
  if (range_bits < 1 || range_bits > max_range)
    fail("range_bits: expected 1.." + std::to_string(max_range) + " (min(key_bits, " +
         std::to_string(kMaxRangeBits) + ")), got " + std::to_string(range_bits));
  if (capacity < 1 || capacity > kMaxCapacity)
    fail("capacity: expected 1..65535, got " + std::to_string(capacity));
  if (policy != Policy::fifo && policy != Policy::reservoir)
    fail("policy: expected fifo (0) or reservoir (1), got " + std::to_string((int)policy));
  impl_.reset(new Impl());
  Impl& d = *impl_;
  d.l = l;
  d.key_bits = key_bits;
  d.range_bits = range_bits;
  d.capacity = capacity;
  d.policy = policy;
  d.seed = seed;
  d.nbuckets = 1ull << range_bits;
  d.fold = key_bits > range_bits;
  d.cls_words.push_back(0);  // class 0: no block
  // 2, 4, 6, 8, 12, 16, 24, 32, ... words (x1.5 then x4/3), the last one capacity + 1
  for (uint32_t w = 2;; w = (w <= 2) ? 4 : ((w & (w - 1)) == 0 ? w + w / 2 : (w / 3) * 4)) {
    d.cls_words.push_back(std::min<uint32_t>(w, (uint32_t)capacity + 1));
    if (w >= (uint32_t)capacity + 1) break;
  }
  d.nclasses = (int)d.cls_words.size();
  d.tables.resize(l);
  for (int t = 0; t < l; ++t) {
    d.tables[t].rng.state = table_seed(seed, t);
    d.alloc_headers(d.tables[t]);
  }
}

LSHTablesCore::~LSHTablesCore() = default;

void LSHTablesCore::insert(const int32_t* ids, const uint32_t* keys, int64_t n) {
  Impl& d = *impl_;
  if (n < 0) fail("n: expected >= 0 rows, got " + std::to_string(n));
  if (n > 0 && (!ids || !keys)) fail("insert: expected non-null ids and keys, got a null pointer");
  if (n > (int64_t)INT32_MAX) fail("n: expected at most 2^31 - 1 rows, got " + std::to_string(n));
  const int l = d.l;
  // argument checks that need no lock
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0) fail("ids: expected ids >= 0, got " + std::to_string(ids[i]));
  parallel_for(n, 4096, [&](int64_t b, int64_t e) { d.check_keys(keys + b * l, (e - b) * l, b); });
  if (n > 1) {
    std::vector<int32_t> sorted(ids, ids + n);
    std::sort(sorted.begin(), sorted.end());
    auto it = std::adjacent_find(sorted.begin(), sorted.end());
    if (it != sorted.end()) fail("ids: expected unique ids, got duplicate id " + std::to_string(*it));
  }
  std::unique_lock<std::shared_mutex> wr(d.mu);
  if (d.is_frozen) throw std::runtime_error(kFrozenMsg);
  if (n == 0) return;
  {
    std::atomic<int64_t> first_present{n};
    parallel_for(n, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e && i < first_present.load(std::memory_order_relaxed); ++i)
        if (d.idmap.find(ids[i]) >= 0) {
          int64_t cur = first_present.load();
          while (i < cur && !first_present.compare_exchange_weak(cur, i)) {
          }
          break;
        }
    });
    int64_t i = first_present.load();
    if (i < n)
      fail("ids: expected ids not in the index, got id " + std::to_string(ids[i]) +
           " which is already present (remove it first)");
  }
  // allocate everything that can fail before changing anything
  const int64_t reuse = std::min<int64_t>(n, (int64_t)d.free_rows.size());
  const int64_t old_rows = (int64_t)d.rows.size() / l;
  const int64_t fresh = n - reuse;
  if (old_rows + fresh > (int64_t)INT32_MAX) fail("insert: expected at most 2^31 - 1 ids in one index");
  std::vector<int32_t> row_of(n);
  d.idmap.reserve(d.idmap.size() + n);
  if (fresh > 0) {
    size_t need = d.rows.size() + (size_t)(fresh * l);
    if (d.rows.capacity() < need) d.rows.reserve(std::max(need, d.rows.capacity() * 3 / 2));
    d.rows.resize(need);
  }
  for (int64_t i = 0; i < n; ++i) {
    if (i < reuse) {
      row_of[i] = d.free_rows.back();
      d.free_rows.pop_back();
    } else {
      row_of[i] = (int32_t)(old_rows + (i - reuse));
    }
    d.idmap.put(ids[i], row_of[i]);
    if (ids[i] > d.max_id) d.max_id = ids[i];
  }
  parallel_for(n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      uint32_t* r = d.rows.data() + (int64_t)row_of[i] * l;
      const uint32_t* k = keys + i * l;
      for (int t = 0; t < l; ++t) r[t] = d.bucket_of(k[t]);
    }
  });
  // Each worker owns whole tables and inserts in batch order: deterministic. Ids go in
  // blocks of 64 (their rows stay in cache across the worker's tables); the headers and
  // then the blocks of a block of ids are prefetched before it is inserted.
  const int nthreads = get_num_threads();
  const int64_t grain = std::max<int64_t>(1, (l + 2 * nthreads - 1) / (2 * nthreads));
  parallel_for(l, grain, [&](int64_t t0, int64_t t1) {
    constexpr int64_t kBlock = 64;
    uint32_t bb[kBlock];
    for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
      const int64_t m = std::min(kBlock, n - i0);
      for (int64_t t = t0; t < t1; ++t) {
        Impl::Table& tb = d.tables[t];
        for (int64_t j = 0; j < m; ++j) {
          bb[j] = d.rows[(int64_t)row_of[i0 + j] * l + t];
          prefetch_w(tb.buckets + bb[j]);
        }
        for (int64_t j = 0; j < m; ++j) {
          const Bucket& bk = tb.buckets[bb[j]];
          if (bk.cls) {
            const int32_t* p = tb.arena.ptr(bk.off);
            prefetch_w(p);
            prefetch_w(p + 1 + bk.size);
          }
        }
        for (int64_t j = 0; j < m; ++j) d.insert_one(tb, tb.buckets[bb[j]], ids[i0 + j]);
      }
    }
  });
}

int64_t LSHTablesCore::remove(const int32_t* ids, int64_t n) {
  Impl& d = *impl_;
  if (n < 0) fail("n: expected >= 0 ids, got " + std::to_string(n));
  if (n > 0 && !ids) fail("remove: expected non-null ids, got a null pointer");
  std::unique_lock<std::shared_mutex> wr(d.mu);
  if (d.is_frozen) throw std::runtime_error(kFrozenMsg);
  std::vector<int32_t> gone_ids, gone_rows;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0) continue;
    int32_t row = d.idmap.erase(ids[i]);  // a repeated id is absent the second time
    if (row >= 0) {
      gone_ids.push_back(ids[i]);
      gone_rows.push_back(row);
    }
  }
  const int l = d.l;
  const int64_t m = (int64_t)gone_ids.size();
  if (m) {
    parallel_for(l, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        Impl::Table& tb = d.tables[t];
        for (int64_t i = 0; i < m; ++i) {
          uint32_t b = d.rows[(int64_t)gone_rows[i] * l + t];
          d.remove_one(tb, tb.buckets[b], gone_ids[i]);
        }
      }
    });
    d.free_rows.insert(d.free_rows.end(), gone_rows.begin(), gone_rows.end());
  }
  if (d.idmap.size() == 0) {  // everything removed: drop the rows too
    std::vector<uint32_t>().swap(d.rows);
    std::vector<int32_t>().swap(d.free_rows);
    d.max_id = -1;
  }
  return m;
}

void LSHTablesCore::clear() {
  Impl& d = *impl_;
  std::unique_lock<std::shared_mutex> wr(d.mu);
  for (int t = 0; t < d.l; ++t) {
    Impl::Table& tb = d.tables[t];
    d.drop_dynamic(tb);
    tb.stored = 0;
    tb.rng.state = table_seed(d.seed, t);
    if (d.is_frozen) {
      tb.offsets.assign(d.nbuckets + 1, 0);
      std::vector<int32_t>().swap(tb.fids);
    } else {
      d.alloc_headers(tb);
    }
  }
  d.idmap.clear();
  std::vector<uint32_t>().swap(d.rows);
  std::vector<int32_t>().swap(d.free_rows);
  d.max_id = -1;
  d.scratch_pool.clear();
  d.out_pool.clear();
}

void LSHTablesCore::freeze() {
  Impl& d = *impl_;
  std::unique_lock<std::shared_mutex> wr(d.mu);
  if (d.is_frozen) return;
  // build every frozen table before freeing anything: a failed allocation changes nothing
  std::vector<std::vector<uint32_t>> offs(d.l);
  std::vector<std::vector<int32_t>> fids(d.l);
  for (int t = 0; t < d.l; ++t) {
    offs[t].resize(d.nbuckets + 1);
    fids[t].resize(d.tables[t].stored);
  }
  parallel_for(d.l, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const Impl::Table& tb = d.tables[t];
      uint32_t* off = offs[t].data();
      int32_t* out = fids[t].data();
      uint32_t at = 0;
      for (uint64_t b = 0; b < d.nbuckets; ++b) {
        off[b] = at;
        if (b + 8 < d.nbuckets) {  // blocks are scattered in the arena: fetch ahead
          const Bucket& ahead = tb.buckets[b + 8];
          if (ahead.cls) prefetch(tb.arena.ptr(ahead.off));
        }
        Span sp = d.span_of(tb, (uint32_t)b);
        for (uint32_t i = sp.head; i < sp.n; ++i) out[at++] = sp.ids[i];
        for (uint32_t i = 0; i < sp.head; ++i) out[at++] = sp.ids[i];
      }
      off[d.nbuckets] = at;
    }
  });
  for (int t = 0; t < d.l; ++t) {
    Impl::Table& tb = d.tables[t];
    d.drop_dynamic(tb);
    tb.offsets.swap(offs[t]);
    tb.fids.swap(fids[t]);
  }
  d.is_frozen = true;
}

void LSHTablesCore::thaw() {
  Impl& d = *impl_;
  std::unique_lock<std::shared_mutex> wr(d.mu);
  if (!d.is_frozen) return;
  // reservoir: n of each bucket = the present ids mapping to it, recounted from the rows
  std::vector<int32_t> live_rows;
  if (d.policy == Policy::reservoir) {
    std::vector<char> is_free(d.rows.size() / d.l, 0);
    for (int32_t r : d.free_rows) is_free[r] = 1;
    for (size_t r = 0; r < is_free.size(); ++r)
      if (!is_free[r]) live_rows.push_back((int32_t)r);
  }
  for (int t = 0; t < d.l; ++t) d.alloc_headers(d.tables[t]);
  parallel_for(d.l, 1, [&](int64_t t0, int64_t t1) {
    std::vector<uint32_t> arrivals;
    for (int64_t t = t0; t < t1; ++t) {
      Impl::Table& tb = d.tables[t];
      if (d.policy == Policy::reservoir) {
        arrivals.assign(d.nbuckets, 0);
        for (int32_t r : live_rows) {
          uint32_t& a = arrivals[d.rows[(int64_t)r * d.l + t]];
          if (a != UINT32_MAX) ++a;
        }
      }
      for (uint64_t b = 0; b < d.nbuckets; ++b) {
        uint32_t lo = tb.offsets[b], n = tb.offsets[b + 1] - lo;
        uint32_t aux = d.policy == Policy::reservoir ? arrivals[b] : 0;
        if (n == 0 && aux == 0) continue;
        Bucket& bk = tb.buckets[b];
        d.reblock(tb, bk, d.cls_for(std::max<uint32_t>(n, 1)));
        int32_t* p = tb.arena.ptr(bk.off);
        p[0] = (int32_t)aux;
        std::memcpy(p + 1, tb.fids.data() + lo, (size_t)n * sizeof(int32_t));
        bk.size = (uint16_t)n;
      }
      std::vector<uint32_t>().swap(tb.offsets);
      std::vector<int32_t>().swap(tb.fids);
    }
  });
  d.is_frozen = false;
}

bool LSHTablesCore::frozen() const {
  std::shared_lock<std::shared_mutex> rd(impl_->mu);
  return impl_->is_frozen;
}

int64_t LSHTablesCore::size() const {
  std::shared_lock<std::shared_mutex> rd(impl_->mu);
  return impl_->idmap.size();
}

int64_t LSHTablesCore::nbytes() const {
  const Impl& d = *impl_;
  std::shared_lock<std::shared_mutex> rd(d.mu);
  int64_t total = (int64_t)sizeof(Impl) + (int64_t)(d.tables.capacity() * sizeof(Impl::Table)) +
                  (int64_t)(d.cls_words.capacity() * 4);
  for (const auto& tb : d.tables) {
    if (tb.buckets) total += (int64_t)(d.nbuckets * sizeof(Bucket));
    total += tb.arena.nbytes();
    total += (int64_t)(tb.offsets.capacity() * sizeof(uint32_t) + tb.fids.capacity() * sizeof(int32_t));
  }
  total += d.idmap.nbytes();
  total += (int64_t)(d.rows.capacity() * sizeof(uint32_t) + d.free_rows.capacity() * sizeof(int32_t));
  total += d.scratch_pool.nbytes() + d.out_pool.nbytes();
  return total;
}

TableStats LSHTablesCore::stats() const {
  const Impl& d = *impl_;
  std::shared_lock<std::shared_mutex> rd(d.mu);
  TableStats st;
  st.size_histogram.assign(d.capacity + 1, 0);
  for (const auto& tb : d.tables) {
    for (uint64_t b = 0; b < d.nbuckets; ++b) ++st.size_histogram[d.bucket_size(tb, (uint32_t)b)];
    st.stored += tb.stored;
  }
  st.full_buckets = st.size_histogram[d.capacity];
  st.dropped = d.idmap.size() * d.l - st.stored;
  return st;
}

}  // namespace hashlab
