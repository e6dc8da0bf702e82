// LSH-sampled decode attention (MagicPIG) and the exact kernels it is compared with.
// See include/hashlab/attention.h for the algorithm; this file holds the index layout,
// the decode step and the threading. The vector code is in kernels/attention_kernel.inc.
//
// Index layout. The indexed tokens [sinks, idx_end) are split into segments, each a
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
// out sorted). Tokens leaving the window are indexed `chunk` at a
// time as a new segment; the last two segments are merged (decoded back to codes and
// rebuilt) while the older one is at most twice the newer one: O(log n) segments.
//
// The KV cache keeps a token's key row and value row side by side: a sampled token is
// one contiguous read, and its |k - mean| (for the correction) comes from the same pass
// over the key row as its logit.
//
// Decode step, per query head: hash the query (same rotations, not centred); for every
// (segment, table) walk the query's bucket and count collisions per token (for m = 2, two
// interleaved bitmaps: seen once, sampled); the result is a bitmap of sampled tokens.
// Per KV head, the union of its query heads' bitmaps is split by word ranges into parts
// of about equal size. Each part reads its words of the bitmaps a block at a time (ids
// ascending, with a bitmask of heads per token, so every key and value row is read once
// per group) and computes, per head, the max, the sum of exp and the weighted sum of
// values of its keys (plus the dense keys in part 0), flash-decoding style; the parts are
// merged with log-sum-exp. Counting and attention run as one task list that the threads
// take in order (a KV head's parts one KV head behind its counts): no barrier between
// the phases, and one thread's counting overlaps the other's reading of rows.
#include "hashlab/attention.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "dispatch.h"
#include "hashlab/common.h"
#include "hashlab/threads.h"
#include "kernels/attention_kernels.h"
#include "kernels/vector_ops.h"

