// LSH tables over precomputed uint32 keys (interface and contract: include/hashlab/tables.h).
//
// Dynamic layout (the default), per table:
//   - 2^range_bits bucket headers of 8 bytes: {uint32 block offset, uint16 size,
//     uint16 size class}; class 0 = no block, so an empty bucket costs 8 bytes. The
//     header array comes from calloc: pages of buckets that stay empty are never touched.
//   - blocks in a per-table arena: block[0] is the policy word (fifo: ring head, non-zero
//     only when the bucket is full; reservoir: n of algorithm R = the present ids that
//     map to the bucket), block[1..] the ids. Block sizes grow by about 1.5x (2, 4, 6, 8,
//     12, 16, 24, ... words, i.e. 1, 3, 5, 7, 11, 15, 23, ... ids) up to capacity + 1
//     words, so a bucket wastes about a fifth of its block on average. The arena is a
//     list of pages (16 KiB doubling to 1 MiB, so at most 1 MiB of unused tail per table)
//     with a free list per class: no per-bucket malloc, no copying on growth. Memory
//     freed by removals is reused by later inserts; clear() and freeze() return it.
//   - per id its l bucket indices (one uint32 row per id, rows reused after removal) and
//     an open-addressing map id -> row, so remove() needs only ids.
// Frozen layout, per table: offsets (2^range_bits + 1, uint32) and the ids sorted by
// bucket, each bucket in the order a dynamic query visits it; the arena is freed.
//
// Bucket order: a fifo bucket lists its ids oldest first (a full one is a ring starting
// at its head); a reservoir bucket lists them by slot. Queries visit tables in order and
// each bucket in that order; "first discovery" in tables.h refers to this sequence.
//
// dropped = (ids present) * l - (ids stored over all tables): the (id, table) pairs a
// full bucket did not keep (never stored or evicted), net of removals.
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

namespace hashlab {
namespace {

constexpr int kMaxRangeBits = 28;
constexpr int kMaxL = 65535;
constexpr int kMaxCapacity = 65535;
constexpr uint64_t kGolden64 = 0x9E3779B97F4A7C15ull;
constexpr const char* kFrozenMsg = "index is frozen; call thaw() first";

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }
inline void prefetch_w(const void* p) { __builtin_prefetch(p, 1, 3); }

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// splitmix64: the state advances by the golden gamma, the output is the mixed state.
struct SplitMix64 {
  uint64_t state = 0;
  uint64_t next() { return mix64(state += kGolden64); }
};

// Generator of table t: state0 = mix64(seed + gamma * (t + 1)).
uint64_t table_seed(uint64_t seed, int t) { return mix64(seed + kGolden64 * (uint64_t)(t + 1)); }

struct Bucket {
  uint32_t off;   // arena offset of the block (valid when cls > 0)
  uint16_t size;  // ids stored
  uint16_t cls;   // size class of the block, 0 = none
};
static_assert(sizeof(Bucket) == 8, "bucket header must stay 8 bytes");

// Per-table block allocator. An offset is page << 22 | word index in the page.
class Arena {
 public:
  static constexpr int kPageShift = 18;  // at most 256K words (1 MiB) per page
  static constexpr uint32_t kMaxPages = 1u << (32 - kPageShift);  // 16 GiB per table

