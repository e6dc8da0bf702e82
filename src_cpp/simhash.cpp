// SimHash entry points: argument checks, threading over rows, and the run-time
// choice of kernel (src_cpp/kernels/simhash_*.cpp).
#include "hashlab/simhash.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <vector>

#include "blas.h"
#include "dispatch.h"
#include "hashlab/common.h"
#include "hashlab/threads.h"
#include "kernels/simhash_kernels.h"

namespace hashlab {
namespace {

void check_bits_args(int64_t n, int64_t nbits, const void* out) {
  check(n >= 0, "n: expected n >= 0");
  check(nbits >= 1, "nbits: expected nbits >= 1");
  check(out != nullptr || n == 0, "out: expected a buffer");
}

void check_w(int64_t dim, const float* W, int64_t wstride, int64_t nbits) {
  check(dim >= 1, "dim: expected dim >= 1");
  check(W != nullptr, "W: expected the projection matrix");
  check(wstride >= nbits && wstride % 64 == 0, "W: expected a row stride that is a multiple of 64 and >= nbits");
}

}  // namespace

namespace {

// BLAS blocks: each thread multiplies BLAS_ROWS rows by BLAS_COLS columns of W into a buffer of
// 1 MB that its sign packing reads while it is still in cache.
constexpr int64_t BLAS_ROWS = 512, BLAS_COLS = 512;

void dense_bits_kernel(Simd s, const float* X, int64_t n, int64_t dim, const float* W, int64_t wstride,
                       int64_t nbits, uint64_t* out) {
#define HL_DENSE(ISA)                                                          \
  {                                                                            \
    std::vector<float> wp(ISA::packed_w_floats(dim, nbits));                   \
    ISA::pack_w(W, dim, wstride, nbits, wp.data());                            \
    parallel_for(n, 32, [&](int64_t r0, int64_t r1) {                          \
      ISA::dense_bits(X, r0, r1, dim, wp.data(), nbits, out);                  \
    });                                                                        \
  }
  if (s == Simd::avx512) HL_DENSE(avx512)
  else if (s == Simd::avx2) HL_DENSE(avx2)
  else HL_DENSE(scalar)
#undef HL_DENSE
}

// The products through BLAS sgemm, the signs by product_bits. Two float32 sums of the same
// dim products, in any order, each differ from the exact one by at most
// gamma_dim * sum_j |x_j w_j| <= gamma_dim |x| |w| (gamma_n = n u / (1 - n u), u = 2^-24), plus
// 2^-150 per product for underflow: a product beyond twice that has the same sign in both.
void dense_bits_blas(Simd s, sgemm_fn sgemm, const float* X, int64_t n, int64_t dim, const float* W,
                     int64_t wstride, int64_t nbits, uint64_t* out) {
  const int64_t nwords = (nbits + 63) / 64;
  const double u = std::ldexp(1.0, -24), gamma = dim * u / (1.0 - dim * u);
  const double safety = 1.0 + std::ldexp(1.0, -10);  // covers the rounding of the bound's own arithmetic
  const float eta = (float)((2.0 * dim + 4.0) * std::ldexp(1.0, -149));
  std::vector<float> wn(round_up(nbits, 64) + 16, 0.0f);
  {
    std::vector<double> sq(nbits, 0.0);
    for (int64_t j = 0; j < dim; ++j)
      for (int64_t c = 0; c < nbits; ++c) sq[c] += (double)W[j * wstride + c] * W[j * wstride + c];
    for (int64_t c = 0; c < nbits; ++c) wn[c] = (float)(std::sqrt(sq[c]) * safety);
  }
  const double wmax = *std::max_element(wn.begin(), wn.end());
  BlasSingleThread one_thread;
  parallel_for((n + BLAS_ROWS - 1) / BLAS_ROWS, 1, [&](int64_t b0, int64_t b1) {
    thread_local std::vector<float> P, thr;
    P.resize(BLAS_ROWS * BLAS_COLS);
    thr.resize(BLAS_ROWS);
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * BLAS_ROWS, rows = std::min(BLAS_ROWS, n - i0);
      std::memset(out + i0 * nwords, 0, sizeof(uint64_t) * nwords * rows);
      for (int64_t r = 0; r < rows; ++r) {
        double sq = 0.0;
        for (int64_t j = 0; j < dim; ++j) sq += (double)X[(i0 + r) * dim + j] * X[(i0 + r) * dim + j];
        // |x| |w| near float32's range: the kernel's partial sums may overflow, recompute them all
        thr[r] = std::sqrt(sq) * wmax > 1e37 ? INFINITY : (float)(2.0 * gamma * std::sqrt(sq) * safety);
      }
      for (int64_t c0 = 0; c0 < nbits; c0 += BLAS_COLS) {
        // row-major (rows, cols) = X W is column-major (cols, rows) = W^T X^T, no transposes
        const int m = (int)std::min(BLAS_COLS, nbits - c0), nn = (int)rows, k = (int)dim;
        const int lda = (int)wstride, ldb = (int)dim, ldc = (int)BLAS_COLS;
        const float one = 1.0f, zero = 0.0f;
        sgemm("N", "N", &m, &nn, &k, &one, W + c0, &lda, X + i0 * dim, &ldb, &zero, P.data(), &ldc);
#define HL_PACK(ISA) ISA::product_bits(P.data(), BLAS_COLS, i0, rows, c0, m, thr.data(), wn.data() + c0, eta, X, \
                                       dim, W, wstride, out, nwords)
        if (s == Simd::avx512) HL_PACK(avx512);
        else if (s == Simd::avx2) HL_PACK(avx2);
        else HL_PACK(scalar);
#undef HL_PACK
      }
    }
  });
}

}  // namespace

