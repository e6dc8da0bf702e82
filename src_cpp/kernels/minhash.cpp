// Densified one-permutation MinHash (Shrivastava 2017, "optimal densification");
// semantics in include/hashlab/wta.h, mirrored by hashlab/jit.py.
//
// One pass over the row's ids: h(x) = ((a*x + c) mod 2^64) >> 32, bin = (h * nb) >> 32,
// keep the minimum h per bin; then empty bins borrow along their probe walks
// (densify_row, shared with the WTA kernels). O(nnz + nb) per row, plus the walks.
#include <algorithm>
#include <vector>

#include "hashlab/common.h"
#include "hashlab/threads.h"
#include "hashlab/wta.h"

namespace hashlab {
namespace detail {
// Defined in kernels/wta.cpp (densification is shared with DWTA).
void check_probe(const Probe& pr, uint32_t nb);
bool want_step_table(uint32_t nb, int64_t n_rows);
void build_step_table(const Probe& pr, uint32_t nb, int16_t* steps);
void densify_row(uint32_t* vals, const uint8_t* full, const uint32_t* ne, uint32_t n_ne, uint32_t nb,
                 const Probe& pr, const FastMod& mod_nb, const int16_t* steps, int16_t* tmp,
                 uint32_t if_none);
}  // namespace detail

void minhash_csr(const int64_t* indptr, const int32_t* indices, int64_t n, int k, int l, uint64_t a, uint64_t c,
                 const Probe& probe, uint32_t* signatures, uint32_t* keys) {
  check(n >= 0, "n: expected n >= 0");
  check(k >= 1 && l >= 1, "k, l: expected k >= 1 and l >= 1");
  check((int64_t)k * l <= 65535, "k*l: expected at most 65535 bins");
  const uint32_t nb = (uint32_t)(k * l);
  detail::check_probe(probe, nb);
  if (n == 0 || (!signatures && !keys)) return;
  check(indptr != nullptr, "indptr: must not be null");
  check(indptr[0] >= 0, "indptr: expected indptr[0] >= 0");
  for (int64_t r = 0; r < n; ++r) check(indptr[r] <= indptr[r + 1], "indptr: expected non-decreasing offsets");
  check(indptr[n] == indptr[0] || indices, "indices: must not be null");
  const FastMod mod_nb(nb);
  std::vector<int16_t> steps;
  if (detail::want_step_table(nb, n)) {
    steps.resize((size_t)nb * nb);
    detail::build_step_table(probe, nb, steps.data());
  }
  const int16_t* st = steps.empty() ? nullptr : steps.data();

  parallel_for(n, 32, [&](int64_t begin, int64_t end) {
    std::vector<uint32_t> val(nb), ne(nb);
    std::vector<int16_t> tmp(nb);
    std::vector<uint8_t> full(nb, 0);
    for (int64_t r = begin; r < end; ++r) {
      uint32_t n_ne = 0;
      for (int64_t j = indptr[r], j1 = indptr[r + 1]; j < j1; ++j) {
        const int32_t x = indices[j];
        if (x < 0) fail("indices: expected non-negative ids");
        const uint32_t h = (uint32_t)((a * (uint64_t)x + c) >> 32);
        const uint32_t b = (uint32_t)(((uint64_t)h * nb) >> 32);
        if (!full[b]) {
          full[b] = 1;
          ne[n_ne++] = b;
          val[b] = h;
        } else if (h < val[b]) {
          val[b] = h;
        }
      }
      detail::densify_row(val.data(), full.data(), ne.data(), n_ne, nb, probe, mod_nb, st, tmp.data(), 0xFFFFFFFFu);
      if (signatures) std::copy(val.begin(), val.end(), signatures + r * (int64_t)nb);
      if (keys) {
        uint32_t* out = keys + r * (int64_t)l;
        const uint32_t* v = val.data();
        for (int t = 0; t < l; ++t, v += k) {
          uint32_t h = 0x811C9DC5u;
          for (int i = 0; i < k; ++i) h = (h ^ v[i]) * 0x01000193u;
          out[t] = fmix32(h);
        }
      }
      for (uint32_t i = 0; i < n_ne; ++i) full[ne[i]] = 0;
    }
  });
}

}  // namespace hashlab
