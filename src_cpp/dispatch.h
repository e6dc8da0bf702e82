// Run-time choice of the instruction set: cpuid/xgetbv detection, with the
// HASHLAB_SIMD environment variable (avx512|avx2|scalar) forcing a level.
#pragma once

namespace hashlab {

enum class Simd { scalar = 0, avx2 = 1, avx512 = 2 };

bool simd_supported(Simd level);  // CPU and OS support this level
Simd simd_level();                // level in use (env override checked on first call)
const char* simd_name(Simd level);
void set_simd_level(const char* name);  // throws std::invalid_argument if unknown or unsupported

}  // namespace hashlab
