// Winner-take-all hashing (WTA) and densified WTA (DWTA), and densified
// one-permutation MinHash. All random parameters are made in Python
// (hashlab/hashing.py) from the seed and passed in, so the numba twins
// (hashlab/jit.py) take the very same arrays and return identical codes.
//
// Notation: nb = k*l bins (hashes), m = bin_size (a power of two, code bits cb = log2 m).
#pragma once
#include <cstdint>

namespace hashlab {

// Densification: an empty bin b borrows the code (or MinHash value) of the first
// non-empty bin on its probe walk (A[b] + t*B[b]) mod nb, t = 1, 2, ..., nb, where
// B[b] is coprime with nb, so the walk visits every bin and always ends. Binv[b] is
// B[b]'s inverse mod nb: the step at which the walk hits bin j is
// ((j - A[b]) mod nb) * Binv[b] mod nb (0 meaning nb). Rows with no non-empty bin
// get code 0 (WTA/DWTA) or 0xFFFFFFFF (MinHash) everywhere.
struct Probe {
  const uint32_t* A;
  const uint32_t* B;
  const uint32_t* Binv;
};

struct WtaParams {
  int64_t dim;
  int k, l, bin_size;
  int n_perm;
  const int32_t* bin_coords;  // (nb, m): coordinate at each position of each bin, -1 = none
  const int32_t* coord_slot;  // (n_perm, dim): bin*m + pos of coordinate c in permutation p, -1 = unused
  Probe probe;                // used by the densified variant only
};

// WTA: the code of a bin is the position of its largest value (lowest position on
// ties); absent CSR entries are zeros. DWTA: zeros are absent; a bin with no
// non-zero value is empty and densified. Outputs (either may be null):
// codes (n, nb) uint8 or uint16 per bin as int32, keys (n, l) uint32 with
// key[t] = sum_i code[t*k + i] << (i*cb).
void wta_dense(const float* X, int64_t n, const WtaParams& p, bool densified, int32_t* codes,
               uint32_t* keys);
void wta_csr(const int64_t* indptr, const int32_t* indices, const float* data, int64_t n,
             const WtaParams& p, bool densified, int32_t* codes, uint32_t* keys);

// Densified one-permutation MinHash over sets of non-negative int32 ids (the column
// ids of CSR rows; values ignored). h(x) = ((a*x + c) mod 2^64) >> 32 (a odd);
// bin = (h * nb) >> 32; the bin's value is the minimum h in it. keys[t] mixes the k
// values of table t: FNV-1a over the 32-bit values then fmix32.
void minhash_csr(const int64_t* indptr, const int32_t* indices, int64_t n, int k, int l, uint64_t a,
                 uint64_t c, const Probe& probe, uint32_t* signatures, uint32_t* keys);

}  // namespace hashlab