namespace hashlab {
namespace {

const AttnKernels& kern() {
  switch (simd_level()) {
    case Simd::avx512: return avx512::attn_kernels;
    case Simd::avx2: return avx2::attn_kernels;
    default: return scalar::attn_kernels;
  }
}

inline int bitlen(uint64_t x) { return x ? 64 - __builtin_clzll(x) : 0; }

// Inline bit count: this file is built for baseline x86-64, where __builtin_popcountll is a
// library call.
inline int64_t popcount64(uint64_t x) {
  x -= (x >> 1) & 0x5555555555555555ull;
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return (int64_t)((x * 0x0101010101010101ull) >> 56);
}

inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The KV pages are read at random, a row at a time: 2 MB aligned and backed by
// transparent huge pages where the system allows it, to spare a TLB miss per row.
constexpr size_t HUGE_PAGE = size_t(2) << 20;

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// huge: ask for huge pages (only for memory that will be filled: a huge page is
// committed, and zeroed, as a whole on first touch). Only the whole 2 MB pages of the
// array are advised, so that the tail costs no more than its 4 KB pages.
void* big_alloc(size_t bytes, bool huge = true) {
  if (bytes == 0) return nullptr;
  void* p = nullptr;
  if (bytes >= HUGE_PAGE) {
    if (posix_memalign(&p, HUGE_PAGE, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(p, bytes / HUGE_PAGE * HUGE_PAGE, MADV_HUGEPAGE);
#endif
  } else {
    p = std::malloc(bytes);
    if (!p) throw std::bad_alloc();
  }
  return p;
}

// Uninitialised array (the builders zero what they use, in the thread that uses it).
template <typename T>
struct Buf {
  std::unique_ptr<T, FreeDeleter> p;
  int64_t n = 0, allocated = 0;
  void alloc(int64_t count, bool huge = true) {
    const size_t bytes = sizeof(T) * (size_t)count;
    p.reset(static_cast<T*>(big_alloc(bytes, huge)));
    n = count;
    allocated = (int64_t)((bytes + 4095) / 4096 * 4096);
  }
  T* data() { return p.get(); }
  const T* data() const { return p.get(); }
  int64_t bytes() const { return allocated; }  // in whole 4 KB pages
};

inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
}

// ---------------------------------------------------------------------------
// log u = log P[Binomial(l, p) >= m] and its interpolation table
// ---------------------------------------------------------------------------

struct LogUTableData {
  std::vector<float> F, dF;
  LogUTable view;
};

constexpr int TABLE_INTERVALS = 4096;

// log pmf(j; n, p) for 0 < p < 1.
inline double log_pmf(int j, int n, double lp, double lq) {
  return std::lgamma(n + 1.0) - std::lgamma(j + 1.0) - std::lgamma(n - j + 1.0) + j * lp + (n - j) * lq;
}

double log_sf_impl(int m, int l, double p) {
  if (m <= 0) return 0.0;
  if (m > l || p <= 0.0) return -INFINITY;
  if (p >= 1.0) return 0.0;
  const double lp = std::log(p), lq = std::log1p(-p), ratio = p / (1.0 - p);
  // lower tail sum_{j < m} by the term recurrence from j = 0
  double lower = 0.0;
  {
    double t = std::exp(l * lq);  // pmf(0)
    for (int j = 0; j < m; ++j) {
      lower += t;
      t *= (double)(l - j) / (j + 1) * ratio;
    }
  }
  if (lower < 0.5) return std::log1p(-lower);
  // upper tail directly, relative to its first term (no cancellation, no underflow)
  const double t0 = log_pmf(m, l, lp, lq);
  double s = 0.0, t = 1.0;
  for (int j = m; j <= l; ++j) {
    s += t;
    t *= (double)(l - j) / (j + 1) * ratio;
    if (j > l * p && t < 1e-17 * s) break;
  }
  return t0 + std::log(s);
}

std::shared_ptr<const LogUTableData> log_u_table(int l, int m) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, std::shared_ptr<const LogUTableData>> cache;
  std::lock_guard<std::mutex> g(mu);
  auto it = cache.find({l, m});
  if (it != cache.end()) return it->second;
  auto d = std::make_shared<LogUTableData>();
  if (m > 0) {
    const int n = TABLE_INTERVALS;
    const double x_lo = std::log(1e-7 / l), h = -x_lo / n;
    d->F.resize(n + 1);
    d->dF.resize(n + 1);
    for (int i = 0; i <= n; ++i) {
      const double x = i == n ? 0.0 : x_lo + i * h, p = std::exp(x);
      const double F = log_sf_impl(m, l, p);
      // dF/dx = p * l * pmf(m - 1; l - 1, p) / u
      double dF;
      if (p >= 1.0) dF = (m == l) ? (double)l : 0.0;
      else dF = std::exp(std::log((double)l) + x + log_pmf(m - 1, l - 1, std::log(p), std::log1p(-p)) - F);
      d->F[i] = (float)F;
      d->dF[i] = (float)dF;
    }
    d->view.zero = false;
    d->view.n = n;
    d->view.x_lo = (float)x_lo;
    d->view.h = (float)h;
    d->view.inv_h = (float)(1.0 / h);
    d->view.slope_lo = (float)m;
    d->view.F = d->F.data();
    d->view.dF = d->dF.data();
  }
  cache[{l, m}] = d;
  return d;
}

// ---------------------------------------------------------------------------
// Segments: Elias-Fano coded buckets
// ---------------------------------------------------------------------------

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

struct TableRef {
  const uint32_t* off;
  const uint64_t* low;
  const uint64_t* high;
};

inline TableRef table_ref(const Segment& s, int64_t g, int t, int l) {
  const int64_t ti = g * l + t;
  return {s.off + ti * (s.nb + 1), s.low + ti * s.lw, s.high + ti * s.hw};
}

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

template <typename C>
void build_table(const Segment& s, int64_t g, int t, int l, const C* codes, std::vector<uint32_t>& cursor) {
  const int64_t ti = g * l + t;
  uint32_t* off = s.off + ti * (s.nb + 1);
  uint64_t* low = s.low + ti * s.lw;
  uint64_t* high = s.high + ti * s.hw;
  if (s.T) build_table_impl<true>(s, off, low, high, codes, cursor);
  else build_table_impl<false>(s, off, low, high, codes, cursor);
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

// codes[id] for every local id of the segment's table (g, t).
void decode_table(const Segment& s, int64_t g, int t, int l, uint32_t* codes) {
  const TableRef tr = table_ref(s, g, t, l);
  const uint64_t lmask = (uint64_t(1) << s.L) - 1;
  for (int64_t b = 0; b < s.nb; ++b)
    for_bucket(s, tr, (uint32_t)b, [&](uint64_t hi, uint64_t fld) {
      const uint64_t id = (hi << s.L) | (fld & lmask);
      codes[id] = (uint32_t)((uint64_t)b | ((fld >> s.L) << s.kb));
    });
}

// Collision counters of one query head over the token range. The sampled tokens end up
// marked in a bitmap, word w at sel[w * stride]. m = 1: a first collision marks (stride
// 1). m = 2: the words of a "seen once" bitmap and of the sampled one alternate
// (stride 2, once at sel[2w - 1]): one cache line holds both, and the two bitmaps of
// n/8 bytes each stay in L1/L2 where a byte per token would not. m >= 3: saturating
// uint8 counts.
struct Counters {
  int m = 2;
  uint8_t* cnt = nullptr;
  uint64_t* sel = nullptr;
  int stride = 1;
};

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

// All collisions of one query head (codes qc[t * qstride]) with KV head g's index.
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

void count_head(const std::vector<Segment>& segs, int64_t g, int l, const uint32_t* qc, int64_t qstride,
                const Counters& C) {
  if (C.m == 1) count_head_mode<1>(segs, g, l, qc, qstride, C);
  else if (C.m == 2) count_head_mode<2>(segs, g, l, qc, qstride, C);
  else count_head_mode<0>(segs, g, l, qc, qstride, C);
}

// ---------------------------------------------------------------------------
// The attention engine shared by the LSH index and the exact kernels
// ---------------------------------------------------------------------------

// Row i of KV head g: pages of 2^shift rows, `stride` bytes apart from `offset` on
// (the index keeps a token's key and value rows side by side: stride = 2 * row_bytes).
struct Rows {
  const uint8_t* const* pages = nullptr;
  int64_t pages_per_head = 1;
  int shift = 40;
  int64_t row_bytes = 0, stride = 0, offset = 0;
  const uint8_t* row(int64_t g, int64_t i) const {
    return pages[g * pages_per_head + (i >> shift)] + offset + (i & ((int64_t(1) << shift) - 1)) * stride;
  }
};

// Heads [h0, h0 + Gs) of KV head g (Gs <= 32).
struct SubGroup {
  int64_t g, h0;
  int Gs;
};

struct Correction {
  bool on = false;
  const LogUTable* tab = nullptr;
  int k = 0;
  const float* kmean = nullptr;    // the key mean of KV head g (set per subgroup)
  const float* qmu = nullptr;      // per head (absolute head index)
  const float* qnorm = nullptr;
  const float* extra = nullptr;
};

// The sampled keys of one subgroup, read from its heads' bitmaps (head h0 + j's nw words
// at sel[(h0 + j) * nw]) over the word range [w, w_end): the union, ids ascending, with a
// bitmask of the heads that sampled each token (bit j = head h0 + j), a block at a time.
struct UnionReader {
  const uint64_t* b = nullptr;
  int64_t nw = 0, w = 0, w_end = 0;
  int Gs = 0;
  uint64_t rem = 0;  // union bits of word w not yet returned
  uint64_t hw[32];   // the heads' words w

  UnionReader(const uint64_t* sel, int64_t nw_, const SubGroup& sg, int64_t w0, int64_t w1)
      : b(sel + sg.h0 * nw_), nw(nw_), w(w0 - 1), w_end(w1), Gs(sg.Gs) {}

  // Fills up to cap (ids, masks); returns how many (0 at the end).
  int64_t next(int32_t* ids, uint32_t* masks, int64_t cap) {
    int64_t n = 0;
    while (n < cap) {
      while (!rem) {
        if (w + 1 >= w_end) return n;
        ++w;
        for (int j = 0; j < Gs; ++j) rem |= hw[j] = b[j * nw + w];
      }
      const int bit = __builtin_ctzll(rem);
      rem &= rem - 1;
      uint32_t m = 0;
      for (int j = 0; j < Gs; ++j) m |= (uint32_t)((hw[j] >> bit) & 1) << j;
      ids[n] = (int32_t)(w * 64 + bit);
      masks[n++] = m;
    }
    return n;
  }
};

// One part of a subgroup's keys: dense token ranges (every head) and the sampled keys
// of a UnionReader (none if null). Writes per head (max, sum of exp, sum of exp * v)
// into part[j * (d + 2) ...].
//
// Flash-decoding style: the sampled keys come in blocks with a running max per head: a
// key pass (logits, then the corrections per head), then a value pass over the block.
// The rows are prefetched PF keys ahead; the next block is decoded before the key pass
// so that the prefetches run across block boundaries. When each value row follows its
// key row (the index's layout), the key pass fetches both, and the value pass finds the
// block's values in cache; otherwise the value pass prefetches its own rows, the first
// ones before the block's corrections are computed.
void attend_part(const AttnKernels& K, const Rows& Kr, const Rows& Vr, bool bf16, const float* Q, int64_t d,
                 float scale, const SubGroup& sg, const std::vector<std::pair<int64_t, int64_t>>& ranges,
                 UnionReader* rd, const Correction& cor, float* part) {
  const int Gs = sg.Gs;
  const int64_t g = sg.g;
  const float* Qs = Q + sg.h0 * d;
  const auto& vo = vector_ops();
  std::vector<float> M(Gs, -INFINITY), S(Gs, 0.0f), acc((size_t)Gs * d, 0.0f);
  // merges a block's logits (z[i], i < n_j) of head j into the running state; z becomes weights
  auto absorb = [&](int j, float* z, int64_t n_j) {
    float mx = M[j];
    for (int64_t i = 0; i < n_j; ++i) mx = std::max(mx, z[i]);
    if (!(mx > -INFINITY)) {
      std::fill(z, z + n_j, 0.0f);
      return;
    }
    if (mx > M[j]) {
      const float f = M[j] > -INFINITY ? std::exp(M[j] - mx) : 0.0f;
      S[j] *= f;
      if (f != 1.0f)
        for (int64_t e = 0; e < d; ++e) acc[j * d + e] *= f;
      M[j] = mx;
    }
    S[j] += vo.exp_shift_sum(z, n_j, mx);
  };
  // dense keys: all heads
  int64_t nd = 0;
  for (auto& r : ranges) nd += r.second - r.first;
  if (nd) {
    std::vector<float> zd((size_t)Gs * nd), tmp(Gs);
    int64_t i = 0;
    for (auto& r : ranges)
      for (int64_t t = r.first; t < r.second; ++t, ++i) {
        K.dots_row(Qs, d, Gs, Kr.row(g, t), bf16, d, tmp.data());
        for (int j = 0; j < Gs; ++j) zd[j * nd + i] = tmp[j] * scale;
      }
    for (int j = 0; j < Gs; ++j) absorb(j, zd.data() + j * nd, nd);
    i = 0;
    for (auto& r : ranges)
      for (int64_t t = r.first; t < r.second; ++t, ++i) {
        const uint8_t* row = Vr.row(g, t);
        for (int j = 0; j < Gs; ++j) K.axpy_row(zd[j * nd + i], row, bf16, acc.data() + j * d, d);
      }
  }
  if (rd) {
    constexpr int64_t BLOCK = 256;
    const int64_t PF = std::max<int64_t>(2, 2048 / std::max<int64_t>(Kr.row_bytes, 1));  // rows ahead
    const int64_t rb = Kr.row_bytes;
    const bool together = Vr.pages == Kr.pages && Vr.offset == Kr.offset + rb;
    const int64_t kfetch = together ? 2 * rb : rb;  // bytes prefetched per key
    const float* kmean = cor.on ? cor.kmean : nullptr;
    std::vector<int32_t> ids(2 * BLOCK);
    std::vector<uint32_t> masks(2 * BLOCK);
    std::vector<int64_t> cnt(Gs + 1), cur(Gs);
    std::vector<float> zdot((size_t)BLOCK * Gs), nrm(kmean ? (size_t)BLOCK * Gs : 0), zs((size_t)BLOCK * Gs);
    int c = 0;
    int64_t n = rd->next(ids.data(), masks.data(), BLOCK);
    for (int64_t u = 0; u < std::min(n, PF); ++u) prefetch_bytes(Kr.row(g, ids[u]), kfetch);
    while (n > 0) {
      const int32_t* id = ids.data() + c * BLOCK;
      const uint32_t* mk = masks.data() + c * BLOCK;
      const int32_t* id_next = ids.data() + (c ^ 1) * BLOCK;
      const int64_t n_next = rd->next(ids.data() + (c ^ 1) * BLOCK, masks.data() + (c ^ 1) * BLOCK, BLOCK);
      // per head: its keys' slots [cnt[j], cnt[j + 1]) in zdot / zs
      std::fill(cnt.begin(), cnt.end(), 0);
      for (int64_t u = 0; u < n; ++u)
        for (uint32_t m = mk[u]; m; m &= m - 1) ++cnt[__builtin_ctz(m) + 1];
      for (int j = 0; j < Gs; ++j) cnt[j + 1] += cnt[j];
      std::copy(cnt.begin(), cnt.end() - 1, cur.begin());
      for (int64_t u = 0; u < n; ++u) {
        const int64_t a = u + PF;
        const int64_t pid = a < n ? id[a] : (a - n < n_next ? id_next[a - n] : -1);
        if (pid >= 0) prefetch_bytes(Kr.row(g, pid), kfetch);
        const uint8_t* row = Kr.row(g, id[u]);
        float kn = 0.0f;  // |k - mean|, from the first head's pass over the row
        for (uint32_t m = mk[u]; m; m &= m - 1) {
          const int j = __builtin_ctz(m);
          if (kmean) {
            zdot[cur[j]] = m == mk[u] ? K.dot_norm_row(Qs + j * d, row, kmean, bf16, d, &kn)
                                      : K.dot_row(Qs + j * d, row, bf16, d);
            nrm[cur[j]] = kn;
          } else {
            zdot[cur[j]] = K.dot_row(Qs + j * d, row, bf16, d);
          }
          ++cur[j];
        }
      }
      if (!together)
        for (int64_t u = 0; u < std::min(n, PF); ++u) prefetch_bytes(Vr.row(g, id[u]), rb);
      for (int j = 0; j < Gs; ++j) {
        const int64_t a = cnt[j], n_j = cnt[j + 1] - a;
        if (!n_j) continue;
        const int64_t h = sg.h0 + j;
        if (kmean)
          K.correct_logits(zdot.data() + a, nrm.data() + a, n_j, cor.qmu[h], cor.qnorm[h], scale, cor.k, *cor.tab,
                           cor.extra[h], zs.data() + a);
        else
          for (int64_t i = 0; i < n_j; ++i) zs[a + i] = scale * zdot[a + i];
        absorb(j, zs.data() + a, n_j);
      }
      std::copy(cnt.begin(), cnt.end() - 1, cur.begin());
      for (int64_t u = 0; u < n; ++u) {
        if (!together && u + PF < n) prefetch_bytes(Vr.row(g, id[u + PF]), rb);
        const uint8_t* row = Vr.row(g, id[u]);
        for (uint32_t m = mk[u]; m; m &= m - 1) {
          const int j = __builtin_ctz(m);
          K.axpy_row(zs[cur[j]++], row, bf16, acc.data() + j * d, d);
        }
      }
      c ^= 1;
      n = n_next;
    }
  }
  for (int j = 0; j < Gs; ++j) {
    float* p = part + j * (d + 2);
    p[0] = M[j];
    p[1] = S[j];
    std::memcpy(p + 2, acc.data() + j * d, sizeof(float) * d);
  }
}

struct Task {
  int sg = 0;
  int64_t w0 = 0, w1 = 0;  // words of the subgroup's bitmaps
  std::vector<std::pair<int64_t, int64_t>> ranges;
};

// Merges the parts of every head: out = acc / sum, lse = max + log(sum).
void merge_parts(const std::vector<SubGroup>& sgs, const std::vector<Task>& tasks, const std::vector<float>& parts,
                 int64_t d, float* out, float* lse) {
  std::vector<int64_t> part_off(tasks.size() + 1, 0);
  for (size_t t = 0; t < tasks.size(); ++t) part_off[t + 1] = part_off[t] + sgs[tasks[t].sg].Gs * (d + 2);
  for (size_t si = 0; si < sgs.size(); ++si) {
    const SubGroup& sg = sgs[si];
    for (int j = 0; j < sg.Gs; ++j) {
      float mx = -INFINITY;
      for (size_t t = 0; t < tasks.size(); ++t)
        if (tasks[t].sg == (int)si) mx = std::max(mx, parts[part_off[t] + j * (d + 2)]);
      float* o = out + (sg.h0 + j) * d;
      std::fill(o, o + d, 0.0f);
      double s = 0.0;
      if (mx > -INFINITY) {
        std::vector<double> acc(d, 0.0);
        for (size_t t = 0; t < tasks.size(); ++t) {
          if (tasks[t].sg != (int)si) continue;
          const float* p = parts.data() + part_off[t] + j * (d + 2);
          if (!(p[0] > -INFINITY)) continue;
          const double f = std::exp((double)p[0] - mx);
          s += f * p[1];
          for (int64_t e = 0; e < d; ++e) acc[e] += f * p[2 + e];
        }
        for (int64_t e = 0; e < d; ++e) o[e] = s > 0 ? (float)(acc[e] / s) : 0.0f;
      }
      if (lse) lse[sg.h0 + j] = s > 0 ? (float)(mx + std::log(s)) : -INFINITY;
    }
  }
}

std::vector<SubGroup> make_subgroups(int64_t n_heads, int64_t n_kv) {
  const int64_t G = n_heads / n_kv;
  std::vector<SubGroup> sgs;
  for (int64_t g = 0; g < n_kv; ++g)
    for (int64_t j0 = 0; j0 < G; j0 += 32) sgs.push_back({g, g * G + j0, (int)std::min<int64_t>(32, G - j0)});
  return sgs;
}

// Word boundaries that split the union of a subgroup's bitmaps into up to `want` parts
// of about equal size (at least ~256 keys each): {0, ..., nw}.
std::vector<int64_t> split_union(const SubGroup& sg, const uint64_t* sel, int64_t nw, int64_t want) {
  std::vector<uint32_t> pc(nw);
  const uint64_t* b = sel + sg.h0 * nw;
  int64_t total = 0;
  for (int64_t w = 0; w < nw; ++w) {
    uint64_t any = 0;
    for (int j = 0; j < sg.Gs; ++j) any |= b[j * nw + w];
    pc[w] = (uint32_t)popcount64(any);
    total += pc[w];
  }
  const int64_t np = std::max<int64_t>(1, std::min<int64_t>(want, total / 256));
  std::vector<int64_t> bd{0};
  int64_t acc = 0, p = 1;
  for (int64_t w = 0; w < nw && p < np; ++w) {
    acc += pc[w];
    if (acc * np >= p * total) {
      bd.push_back(w + 1);
      ++p;
    }
  }
  bd.push_back(nw);
  return bd;
}

// Parts per subgroup so that the threads get about 8 parts each.
int64_t parts_wanted(size_t n_subgroups) {
  const int64_t threads = get_num_threads(), S = (int64_t)n_subgroups;
  return std::max<int64_t>(1, (8 * threads + S - 1) / S);
}

// One part: its sampled keys (words [t.w0, t.w1) of its subgroup's bitmaps) and dense ranges.
void run_task(const AttnKernels& K, const Rows& Kr, const Rows& Vr, bool bf16, const float* Q, int64_t d,
              float scale, const std::vector<SubGroup>& sgs, const uint64_t* sel, int64_t nw, const Task& t,
              const Correction& cor_base, const float* kmeans, float* part) {
  const SubGroup& sg = sgs[t.sg];
  Correction cor = cor_base;
  if (cor.on) cor.kmean = kmeans + sg.g * d;
  if (t.w1 > t.w0) {
    UnionReader rd(sel, nw, sg, t.w0, t.w1);
    attend_part(K, Kr, Vr, bf16, Q, d, scale, sg, t.ranges, &rd, cor, part);
  } else {
    attend_part(K, Kr, Vr, bf16, Q, d, scale, sg, t.ranges, nullptr, cor, part);
  }
}

// Runs the parts of every subgroup over the threads and merges them. Sampled keys: the
// per-head bitmaps sel (nw words per head; null: none). dense_block > 0 cuts the dense
// ranges into parts of that many keys (the exact kernels); otherwise they go to part 0.
void run_attention(const AttnKernels& K, const Rows& Kr, const Rows& Vr, bool bf16, const float* Q, int64_t d,
                   float scale, const std::vector<SubGroup>& sgs, const uint64_t* sel, int64_t nw,
                   const std::vector<std::pair<int64_t, int64_t>>& dense, int64_t dense_block,
                   const Correction& cor_base, const float* kmeans, float* out, float* lse) {
  const int64_t want = parts_wanted(sgs.size());
  std::vector<std::vector<int64_t>> bounds(sgs.size());
  if (sel)
    parallel_for((int64_t)sgs.size(), 1, [&](int64_t s0, int64_t s1) {
      for (int64_t si = s0; si < s1; ++si) bounds[si] = split_union(sgs[si], sel, nw, want);
    });
  std::vector<Task> tasks;
  for (size_t si = 0; si < sgs.size(); ++si) {
    if (dense_block > 0) {
      for (auto& r : dense)
        for (int64_t a = r.first; a < r.second; a += dense_block)
          tasks.push_back({(int)si, 0, 0, {{a, std::min(r.second, a + dense_block)}}});
    }
    if (sel) {
      const auto& bd = bounds[si];
      for (size_t p = 0; p + 1 < bd.size(); ++p) tasks.push_back({(int)si, bd[p], bd[p + 1], {}});
    }
    if (dense_block <= 0 && !dense.empty()) {
      if (sel) tasks[tasks.size() - (bounds[si].size() - 1)].ranges = dense;
      else tasks.push_back({(int)si, 0, 0, dense});
    }
  }
  std::vector<int64_t> part_off(tasks.size() + 1, 0);
  for (size_t t = 0; t < tasks.size(); ++t) part_off[t + 1] = part_off[t] + sgs[tasks[t].sg].Gs * (d + 2);
  std::vector<float> parts(part_off.back());
  parallel_for((int64_t)tasks.size(), 1, [&](int64_t t0, int64_t t1) {
    for (int64_t ti = t0; ti < t1; ++ti)
      run_task(K, Kr, Vr, bf16, Q, d, scale, sgs, sel, nw, tasks[ti], cor_base, kmeans, parts.data() + part_off[ti]);
  });
  merge_parts(sgs, tasks, parts, d, out, lse);
}

// True when none of the n values (float32, or bfloat16 bit patterns) is NaN or inf.
bool all_finite(const void* p, int64_t n, bool bf16) {
  std::atomic<bool> ok{true};
  parallel_for((n + 65535) / 65536, 1, [&](int64_t c0, int64_t c1) {
    const int64_t a = c0 * 65536, b = std::min(n, c1 * 65536);
    // exponent all ones <=> (exponent bits + one exponent step) carries into the sign bit;
    // integer AND/ADD/OR only, so the loops vectorise
    uint32_t acc = 0;
    if (bf16) {
      const uint16_t* x = static_cast<const uint16_t*>(p);
      for (int64_t i = a; i < b; ++i) acc |= (uint32_t)((x[i] & 0x7F80u) + 0x0080u);
      acc &= 0x8000u;
    } else {
      const uint32_t* x = static_cast<const uint32_t*>(p);
      for (int64_t i = a; i < b; ++i) acc |= (x[i] & 0x7F800000u) + 0x00800000u;
      acc &= 0x80000000u;
    }
    if (acc) ok.store(false);
  });
  return ok.load();
}

// The exact kernels check their inputs through the output: a NaN or inf in a key or
// value row that is read makes it non-finite (no extra pass over the KV).
void check_output(const float* out, const float* lse, int64_t n_heads, int64_t d) {
  for (int64_t i = 0; i < n_heads * d; ++i)
    if (!std::isfinite(out[i])) fail("keys, values: expected finite values, got NaN or inf (non-finite output)");
  if (lse)
    for (int64_t h = 0; h < n_heads; ++h)
      if (std::isnan(lse[h]) || lse[h] == INFINITY)
        fail("keys, values: expected finite values, got NaN or inf (non-finite output)");
}

void check_heads(int64_t n_heads, int64_t n_kv, int64_t d) {
  check(n_kv >= 1, "n_kv_heads: expected >= 1");
  check(d >= 1, "head_dim: expected >= 1");
  if (n_heads < 1 || n_heads % n_kv != 0)
    fail("queries: expected a number of heads that is a positive multiple of n_kv_heads (" + std::to_string(n_kv) +
         "), got " + std::to_string(n_heads));
}

}  // namespace

double log_binom_sf(int m, int l, double p) { return log_sf_impl(m, l, p); }

void attention_sampling_prob(const float* cosv, int64_t n, int k, int l, int m, float* p, float* u) {
  check(k >= 1 && k <= 32, "k: expected 1 <= k <= 32");
  check(l >= 1, "l: expected l >= 1");
  check(m >= 0 && m <= l && m <= 255, "min_collisions: expected 0 <= min_collisions <= min(l, 255)");
  auto tab = log_u_table(l, m);
  kern().sampling_prob(cosv, n, k, tab->view, p, u);
}

// ---------------------------------------------------------------------------
// Exact kernels
// ---------------------------------------------------------------------------

namespace {
Rows contiguous_rows(const void* base, int64_t n_kv, int64_t n, int64_t row_bytes, std::vector<const uint8_t*>& pages) {
  pages.resize(n_kv);
  for (int64_t g = 0; g < n_kv; ++g) pages[g] = static_cast<const uint8_t*>(base) + g * n * row_bytes;
  Rows r;
  r.pages = pages.data();
  r.pages_per_head = 1;
  r.shift = 40;
  r.row_bytes = r.stride = row_bytes;
  return r;
}
}  // namespace

void dense_attention(const float* Q, int64_t n_heads, const void* Kp, const void* Vp, bool bf16, int64_t n_kv,
                     int64_t n, int64_t d, float scale, float* out, float* lse) {
  check_heads(n_heads, n_kv, d);
  check(n >= 0, "keys: expected n >= 0");
  const int64_t rb = d * (bf16 ? 2 : 4);
  std::vector<const uint8_t*> kp, vp;
  const Rows Kr = contiguous_rows(Kp, n_kv, n, rb, kp), Vr = contiguous_rows(Vp, n_kv, n, rb, vp);
  const auto sgs = make_subgroups(n_heads, n_kv);
  std::vector<std::pair<int64_t, int64_t>> dense;
  if (n) dense.push_back({0, n});
  run_attention(kern(), Kr, Vr, bf16, Q, d, scale, sgs, nullptr, 0, dense, 2048, Correction{}, nullptr,
                out, lse);
  check_output(out, lse, n_heads, d);
}

void topk_attention(const float* Q, int64_t n_heads, const void* Kp, const void* Vp, bool bf16, int64_t n_kv,
                    int64_t n, int64_t d, const int64_t* budget, float scale, float* out, float* lse) {
  check_heads(n_heads, n_kv, d);
  check(n >= 0, "keys: expected n >= 0");
  for (int64_t h = 0; h < n_heads; ++h) check(budget[h] >= 0, "budget: expected budgets >= 0");
  const AttnKernels& K = kern();
  const int64_t rb = d * (bf16 ? 2 : 4);
  std::vector<const uint8_t*> kp, vp;
  const Rows Kr = contiguous_rows(Kp, n_kv, n, rb, kp), Vr = contiguous_rows(Vp, n_kv, n, rb, vp);
  const auto sgs = make_subgroups(n_heads, n_kv);
  // all logits (unscaled q.k; scale > 0 keeps the order)
  std::vector<float> z(n_heads * n);
  const int64_t B = 4096, nblk = (n + B - 1) / B;
  parallel_for((int64_t)sgs.size() * nblk, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> tmp(32);
    for (int64_t ti = t0; ti < t1; ++ti) {
      const SubGroup& sg = sgs[ti / nblk];
      const int64_t a = (ti % nblk) * B, b = std::min(n, a + B);
      for (int64_t i = a; i < b; ++i) {
        K.dots_row(Q + sg.h0 * d, d, sg.Gs, Kr.row(sg.g, i), bf16, d, tmp.data());
        for (int j = 0; j < sg.Gs; ++j) z[(sg.h0 + j) * n + i] = tmp[j];
      }
    }
  });
  // NaN logits cannot be ordered (and would break nth_element): reject them first
  for (int64_t i = 0; i < n_heads * n; ++i)
    if (std::isnan(z[i])) fail("keys: expected finite values, got NaN or inf");
  // per head: the budget largest as a bitmap of nw words (ties broken by position)
  const int64_t nw = (n + 63) / 64;
  std::vector<uint64_t> sel((size_t)(n_heads * nw), 0);
  parallel_for(n_heads, 1, [&](int64_t h0, int64_t h1) {
    std::vector<float> c;
    for (int64_t h = h0; h < h1; ++h) {
      const float* zh = z.data() + h * n;
      uint64_t* bm = sel.data() + h * nw;
      const int64_t kk = std::min(budget[h], n);
      if (kk == 0) continue;
      float tau = -INFINITY;
      int64_t ties = n;
      if (kk < n) {
        c.assign(zh, zh + n);
        std::nth_element(c.begin(), c.begin() + (kk - 1), c.end(), std::greater<float>());
        tau = c[kk - 1];
        int64_t gt = 0;
        for (int64_t i = 0; i < n; ++i) gt += zh[i] > tau;
        ties = kk - gt;
      }
      for (int64_t i = 0; i < n; ++i)
        if (kk == n || zh[i] > tau || (zh[i] == tau && ties-- > 0)) bm[i >> 6] |= uint64_t(1) << (i & 63);
    }
  });
  run_attention(K, Kr, Vr, bf16, Q, d, scale, sgs, nw ? sel.data() : nullptr, nw, {}, 0, Correction{}, nullptr, out,
                lse);
  check_output(out, lse, n_heads, d);
}

// ---------------------------------------------------------------------------
// The index
// ---------------------------------------------------------------------------

struct LSHAttentionIndex::Impl {
  int page_shift = 10;  // KV pages of 2^page_shift tokens, >= 2 MB (set in the constructor)
  AttentionConfig cfg;
  int64_t D = 1, n_rot = 0;
  std::vector<float> signs;
  std::shared_ptr<const LogUTableData> tab;
  int64_t n = 0, idx_end = 0;
  bool has_prompt = false;
  std::vector<float> mean;                                   // (n_kv, d)
  // per KV head: pages of tokens, each token's key row then its value row, so that a
  // sampled token is one contiguous read (the DRAM serves it from one open row)
  std::vector<std::vector<std::unique_ptr<uint8_t, FreeDeleter>>> pages;
  std::vector<Segment> segs;
  double t_hash = 0, t_tables = 0;  // seconds spent hashing keys, building and merging tables
  mutable std::mutex mu;            // append, attend and the readers of the segments

