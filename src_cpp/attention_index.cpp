// LSHAttentionIndex (MagicPIG, see include/hashlab/attention.h): the KV cache, the
// indexing of the tokens that leave the window, and the decode step's schedule. The
// tables are in attention_segment.h, the counting in attention_count.h, the attention
// parts in attention_engine.h.
//
// Tokens leaving the window are indexed `chunk` at a time as a new segment; the last two
// segments are merged (decoded back to codes and rebuilt) while the older one is at most
// twice the newer one: O(log n) segments.
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

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <utility>
#include <vector>

#include "attention_count.h"
#include "attention_engine.h"
#include "attention_internal.h"
#include "attention_prob.h"
#include "attention_segment.h"
#include "big_alloc.h"
#include "hashlab/common.h"
#include "hashlab/threads.h"

namespace hashlab {
using namespace attn;
namespace {

inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
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

}  // namespace

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

void LSHAttentionIndex::set_min_collisions(int min_collisions) {
  Impl& m = *impl_;
  check(min_collisions >= 0 && min_collisions <= m.cfg.l && min_collisions <= 255,
        "min_collisions: expected 0 <= min_collisions <= min(l, 255)");
  std::lock_guard<std::mutex> lock(m.mu);
  m.tab = log_u_table(m.cfg.l, min_collisions);
  m.cfg.min_collisions = min_collisions;
}

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
