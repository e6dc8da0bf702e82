// SimHash entry points: argument checks, threading over rows, and the run-time
// choice of kernel (src_cpp/kernels/simhash_*.cpp).
#include "hashlab/simhash.h"

#include <algorithm>
#include <vector>

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

void simhash_dense_bits(const float* X, int64_t n, int64_t dim, const float* W, int64_t wstride,
                        int64_t nbits, uint64_t* out) {
  check_bits_args(n, nbits, out);
  check_w(dim, W, wstride, nbits);
  if (n == 0) return;
  const Simd s = simd_level();
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

void simhash_csr_bits(const int64_t* indptr, const int32_t* indices, const float* data, int64_t n,
                      int64_t dim, const float* W, int64_t wstride, int64_t nbits, uint64_t* out) {
  check_bits_args(n, nbits, out);
  check_w(dim, W, wstride, nbits);
  check(indptr != nullptr && indptr[0] == 0, "indptr: expected indptr[0] == 0");
  for (int64_t i = 0; i < n; ++i)
    check(indptr[i + 1] >= indptr[i], "indptr: expected a non-decreasing array");
  for (int64_t p = 0; p < indptr[n]; ++p)
    check(indices[p] >= 0 && indices[p] < dim, "indices: expected column indices in [0, dim)");
  const Simd s = simd_level();
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
  const Simd s = simd_level();
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
  const Simd s = simd_level();
  parallel_for(na, std::max<int64_t>(1, 4096 / std::max<int64_t>(nb, 1)), [&](int64_t r0, int64_t r1) {
    if (s == Simd::avx512) avx512::hamming_rows(a, r0, r1, b, nb, nwords, out);
    else if (s == Simd::avx2) avx2::hamming_rows(a, r0, r1, b, nb, nwords, out);
    else scalar::hamming_rows(a, r0, r1, b, nb, nwords, out);
  });
}

}  // namespace hashlab
