// LSHTablesCore::Impl: the tables' state and their bucket operations, shared by
// tables.cpp (updates, freeze, thaw, stats) and tables_query.cpp (queries).
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
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <shared_mutex>
#include <string>
#include <vector>

#include "hashlab/common.h"
#include "hashlab/tables.h"
#include "tables_arena.h"
#include "tables_idmap.h"
#include "tables_query.h"

namespace hashlab {
namespace tbl {

constexpr uint64_t kGolden64 = 0x9E3779B97F4A7C15ull;

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// splitmix64: the state advances by the golden gamma, the output is the mixed state.
struct SplitMix64 {
  uint64_t state = 0;
  uint64_t next() { return mix64(state += kGolden64); }
};

}  // namespace tbl

struct LSHTablesCore::Impl {
  int l, key_bits, range_bits, capacity;
  Policy policy;
  uint64_t seed;
  uint64_t nbuckets;
  bool fold;                      // key_bits > range_bits: multiplicative fold, else bucket = key
  int nclasses;                   // classes 1..nclasses-1
  std::vector<uint32_t> cls_words;  // block words of each class (policy word + ids)

  struct Table {
    tbl::Bucket* buckets = nullptr;  // dynamic layout (nullptr when frozen)
    tbl::Arena arena;
    tbl::SplitMix64 rng;
    int64_t stored = 0;
    std::vector<uint32_t> offsets;  // frozen layout
    std::vector<int32_t> fids;
  };
  std::vector<Table> tables;
  bool is_frozen = false;

  tbl::IdMap idmap;                 // id -> row
  std::vector<uint32_t> rows;  // (rows, l): bucket of the id in each table
  std::vector<int32_t> free_rows;
  int64_t max_id = -1;  // upper bound of the ids present (reset when empty)

  mutable std::shared_mutex mu;
  mutable tbl::Pool<tbl::Scratch> scratch_pool;
  mutable tbl::Pool<tbl::OutBuf> out_pool;

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
    tb.buckets = static_cast<tbl::Bucket*>(std::calloc(nbuckets, sizeof(tbl::Bucket)));
    if (!tb.buckets) throw std::bad_alloc();
  }
  void drop_dynamic(Table& tb) {
    std::free(tb.buckets);
    tb.buckets = nullptr;
    tb.arena.release();
  }
  // Moves bucket bk to class cls (0 = no block), keeping the policy word and ids.
  void reblock(Table& tb, tbl::Bucket& bk, int cls) {
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
  void insert_one(Table& tb, tbl::Bucket& bk, int32_t id) {
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
  void remove_one(Table& tb, tbl::Bucket& bk, int32_t id) {
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

  tbl::Span span_of(const Table& tb, uint32_t b) const {
    if (is_frozen) {
      uint32_t lo = tb.offsets[b];
      return {tb.fids.data() + lo, tb.offsets[b + 1] - lo, 0};
    }
    const tbl::Bucket& bk = tb.buckets[b];
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
      tbl::prefetch(header_addr(tables[t], qb[t]));
    }
  }
  // Spans of the located buckets, with the first line of each prefetched.
  void resolve(const std::vector<uint32_t>& qb, std::vector<tbl::Span>& spans) const {
    for (int t = 0; t < l; ++t) {
      spans[t] = span_of(tables[t], qb[t]);
      if (spans[t].n) tbl::prefetch(spans[t].ids);
    }
  }

  // Appends the ordered candidates of the query whose spans are in s.spans to out.
  int64_t collect(tbl::Scratch& s, bool dense, int min_c, int64_t max_cand, tbl::OutBuf& out) const;
};

}  // namespace hashlab
