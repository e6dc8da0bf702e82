#include "kernels/vector_ops.h"

#include "dispatch.h"

namespace hashlab {

const VectorOps& vector_ops() {
  switch (simd_level(Kernel::vector_ops)) {
    case Simd::avx512: return avx512::ops;
    case Simd::avx2: return avx2::ops;
    default: return scalar::ops;
  }
}

}  // namespace hashlab
