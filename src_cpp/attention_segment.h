// The index's hash tables: the tokens [sinks, idx_end) are split into segments, each a
// contiguous token range [start, start + n). A segment stores, per (KV head, table):
//   off   (nb + 1) uint32: bucket b's entries are [off[b], off[b+1]); nb = 2^kb buckets
//         chosen by the low kb bits of the key's code, kb = min(k, bitlen(n) - 4), so
//         that a bucket holds ~8-16 keys or more on average;
//   low   W bits per entry, in entry order: (local id & (2^L - 1)) | (code >> kb) << L,
//         i.e. the low L = kb bits of the id and the code's k - kb remaining bits (the
//         tag, checked against the query's; none when k <= kb);
//   high  the ids' high parts, Elias-Fano style: bucket b owns bits
//         [off[b] + b*H, off[b+1] + (b+1)*H) (H = number of possible high parts) and its
//         j-th entry (ids ascending) sets bit off[b] + b*H + (id >> L) + j.
// That is k + ~2 bits per (key, table) plus 32 * nb / n for the offsets (12.3 bits at
// k = 10, n = 96K) instead of MagicPIG's 32-bit ids. Building a table is a histogram of
// the buckets, then one pass in id order that ORs each entry into place (so buckets come
// out sorted).
#pragma once
#include <cstdint>
#include <vector>

#include "big_alloc.h"

namespace hashlab {
namespace attn {

struct Segment {
  int64_t start = 0, n = 0;
  int kb = 0, L = 0, T = 0, W = 0;
  int64_t nb = 0, H = 0, lw = 0, hw = 0;
  // one allocation: the offsets, then the low and high words
  Buf<uint64_t> mem;
  uint32_t* off = nullptr;   // [(g * l + t) * (nb + 1) + b]
  uint64_t* low = nullptr;   // [(g * l + t) * lw + w]
  uint64_t* high = nullptr;  // [(g * l + t) * hw + w]

  int64_t nbytes() const { return mem.bytes(); }
};

// The layout of n tokens from `start` (k-bit codes, l tables per KV head), uninitialised.
Segment make_segment(int64_t start, int64_t n, int k, int64_t heads, int l);

struct TableRef {
  const uint32_t* off;
  const uint64_t* low;
  const uint64_t* high;
};

inline TableRef table_ref(const Segment& s, int64_t g, int t, int l) {
  const int64_t ti = g * l + t;
  return {s.off + ti * (s.nb + 1), s.low + ti * s.lw, s.high + ti * s.hw};
}

// Builds table (g, t) from the codes of the segment's n tokens (local ids 0..n-1);
// C is uint16_t or uint32_t. cursor: scratch.
template <typename C>
void build_table(const Segment& s, int64_t g, int t, int l, const C* codes, std::vector<uint32_t>& cursor);

// codes[id] for every local id of the segment's table (g, t).
void decode_table(const Segment& s, int64_t g, int t, int l, uint32_t* codes);

}  // namespace attn
}  // namespace hashlab