  Arena() = default;
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;
  Arena(Arena&& o) noexcept { *this = std::move(o); }
  Arena& operator=(Arena&& o) noexcept {
    std::swap(pages_, o.pages_);
    std::swap(page_words_, o.page_words_);
    std::swap(used_, o.used_);
    std::swap(free_, o.free_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~Arena() { release(); }

  int32_t* ptr(uint32_t off) const { return pages_[off >> kPageShift] + (off & ((1u << kPageShift) - 1)); }

  // A block of `words` words (<= 2^kPageShift) for class cls.
  uint32_t alloc(int cls, uint32_t words) {
    if ((int)free_.size() > cls && !free_[cls].empty()) {
      uint32_t off = free_[cls].back();
      free_[cls].pop_back();
      return off;
    }
    if (pages_.empty() || used_ + words > page_words_.back()) new_page(words);
    uint32_t off = ((uint32_t)(pages_.size() - 1) << kPageShift) | used_;
    used_ += words;
    return off;
  }
  void free(int cls, uint32_t off) {
    if ((int)free_.size() <= cls) free_.resize(cls + 1);
    free_[cls].push_back(off);
  }
  void release() {
    for (int32_t* p : pages_) std::free(p);
    pages_.clear();
    page_words_.clear();
    std::vector<std::vector<uint32_t>>().swap(free_);
    used_ = 0;
    bytes_ = 0;
  }
  int64_t nbytes() const {
    int64_t b = bytes_ + (int64_t)(pages_.capacity() * sizeof(int32_t*) + page_words_.capacity() * 4);
    for (const auto& f : free_) b += (int64_t)(f.capacity() * 4);
    return b;
  }

 private:
  void new_page(uint32_t words) {
    if (pages_.size() >= kMaxPages) throw std::length_error("LSH table arena: more than 16 GiB in one table");
    // pages double from 4K words (16 KiB) to 2^kPageShift words; always room for the block
    uint32_t size = pages_.empty() ? (1u << 12) : std::min(page_words_.back() * 2, 1u << kPageShift);
    size = std::max(size, words);
    int32_t* p = static_cast<int32_t*>(std::malloc((size_t)size * sizeof(int32_t)));
    if (!p) throw std::bad_alloc();
    pages_.push_back(p);
    page_words_.push_back(size);
    used_ = 0;
    bytes_ += (int64_t)size * 4;
  }
  std::vector<int32_t*> pages_;
  std::vector<uint32_t> page_words_;
  uint32_t used_ = 0;  // words used in the last page
  std::vector<std::vector<uint32_t>> free_;
  int64_t bytes_ = 0;
};

// Open-addressing map from id (>= 0) to a row index; linear probing with
// backward-shift deletion, load factor <= 1/2.
class IdMap {
 public:
  IdMap() = default;
  IdMap(const IdMap&) = delete;
  IdMap& operator=(const IdMap&) = delete;
  ~IdMap() { std::free(slots_); }
  int64_t size() const { return count_; }
  int64_t nbytes() const { return slots_ ? (int64_t)(mask_ + 1) * (int64_t)sizeof(Slot) : 0; }

  int32_t find(int32_t id) const {
    if (!slots_) return -1;
    for (uint64_t i = fmix32((uint32_t)id) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].id == id) return slots_[i].row;
      if (slots_[i].id < 0) return -1;
    }
  }
  void reserve(int64_t n) {
    uint64_t want = 16;
    while ((int64_t)want < 2 * n) want <<= 1;
    if (!slots_ || want > mask_ + 1) rehash(want);
  }
  // id must be absent and reserve(size() + 1) done.
  void put(int32_t id, int32_t row) {
    uint64_t i = fmix32((uint32_t)id) & mask_;
    while (slots_[i].id >= 0) i = (i + 1) & mask_;
    slots_[i] = {id, row};
    ++count_;
  }
  // Removes id; returns its row or -1 when absent.
  int32_t erase(int32_t id) {
    if (!slots_) return -1;
    uint64_t i = fmix32((uint32_t)id) & mask_;
    while (slots_[i].id != id) {
      if (slots_[i].id < 0) return -1;
      i = (i + 1) & mask_;
    }
    int32_t row = slots_[i].row;
    // backward shift: move later members of the probe run into the hole
    uint64_t hole = i;
    for (uint64_t j = (i + 1) & mask_; slots_[j].id >= 0; j = (j + 1) & mask_) {
      uint64_t home = fmix32((uint32_t)slots_[j].id) & mask_;
      // j can fill the hole unless its home lies cyclically in (hole, j]
      bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
      if (!stays) {
        slots_[hole] = slots_[j];
        hole = j;
      }
    }
    slots_[hole] = {-1, -1};
    --count_;
    return row;
  }
  void clear() {
    std::free(slots_);
    slots_ = nullptr;
    mask_ = 0;
    count_ = 0;
  }

