#include "dispatch.h"

#include <algorithm>
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
// AVX-512 additionally the opmask/ZMM state (bits 5, 6, 7); avx512bf16 also AVX512_BF16
// (leaf 7 subleaf 1, EAX bit 5) and a build with its kernels.
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
  const unsigned subleaves = a;
  const bool avx2 = b & (1u << 5), bmi2 = b & (1u << 8);
  if (level == Simd::avx2) return avx2 && bmi2;
  const bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  const bool avx512 = avx2 && bmi2 && f && dq && bw && vl && (xcr0 & 0xE0) == 0xE0;
  if (level == Simd::avx512) return avx512;
  if (!avx512 || subleaves < 1) return false;  // avx512bf16
  __cpuid_count(7, 1, a, b, c, d);
  return attention_bf16_built() && (a & (1u << 5));
}

Simd best() {
  if (detect(Simd::avx512bf16)) return Simd::avx512bf16;
  if (detect(Simd::avx512)) return Simd::avx512;
  if (detect(Simd::avx2)) return Simd::avx2;
  return Simd::scalar;
}

// The highest level each family uses by default, the fastest measured (a level not measured
// faster than the one below it is not a default). Figures: AMD EPYC, 2 cores, AVX-512
// (f/bw/dq/vl, bf16, VNNI), HASHLAB_SIMD alternating, best of 3-7, 2 threads (issue 16):
// - simhash_dense: gaussian keys 100,000 x 128, k=10, l=150: avx512 482-496 ms, avx2 434-442 ms.
// - hadamard: the same keys, kind="hadamard": avx512 86 ms, avx2 96-129 ms.
// - attention: dense_attention over 32K keys, 8 KV / 32 query heads: avx512 22-24 ms, avx2 19-21 ms.
// - simhash_csr, hamming, vector_ops: AVX-512 not measured faster. `hashlab bench isa` measures all.
// - attention, avx512bf16 (bfloat16 keys only), interleaved in one process, 32K bf16 keys: bf16
//   queries 16.9 ms against avx2's 17.0, float32 queries 20.6 against 17.1 (benchmarks/README.md).
constexpr Simd DEFAULT_CAP[(int)Kernel::count] = {
    Simd::avx2,    // simhash_dense
    Simd::avx2,    // simhash_csr
    Simd::avx512,  // hadamard
    Simd::avx2,    // hamming
    Simd::avx2,    // vector_ops
    Simd::avx2,    // attention
};

// The highest level each family has kernels for.
constexpr Simd TOP[(int)Kernel::count] = {Simd::avx512, Simd::avx512, Simd::avx512,
                                          Simd::avx512, Simd::avx512, Simd::avx512bf16};

constexpr const char* KERNEL_NAMES[(int)Kernel::count] = {"simhash_dense", "simhash_csr", "hadamard",
                                                          "hamming",       "vector_ops",  "attention"};

constexpr int AUTO = -2;  // g_level: no level forced

Simd parse(const char* name) {
  std::string s(name);
  if (s == "avx512bf16") return Simd::avx512bf16;
  if (s == "avx512") return Simd::avx512;
  if (s == "avx2") return Simd::avx2;
  if (s == "scalar") return Simd::scalar;
  throw std::invalid_argument("HASHLAB_SIMD: expected one of avx512bf16, avx512, avx2, scalar, auto, got '" + s +
                              "'");
}

std::atomic<int> g_level{-1};

}  // namespace

bool simd_supported(Simd level) { return detect(level); }

const char* simd_name(Simd level) {
  switch (level) {
    case Simd::avx512bf16: return "avx512bf16";
    case Simd::avx512: return "avx512";
    case Simd::avx2: return "avx2";
    default: return "scalar";
  }
}

const char* kernel_name(Kernel k) { return KERNEL_NAMES[(int)k]; }

void set_simd_level(const char* name) {
  if (std::string(name) == "auto") {
    g_level.store(AUTO);
    return;
  }
  Simd s = parse(name);
  if (!detect(s))
    throw std::invalid_argument(std::string("SIMD level '") + name +
                                "' is not supported by this CPU/OS; the best available is '" +
                                simd_name(best()) + "'");
  g_level.store((int)s);
}

namespace {
// The forced level, or AUTO (HASHLAB_SIMD read on the first call).
int forced() {
  int v = g_level.load();
  if (v == -1) {
    const char* env = std::getenv("HASHLAB_SIMD");
    if (env && *env) set_simd_level(env);  // throws on a bad or unsupported value: the import reports it
    else g_level.store(AUTO);
    v = g_level.load();
  }
  return v;
}
}  // namespace

bool simd_forced() { return forced() != AUTO; }

Simd simd_level() {
  const int v = forced();
  return v == AUTO ? best() : (Simd)v;
}

Simd simd_level(Kernel k) {
  const int v = forced();
  return std::min(v == AUTO ? std::min(best(), DEFAULT_CAP[(int)k]) : (Simd)v, TOP[(int)k]);
}

}  // namespace hashlab