  int64_t row_bytes() const { return cfg.head_dim * (cfg.bf16 ? 2 : 4); }

  // The key rows (values: value = true) of the pages; ptrs holds the page pointers.
  Rows rows(bool value, std::vector<const uint8_t*>& ptrs) const {
    const int64_t P = pages.empty() ? 0 : (int64_t)pages[0].size();
    ptrs.resize(cfg.n_kv_heads * std::max<int64_t>(P, 1));
    for (int64_t g = 0; g < cfg.n_kv_heads; ++g)
      for (int64_t p = 0; p < P; ++p) ptrs[g * P + p] = pages[g][p].get();
    Rows r;
    r.pages = ptrs.data();
    r.pages_per_head = std::max<int64_t>(P, 1);
    r.shift = page_shift;
    r.row_bytes = row_bytes();
    r.stride = 2 * r.row_bytes;
    r.offset = value ? r.row_bytes : 0;
    return r;
  }

  // Appends t tokens of keys and values, each (n_kv, t, d), after the n stored ones.
  void store(const void* keys, const void* values, int64_t t) {
    const int64_t rbytes = row_bytes(), page = int64_t(1) << page_shift;
    parallel_for(cfg.n_kv_heads, 1, [&](int64_t g0, int64_t g1) {
      for (int64_t g = g0; g < g1; ++g) {
        const uint8_t* ks = static_cast<const uint8_t*>(keys) + g * t * rbytes;
        const uint8_t* vs = static_cast<const uint8_t*>(values) + g * t * rbytes;
        for (int64_t j = 0; j < t; ++j) {
          const int64_t i = n + j, p = i >> page_shift;
          while ((int64_t)pages[g].size() <= p)  // huge pages once the cache is large enough to fill them
            pages[g].emplace_back(
                static_cast<uint8_t*>(big_alloc((size_t)(page * 2 * rbytes), (n + t) * 2 >= page)));
          uint8_t* dst = pages[g][p].get() + (i & (page - 1)) * 2 * rbytes;
          std::memcpy(dst, ks + j * rbytes, rbytes);
          std::memcpy(dst + rbytes, vs + j * rbytes, rbytes);
        }
      }
    });
  }