// BLAS where measured faster than the kernel (see hashlab/bench/hashing.py).
bool simhash_blas_default(int64_t n, int64_t dim) { return n >= 64 && dim <= 1024; }

void simhash_dense_bits(const float* X, int64_t n, int64_t dim, const float* W, int64_t wstride,
                        int64_t nbits, uint64_t* out, DenseMethod method) {
  check_bits_args(n, nbits, out);
  check_w(dim, W, wstride, nbits);
  if (n == 0) return;
  const sgemm_fn sgemm = registered_sgemm();
  check(method != DenseMethod::blas || sgemm, "method: 'blas' needs a registered sgemm (hashlab.simhash registers scipy's)");
  // BLAS takes int sizes; gamma_dim needs dim * 2^-24 < 1
  const bool fits = dim <= (1 << 22) && wstride <= INT32_MAX;
  check(method != DenseMethod::blas || fits, "method: 'blas' needs dim <= 2^22");
  const bool blas = sgemm && fits &&
                    (method == DenseMethod::blas || (method == DenseMethod::automatic && simhash_blas_default(n, dim)));
  const Simd s = simd_level(Kernel::simhash_dense);
  if (blas) dense_bits_blas(s, sgemm, X, n, dim, W, wstride, nbits, out);
  else dense_bits_kernel(s, X, n, dim, W, wstride, nbits, out);
}

void simhash_csr_bits(const int64_t* indptr, const int32_t* indices, const float* data, int64_t n,
                      int64_t dim, const float* W, int64_t wstride, int64_t nbits, uint64_t* out) {
  check_bits_args(n, nbits, out);
  check_w(dim, W, wstride, nbits);
  check(indptr != nullptr && indptr[0] == 0, "indptr: expected indptr[0] == 0");
  for (int64_t i = 0; i < n; ++i)
    check(indptr[i + 1] >= indptr[i], "indptr: expected a non-decreasing array");
  for (int64_t p = 0; p < indptr[n]; ++p)
    check(indices[p] >= 0 && indices[p] < dim, "indices: expected column indices in [0, dim)");
  const Simd s = simd_level(Kernel::simhash_csr);
  parallel_for(n, 64, [&](int64_t r0, int64_t r1) {
    if (s == Simd::avx512) avx512::csr_bits(indptr, indices, data, r0, r1, W, wstride, nbits, out);
    else if (s == Simd::avx2) avx2::csr_bits(indptr, indices, data, r0, r1, W, wstride, nbits, out);
    else scalar::csr_bits(indptr, indices, data, r0, r1, W, wstride, nbits, out);
  });
}

