// SimHash (signed random projections): dense projections (gaussian or sparse +-1),
// and structured rotations (HD3 HD2 HD1, fast Walsh-Hadamard).
//
// Bit b of row x is 1 iff <x, W[:, b]> > 0 (so an all-zero row hashes to all zeros).
// Projections accumulate over the input coordinates in increasing order with a
// separate float32 multiply and add per term (no FMA), so the bits are identical
// on every SIMD level, for dense and CSR input, and in the numba twins.
//
// Bits are packed little-endian into uint64 rows: bit b is (row[b / 64] >> (b % 64)) & 1.
#pragma once
#include <cstdint>

namespace hashlab {

// How the dense projection is computed: automatic = BLAS sgemm where it is registered and
// simhash_blas_default says so, else the own kernel. The bits are the same either way.
enum class DenseMethod { automatic, kernel, blas };

// X (n, dim) float32 row-major; W (dim, wstride) float32 row-major with wstride a
// multiple of 64 >= nbits (padding columns ignored); out (n, nwords), nwords = ceil(nbits/64).
void simhash_dense_bits(const float* X, int64_t n, int64_t dim, const float* W, int64_t wstride,
                        int64_t nbits, uint64_t* out, DenseMethod method = DenseMethod::automatic);
bool simhash_blas_default(int64_t n, int64_t dim);

// CSR rows (indptr (n+1) int64, indices int32 in [0, dim), data float32); same W and out.
void simhash_csr_bits(const int64_t* indptr, const int32_t* indices, const float* data, int64_t n,
                      int64_t dim, const float* W, int64_t wstride, int64_t nbits, uint64_t* out);

// Structured rotations. D = the power of two >= dim; the row is zero-padded to D.
// signs (n_rot + 2, D) float32 of +-1: rows 0 and 1 are D1, D2, shared by every
// rotation; row 2 + r is D3 of rotation r, which gives bits [r*D, (r+1)*D):
// y_r = H diag(D3_r) H diag(D2) H diag(D1) x (unnormalised Hadamard H).
void hadamard_bits(const float* X, int64_t n, int64_t dim, const float* signs, int64_t n_rot,
                   int64_t nbits, uint64_t* out);

// keys[i, t] = bits k*t .. k*t+k-1 of row i (bit k*t is the key's lowest bit); 1 <= k <= 32.
void bits_to_keys(const uint64_t* bits, int64_t n, int64_t nwords, int k, int l, uint32_t* keys);

// out[i, j] = popcount(a[i] ^ b[j]) over nwords words.
void hamming_pairwise(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t nwords,
                      int32_t* out);

// The m rows of b nearest to each row of q in Hamming distance (1 <= m <= nb, nwords <= 1023):
// ids[i, :] and dist[i, :] ordered by (distance, id). Linear time per query: a histogram
// of the distances gives the cut-off, and one pass writes the rows below it in order.
void hamming_topm(const uint64_t* q, int64_t nq, const uint64_t* b, int64_t nb, int64_t nwords, int64_t m,
                  int32_t* ids, int32_t* dist);

}  // namespace hashlab
