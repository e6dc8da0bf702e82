// The BLAS sgemm that scipy ships, called through a function pointer registered at run
// time (scipy.linalg.cython_blas's capsule): no link-time BLAS dependency.
#pragma once
#include <cstdint>

namespace hashlab {

// Fortran sgemm: C = alpha op(A) op(B) + beta C, column-major.
typedef void (*sgemm_fn)(const char* transa, const char* transb, const int* m, const int* n, const int* k,
                         const float* alpha, const float* A, const int* lda, const float* B, const int* ldb,
                         const float* beta, float* C, const int* ldc);

// Registers sgemm; usable only if the library that holds it also exports OpenBLAS's thread
// controls (hashlab calls it from its own threads, with BLAS's threads at 1 meanwhile).
// Returns whether the pointer is usable.
bool register_sgemm(void* fn);
sgemm_fn registered_sgemm();  // nullptr if none usable

// While alive, the registered BLAS runs one thread per call (the previous count is restored
// when the last such scope in the process ends).
class BlasSingleThread {
 public:
  BlasSingleThread();
  ~BlasSingleThread();
  BlasSingleThread(const BlasSingleThread&) = delete;
  BlasSingleThread& operator=(const BlasSingleThread&) = delete;
};

}  // namespace hashlab