  // Hashes tokens [a, b) of every KV head, one head at a time: codes (l, b - a) of head g
  // into codes (uint16 when k <= 16: half the traffic of the table builds), then
  // after_head(g). The codes are scratch, first touched by the hashing threads.
  template <typename C, typename Fn>
  void hash_range(int64_t a, int64_t b, Buf<C>& codes, Fn&& after_head) {
    const AttnKernels& K = kern();
    const int64_t nseg = b - a, d = cfg.head_dim, rbytes = row_bytes(), page = int64_t(1) << page_shift;
    codes.alloc((int64_t)cfg.l * nseg, false);
    for (int64_t g = 0; g < cfg.n_kv_heads; ++g) {
      const int64_t blk = 64, nblk = (nseg + blk - 1) / blk;
      parallel_for(nblk, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t bi = b0; bi < b1; ++bi) {
          int64_t i = a + bi * blk;
          const int64_t e = std::min(b, i + blk);
          while (i < e) {  // split at page boundaries
            const int64_t p = i >> page_shift, o = i & (page - 1), c = std::min(e - i, page - o);
            K.hash_codes(pages[g][p].get() + o * 2 * rbytes, cfg.bf16, 2 * d, 0, c, d, mean.data() + g * d,
                         signs.data(), D, n_rot, cfg.k, cfg.l, codes.data() + (i - a), sizeof(C) == 2, nseg,
                         nullptr);
            i += c;
          }
        }
      });
      after_head(g);
    }
  }

  template <typename C>
  void index_range_t(int64_t a, int64_t b) {
    Segment s = make_segment(a, b - a, cfg.k, cfg.n_kv_heads, cfg.l);
    Buf<C> codes;
    auto t0 = std::chrono::steady_clock::now();
    hash_range(a, b, codes, [&](int64_t g) {
      auto t1 = std::chrono::steady_clock::now();
      parallel_for(cfg.l, 1, [&](int64_t t0, int64_t t1) {
        std::vector<uint32_t> cursor;
        for (int64_t t = t0; t < t1; ++t) build_table(s, g, (int)t, cfg.l, codes.data() + t * s.n, cursor);
      });
      auto t2 = std::chrono::steady_clock::now();
      t_hash += std::chrono::duration<double>(t1 - t0).count();
      t_tables += std::chrono::duration<double>(t2 - t1).count();
      t0 = t2;
    });
    segs.push_back(std::move(s));
    idx_end = b;
  }

  void index_range(int64_t a, int64_t b) {
    if (cfg.k <= 16) index_range_t<uint16_t>(a, b);
    else index_range_t<uint32_t>(a, b);
    while (segs.size() >= 2 && segs[segs.size() - 2].n <= 2 * segs.back().n) merge_last();
  }

  void merge_last() {
    const auto t0 = std::chrono::steady_clock::now();
    const Segment& A = segs[segs.size() - 2];
    const Segment& B = segs.back();
    Segment s = make_segment(A.start, A.n + B.n, cfg.k, cfg.n_kv_heads, cfg.l);
    for (int64_t g = 0; g < cfg.n_kv_heads; ++g) {
      parallel_for(cfg.l, 1, [&](int64_t t0, int64_t t1) {
        std::vector<uint32_t> codes(s.n), cursor;
        for (int64_t t = t0; t < t1; ++t) {
          decode_table(A, g, (int)t, cfg.l, codes.data());
          decode_table(B, g, (int)t, cfg.l, codes.data() + A.n);
          build_table(s, g, (int)t, cfg.l, codes.data(), cursor);
        }
      });
    }
    segs.pop_back();
    segs.back() = std::move(s);
    t_tables += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }

  int64_t dense_count() const {
    const int64_t s = std::min(cfg.sinks, n);
    return s + std::max<int64_t>(0, n - std::max(idx_end, s));
  }
};