 private:
  struct Slot {
    int32_t id;
    int32_t row;
  };
  void rehash(uint64_t cap) {
    Slot* fresh = static_cast<Slot*>(std::malloc(cap * sizeof(Slot)));
    if (!fresh) throw std::bad_alloc();
    std::memset(fresh, 0xFF, cap * sizeof(Slot));  // id = row = -1
    Slot* old = slots_;
    uint64_t old_cap = old ? mask_ + 1 : 0;
    slots_ = fresh;
    mask_ = cap - 1;
    count_ = 0;
    for (uint64_t i = 0; i < old_cap; ++i)
      if (old[i].id >= 0) put(old[i].id, old[i].row);
    std::free(old);
  }
  Slot* slots_ = nullptr;
  uint64_t mask_ = 0;
  int64_t count_ = 0;
};

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

}  // namespace

struct LSHTablesCore::Impl {
  int l, key_bits, range_bits, capacity;
  Policy policy;
  uint64_t seed;
  uint64_t nbuckets;
  bool fold;                      // key_bits > range_bits: multiplicative fold, else bucket = key
  int nclasses;                   // classes 1..nclasses-1
  std::vector<uint32_t> cls_words;  // block words of each class (policy word + ids)

  struct Table {
    Bucket* buckets = nullptr;  // dynamic layout (nullptr when frozen)
    Arena arena;
    SplitMix64 rng;
    int64_t stored = 0;
    std::vector<uint32_t> offsets;  // frozen layout
    std::vector<int32_t> fids;
  };
  std::vector<Table> tables;
  bool is_frozen = false;

  IdMap idmap;                 // id -> row
  std::vector<uint32_t> rows;  // (rows, l): bucket of the id in each table
  std::vector<int32_t> free_rows;
  int64_t max_id = -1;  // upper bound of the ids present (reset when empty)

  mutable std::shared_mutex mu;
  mutable Pool<Scratch> scratch_pool;
  mutable Pool<OutBuf> out_pool;

  ~Impl() {
    for (auto& tb : tables) std::free(tb.buckets);
  }

  uint32_t bucket_of(uint32_t key) const {
    return fold ? (uint32_t)((key * 0x9E3779B1u) >> (32 - range_bits)) : key;
  }
  uint32_t cls_ids(int cls) const { return cls_words[cls] - 1; }
  int cls_for(uint32_t n) const {  // smallest class holding n ids (n <= capacity)
    int c = 1;
    while (cls_ids(c) < n) ++c;
    return c;
  }

  void check_keys(const uint32_t* keys, int64_t count, int64_t row0) const {
    if (key_bits >= 32) return;
    const uint32_t limit = 1u << key_bits;
    uint32_t bad = 0;
    for (int64_t i = 0; i < count; ++i) bad |= (keys[i] >= limit);
    if (!bad) return;
    for (int64_t i = 0; i < count; ++i)
      if (keys[i] >= limit)
        fail("keys: expected values < 2^" + std::to_string(key_bits) + " (key_bits), got " +
             std::to_string(keys[i]) + " at row " + std::to_string(row0 + i / l) + ", table " +
             std::to_string(i % l));
  }

