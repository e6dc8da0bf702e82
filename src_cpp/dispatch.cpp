#include "dispatch.h"

#include <atomic>
#include <cpuid.h>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

namespace hashlab {
namespace {

uint64_t xgetbv0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return ((uint64_t)edx << 32) | eax;
}

// AVX2 needs the CPU bits and the OS saving YMM state (XCR0 bits 1, 2);
// AVX-512 additionally the opmask/ZMM state (bits 5, 6, 7).
bool detect(Simd level) {
  if (level == Simd::scalar) return true;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  const bool osxsave = c & (1u << 27), fma = c & (1u << 12);
  if (!osxsave || !fma) return false;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return false;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  if (level == Simd::avx2) return avx2 && bmi2;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  return avx2 && bmi2 && f && dq && bw && vl && (xcr0 & 0xE0) == 0xE0;
}

Simd best() {
  if (detect(Simd::avx512)) return Simd::avx512;
  if (detect(Simd::avx2)) return Simd::avx2;
  return Simd::scalar;
}

Simd parse(const char* name) {
  std::string s(name);
  if (s == "avx512") return Simd::avx512;
  if (s == "avx2") return Simd::avx2;
  if (s == "scalar") return Simd::scalar;
  throw std::invalid_argument("HASHLAB_SIMD: expected one of avx512, avx2, scalar, got '" + s + "'");
}

std::atomic<int> g_level{-1};

}  // namespace

bool simd_supported(Simd level) { return detect(level); }

const char* simd_name(Simd level) {
  switch (level) {
    case Simd::avx512: return "avx512";
    case Simd::avx2: return "avx2";
    default: return "scalar";
  }
}

void set_simd_level(const char* name) {
  Simd s = parse(name);
  if (!detect(s))
    throw std::invalid_argument(std::string("SIMD level '") + name +
                                "' is not supported by this CPU/OS; the best available is '" +
                                simd_name(best()) + "'");
  g_level.store((int)s);
}

Simd simd_level() {
  int v = g_level.load();
  if (v < 0) {
    const char* env = std::getenv("HASHLAB_SIMD");
    if (env && *env) {
      set_simd_level(env);  // throws on a bad or unsupported value: the import reports it
    } else {
      g_level.store((int)best());
    }
    v = g_level.load();
  }
  return (Simd)v;
}

}  // namespace hashlab
