// Plain C entry points of the hash kernels, for callers that are not Python:
// hashlab/jit.py loads them with ctypes so that numba @njit code can call them.
//
// Every function takes plain pointers and sizes, returns 0 on success and nonzero
// otherwise (HASHLAB_EINVAL = 1 for a bad argument, HASHLAB_EOTHER = 2 for anything
// else, e.g. out of memory); no exception ever crosses the C boundary. The message
// of the last failure on the calling thread is hashlab_last_error(). Arrays are
// C-contiguous; CSR inputs pass nnz = len(indices) so that indptr can be checked.
// The GIL is not touched: the kernels run on hashlab's own thread pool.
#include <cstdint>
#include <exception>
#include <new>
#include <stdexcept>
#include <string>

#include "hashlab/common.h"
#include "hashlab/simhash.h"
#include "hashlab/wta.h"

#define HASHLAB_API extern "C" __attribute__((visibility("default")))

namespace {

thread_local std::string t_error;

enum { HASHLAB_OK = 0, HASHLAB_EINVAL = 1, HASHLAB_EOTHER = 2 };

template <typename F>
int guarded(F&& f) {
  try {
    f();
    t_error.clear();
    return HASHLAB_OK;
  } catch (const std::invalid_argument& e) {
    t_error = e.what();
    return HASHLAB_EINVAL;
  } catch (const std::bad_alloc&) {
    t_error = "out of memory";
    return HASHLAB_EOTHER;
  } catch (const std::exception& e) {
    t_error = e.what();
    return HASHLAB_EOTHER;
  } catch (...) {
    t_error = "unknown error";
    return HASHLAB_EOTHER;
  }
}

// indptr (n+1) non-decreasing from >= 0 to at most nnz.
void check_indptr(const int64_t* indptr, int64_t n, int64_t nnz) {
  using hashlab::check;
  check(n >= 0 && nnz >= 0, "n, nnz: expected n >= 0 and nnz >= 0");
  check(indptr != nullptr, "indptr: must not be null");
  check(indptr[0] >= 0, "indptr: expected indptr[0] >= 0");
  for (int64_t r = 0; r < n; ++r) check(indptr[r] <= indptr[r + 1], "indptr: expected non-decreasing offsets");
  check(indptr[n] <= nnz, "indptr: expected indptr[n] <= nnz");
}

hashlab::WtaParams wta_params(int64_t dim, int k, int l, int bin_size, int n_perm, const int32_t* bin_coords,
                              const int32_t* coord_slot, const uint32_t* A, const uint32_t* B, const uint32_t* Binv) {
  hashlab::WtaParams p;
  p.dim = dim;
  p.k = k;
  p.l = l;
  p.bin_size = bin_size;
  p.n_perm = n_perm;
  p.bin_coords = bin_coords;
  p.coord_slot = coord_slot;
  p.probe = hashlab::Probe{A, B, Binv};
  return p;
}

}  // namespace

HASHLAB_API const char* hashlab_last_error(void) { return t_error.c_str(); }

// WTA (densified = 0) or DWTA (densified != 0) of dense rows X (n, dim) float32.
// Parameter arrays as made by hashlab.wta: bin_coords (k*l, bin_size), coord_slot
// (n_perm, dim) int32; A, B, Binv (k*l) uint32 (read only when densified).
// codes (n, k*l) int32 and keys (n, l) uint32 may each be null.
HASHLAB_API int hashlab_wta_dense(const float* X, int64_t n, int64_t dim, int k, int l, int bin_size, int n_perm,
                                  const int32_t* bin_coords, const int32_t* coord_slot, const uint32_t* A,
                                  const uint32_t* B, const uint32_t* Binv, int densified, int32_t* codes,
                                  uint32_t* keys) {
  return guarded([&] {
    const auto p = wta_params(dim, k, l, bin_size, n_perm, bin_coords, coord_slot, A, B, Binv);
    hashlab::wta_dense(X, n, p, densified != 0, codes, keys);
  });
}