  // ---- dynamic buckets -------------------------------------------------------
  void alloc_headers(Table& tb) {
    tb.buckets = static_cast<Bucket*>(std::calloc(nbuckets, sizeof(Bucket)));
    if (!tb.buckets) throw std::bad_alloc();
  }
  void drop_dynamic(Table& tb) {
    std::free(tb.buckets);
    tb.buckets = nullptr;
    tb.arena.release();
  }
  // Moves bucket bk to class cls (0 = no block), keeping the policy word and ids.
  void reblock(Table& tb, Bucket& bk, int cls) {
    uint32_t off = 0;
    if (cls > 0) {
      off = tb.arena.alloc(cls, cls_words[cls]);
      int32_t* dst = tb.arena.ptr(off);
      if (bk.cls > 0)
        std::memcpy(dst, tb.arena.ptr(bk.off), (size_t)(bk.size + 1) * sizeof(int32_t));
      else
        dst[0] = 0;
    }
    if (bk.cls > 0) tb.arena.free(bk.cls, bk.off);
    bk.off = off;
    bk.cls = (uint16_t)cls;
  }
  void insert_one(Table& tb, Bucket& bk, int32_t id) {
    if (bk.size < capacity) {
      if (bk.cls == 0 || bk.size == cls_ids(bk.cls)) reblock(tb, bk, bk.cls + 1);
      int32_t* p = tb.arena.ptr(bk.off);
      if (policy == Policy::reservoir && (uint32_t)p[0] != UINT32_MAX) p[0] = (int32_t)((uint32_t)p[0] + 1);
      p[1 + bk.size++] = id;
      ++tb.stored;
      return;
    }
    int32_t* p = tb.arena.ptr(bk.off);
    uint32_t aux = (uint32_t)p[0];
    if (policy == Policy::fifo) {
      p[1 + aux] = id;  // overwrite the oldest, advance the ring
      p[0] = (int32_t)(aux + 1 == (uint32_t)capacity ? 0 : aux + 1);
    } else {
      if (aux != UINT32_MAX) p[0] = (int32_t)++aux;  // n, this arrival included
      uint64_t j = (uint64_t)(((__uint128_t)tb.rng.next() * aux) >> 64);  // uniform in [0, n)
      if (j < (uint64_t)capacity) p[1 + j] = id;
    }
  }
  void remove_one(Table& tb, Bucket& bk, int32_t id) {
    if (bk.cls == 0) return;  // (fifo) every id of this bucket was removed or evicted
    int32_t* p = tb.arena.ptr(bk.off);
    uint32_t aux = (uint32_t)p[0];
    if (policy == Policy::reservoir && aux > 0 && aux != UINT32_MAX) p[0] = (int32_t)--aux;  // one fewer present
    int32_t* ids = p + 1;
    int pos = -1;
    for (int i = 0; i < bk.size; ++i)
      if (ids[i] == id) {
        pos = i;
        break;
      }
    if (pos >= 0) {
      if (policy == Policy::fifo && aux != 0) {  // full ring: linearise (oldest first), then erase
        std::rotate(ids, ids + aux, ids + bk.size);
        pos = (pos - (int)aux + bk.size) % bk.size;
        p[0] = 0;
        aux = 0;
      }
      std::memmove(ids + pos, ids + pos + 1, (size_t)(bk.size - pos - 1) * sizeof(int32_t));
      --bk.size;
      --tb.stored;
    }
    // shrink: free an empty block (unless it still counts arrivals), halve a sparse one
    if (bk.size == 0 && (policy == Policy::fifo || aux == 0))
      reblock(tb, bk, 0);
    else if (bk.cls > 1 && bk.size <= cls_ids(bk.cls - 1) / 2)
      reblock(tb, bk, bk.cls - 1);
  }

  Span span_of(const Table& tb, uint32_t b) const {
    if (is_frozen) {
      uint32_t lo = tb.offsets[b];
      return {tb.fids.data() + lo, tb.offsets[b + 1] - lo, 0};
    }
    const Bucket& bk = tb.buckets[b];
    if (bk.cls == 0) return {nullptr, 0, 0};
    const int32_t* p = tb.arena.ptr(bk.off);
    return {p + 1, bk.size, policy == Policy::fifo ? (uint32_t)p[0] : 0u};
  }
  const void* header_addr(const Table& tb, uint32_t b) const {
    return is_frozen ? (const void*)(tb.offsets.data() + b) : (const void*)(tb.buckets + b);
  }
  uint32_t bucket_size(const Table& tb, uint32_t b) const {
    return is_frozen ? tb.offsets[b + 1] - tb.offsets[b] : tb.buckets[b].size;
  }

