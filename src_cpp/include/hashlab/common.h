// Shared basics of the C++ core: plain types and argument checks.
// The core never includes Python headers; errors are std::invalid_argument
// (mapped to ValueError by the bindings) so that no input can crash the process.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace hashlab {

[[noreturn]] inline void fail(const std::string& msg) { throw std::invalid_argument(msg); }
inline void check(bool ok, const char* msg) {
  if (!ok) fail(msg);
}

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// 32-bit finaliser of MurmurHash3: a cheap, well-mixing bijection.
inline uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

// Lemire's fastmod for 32-bit numerators: a % d without a division.
struct FastMod {
  uint64_t M = 0;
  uint32_t d = 1;
  FastMod() = default;
  explicit FastMod(uint32_t div) : M(UINT64_MAX / div + 1), d(div) {}
  uint32_t operator()(uint32_t a) const {
    uint64_t low = M * a;
    return (uint32_t)(((__uint128_t)low * d) >> 64);
  }
};

}  // namespace hashlab