void hadamard_bits(const float* X, int64_t n, int64_t dim, const float* signs, int64_t n_rot,
                   int64_t nbits, uint64_t* out) {
  check_bits_args(n, nbits, out);
  check(dim >= 1, "dim: expected dim >= 1");
  check(dim <= (int64_t(1) << 24), "dim: expected dim <= 2^24 for the hadamard kind");
  int64_t D = 1;
  while (D < dim) D <<= 1;
  check(n_rot >= 1 && n_rot * D >= nbits, "signs: expected n_rot + 2 rows, enough rotations to cover nbits");
  const Simd s = simd_level(Kernel::hadamard);
  // grain of 16 rows: a whole vector of rows for every level
  parallel_for((n + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
    const int64_t r0 = b0 * 16, r1 = std::min(n, b1 * 16);
    if (s == Simd::avx512) avx512::hadamard_bits(X, r0, r1, dim, signs, n_rot, nbits, out);
    else if (s == Simd::avx2) avx2::hadamard_bits(X, r0, r1, dim, signs, n_rot, nbits, out);
    else scalar::hadamard_bits(X, r0, r1, dim, signs, n_rot, nbits, out);
  });
}

void bits_to_keys(const uint64_t* bits, int64_t n, int64_t nwords, int k, int l, uint32_t* keys) {
  check(k >= 1 && k <= 32, "k: expected 1 <= k <= 32");
  check(l >= 1, "l: expected l >= 1");
  check((int64_t)k * l <= nwords * 64, "bits: expected at least k*l bits per row");
  const uint64_t mask = k == 32 ? 0xFFFFFFFFull : ((uint64_t(1) << k) - 1);
  parallel_for(n, 1024, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const uint64_t* row = bits + i * nwords;
      uint32_t* key = keys + i * l;
      for (int t = 0; t < l; ++t) {
        const int64_t pos = (int64_t)t * k, w = pos >> 6;
        const int s = (int)(pos & 63);
        uint64_t v = row[w] >> s;
        if (s && s + k > 64) v |= row[w + 1] << (64 - s);
        key[t] = (uint32_t)(v & mask);
      }
    }
  });
}

void hamming_pairwise(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t nwords,
                      int32_t* out) {
  check(na >= 0 && nb >= 0 && nwords >= 0, "hamming: expected non-negative sizes");
  const Simd s = simd_level(Kernel::hamming);
  parallel_for(na, std::max<int64_t>(1, 4096 / std::max<int64_t>(nb, 1)), [&](int64_t r0, int64_t r1) {
    if (s == Simd::avx512) avx512::hamming_rows(a, r0, r1, b, nb, nwords, out);
    else if (s == Simd::avx2) avx2::hamming_rows(a, r0, r1, b, nb, nwords, out);
    else scalar::hamming_rows(a, r0, r1, b, nb, nwords, out);
  });
}

namespace {

void hamming_hist_any(Simd s, const uint64_t* q, const uint64_t* b, int64_t j0, int64_t j1, int64_t nwords,
                      int64_t nbins, uint16_t* dist, int32_t* hist) {
  if (s == Simd::avx512) avx512::hamming_hist(q, b, j0, j1, nwords, nbins, dist, hist);
  else if (s == Simd::avx2) avx2::hamming_hist(q, b, j0, j1, nwords, nbins, dist, hist);
  else scalar::hamming_hist(q, b, j0, j1, nwords, nbins, dist, hist);
}

// Writes the m nearest rows of one query from its distances and their histogram (the four
// interleaved ones, summed here): the cut-off distance c is the smallest with at least m
// rows at distance <= c; rows below c go to their distance's slot (a counting sort), rows
// at c fill the rest by id.
void select_topm(const uint16_t* dist, const int32_t* hist4, int64_t nb, int64_t nbins, int64_t m,
                 std::vector<int64_t>& pos, int32_t* ids, int32_t* out) {
  auto h = [&](int64_t d) { return (int64_t)hist4[d] + hist4[nbins + d] + hist4[2 * nbins + d] + hist4[3 * nbins + d]; };
  int64_t below = 0, c = 0;
  for (; c < nbins - 1 && below + h(c) < m; ++c) below += h(c);
  pos.assign(c + 1, 0);
  for (int64_t d = 0, p = 0; d <= c; ++d) {
    pos[d] = p;
    p += h(d);
  }
  int64_t at_c = below;
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t d = dist[j];
    if (d < c) {
      const int64_t k = pos[d]++;
      ids[k] = (int32_t)j;
      out[k] = (int32_t)d;
    } else if (d == c && at_c < m) {
      ids[at_c] = (int32_t)j;
      out[at_c++] = (int32_t)d;
    }
  }
}