LSHAttentionIndex::LSHAttentionIndex(const AttentionConfig& cfg, const float* signs, int64_t n_rot)
    : impl_(new Impl()) {
  check(cfg.head_dim >= 1 && cfg.head_dim <= (1 << 16), "head_dim: expected 1 <= head_dim <= 65536");
  check(cfg.n_kv_heads >= 1, "n_kv_heads: expected >= 1");
  check(cfg.k >= 1 && cfg.k <= 32, "k: expected 1 <= k <= 32");
  check(cfg.l >= 1 && cfg.l <= 65535, "l: expected 1 <= l <= 65535");
  check(cfg.min_collisions >= 0 && cfg.min_collisions <= cfg.l && cfg.min_collisions <= 255,
        "min_collisions: expected 0 <= min_collisions <= min(l, 255)");
  check(cfg.sinks >= 0 && cfg.window >= 0, "sinks, window: expected >= 0");
  check(cfg.chunk >= 1, "chunk: expected >= 1");
  check(cfg.max_sampled >= 0, "max_sampled: expected >= 0");
  Impl& m = *impl_;
  m.cfg = cfg;
  while (m.D < cfg.head_dim) m.D <<= 1;
  check(n_rot >= cfg.k && n_rot * m.D >= (int64_t)cfg.k * cfg.l,
        "signs: expected n_rot >= k rotations and n_rot * D >= k * l bits");
  check(signs != nullptr, "signs: expected the rotation signs");
  m.n_rot = n_rot;
  m.signs.assign(signs, signs + (n_rot + 2) * m.D);
  m.tab = log_u_table(cfg.l, cfg.min_collisions);
  m.mean.assign(cfg.n_kv_heads * cfg.head_dim, 0.0f);
  m.pages.resize(cfg.n_kv_heads);
  m.idx_end = cfg.sinks;
  while ((int64_t(1) << m.page_shift) * 2 * m.row_bytes() < (int64_t)HUGE_PAGE) ++m.page_shift;
}

