// Winner-take-all hashing (WTA) and densified WTA (DWTA); the semantics are those of
// include/hashlab/wta.h, mirrored bit for bit by the numba twins in hashlab/jit.py.
//
// The code of a bin is defined by one rule, whatever the order entries arrive in:
//   take (v, pos) iff v > best || (v == best && pos < best_pos), best starting at -inf
//   and best_pos at m (= "empty").
// DWTA additionally skips v == 0 (either sign). NaN never wins (the Python API rejects
// it; the C ABI and the twins agree on it anyway). The CSR path applies the rule
// directly; the dense path scans positions in increasing order with integer order keys
// (same result, no unpredictable branches).
//
// Densification (also used by kernels/minhash.cpp) is densify_row below.
//
// Layout: these kernels see only the parameter arrays (wta.h); hashlab/wta.py makes
// them. Out-of-range entries in bin_coords / coord_slot count as absent, so malformed
// layouts cannot read out of bounds; the probe arrays are checked (check_probe).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "hashlab/common.h"
#include "hashlab/threads.h"
#include "hashlab/wta.h"

namespace hashlab {
namespace detail {

// Checks the probe arrays: every entry < nb and B[b] * Binv[b] == 1 (mod nb), so that
// each walk visits every bin and the closed form below agrees with it. O(nb).
void check_probe(const Probe& pr, uint32_t nb) {
  check(pr.A && pr.B && pr.Binv, "densification: A, B and Binv must not be null");
  const uint32_t one = nb == 1 ? 0u : 1u;
  for (uint32_t b = 0; b < nb; ++b) {
    if (pr.A[b] >= nb || pr.B[b] >= nb || pr.Binv[b] >= nb)
      fail("densification: expected A, B, Binv entries in [0, k*l), got " + std::to_string(pr.A[b]) + ", " +
           std::to_string(pr.B[b]) + ", " + std::to_string(pr.Binv[b]) + " at bin " + std::to_string(b));
    if ((uint32_t)((uint64_t)pr.B[b] * pr.Binv[b] % nb) != one)
      fail("densification: expected Binv[b] to be the inverse of B[b] mod k*l, failed at bin " +
           std::to_string(b));
  }
}

// Large batches with few bins (nb <= 1024, n >= 8*nb rows) first tabulate every walk:
// steps[j*nb + b] = the step t in 1..nb at which the walk of bin b reaches bin j. The
// earliest hit of an empty bin is then a minimum over a few table rows, vectorised
// (8 bins per SSE2 instruction), instead of a mod per (bin, non-empty bin) pair.
// Building costs nb^2 writes, at most 1/8 of the per-row O(nb) work of the batch.
bool want_step_table(uint32_t nb, int64_t n_rows) {
  return nb >= 2 && nb <= 1024 && n_rows >= 8 * (int64_t)nb;
}

void build_step_table(const Probe& pr, uint32_t nb, int16_t* steps) {
  for (uint32_t b = 0; b < nb; ++b) {
    const uint32_t step = pr.B[b];
    uint32_t pos = pr.A[b];
    for (uint32_t t = 1; t <= nb; ++t) {
      pos += step;
      if (pos >= nb) pos -= nb;
      steps[(size_t)pos * nb + b] = (int16_t)t;
    }
  }
}

// Fills the empty bins of one row. vals[b] is meaningful for the non-empty bins
// (full[b] != 0, listed in ne[0..n_ne)); an empty bin b gets vals[j] of the first
// non-empty bin j on its walk (A[b] + t*B[b]) mod nb, t = 1..nb. Only non-empty
// bins are read, so the borrowed values are always the original ones. Three ways to
// the same answer, chosen by cost: the step table (if given), the closed form, the walk.
// Needs nb < 2^16 and a probe that passed check_probe; steps may be null (else it is
// the table above), tmp has nb entries.
void densify_row(uint32_t* vals, const uint8_t* full, const uint32_t* ne, uint32_t n_ne, uint32_t nb,
                 const Probe& pr, const FastMod& mod_nb, const int16_t* steps, int16_t* tmp,
                 uint32_t if_none) {
  if (n_ne == nb) return;
  if (n_ne == 0) {
    std::fill(vals, vals + nb, if_none);
    return;
  }
  if (n_ne == 1) {  // every walk ends at the only non-empty bin
    const uint32_t v = vals[ne[0]];
    for (uint32_t b = 0; b < nb; ++b)
      if (!full[b]) vals[b] = v;
    return;
  }
  // Costs per row: walk ~ (nb - n_ne) * (nb / n_ne steps + a mispredicted exit); closed
  // form ~ nb * n_ne mods; table ~ nb * n_ne / 8 min operations. Measured crossovers with
  // the walk: n_ne^2 ~ nb / 2 (closed form), n_ne^2 ~ 16 nb (table).
  if (steps && (uint64_t)n_ne * n_ne < 16ull * nb) {
    const int16_t* row = steps + (size_t)ne[0] * nb;
    std::copy(row, row + nb, tmp);
    for (uint32_t i = 1; i < n_ne; ++i) {
      row = steps + (size_t)ne[i] * nb;
      for (uint32_t b = 0; b < nb; ++b) tmp[b] = row[b] < tmp[b] ? row[b] : tmp[b];
    }
    // the bin reached at step t: A[b] + t*B[b] < nb + nb^2 < 2^32
    for (uint32_t b = 0; b < nb; ++b)
      if (!full[b]) vals[b] = vals[mod_nb(pr.A[b] + (uint32_t)tmp[b] * pr.B[b])];
    return;
  }
  if (2 * (uint64_t)n_ne * n_ne < nb) {
    // Closed form: the walk of b reaches j at step ((j - A[b]) mod nb) * Binv[b] mod nb
    // (0 meaning nb); take the earliest. Steps of distinct bins differ (the walk is a
    // permutation of the bins), so there are no ties. d * inv < nb^2 < 2^32.
    // Branch-free minimum over (step << 16 | i): step <= nb < 2^16 and i < n_ne < 2^8.
    for (uint32_t b = 0; b < nb; ++b) {
      if (full[b]) continue;
      const uint32_t a = pr.A[b], inv = pr.Binv[b];
      uint32_t best = UINT32_MAX;
      for (uint32_t i = 0; i < n_ne; ++i) {
        const uint32_t j = ne[i];
        const uint32_t d = j - a + (j < a ? nb : 0u);
        uint32_t s = mod_nb(d * inv);
        s = s ? s : nb;
        const uint32_t key = (s << 16) | i;
        best = key < best ? key : best;
      }
      vals[b] = vals[ne[best & 0xFFFFu]];
    }
    return;
  }
  for (uint32_t b = 0; b < nb; ++b) {
    if (full[b]) continue;
    const uint32_t step = pr.B[b];
    uint32_t pos = pr.A[b];
    for (uint32_t t = 0; t < nb; ++t) {
      pos += step;
      if (pos >= nb) pos -= nb;
      if (full[pos]) {
        vals[b] = vals[pos];
        break;
      }
    }
  }
}

}  // namespace detail

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Geometry {
  uint32_t nb, m, cb, mask;
  uint64_t dim, nslots;
  int k, l, n_perm;
};

Geometry check_params(const WtaParams& p, bool densified) {
  check(p.dim >= 1 && p.dim <= INT32_MAX, "dim: expected 1 <= dim <= 2^31 - 1");
  check(p.k >= 1 && p.l >= 1, "k, l: expected k >= 1 and l >= 1");
  check((int64_t)p.k * p.l <= 65535, "k*l: expected at most 65535 bins");
  check(p.bin_size >= 2 && p.bin_size <= 65536 && (p.bin_size & (p.bin_size - 1)) == 0,
        "bin_size: expected a power of two in [2, 65536]");
  Geometry g;
  g.nb = (uint32_t)(p.k * p.l);
  g.m = (uint32_t)p.bin_size;
  g.cb = 0;
  while ((1u << g.cb) < g.m) ++g.cb;
  g.mask = g.m - 1;
  check((int64_t)p.k * g.cb <= 32, "k: expected k*log2(bin_size) <= 32");
  g.nslots = (uint64_t)g.nb * g.m;
  check(g.nslots <= (uint64_t)INT32_MAX, "k*l*bin_size: expected at most 2^31 - 1 slots");
  check(p.n_perm >= 1, "n_perm: expected n_perm >= 1");
  check(p.bin_coords && p.coord_slot, "bin_coords, coord_slot: must not be null");
  g.dim = (uint64_t)p.dim;
  g.k = p.k;
  g.l = p.l;
  g.n_perm = p.n_perm;
  if (densified) detail::check_probe(p.probe, g.nb);
  return g;
}

// Per-thread scratch of one row: codes (as uint32, for densify_row), best values,
// non-empty flags and list.
struct Scratch {
  std::vector<uint32_t> code, ne;
  std::vector<float> best;
  std::vector<uint8_t> full;
  std::vector<int16_t> tmp;
  explicit Scratch(uint32_t nb) : code(nb), ne(nb), best(nb), full(nb), tmp(nb) {}
};

// Order-preserving integer key of a float (one bin's candidates compare as integers,
// without float compares that the compiler turns into branches): -0 and +0 give the
// same key, as they compare equal; NaN and absent entries give INT32_MIN, below every
// other key, so they never win (as in the float rule).
inline int32_t order_key(uint32_t bits, bool present) {
  bits = bits == 0x80000000u ? 0u : bits;
  int32_t key = (int32_t)bits;
  key ^= (key >> 31) & 0x7FFFFFFF;  // negative floats: larger magnitude -> smaller key
  const bool nan = (bits & 0x7FFFFFFFu) > 0x7F800000u;
  const uint32_t keep = 0u - (uint32_t)(present & !nan);  // masks, not ?: (GCC makes that a branch)
  return (int32_t)(((uint32_t)key & keep) | (0x80000000u & ~keep));
}

// Codes of one dense row x from the bin layout. Returns the number of non-empty bins
// (DWTA) and fills full/ne; for plain WTA every bin with a coordinate is non-empty.
// Positions in increasing order, strict '>' on the order keys: the same result as the
// float rule of the file comment. Branch-free; data-dependent branches here would
// mispredict on about every other position.
template <bool Densified>
uint32_t row_codes_dense(const float* x, const WtaParams& p, const Geometry& g, Scratch& s) {
  uint32_t n_ne = 0;
  const int32_t* bc = p.bin_coords;
  const uint32_t m = g.m;
  for (uint32_t b = 0; b < g.nb; ++b, bc += m) {
    int32_t best = INT32_MIN;
    uint32_t bp = m;
    for (uint32_t i = 0; i < m; ++i) {
      const int32_t c = bc[i];
      const bool valid = (uint64_t)(int64_t)c < g.dim;  // -1 (partial bin) or a bad entry: absent
      uint32_t bits;
      std::memcpy(&bits, x + (valid ? c : 0), 4);
      const bool present = Densified ? valid & ((bits & 0x7FFFFFFFu) != 0) : valid;  // DWTA: v != 0
      const int32_t key = order_key(bits, present);
      const uint32_t gt = 0u - (uint32_t)(key > best);
      best = key > best ? key : best;
      bp ^= (bp ^ i) & gt;
    }
    const bool has = bp != m;
    s.full[b] = has;
    s.code[b] = has ? bp : 0;
    s.ne[n_ne] = b;
    n_ne += has;
  }
  return n_ne;
}

// Densification (DWTA), then the outputs of row r.
struct Densify {
  FastMod mod_nb;
  std::vector<int16_t> steps;  // the step table, or empty
  Densify(const WtaParams& p, const Geometry& g, bool densified, int64_t n) : mod_nb(g.nb) {
    if (densified && detail::want_step_table(g.nb, n)) {
      steps.resize((size_t)g.nb * g.nb);
      detail::build_step_table(p.probe, g.nb, steps.data());
    }
  }
};

void finish_row(int64_t r, const Geometry& g, const WtaParams& p, bool densified, uint32_t n_ne,
                const Densify& dz, Scratch& s, int32_t* codes, uint32_t* keys) {
  if (densified)
    detail::densify_row(s.code.data(), s.full.data(), s.ne.data(), n_ne, g.nb, p.probe, dz.mod_nb,
                        dz.steps.empty() ? nullptr : dz.steps.data(), s.tmp.data(), 0u);
  if (codes) {
    int32_t* out = codes + r * (int64_t)g.nb;
    for (uint32_t b = 0; b < g.nb; ++b) out[b] = (int32_t)s.code[b];
  }
  if (keys) {
    uint32_t* out = keys + r * (int64_t)g.l;
    const uint32_t* c = s.code.data();
    for (int t = 0; t < g.l; ++t, c += g.k) {
      uint32_t key = 0;
      for (int i = 0; i < g.k; ++i) key |= c[i] << (i * g.cb);
      out[t] = key;
    }
  }
}

}  // namespace

