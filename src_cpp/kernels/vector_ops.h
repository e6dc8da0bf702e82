// Small dense vector kernels used by the sparse layers, one set per instruction
// set (vector_ops_{scalar,avx2,avx512}.cpp); vector_ops() returns the set chosen
// at run time.
#pragma once
#include <cstdint>

namespace hashlab {

struct AdamCoefs {
  float beta1, beta2;
  float one_minus_beta1, one_minus_beta2;  // rounded from double, not 1 - (float)beta
  float eps;
  float step_size;     // lr / (1 - beta1^t)
  float inv_sqrt_bc2;  // 1 / sqrt(1 - beta2^t)
};

struct VectorOps {
  float (*dot)(const float* a, const float* b, int64_t d);
  void (*axpy)(float a, const float* x, float* y, int64_t d);  // y += a x
  // w -= step_size * m / (sqrt(v) * inv_sqrt_bc2 + eps) after the moment updates with g
  void (*adam)(float* w, float* m, float* v, const float* g, int64_t d, const AdamCoefs& c);
  // x[i] = exp(x[i] - shift), returns the sum (relative error ~2e-7)
  float (*exp_shift_sum)(float* x, int64_t n, float shift);
};

const VectorOps& vector_ops();

#define HASHLAB_DECLARE_VECTOR_OPS(ISA) \
  namespace ISA {                       \
  extern const VectorOps ops;           \
  }

HASHLAB_DECLARE_VECTOR_OPS(scalar)
HASHLAB_DECLARE_VECTOR_OPS(avx2)
HASHLAB_DECLARE_VECTOR_OPS(avx512)

}  // namespace hashlab