LSHAttentionIndex::~LSHAttentionIndex() = default;

void LSHAttentionIndex::append(const void* keys, const void* values, int64_t t) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  check(t >= 0, "keys: expected t >= 0 tokens");
  if (!m.has_prompt) check(t >= 1, "keys: expected at least one token in the first append (the prompt)");
  if (t == 0) return;
  check(keys != nullptr && values != nullptr, "keys, values: expected arrays");
  const AttentionConfig& c = m.cfg;
  const int64_t d = c.head_dim;
  if (!all_finite(keys, c.n_kv_heads * t * d, c.bf16)) fail("keys: expected finite values, got NaN or inf");
  if (!all_finite(values, c.n_kv_heads * t * d, c.bf16)) fail("values: expected finite values, got NaN or inf");
  if (m.n + t >= (int64_t(1) << 31) - 1) fail("keys: expected at most 2^31 - 2 tokens in total");
  m.store(keys, values, t);
  const bool first = !m.has_prompt;
  if (first) {
    // centring mean of the prompt keys, accumulated in double
    parallel_for(c.n_kv_heads, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      std::vector<double> s(d, 0.0);
      for (int64_t i = 0; i < t; ++i) {
        const uint8_t* r = static_cast<const uint8_t*>(keys) + (g * t + i) * m.row_bytes();
        for (int64_t e = 0; e < d; ++e) {
          float x;
          if (c.bf16) {
            uint16_t b;
            std::memcpy(&b, r + 2 * e, 2);
            const uint32_t u = (uint32_t)b << 16;
            std::memcpy(&x, &u, 4);
          } else {
            std::memcpy(&x, r + 4 * e, 4);
          }
          s[e] += x;
        }
      }
      for (int64_t e = 0; e < d; ++e) m.mean[g * d + e] = (float)(s[e] / (double)t);
    }
    });
    m.has_prompt = true;
  }
  m.n += t;
  if (first) {
    if (m.n - c.window > c.sinks) m.index_range(c.sinks, m.n - c.window);
  } else {
    while (m.n - c.window - m.idx_end >= c.chunk) m.index_range(m.idx_end, m.idx_end + c.chunk);
  }
}

