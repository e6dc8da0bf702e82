// Dense and top-k exact attention: the baselines of the LSH index, on the same engine.
#include "hashlab/attention.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "attention_engine.h"
#include "attention_internal.h"
#include "hashlab/common.h"
#include "hashlab/threads.h"

namespace hashlab {
using namespace attn;
namespace {

// The rows of (n_kv, n, d) arrays: one page per KV head.
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
      const QueryDots qd(K, Q + sg.h0 * d, sg.Gs, d, bf16);
      for (int64_t i = a; i < b; ++i) {
        qd.dots(sg.Gs, Kr.row(sg.g, i), tmp.data());
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

}  // namespace hashlab