void hamming_below_any(Simd s, const uint64_t* q, const uint64_t* b, int64_t j0, int64_t j1, int64_t nwords,
                       int cut, std::vector<uint64_t>& out) {
  if (s == Simd::avx512) avx512::hamming_below(q, b, j0, j1, nwords, cut, out);
  else if (s == Simd::avx2) avx2::hamming_below(q, b, j0, j1, nwords, cut, out);
  else scalar::hamming_below(q, b, j0, j1, nwords, cut, out);
}

constexpr int64_t TOPM_SAMPLE = 8192;      // rows sampled to estimate each query's cut-off
constexpr int64_t TOPM_GROUP = 8;          // queries sharing each block of rows (batch path)
constexpr int64_t TOPM_BLOCK = 128 << 10;  // bytes of rows per block: stays in L2 across the group

// Per-thread scratch of one query's selection.
struct TopmScratch {
  std::vector<uint16_t> dist;
  std::vector<int32_t> hist;
  std::vector<int64_t> pos;
  std::vector<uint64_t> cand;  // distance << 32 | row, rows ascending
};

// Exact selection with a full pass: distances and their histogram, then select_topm.
void topm_exact(Simd s, const uint64_t* q, const uint64_t* b, int64_t nb, int64_t nwords, int64_t m,
                TopmScratch& w, int32_t* ids, int32_t* out) {
  const int64_t nbins = nwords * 64 + 1;
  w.dist.resize(nb);
  w.hist.assign(4 * nbins, 0);
  hamming_hist_any(s, q, b, 0, nb, nwords, nbins, w.dist.data(), w.hist.data());
  select_topm(w.dist.data(), w.hist.data(), nb, nbins, m, w.pos, ids, out);
}

// A cut-off for one query from the sampled rows: the distance under which the sample
// holds about twice its share of the m nearest rows, so that one pass usually collects
// at least m rows. The result does not depend on it: a pass that collects fewer than m
// is redone exactly (topm_exact).
int estimate_cut(Simd s, const uint64_t* q, const std::vector<uint64_t>& sample, int64_t ns, int64_t nb,
                 int64_t nwords, int64_t m, TopmScratch& w) {
  const int64_t nbins = nwords * 64 + 1;
  w.dist.resize(ns);
  w.hist.assign(4 * nbins, 0);
  hamming_hist_any(s, q, sample.data(), 0, ns, nwords, nbins, w.dist.data(), w.hist.data());
  const int64_t want = std::min<int64_t>(ns, (int64_t)std::ceil(2.0 * (double)m * ns / nb) + 8);
  int64_t cum = 0;
  for (int64_t c = 0; c < nbins; ++c) {
    cum += (int64_t)w.hist[c] + w.hist[nbins + c] + w.hist[2 * nbins + c] + w.hist[3 * nbins + c];
    if (cum >= want) return (int)c;
  }
  return (int)(nbins - 1);
}

// The m first of the collected rows by (distance, row): a counting sort by distance,
// stable in the rows' ascending order. False when fewer than m were collected.
bool finish_topm(TopmScratch& w, int cut, int64_t m, int32_t* ids, int32_t* out) {
  if ((int64_t)w.cand.size() < m) return false;
  w.pos.assign(cut + 2, 0);
  for (uint64_t e : w.cand) w.pos[(e >> 32) + 1]++;
  for (int d = 0; d <= cut; ++d) w.pos[d + 1] += w.pos[d];
  for (uint64_t e : w.cand) {
    const int64_t k = w.pos[e >> 32]++;
    if (k < m) {
      ids[k] = (int32_t)(e & 0xffffffffu);
      out[k] = (int32_t)(e >> 32);
    }
  }
  return true;
}

}  // namespace