  // ---- queries ---------------------------------------------------------------
  // Buckets of a query, with their headers prefetched.
  void locate(const uint32_t* key, std::vector<uint32_t>& qb) const {
    for (int t = 0; t < l; ++t) {
      qb[t] = bucket_of(key[t]);
      prefetch(header_addr(tables[t], qb[t]));
    }
  }
  // Spans of the located buckets, with the first line of each prefetched.
  void resolve(const std::vector<uint32_t>& qb, std::vector<Span>& spans) const {
    for (int t = 0; t < l; ++t) {
      spans[t] = span_of(tables[t], qb[t]);
      if (spans[t].n) prefetch(spans[t].ids);
    }
  }

  // Appends the ordered candidates of the query whose spans are in s.spans to out.
  int64_t collect(Scratch& s, bool dense, int min_c, int64_t max_cand, OutBuf& out) const {
    s.touched.clear();
    std::vector<int32_t>& cnts = s.cnts;  // counts, parallel to touched
    const int span = l - min_c + 1;       // possible counts: min_c..l
    auto visit = [&](const Span& sp, auto&& f) {
      for (uint32_t i = sp.head; i < sp.n; ++i) f(sp.ids[i]);
      for (uint32_t i = 0; i < sp.head; ++i) f(sp.ids[i]);
    };
    int64_t nt;
    bool counting;  // counting sort (else stable sort of few candidates)
    if (dense) {
      uint16_t* cnt = s.dense;
      for (int t = 0; t < l; ++t)
        visit(s.spans[t], [&](int32_t id) {
          if (cnt[id]++ == 0) s.touched.push_back(id);
        });
      nt = (int64_t)s.touched.size();
      cnts.resize(nt);
      counting = span <= nt;
      if (counting) s.hist.assign(span, 0);
      for (int64_t i = 0; i < nt; ++i) {
        int32_t id = s.touched[i];
        int c = cnt[id];
        cnt[id] = 0;
        cnts[i] = c;
        if (counting && c >= min_c) ++s.hist[l - c];
      }
    } else {
      // distinct candidates <= min(sum of the bucket sizes, ids present)
      int64_t bound = 0;
      for (int t = 0; t < l; ++t) bound += s.spans[t].n;
      bound = std::min<int64_t>(bound, idmap.size());
      uint64_t cap = 16;
      while ((int64_t)cap < 2 * bound) cap <<= 1;
      if (s.hashed.size() < cap) s.hashed.assign(cap, Scratch::HSlot{-1, 0});
      const uint64_t mask = cap - 1;  // the first cap slots only
      Scratch::HSlot* hs = s.hashed.data();
      auto slot_of = [&](int32_t id) {
        uint64_t i = fmix32((uint32_t)id) & mask;
        while (hs[i].id != id && hs[i].id >= 0) i = (i + 1) & mask;
        return i;
      };
      for (int t = 0; t < l; ++t)
        visit(s.spans[t], [&](int32_t id) {
          uint64_t i = slot_of(id);
          if (hs[i].id < 0) {
            hs[i].id = id;
            s.touched.push_back(id);
          }
          ++hs[i].count;
        });
      nt = (int64_t)s.touched.size();
      cnts.resize(nt);
      counting = span <= nt;
      if (counting) s.hist.assign(span, 0);
      for (int64_t i = 0; i < nt; ++i) {
        int c = (int)hs[slot_of(s.touched[i])].count;
        cnts[i] = c;
        if (counting && c >= min_c) ++s.hist[l - c];
      }
      std::fill(hs, hs + cap, Scratch::HSlot{-1, 0});
    }
    // filter, order by count descending, ties in discovery order
    int64_t kept = 0;
    if (counting) {
      for (int c = 0; c < span; ++c) {  // bin 0 holds count l
        int64_t h = s.hist[c];
        s.hist[c] = kept;
        kept += h;
      }
    } else {
      for (int64_t i = 0; i < nt; ++i) kept += cnts[i] >= min_c;
    }
    const int64_t take = max_cand > 0 ? std::min(kept, max_cand) : kept;
    if (take == 0) return 0;
    const size_t base = out.ids.size();
    out.ids.resize(base + take);
    out.counts.resize(base + take);
    int32_t* oid = out.ids.data() + base;
    int32_t* oc = out.counts.data() + base;
    if (counting) {
      for (int64_t i = 0; i < nt; ++i) {
        int c = cnts[i];
        if (c < min_c) continue;
        int64_t p = s.hist[l - c]++;
        if (p < take) {
          oid[p] = s.touched[i];
          oc[p] = c;
        }
      }
    } else {
      s.idx.clear();
      for (int64_t i = 0; i < nt; ++i)
        if (cnts[i] >= min_c) s.idx.push_back((int32_t)i);
      std::stable_sort(s.idx.begin(), s.idx.end(), [&](int32_t a, int32_t b) { return cnts[a] > cnts[b]; });
      for (int64_t j = 0; j < take; ++j) {
        oid[j] = s.touched[s.idx[j]];
        oc[j] = cnts[s.idx[j]];
      }
    }
    return take;
  }
};

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

