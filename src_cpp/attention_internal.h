// Shared by the attention sources (attention_*.cpp): the kernel set in use and a bit
// count. The files, in the order of a decode step:
//   attention_prob      u = P[Binomial(l, p) >= m], its log table (sampling correction)
//   attention_segment   the Elias-Fano coded hash tables of a token range (index layout)
//   attention_count     collision counting of a query head: its sampled-token bitmap
//   attention_engine    attention over dense ranges and sampled bitmaps, in parallel parts
//   attention_exact     dense and top-k exact attention (the baselines)
//   attention_index     LSHAttentionIndex: KV pages, indexing, the decode step's schedule
// The vector code is in kernels/attention_kernel.inc.
#pragma once
#include <cstdint>

#include "dispatch.h"
#include "kernels/attention_kernels.h"

namespace hashlab {
namespace attn {

// Picked at every call, so that hashlab._C.set_simd_level takes effect immediately.
inline const AttnKernels& kern() {
  switch (simd_level(Kernel::attention)) {
    case Simd::avx512: return avx512::attn_kernels;
    case Simd::avx2: return avx2::attn_kernels;
    default: return scalar::attn_kernels;
  }
}

// Inline bit count: these files are built for baseline x86-64, where
// __builtin_popcountll is a library call.
inline int64_t popcount64(uint64_t x) {
  x -= (x >> 1) & 0x5555555555555555ull;
  x = (x & 0x3333333333333333ull) + ((x >> 2) & 0x3333333333333333ull);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0Full;
  return (int64_t)((x * 0x0101010101010101ull) >> 56);
}

}  // namespace attn
}  // namespace hashlab