void wta_dense(const float* X, int64_t n, const WtaParams& p, bool densified, int32_t* codes, uint32_t* keys) {
  check(n >= 0, "n: expected n >= 0");
  const Geometry g = check_params(p, densified);
  if (n == 0 || (!codes && !keys)) return;
  check(X != nullptr, "X: must not be null");
  const Densify dz(p, g, densified, n);
  parallel_for(n, 16, [&](int64_t begin, int64_t end) {
    Scratch s(g.nb);
    for (int64_t r = begin; r < end; ++r) {
      const float* x = X + r * p.dim;
      const uint32_t n_ne = densified ? row_codes_dense<true>(x, p, g, s) : row_codes_dense<false>(x, p, g, s);
      finish_row(r, g, p, densified, n_ne, dz, s, codes, keys);
    }
  });
}

void wta_csr(const int64_t* indptr, const int32_t* indices, const float* data, int64_t n, const WtaParams& p,
             bool densified, int32_t* codes, uint32_t* keys) {
  check(n >= 0, "n: expected n >= 0");
  const Geometry g = check_params(p, densified);
  if (n == 0 || (!codes && !keys)) return;
  check(indptr != nullptr, "indptr: must not be null");
  check(indptr[0] >= 0, "indptr: expected indptr[0] >= 0");
  for (int64_t r = 0; r < n; ++r) check(indptr[r] <= indptr[r + 1], "indptr: expected non-decreasing offsets");
  check(indptr[n] == indptr[0] || (indices && data), "indices, data: must not be null");
  const Densify dz(p, g, densified, n);

  if (!densified) {
    // WTA: absent entries are zeros, so hash the densified row (duplicates add up,
    // as in scipy's toarray), then clear the entries we wrote.
    const int64_t grain = std::max<int64_t>(32, p.dim / 64);
    parallel_for(n, grain, [&](int64_t begin, int64_t end) {
      Scratch s(g.nb);
      std::vector<float> xbuf((size_t)p.dim, 0.0f);
      for (int64_t r = begin; r < end; ++r) {
        const int64_t j0 = indptr[r], j1 = indptr[r + 1];
        for (int64_t j = j0; j < j1; ++j) {
          const int32_t c = indices[j];
          if ((uint64_t)(int64_t)c >= g.dim) fail("indices: expected column indices in [0, dim)");
          xbuf[c] += data[j];
        }
        const uint32_t n_ne = row_codes_dense<false>(xbuf.data(), p, g, s);
        for (int64_t j = j0; j < j1; ++j) xbuf[indices[j]] = 0.0f;
        finish_row(r, g, p, false, n_ne, dz, s, codes, keys);
      }
    });
    return;
  }

  // DWTA: only the non-zeros matter; each one lands in at most one bin per permutation.
  // O(nnz * n_perm + nb) per row.
  //
  // High-dimensional sparse input (k*l*m << dim) leaves most coordinates in no bin, and
  // the coord_slot gathers (n_perm * dim int32, beyond L2 for dim ~ 10^5) dominate. For a
  // large enough batch we first derive from coord_slot a bitmap of the coordinates that
  // are in some bin (dim bits, fits L1/L2), so most non-zeros skip the gathers. The
  // bitmap is exact, so the codes are the same with or without it.
  std::vector<uint64_t> covered;
  const uint64_t total_nnz = (uint64_t)(indptr[n] - indptr[0]);
  if (g.nslots * 4 < g.dim && total_nnz * 8 >= g.dim) {
    covered.assign((g.dim + 63) / 64, 0);
    const int32_t* cs = p.coord_slot;
    for (int q = 0; q < g.n_perm; ++q)
      for (uint64_t c = 0; c < g.dim; ++c, ++cs)
        if ((uint32_t)*cs < g.nslots) covered[c >> 6] |= uint64_t(1) << (c & 63);
  }
  const uint64_t* cov = covered.empty() ? nullptr : covered.data();
  parallel_for(n, 32, [&](int64_t begin, int64_t end) {
    // best/code of a bin are meaningful only while full[b]; densification then writes
    // the code of every empty bin, so only the full flags need resetting per row.
    Scratch s(g.nb);
    float* best = s.best.data();
    uint32_t* code = s.code.data();
    uint8_t* full = s.full.data();
    uint32_t* ne = s.ne.data();
    for (int64_t r = begin; r < end; ++r) {
      uint32_t n_ne = 0;
      for (int64_t j = indptr[r], j1 = indptr[r + 1]; j < j1; ++j) {
        const int32_t c = indices[j];
        if ((uint64_t)(int64_t)c >= g.dim) fail("indices: expected column indices in [0, dim)");
        if (cov && !((cov[(uint32_t)c >> 6] >> (c & 63)) & 1)) continue;
        const float v = data[j];
        if (v == 0.0f) continue;
        const int32_t* slot = p.coord_slot + c;
        for (int q = 0; q < g.n_perm; ++q, slot += p.dim) {
          const uint32_t sl = (uint32_t)*slot;
          if (sl >= g.nslots) continue;  // -1: not in any bin of this permutation
          const uint32_t b = sl >> g.cb, pos = sl & g.mask;
          // the float rule with best = -inf, position = m for an empty bin
          const bool take = full[b] ? v > best[b] || (v == best[b] && pos < code[b]) : v == v;
          if (take) {
            if (!full[b]) {
              full[b] = 1;
              ne[n_ne++] = b;
            }
            best[b] = v;
            code[b] = pos;
          }
        }
      }
      finish_row(r, g, p, true, n_ne, dz, s, codes, keys);
      for (uint32_t i = 0; i < n_ne; ++i) full[ne[i]] = 0;
    }
  });
}

}  // namespace hashlab