QueryResult LSHTablesCore::query(const uint32_t* keys, int64_t nq, int min_collisions,
                                 int64_t max_candidates) const {
  const Impl& d = *impl_;
  if (nq < 0) fail("nq: expected >= 0 queries, got " + std::to_string(nq));
  if (nq > 0 && !keys) fail("query: expected non-null keys, got a null pointer");
  if (min_collisions < 1 || min_collisions > d.l)
    fail("min_collisions: expected 1.." + std::to_string(d.l) + " (l), got " + std::to_string(min_collisions));
  const int l = d.l;
  parallel_for(nq, 4096, [&](int64_t b, int64_t e) { d.check_keys(keys + b * l, (e - b) * l, b); });
  QueryResult res;
  res.indptr.assign(nq + 1, 0);
  if (nq == 0) return res;
  std::shared_lock<std::shared_mutex> rd(d.mu);
  const int64_t max_id = d.max_id;
  const bool dense = max_id + 1 <= std::max<int64_t>(int64_t(1) << 21, 16 * d.idmap.size());
  std::vector<std::unique_ptr<OutBuf>> outs;
  std::mutex outs_mu;
  // A failure (allocation) drops the scratch in use, whose counters may be dirty.
  parallel_for(nq, 16, [&](int64_t b, int64_t e) {
    std::unique_ptr<Scratch> s = d.scratch_pool.take();
    std::unique_ptr<OutBuf> out = d.out_pool.take();
    out->begin = b;
    out->lens.resize(e - b);
    out->ids.clear();
    out->counts.clear();
    if (dense) s->ensure_dense(max_id + 1);
    s->qb[0].resize(l);
    s->qb[1].resize(l);
    s->spans.resize(l);
    d.locate(keys + b * l, s->qb[0]);
    for (int64_t q = b; q < e; ++q) {
      int cur = (int)((q - b) & 1);
      d.resolve(s->qb[cur], s->spans);
      if (q + 1 < e) d.locate(keys + (q + 1) * l, s->qb[cur ^ 1]);  // next query's headers
      out->lens[q - b] = d.collect(*s, dense, min_collisions, max_candidates, *out);
    }
    d.scratch_pool.give(std::move(s));
    std::lock_guard<std::mutex> g(outs_mu);
    outs.push_back(std::move(out));
  });
  std::sort(outs.begin(), outs.end(), [](const auto& a, const auto& b) { return a->begin < b->begin; });
  int64_t total = 0;
  for (const auto& o : outs)
    for (size_t j = 0; j < o->lens.size(); ++j) {
      total += o->lens[j];
      res.indptr[o->begin + (int64_t)j + 1] = total;
    }
  res.ids.resize(total);
  res.counts.resize(total);
  for (auto& o : outs) {
    int64_t at = res.indptr[o->begin];
    if (!o->ids.empty()) {
      std::memcpy(res.ids.data() + at, o->ids.data(), o->ids.size() * sizeof(int32_t));
      std::memcpy(res.counts.data() + at, o->counts.data(), o->counts.size() * sizeof(int32_t));
    }
    if (o->ids.capacity() > (size_t(1) << 20)) {  // keep at most 8 MiB of output buffers each
      std::vector<int32_t>().swap(o->ids);
      std::vector<int32_t>().swap(o->counts);
    }
    d.out_pool.give(std::move(o));
  }
  return res;
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
