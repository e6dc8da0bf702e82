#include "attention_segment.h"

#include <algorithm>
#include <cstring>

namespace hashlab {
namespace attn {
namespace {

inline int bitlen(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

// Builds one table of a segment from the codes of its n tokens (local ids 0..n-1): a
// histogram of the buckets gives the offsets, then each token, in id order (so each
// bucket comes out sorted), ORs its low field and its high bit straight into place.
// Both arrays (~n * (k + 2) bits) stay in L2 while they are filled.
template <bool TAG, typename C>
void build_table_impl(const Segment& s, uint32_t* off, uint64_t* low, uint64_t* high, const C* codes,
                      std::vector<uint32_t>& cursor) {
  const uint32_t bmask = (uint32_t)(s.nb - 1);
  const int W = s.W, L = s.L, kb = s.kb;
  const int64_t H = s.H, n = s.n;
  std::fill(off, off + s.nb + 1, 0u);
  for (int64_t i = 0; i < n; ++i) ++off[(codes[i] & bmask) + 1];
  for (int64_t b = 0; b < s.nb; ++b) off[b + 1] += off[b];
  cursor.assign(off, off + s.nb);
  uint32_t* __restrict cur = cursor.data();
  std::memset(low, 0, sizeof(uint64_t) * s.lw);
  std::memset(high, 0, sizeof(uint64_t) * s.hw);
  uint8_t* __restrict lb = reinterpret_cast<uint8_t*>(low);
  const uint64_t lmask = (uint64_t(1) << L) - 1;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t c = codes[i], b = c & bmask;
    const int64_t e = cur[b]++;
    const uint64_t f = TAG ? ((uint64_t)i & lmask) | (((uint64_t)c >> kb) << L) : ((uint64_t)i & lmask);
    // the field's W <= 32 bits at bit e * W: one unaligned 8-byte OR (the last word is
    // padding, so it never reads past the array)
    const int64_t bp = e * W;
    uint64_t x;
    std::memcpy(&x, lb + (bp >> 3), 8);
    x |= f << (bp & 7);
    std::memcpy(lb + (bp >> 3), &x, 8);
    const int64_t hp = e + (int64_t)b * H + (int64_t)((uint64_t)i >> L);
    high[hp >> 6] |= uint64_t(1) << (hp & 63);
  }
}

// Calls f(id_high, field) for every entry of bucket b, ids ascending.
template <typename Fn>
inline void for_bucket(const Segment& s, const TableRef& tr, uint32_t b, Fn&& f) {
  const int64_t e0 = tr.off[b], e1 = tr.off[b + 1];
  if (e0 == e1) return;
  const int64_t hs = e0 + (int64_t)b * s.H;
  int64_t wi = hs >> 6;
  uint64_t w = tr.high[wi] & (~uint64_t(0) << (hs & 63));
  const uint8_t* lb = reinterpret_cast<const uint8_t*>(tr.low);
  const uint64_t wmask = (uint64_t(1) << s.W) - 1;
  const int W = s.W;
  for (int64_t e = e0; e < e1; ++e) {
    while (!w) w = tr.high[++wi];
    const int64_t pos = wi * 64 + __builtin_ctzll(w);
    w &= w - 1;
    const uint64_t hi = (uint64_t)(pos - hs - (e - e0));
    const int64_t bp = e * W;
    uint64_t fld;
    std::memcpy(&fld, lb + (bp >> 3), 8);
    f(hi, (fld >> (bp & 7)) & wmask);
  }
}

}  // namespace

Segment make_segment(int64_t start, int64_t n, int k, int64_t heads, int l) {
  Segment s;
  s.start = start;
  s.n = n;
  s.kb = std::max(1, std::min(k, bitlen((uint64_t)n) - 4));
  s.L = std::min(s.kb, bitlen((uint64_t)(n - 1)));
  s.T = k - s.kb;
  s.W = s.L + s.T;
  s.nb = int64_t(1) << s.kb;
  s.H = ((n - 1) >> s.L) + 1;
  s.lw = (n * s.W + 63) / 64 + 1;  // + 1: the decoder reads 8 bytes at any entry
  s.hw = (n + s.nb * s.H + 63) / 64 + 1;
  const int64_t off_words = (heads * l * (s.nb + 1) + 1) / 2, low_words = heads * l * s.lw;
  // 4 KB pages: huge ones gave no measurable decode gain here, and on a VM whose host
  // backs memory lazily their first touch costs ~2x (0.2-0.4 s more per 96K-token build)
  s.mem.alloc(off_words + low_words + heads * l * s.hw, false);
  s.off = reinterpret_cast<uint32_t*>(s.mem.data());
  s.low = s.mem.data() + off_words;
  s.high = s.low + low_words;
  return s;
}

template <typename C>
void build_table(const Segment& s, int64_t g, int t, int l, const C* codes, std::vector<uint32_t>& cursor) {
  const int64_t ti = g * l + t;
  uint32_t* off = s.off + ti * (s.nb + 1);
  uint64_t* low = s.low + ti * s.lw;
  uint64_t* high = s.high + ti * s.hw;
  if (s.T) build_table_impl<true>(s, off, low, high, codes, cursor);
  else build_table_impl<false>(s, off, low, high, codes, cursor);
}

template void build_table<uint16_t>(const Segment&, int64_t, int, int, const uint16_t*, std::vector<uint32_t>&);
template void build_table<uint32_t>(const Segment&, int64_t, int, int, const uint32_t*, std::vector<uint32_t>&);

void decode_table(const Segment& s, int64_t g, int t, int l, uint32_t* codes) {
  const TableRef tr = table_ref(s, g, t, l);
  const uint64_t lmask = (uint64_t(1) << s.L) - 1;
  for (int64_t b = 0; b < s.nb; ++b)
    for_bucket(s, tr, (uint32_t)b, [&](uint64_t hi, uint64_t fld) {
      const uint64_t id = (hi << s.L) | (fld & lmask);
      codes[id] = (uint32_t)((uint64_t)b | ((fld >> s.L) << s.kb));
    });
}

}  // namespace attn
}  // namespace hashlab
