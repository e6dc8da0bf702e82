// SLIDE-style sparse output layer: active-set selection, sampled softmax
// cross-entropy, grouped backward and lazy Adam. See hashlab/sparse_layer.h.
#include "hashlab/sparse_layer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "hashlab/common.h"
#include "hashlab/threads.h"
#include "kernels/vector_ops.h"

namespace hashlab {
namespace {

uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

AdamCoefs coefs(const AdamConfig& a) {
  check(a.step >= 1, "step: expected step >= 1");
  check(a.lr > 0 && std::isfinite(a.lr), "lr: expected a finite lr > 0");
  check(a.beta1 >= 0 && a.beta1 < 1 && a.beta2 >= 0 && a.beta2 < 1, "betas: expected values in [0, 1)");
  check(a.eps > 0, "eps: expected eps > 0");
  const double bc1 = 1 - std::pow(a.beta1, (double)a.step);
  const double bc2 = 1 - std::pow(a.beta2, (double)a.step);
  return AdamCoefs{(float)a.beta1, (float)a.beta2, (float)(1 - a.beta1), (float)(1 - a.beta2), a.eps,
                   (float)(a.lr / bc1), (float)(1 / std::sqrt(bc2))};
}

void check_param(const DenseParam& P, const char* name) {
  if (!P.w || !P.m || !P.v || P.rows < 0 || P.d < 1)
    fail(std::string(name) + ": expected weights and Adam moments of matching shape");
}

// Softmax cross-entropy of one row of logits z (size,), target spread evenly over its nl labels:
// at positions ids[0..nl) or, with ids null, 0..nl (an active set lists its labels first).
// Returns the loss; z becomes dLoss/dz = softmax(z) - target.
double softmax_xent_row(const VectorOps& ops, float* z, int64_t size, const int32_t* ids, int64_t nl) {
  auto pos = [&](int64_t p) { return ids ? (int64_t)ids[p] : p; };
  float zmax = -std::numeric_limits<float>::infinity();
  for (int64_t a = 0; a < size; ++a) zmax = std::max(zmax, z[a]);
  double lsum = 0;
  for (int64_t p = 0; p < nl; ++p) lsum += z[pos(p)];
  const float sum = ops.exp_shift_sum(z, size, zmax);
  const double loss = (double)zmax + std::log((double)sum) - lsum / (double)nl;
  const float inv = 1.0f / sum, tgt = 1.0f / (float)nl;
  for (int64_t a = 0; a < size; ++a) z[a] *= inv;
  for (int64_t p = 0; p < nl; ++p) z[pos(p)] -= tgt;
  return loss;
}

// Per-thread scratch for active-set building: stamps mark membership without clearing.
struct Scratch {
  std::vector<uint32_t> mark;
  uint32_t stamp = 0;
  std::vector<float> z;
  uint32_t next(int64_t n_out) {
    if ((int64_t)mark.size() != n_out) {
      mark.assign(n_out, 0);
      stamp = 0;
    }
    if (++stamp == 0) {  // wrapped: clear once every 2^32 samples
      std::fill(mark.begin(), mark.end(), 0);
      stamp = 1;
    }
    return stamp;
  }
};

}  // namespace

OutputStats sparse_output_train(const OutputBatch& B, DenseParam& W, DenseParam& b, const AdamConfig& adam,
                                float* dH, uint8_t* dirty) {
  check_param(W, "W");
  check_param(b, "b");
  check(b.rows == W.rows && b.d == 1, "b: expected one bias per output row");
  check(B.n >= 0 && B.H && dH, "H: expected activations and a dH buffer");
  check(B.target_active >= 1, "target_active: expected >= 1");
  const int64_t n = B.n, d = W.d, n_out = W.rows;
  const AdamCoefs ac = coefs(adam);
  const VectorOps& ops = vector_ops();
  const bool all_active = B.target_active >= n_out;
  const int64_t base = std::min(B.target_active, n_out);
  const int nt = get_num_threads();

  // Sizes first, so every sample writes its own slice of the pairs.
  std::vector<int64_t> off(n + 1, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t nl = B.label_indptr[i + 1] - B.label_indptr[i];
    check(nl >= 1, "labels: expected at least one label per sample");
    for (int64_t p = B.label_indptr[i]; p < B.label_indptr[i + 1]; ++p)
      check(B.label_ids[p] >= 0 && B.label_ids[p] < n_out, "labels: expected label ids in [0, n_out)");
    for (int64_t p = B.cand_indptr[i]; p < B.cand_indptr[i + 1]; ++p)
      check(B.cand_ids[p] >= 0 && B.cand_ids[p] < n_out, "candidates: expected ids in [0, n_out)");
    off[i + 1] = off[i] + (all_active ? n_out : std::max(nl, base));
  }
  const int64_t P = off[n];
  std::vector<int32_t> act(P), pair_sample(P);
  std::vector<float> z(P);
  std::vector<double> loss(n, 0.0);
  std::vector<Scratch> scratch(nt);

  // A. Active sets: labels first (positions 0..nl-1 unless all are active), then
  // candidates in order, then random fill.
  parallel_for(n, 4, [&](int64_t i0, int64_t i1) {
    Scratch& S = scratch[thread_index()];
    for (int64_t i = i0; i < i1; ++i) {
      int32_t* A = act.data() + off[i];
      std::fill(pair_sample.begin() + off[i], pair_sample.begin() + off[i + 1], (int32_t)i);
      const int64_t size = off[i + 1] - off[i];
      const int64_t l0 = B.label_indptr[i], nl = B.label_indptr[i + 1] - l0;
      if (all_active) {
        for (int64_t a = 0; a < n_out; ++a) A[a] = (int32_t)a;
        continue;
      }
      const uint32_t st = S.next(n_out);
      int64_t k = 0;
      for (int64_t p = 0; p < nl; ++p) {
        const int32_t y = B.label_ids[l0 + p];
        check(S.mark[y] != st, "labels: expected unique labels per sample");
        S.mark[y] = st;
        A[k++] = y;
      }
      for (int64_t p = B.cand_indptr[i]; p < B.cand_indptr[i + 1] && k < size; ++p) {
        const int32_t c = B.cand_ids[p];
        if (S.mark[c] != st) {
          S.mark[c] = st;
          A[k++] = c;
        }
      }
      uint64_t rng = B.seed ^ (0xD1B54A32D192ED03ull * (uint64_t)(i + 1));
      if (k < size && 2 * size > n_out) {  // dense fill: scan from a random start
        int64_t c = (int64_t)(splitmix64(rng) % (uint64_t)n_out);
        for (int64_t s = 0; s < n_out && k < size; ++s, c = (c + 1 == n_out ? 0 : c + 1))
          if (S.mark[c] != st) {
            S.mark[c] = st;
            A[k++] = (int32_t)c;
          }
      }
      while (k < size) {  // sparse fill: rejection sampling, at most half the ids taken
        const int32_t c = (int32_t)(splitmix64(rng) % (uint64_t)n_out);
        if (S.mark[c] != st) {
          S.mark[c] = st;
          A[k++] = c;
        }
      }
    }
  });

  // B. Group pairs by row (counting sort): rows are then visited once per pass, in
  // increasing order, which turns random gathers into a forward sweep of memory.
  std::vector<int64_t> start(n_out + 1, 0);
  for (int64_t p = 0; p < P; ++p) ++start[act[p] + 1];
  for (int64_t r = 0; r < n_out; ++r) start[r + 1] += start[r];
  std::vector<int64_t> byrow(P);
  {
    std::vector<int64_t> pos(start.begin(), start.end() - 1);
    for (int64_t p = 0; p < P; ++p) byrow[pos[act[p]]++] = p;
  }
  std::vector<int32_t> touched;
  for (int64_t r = 0; r < n_out; ++r)
    if (start[r + 1] > start[r]) touched.push_back((int32_t)r);
  const int64_t nr = (int64_t)touched.size();

  // C. Logits, row by row.
  parallel_for(nr, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = touched[t];
      const float* w = W.w + r * d;
      if (t + 1 < t1) __builtin_prefetch(W.w + (int64_t)touched[t + 1] * d);
      for (int64_t q = start[r]; q < start[r + 1]; ++q) {
        const int64_t p = byrow[q];
        z[p] = ops.dot(w, B.H + (int64_t)pair_sample[p] * d, d) + b.w[r];
      }
    }
  });

  // D. Softmax cross-entropy per sample; z becomes dz = p - target.
  parallel_for(n, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* zi = z.data() + off[i];
      const int64_t size = off[i + 1] - off[i];
      const int64_t l0 = B.label_indptr[i], nl = B.label_indptr[i + 1] - l0;
      loss[i] = all_active ? softmax_xent_row(ops, zi, size, B.label_ids + l0, nl)
                           : softmax_xent_row(ops, zi, size, nullptr, nl);
    }
  });

  // E. Row by row: dH contributions (old weights), the row's gradient, and its
  // Adam step. Rows are split into a fixed number of blocks, each with its own dH
  // accumulator summed in block order: the result does not depend on the threads.
  const int64_t nblocks = std::min<int64_t>(16, std::max<int64_t>(nr, 1));
  std::vector<float> dHb(nblocks * n * d, 0.0f);
  std::vector<std::vector<float>> gbuf(nt, std::vector<float>(d));
  parallel_for(nblocks, 1, [&](int64_t b0, int64_t b1) {
    float* g = gbuf[thread_index()].data();
    for (int64_t blk = b0; blk < b1; ++blk) {
      float* acc = dHb.data() + blk * n * d;
      const int64_t t_end = nr * (blk + 1) / nblocks;
      for (int64_t t = nr * blk / nblocks; t < t_end; ++t) {
        const int64_t r = touched[t];
        float* w = W.w + r * d;
        if (t + 1 < t_end) {
          const int64_t nx = (int64_t)touched[t + 1] * d;
          __builtin_prefetch(W.w + nx);
          __builtin_prefetch(W.m + nx);
          __builtin_prefetch(W.v + nx);
        }
        std::fill(g, g + d, 0.0f);
        float gb = 0;
        for (int64_t q = start[r]; q < start[r + 1]; ++q) {
          const int64_t p = byrow[q], s = pair_sample[p];
          ops.axpy(z[p], w, acc + s * d, d);
          ops.axpy(z[p], B.H + s * d, g, d);
          gb += z[p];
        }
        ops.adam(w, W.m + r * d, W.v + r * d, g, d, ac);
        ops.adam(b.w + r, b.m + r, b.v + r, &gb, 1, ac);
        if (dirty) dirty[r] = 1;
      }
    }
  });
  parallel_for(n, 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* out = dH + i * d;
      std::fill(out, out + d, 0.0f);
      for (int64_t blk = 0; blk < nblocks; ++blk) ops.axpy(1.0f, dHb.data() + (blk * n + i) * d, out, d);
    }
  });

  OutputStats st;
  for (int64_t i = 0; i < n; ++i) st.loss_sum += loss[i];
  st.active_total = P;
  st.touched_rows = nr;
  return st;
}

