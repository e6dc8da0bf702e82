#include "attention_count.h"

#include <cstring>

namespace hashlab {
namespace attn {
namespace {

// Collisions of one query code with one table: walks the query's bucket.
// Not inlined, so that the loop gets the registers to itself (inlined into the decode
// step it reloaded five values from the stack per entry); no SLP vectorising, which
// turned the two 8-byte bitmap updates into a slower 16-byte load-blend-store.
template <bool TAG, int MODE>
__attribute__((noinline, optimize("no-tree-slp-vectorize"))) void count_table(const Segment& s, const TableRef& tr,
                                                                             uint32_t qcode, const Counters& C) {
  const uint32_t b = qcode & (uint32_t)(s.nb - 1);
  const int64_t e0 = tr.off[b], e1 = tr.off[b + 1];
  if (e0 == e1) return;
  const uint64_t qt = (uint64_t)qcode >> s.kb;
  const int L = s.L, W = s.W;
  const uint64_t lmask = (uint64_t(1) << L) - 1, wmask = (uint64_t(1) << W) - 1;
  const int64_t hs = e0 + (int64_t)b * s.H, hb = hs - e0, base = s.start;
  const uint64_t* __restrict high = tr.high;
  const uint8_t* __restrict lb = reinterpret_cast<const uint8_t*>(tr.low);
  uint64_t* __restrict sel = C.sel;
  int64_t wi = hs >> 6;
  uint64_t w = high[wi] & (~uint64_t(0) << (hs & 63));
  for (int64_t e = e0; e < e1; ++e) {
    while (!w) w = high[++wi];
    const int64_t pos = (wi << 6) + __builtin_ctzll(w);
    w &= w - 1;
    const int64_t bp = e * W;
    uint64_t fld;
    std::memcpy(&fld, lb + (bp >> 3), 8);
    fld = (fld >> (bp & 7)) & wmask;
    if (TAG && (fld >> L) != qt) continue;
    const int64_t id = base + (int64_t)(((uint64_t)(pos - hb - e) << L) | (fld & lmask));
    const int64_t wd = id >> 6;
    const uint64_t bit = uint64_t(1) << (id & 63);
    if (MODE == 1) {
      sel[wd] |= bit;
    } else if (MODE == 2) {
      uint64_t* p = sel + 2 * wd;  // p[-1]: seen once, p[0]: sampled
      p[0] |= p[-1] & bit;
      p[-1] |= bit;
    } else {
      uint8_t c = C.cnt[id];
      c = (uint8_t)(c + (c != 255));
      C.cnt[id] = c;
      if (c == C.m) sel[wd] |= bit;
    }
  }
}

template <int MODE>
inline void count_table_any(const Segment& s, const TableRef& tr, uint32_t qcode, const Counters& C) {
  if (s.T) count_table<true, MODE>(s, tr, qcode, C);
  else count_table<false, MODE>(s, tr, qcode, C);
}

// The buckets of the next tables are prefetched: offsets 8 tables ahead, entries 4 ahead.
template <int MODE>
void count_head_mode(const std::vector<Segment>& segs, int64_t g, int l, const uint32_t* qc, int64_t qstride,
                     const Counters& C) {
  constexpr int AHEAD_OFF = 8, AHEAD_DATA = 4;
  for (const Segment& seg : segs) {
    const uint32_t bmask = (uint32_t)(seg.nb - 1);
    for (int t = 0; t < l; ++t) {
      if (t + AHEAD_OFF < l) {
        const TableRef tr = table_ref(seg, g, t + AHEAD_OFF, l);
        __builtin_prefetch(tr.off + (qc[(t + AHEAD_OFF) * qstride] & bmask));
      }
      if (t + AHEAD_DATA < l) {
        const TableRef tr = table_ref(seg, g, t + AHEAD_DATA, l);
        const uint32_t b = qc[(t + AHEAD_DATA) * qstride] & bmask;
        const int64_t e0 = tr.off[b];
        const char* lo = reinterpret_cast<const char*>(tr.low) + ((e0 * seg.W) >> 3);
        __builtin_prefetch(lo);
        __builtin_prefetch(lo + 64);
        __builtin_prefetch(reinterpret_cast<const char*>(tr.high) + ((e0 + (int64_t)b * seg.H) >> 3));
      }
      count_table_any<MODE>(seg, table_ref(seg, g, t, l), qc[t * qstride], C);
    }
  }
}

}  // namespace

void count_head(const std::vector<Segment>& segs, int64_t g, int l, const uint32_t* qc, int64_t qstride,
                const Counters& C) {
  if (C.m == 1) count_head_mode<1>(segs, g, l, qc, qstride, C);
  else if (C.m == 2) count_head_mode<2>(segs, g, l, qc, qstride, C);
  else count_head_mode<0>(segs, g, l, qc, qstride, C);
}

}  // namespace attn
}  // namespace hashlab