// Same on CSR rows: indptr (n+1) int64, indices (nnz) int32 in [0, dim), data (nnz) float32.
HASHLAB_API int hashlab_wta_csr(const int64_t* indptr, const int32_t* indices, const float* data, int64_t n,
                                int64_t nnz, int64_t dim, int k, int l, int bin_size, int n_perm,
                                const int32_t* bin_coords, const int32_t* coord_slot, const uint32_t* A,
                                const uint32_t* B, const uint32_t* Binv, int densified, int32_t* codes,
                                uint32_t* keys) {
  return guarded([&] {
    check_indptr(indptr, n, nnz);
    const auto p = wta_params(dim, k, l, bin_size, n_perm, bin_coords, coord_slot, A, B, Binv);
    hashlab::wta_csr(indptr, indices, data, n, p, densified != 0, codes, keys);
  });
}

// Densified one-permutation MinHash of the id sets of CSR rows (indices >= 0).
// signatures (n, k*l) and keys (n, l) uint32 may each be null.
HASHLAB_API int hashlab_minhash_csr(const int64_t* indptr, const int32_t* indices, int64_t n, int64_t nnz, int k,
                                    int l, uint64_t a, uint64_t c, const uint32_t* A, const uint32_t* B,
                                    const uint32_t* Binv, uint32_t* signatures, uint32_t* keys) {
  return guarded([&] {
    check_indptr(indptr, n, nnz);
    hashlab::minhash_csr(indptr, indices, n, k, l, a, c, hashlab::Probe{A, B, Binv}, signatures, keys);
  });
}

namespace {
void check_simhash_shape(int64_t n, int64_t dim, const float* W, int64_t wstride, int64_t nbits, const void* out) {
  using hashlab::check;
  check(n >= 0, "n: expected n >= 0");
  check(dim >= 1, "dim: expected dim >= 1");
  check(nbits >= 1, "nbits: expected nbits >= 1");
  check(wstride >= nbits && wstride % 64 == 0, "wstride: expected a multiple of 64 >= nbits");
  check(W != nullptr, "W: must not be null");
  check(n == 0 || out != nullptr, "out: must not be null");
}
}  // namespace

// SimHash bits of dense rows (see include/hashlab/simhash.h): X (n, dim) float32,
// W (dim, wstride) float32, out (n, ceil(nbits/64)) uint64.
HASHLAB_API int hashlab_simhash_dense_bits(const float* X, int64_t n, int64_t dim, const float* W, int64_t wstride,
                                           int64_t nbits, uint64_t* out) {
  return guarded([&] {
    check_simhash_shape(n, dim, W, wstride, nbits, out);
    hashlab::check(n == 0 || X != nullptr, "X: must not be null");
    hashlab::simhash_dense_bits(X, n, dim, W, wstride, nbits, out);
  });
}

// SimHash bits of CSR rows: indptr (n+1) int64, indices (nnz) int32 in [0, dim), data (nnz) float32.
HASHLAB_API int hashlab_simhash_csr_bits(const int64_t* indptr, const int32_t* indices, const float* data, int64_t n,
                                         int64_t nnz, int64_t dim, const float* W, int64_t wstride, int64_t nbits,
                                         uint64_t* out) {
  return guarded([&] {
    check_simhash_shape(n, dim, W, wstride, nbits, out);
    check_indptr(indptr, n, nnz);
    const int64_t j0 = indptr[0], j1 = indptr[n];
    hashlab::check(j0 == j1 || (indices && data), "indices, data: must not be null");
    for (int64_t j = j0; j < j1; ++j)
      hashlab::check(indices[j] >= 0 && indices[j] < dim, "indices: expected column indices in [0, dim)");
    hashlab::simhash_csr_bits(indptr, indices, data, n, dim, W, wstride, nbits, out);
  });
}

// keys (n, l) uint32 from packed bits (n, nwords) uint64: key t = bits k*t .. k*t+k-1.
HASHLAB_API int hashlab_bits_to_keys(const uint64_t* bits, int64_t n, int64_t nwords, int k, int l, uint32_t* keys) {
  return guarded([&] {
    using hashlab::check;
    check(n >= 0 && nwords >= 1, "n, nwords: expected n >= 0 and nwords >= 1");
    check(k >= 1 && k <= 32 && l >= 1, "k, l: expected 1 <= k <= 32 and l >= 1");
    check((int64_t)k * l <= nwords * 64, "k*l: expected at most 64*nwords bits");
    check(n == 0 || (bits && keys), "bits, keys: must not be null");
    hashlab::bits_to_keys(bits, n, nwords, k, l, keys);
  });
}
