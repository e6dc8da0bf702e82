// Per-instruction-set SimHash kernels. simhash_kernel.inc is compiled once per
// level (simhash_{scalar,avx2,avx512}.cpp) into the namespace of that level;
// src_cpp/simhash.cpp picks one at run time. Each works on rows [r0, r1).
#pragma once
#include <cstdint>
#include <vector>

#define HASHLAB_DECLARE_SIMHASH_KERNELS(ISA)                                                       \
  namespace hashlab {                                                                              \
  namespace ISA {                                                                                  \
  int64_t packed_w_floats(int64_t dim, int64_t nbits);                                             \
  void pack_w(const float* W, int64_t dim, int64_t wstride, int64_t nbits, float* wp);            \
  void dense_bits(const float* X, int64_t r0, int64_t r1, int64_t dim, const float* wp,           \
                  int64_t nbits, uint64_t* out);                                                   \
  void product_bits(const float* P, int64_t ldp, int64_t i0, int64_t rows, int64_t c0, int64_t ncols,    \
                    const float* thr, const float* wn, float eta, const float* X, int64_t dim,          \
                    const float* W, int64_t wstride, uint64_t* out, int64_t nwords);                   \
  void csr_bits(const int64_t* indptr, const int32_t* indices, const float* data, int64_t r0,     \
                int64_t r1, const float* W, int64_t wstride, int64_t nbits, uint64_t* out);        \
  void hadamard_bits(const float* X, int64_t r0, int64_t r1, int64_t dim, const float* signs,     \
                     int64_t n_rot, int64_t nbits, uint64_t* out);                                 \
  void hamming_rows(const uint64_t* a, int64_t r0, int64_t r1, const uint64_t* b, int64_t nb,     \
                    int64_t nwords, int32_t* out);                                                 \
  void hamming_hist(const uint64_t* q, const uint64_t* b, int64_t j0, int64_t j1, int64_t nwords, \
                    int64_t nbins, uint16_t* dist, int32_t* hist);                                 \
  void hamming_below(const uint64_t* q, const uint64_t* b, int64_t j0, int64_t j1, int64_t nwords, \
                     int cut, std::vector<uint64_t>& out);                                         \
  }                                                                                                \
  }

HASHLAB_DECLARE_SIMHASH_KERNELS(scalar)
HASHLAB_DECLARE_SIMHASH_KERNELS(avx2)
HASHLAB_DECLARE_SIMHASH_KERNELS(avx512)
