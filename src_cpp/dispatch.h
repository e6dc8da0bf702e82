// Run-time choice of the instruction set: cpuid/xgetbv detection, with the
// HASHLAB_SIMD environment variable (avx512bf16|avx512|avx2|scalar) forcing a level.
#pragma once

namespace hashlab {

// avx512bf16: AVX-512 with the bfloat16 dot product (vdpbf16ps); only the attention family
// has kernels for it, the others run their avx512 ones at that level.
enum class Simd { scalar = 0, avx2 = 1, avx512 = 2, avx512bf16 = 3 };

// The dispatched kernel families; each has its own default level (dispatch.cpp).
enum class Kernel { simhash_dense, simhash_csr, hadamard, hamming, vector_ops, attention, count };

bool simd_supported(Simd level);  // CPU and OS support this level
Simd simd_level();                // highest level in use (env override checked on first call)
Simd simd_level(Kernel k);        // the level of one family: the forced one (capped by the
                                  // family's highest), else its default
const char* simd_name(Simd level);
const char* kernel_name(Kernel k);
// Forces every family to one level; "auto" returns to the defaults. Throws
// std::invalid_argument if unknown or unsupported.
void set_simd_level(const char* name);
bool simd_forced();  // a level is forced (HASHLAB_SIMD or set_simd_level)
bool attention_bf16_built();  // the avx512bf16 attention kernels were compiled (kernels/attention_avx512bf16.cpp)

}  // namespace hashlab
