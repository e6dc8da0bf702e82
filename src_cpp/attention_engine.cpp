#include "attention_engine.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "attention_internal.h"
#include "hashlab/common.h"
#include "hashlab/threads.h"
#include "kernels/vector_ops.h"

namespace hashlab {
namespace attn {
namespace {

inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o);
}

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
  const QueryDots qd(K, Qs, Gs, d, bf16);
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
        qd.dots(Gs, Kr.row(g, t), tmp.data());
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
            zdot[cur[j]] = m == mk[u] ? K.dot_norm_row(Qs + j * d, row, kmean, bf16, d, &kn) : qd.dot(j, row);
            nrm[cur[j]] = kn;
          } else {
            zdot[cur[j]] = qd.dot(j, row);
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

}  // namespace

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

int64_t parts_wanted(size_t n_subgroups) {
  const int64_t threads = get_num_threads(), S = (int64_t)n_subgroups;
  return std::max<int64_t>(1, (8 * threads + S - 1) / S);
}

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

void check_heads(int64_t n_heads, int64_t n_kv, int64_t d) {
  check(n_kv >= 1, "n_kv_heads: expected >= 1");
  check(d >= 1, "head_dim: expected >= 1");
  if (n_heads < 1 || n_heads % n_kv != 0)
    fail("queries: expected a number of heads that is a positive multiple of n_kv_heads (" + std::to_string(n_kv) +
         "), got " + std::to_string(n_heads));
}

}  // namespace attn
}  // namespace hashlab
