// Queries of the LSH tables: the candidates of each query, counted and ordered (the
// contract is in include/hashlab/tables.h, the layout in tables_impl.h).
#include <algorithm>
#include <cstring>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "hashlab/common.h"
#include "hashlab/tables.h"
#include "hashlab/threads.h"
#include "tables_impl.h"

namespace hashlab {
using namespace tbl;

int64_t LSHTablesCore::Impl::collect(Scratch& s, bool dense, int min_c, int64_t max_cand, OutBuf& out) const {
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

}  // namespace hashlab