double softmax_xent_grad(float* Z, int64_t n, int64_t n_out, const int64_t* label_indptr, const int32_t* label_ids) {
  check(n >= 0 && n_out >= 1, "Z: expected a (n, n_out) array with n_out >= 1");
  check(label_indptr[0] == 0, "labels: expected indptr[0] == 0");
  for (int64_t i = 0; i < n; ++i) {
    check(label_indptr[i + 1] > label_indptr[i], "labels: expected at least one label per sample");
    for (int64_t p = label_indptr[i]; p < label_indptr[i + 1]; ++p)
      check(label_ids[p] >= 0 && label_ids[p] < n_out, "labels: expected label ids in [0, n_out)");
  }
  const VectorOps& ops = vector_ops();
  std::vector<double> loss(n, 0.0);
  parallel_for(n, 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t l0 = label_indptr[i], nl = label_indptr[i + 1] - l0;
      loss[i] = softmax_xent_row(ops, Z + i * n_out, n_out, label_ids + l0, nl);
    }
  });
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += loss[i];
  return total;
}

void gather_scores(const float* H, int64_t n, int64_t d, const float* W, const float* b, int64_t n_out,
                   const int64_t* indptr, const int32_t* ids, float* scores) {
  check(n >= 0 && d >= 1 && n_out >= 0, "gather_scores: expected non-negative sizes");
  check(indptr[0] == 0, "indptr: expected indptr[0] == 0");
  for (int64_t i = 0; i < n; ++i) check(indptr[i + 1] >= indptr[i], "indptr: expected non-decreasing");
  for (int64_t p = 0; p < indptr[n]; ++p) check(ids[p] >= 0 && ids[p] < n_out, "ids: expected ids in [0, n_out)");
  const VectorOps& ops = vector_ops();
  parallel_for(n, 8, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      for (int64_t p = indptr[i]; p < indptr[i + 1]; ++p)
        scores[p] = ops.dot(H + i * d, W + (int64_t)ids[p] * d, d) + (b ? b[ids[p]] : 0.0f);
  });
}

void adam_rows(DenseParam& P, const int64_t* rows, int64_t u, const float* G, const AdamConfig& adam) {
  check_param(P, "param");
  const AdamCoefs ac = coefs(adam);
  for (int64_t t = 0; t < u; ++t) check(rows[t] >= 0 && rows[t] < P.rows, "rows: expected row ids in [0, rows)");
  const VectorOps& ops = vector_ops();
  parallel_for(u, 64, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r = rows[t];
      ops.adam(P.w + r * P.d, P.m + r * P.d, P.v + r * P.d, G + t * P.d, P.d, ac);
    }
  });
}

}  // namespace hashlab