void LSHAttentionIndex::attend(const float* Q, int64_t n_heads, float scale, float* out, float* lse,
                               int64_t* touched) {
  Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  const AttentionConfig& c = m.cfg;
  if (!m.has_prompt) throw std::runtime_error("index is empty; call append() first");
  check_heads(n_heads, c.n_kv_heads, c.head_dim);
  const AttnKernels& K = kern();
  const int64_t d = c.head_dim, G = n_heads / c.n_kv_heads, n_idx = m.idx_end - c.sinks;
  const bool sampled = n_idx > 0 && !m.segs.empty();
  // 1. query codes (table-major) and norms; q . mean of the KV head
  std::vector<uint32_t> qcodes((size_t)c.l * n_heads);
  std::vector<float> qnorm(n_heads), qmu(n_heads), extra(n_heads, 0.0f);
  K.hash_codes(Q, false, d, 0, n_heads, d, nullptr, m.signs.data(), m.D, m.n_rot, c.k, c.l, qcodes.data(), false,
               n_heads, qnorm.data());
  for (int64_t h = 0; h < n_heads; ++h) qmu[h] = K.dot(Q + h * d, m.mean.data() + (h / G) * d, d);
  // 2. Counting and attention, in one parallel job. The task list holds per subgroup the
  // counts of its heads (each head's sampled tokens as a bitmap of nw words), then, one
  // subgroup behind so that they seldom wait, its attention parts; the threads take the
  // tasks in order. The thread that finishes a subgroup's last count splits its union into
  // parts, which wait for that split. One job instead of three phases: no barriers
  // between them, and one thread's counting (compute) runs beside the other's attention
  // (random reads of KV rows).
  const int64_t ntok = m.idx_end, nw = (ntok + 63) / 64;
  std::vector<uint64_t> sel(sampled ? (size_t)(n_heads * nw) : 0);
  std::vector<int64_t> n_sel(n_heads, 0);
  // the sampled tokens of head h into sel[h * nw ...] (scratch: per worker)
  auto count_one = [&](int64_t h, std::vector<uint8_t>& cnt, std::vector<uint64_t>& bm, std::vector<int32_t>& s) {
    uint64_t* out_bm = sel.data() + h * nw;
    if (c.min_collisions == 0) {
      for (int64_t i = c.sinks; i < ntok; ++i) out_bm[i >> 6] |= uint64_t(1) << (i & 63);
    } else {
      Counters C;
      C.m = c.min_collisions;
      C.stride = C.m == 2 ? 2 : 1;
      bm.assign(nw * C.stride, 0);
      C.sel = bm.data() + (C.stride - 1);
      if (C.m >= 3) {
        cnt.assign(ntok, 0);
        C.cnt = cnt.data();
      }
      count_head(m.segs, h / G, c.l, qcodes.data() + h, n_heads, C);
      for (int64_t w = 0; w < nw; ++w) out_bm[w] = C.sel[w * C.stride];
    }
    int64_t sz = 0;
    for (int64_t w = 0; w < nw; ++w) sz += popcount64(out_bm[w]);
    n_sel[h] = sz;
    if (c.max_sampled > 0 && sz > c.max_sampled) {
      // uniform subsample without replacement; the weights gain the factor size / cap
      s.clear();
      for (int64_t w = 0; w < nw; ++w)
        for (uint64_t x = out_bm[w]; x; x &= x - 1) s.push_back((int32_t)(w * 64 + __builtin_ctzll(x)));
      uint64_t st = c.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(h + 1)) ^ ((uint64_t)m.n << 32);
      const int64_t cap = c.max_sampled;
      for (int64_t i = 0; i < cap; ++i) {
        const int64_t j = i + (int64_t)(splitmix64(st) % (uint64_t)(sz - i));
        std::swap(s[i], s[j]);
      }
      std::fill(out_bm, out_bm + nw, 0);
      for (int64_t i = 0; i < cap; ++i) out_bm[s[i] >> 6] |= uint64_t(1) << (s[i] & 63);
      n_sel[h] = cap;
      extra[h] = (float)std::log((double)cap / (double)sz);
    }
  };
  // dense keys: the sinks, and the window with the generated tokens not yet indexed
  std::vector<std::pair<int64_t, int64_t>> dense;
  const int64_t s_end = std::min(c.sinks, m.n);
  if (s_end > 0) dense.push_back({0, s_end});
  const int64_t w0 = std::max(m.idx_end, s_end);
  if (w0 < m.n) dense.push_back({w0, m.n});
  const auto sgs = make_subgroups(n_heads, c.n_kv_heads);
  const int64_t S = (int64_t)sgs.size(), P = sampled ? parts_wanted(sgs.size()) : 1;
  std::vector<Task> tasks(S * P);  // part p of subgroup si: tasks[si * P + p]; the dense keys in part 0
  std::vector<int64_t> part_off(S * P + 1, 0), head_sg(n_heads);
  for (int64_t si = 0; si < S; ++si) {
    for (int j = 0; j < sgs[si].Gs; ++j) head_sg[sgs[si].h0 + j] = si;
    for (int64_t p = 0; p < P; ++p) {
      tasks[si * P + p].sg = (int)si;
      part_off[si * P + p + 1] = part_off[si * P + p] + sgs[si].Gs * (d + 2);
    }
    tasks[si * P].ranges = dense;
  }
  std::vector<std::pair<int, int64_t>> order;  // (0, head): count; (1, slot): attention part
  for (int64_t si = 0; si <= S; ++si) {
    if (sampled && si < S)
      for (int j = 0; j < sgs[si].Gs; ++j) order.push_back({0, sgs[si].h0 + j});
    if (si >= 1)
      for (int64_t p = 0; p < P; ++p) order.push_back({1, (si - 1) * P + p});
  }
  std::unique_ptr<std::atomic<int>[]> counted(new std::atomic<int>[S]), ready(new std::atomic<int>[S]);
  for (int64_t si = 0; si < S; ++si) {
    counted[si].store(0);
    ready[si].store(sampled ? 0 : 1);
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::vector<float> parts(part_off.back());
  std::vector<const uint8_t*> kp, vp;
  const Rows Kr = m.rows(false, kp), Vr = m.rows(true, vp);
  Correction cor;
  cor.on = true;
  cor.tab = &m.tab->view;
  cor.k = c.k;
  cor.qmu = qmu.data();
  cor.qnorm = qnorm.data();
  cor.extra = extra.data();
  parallel_for(get_num_threads(), 1, [&](int64_t, int64_t) {
    std::vector<uint8_t> cnt;
    std::vector<uint64_t> bm;
    std::vector<int32_t> sc;
    try {
      for (;;) {
        const int64_t i = next.fetch_add(1);
        if (i >= (int64_t)order.size() || failed.load(std::memory_order_relaxed)) return;
        const int64_t x = order[i].second;
        if (order[i].first == 0) {
          count_one(x, cnt, bm, sc);
          const int64_t si = head_sg[x];
          if (counted[si].fetch_add(1, std::memory_order_acq_rel) + 1 == sgs[si].Gs) {
            const std::vector<int64_t> bd = split_union(sgs[si], sel.data(), nw, P);
            for (size_t p = 0; p + 1 < bd.size(); ++p) {
              tasks[si * P + p].w0 = bd[p];
              tasks[si * P + p].w1 = bd[p + 1];
            }
            ready[si].store(1, std::memory_order_release);
          }
        } else {
          const int64_t si = x / P;
          // a count takes ~0.1 ms; yield past that, in case its thread is not running
          for (int spins = 0; !ready[si].load(std::memory_order_acquire); ++spins) {
            if (failed.load(std::memory_order_relaxed)) return;
            if (spins < 4096) __builtin_ia32_pause();
            else std::this_thread::yield();
          }
          run_task(K, Kr, Vr, c.bf16, Q, d, scale, sgs, sampled ? sel.data() : nullptr, nw, tasks[x], cor,
                   m.mean.data(), parts.data() + part_off[x]);
        }
      }
    } catch (...) {
      failed.store(true);  // releases the parts waiting for a count that will not come
      throw;
    }
  });
  merge_parts(sgs, tasks, parts, d, out, lse);
  if (touched) {
    const int64_t nd = m.dense_count();
    for (int64_t h = 0; h < n_heads; ++h) touched[h] = nd + n_sel[h];
  }
}