void hamming_topm(const uint64_t* q, int64_t nq, const uint64_t* b, int64_t nb, int64_t nwords, int64_t m,
                  int32_t* ids, int32_t* dist) {
  check(nq >= 0 && nb >= 1 && nwords >= 1, "hamming_topm: expected non-empty rows");
  check(nwords <= 1023, "hamming_topm: expected at most 1023 words (65,472 bits) per row");
  check(m >= 1 && m <= nb, "hamming_topm: expected 1 <= m <= the number of rows");
  check(nb < (int64_t(1) << 31), "hamming_topm: expected fewer than 2^31 rows");
  if (nq == 0) return;
  const Simd s = simd_level(Kernel::hamming);
  const int T = get_num_threads();
  // the sample: evenly spaced rows, copied together
  const int64_t ns = std::min(nb, TOPM_SAMPLE);
  std::vector<uint64_t> sample(ns * nwords);
  for (int64_t r = 0; r < ns; ++r)
    std::copy(b + (r * nb / ns) * nwords, b + (r * nb / ns + 1) * nwords, sample.data() + r * nwords);
  const int64_t block = std::max<int64_t>(64, TOPM_BLOCK / (8 * nwords));
  if (nq >= 2 * T) {
    // many queries: groups of TOPM_GROUP per thread; each block of rows is read from memory
    // once per group, not once per query
    const int64_t ngroups = (nq + TOPM_GROUP - 1) / TOPM_GROUP;
    std::vector<std::vector<TopmScratch>> gs(T, std::vector<TopmScratch>(TOPM_GROUP));
    parallel_for(ngroups, 1, [&](int64_t g0, int64_t g1) {
      auto& w = gs[thread_index()];
      int cut[TOPM_GROUP];
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t i0 = g * TOPM_GROUP, i1 = std::min(nq, i0 + TOPM_GROUP);
        for (int64_t i = i0; i < i1; ++i) {
          cut[i - i0] = estimate_cut(s, q + i * nwords, sample, ns, nb, nwords, m, w[i - i0]);
          w[i - i0].cand.clear();
        }
        for (int64_t j0 = 0; j0 < nb; j0 += block)
          for (int64_t i = i0; i < i1; ++i)
            hamming_below_any(s, q + i * nwords, b, j0, std::min(nb, j0 + block), nwords, cut[i - i0],
                              w[i - i0].cand);
        for (int64_t i = i0; i < i1; ++i)
          if (!finish_topm(w[i - i0], cut[i - i0], m, ids + i * m, dist + i * m))
            topm_exact(s, q + i * nwords, b, nb, nwords, m, w[i - i0], ids + i * m, dist + i * m);
      }
    });
    return;
  }
  // few queries: each query's rows are split into parts run in parallel, collected in order
  const int64_t nparts = std::min<int64_t>(4 * T, std::max<int64_t>(1, nb / 16384));
  std::vector<TopmScratch> parts(nparts);
  TopmScratch w;
  for (int64_t i = 0; i < nq; ++i) {
    const int cut = estimate_cut(s, q + i * nwords, sample, ns, nb, nwords, m, w);
    parallel_for(nparts, 1, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        parts[p].cand.clear();
        hamming_below_any(s, q + i * nwords, b, p * nb / nparts, (p + 1) * nb / nparts, nwords, cut, parts[p].cand);
      }
    });
    w.cand.clear();
    for (auto& p : parts) w.cand.insert(w.cand.end(), p.cand.begin(), p.cand.end());
    if (!finish_topm(w, cut, m, ids + i * m, dist + i * m))
      topm_exact(s, q + i * nwords, b, nb, nwords, m, w, ids + i * m, dist + i * m);
  }
}

}  // namespace hashlab