int64_t LSHAttentionIndex::size() const { return impl_->n; }
int64_t LSHAttentionIndex::n_indexed() const { return std::max<int64_t>(0, impl_->idx_end - impl_->cfg.sinks); }
int64_t LSHAttentionIndex::n_segments() const { return (int64_t)impl_->segs.size(); }
const AttentionConfig& LSHAttentionIndex::config() const { return impl_->cfg; }

int64_t LSHAttentionIndex::nbytes() const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  int64_t b = 0;
  for (const Segment& s : m.segs) b += s.nbytes();
  b += (int64_t)(m.mean.size() + m.signs.size()) * 4;
  b += (int64_t)(m.tab->F.size() + m.tab->dF.size()) * 4;
  return b;
}

int64_t LSHAttentionIndex::kv_nbytes() const {
  const Impl& m = *impl_;
  return 2 * m.n * m.cfg.n_kv_heads * m.row_bytes();
}

void LSHAttentionIndex::build_seconds(double* hashing, double* tables) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  *hashing = impl_->t_hash;
  *tables = impl_->t_tables;
}

void LSHAttentionIndex::key_mean(float* out) const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  std::memcpy(out, impl_->mean.data(), sizeof(float) * impl_->mean.size());
}

void LSHAttentionIndex::indexed_codes(int64_t head, uint32_t* out) const {
  const Impl& m = *impl_;
  std::lock_guard<std::mutex> lock(m.mu);
  check(head >= 0 && head < m.cfg.n_kv_heads, "head: expected 0 <= head < n_kv_heads");
  const int l = m.cfg.l;
  std::vector<uint32_t> codes;
  for (const Segment& s : m.segs) {
    codes.resize(s.n);
    for (int t = 0; t < l; ++t) {
      decode_table(s, head, t, l, codes.data());
      for (int64_t i = 0; i < s.n; ++i) out[(s.start - m.cfg.sinks + i) * l + t] = codes[i];
    }
  }
}

}  // namespace hashlab
