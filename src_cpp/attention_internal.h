// Shared by the attention sources (attention_*.cpp): the kernel set in use and a bit
// count. The files, in the order of a decode step:
//   attention_prob      u = P[Binomial(l, p) >= m], its log table (sampling correction)
//   attention_segment   the Elias-Fano coded hash tables of a token range (index layout)
//   attention_count     collision counting of a query head: its sampled-token bitmap
//   attention_engine    attention over dense ranges and sampled bitmaps, in parallel parts
//   attention_exact     dense and top-k exact attention (the baselines)
//   attention_index     LSHAttentionIndex: KV pages, indexing, the decode step's schedule
// The vector code is in kernels/attention_kernel.inc and the per-concept files it includes
// (attention_kernel_{vec,hash,dots,logits,bf16}.inc).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "dispatch.h"
#include "kernels/attention_kernels.h"

namespace hashlab {
namespace attn {

// Picked at every call, so that hashlab._C.set_simd_level takes effect immediately.
inline const AttnKernels& kern() {
  switch (simd_level(Kernel::attention)) {
    case Simd::avx512bf16: return avx512bf16::attn_kernels;
    case Simd::avx512: return avx512::attn_kernels;
    case Simd::avx2: return avx2::attn_kernels;
    default: return scalar::attn_kernels;
  }
}

// G consecutive queries (d floats each, from Q) against key rows: bfloat16 rows go through
// the level's bfloat16 dot products when it has them (the queries split once, here), the
// rest through its float kernels.
class QueryDots {
 public:
  QueryDots(const AttnKernels& K, const float* Q, int G, int64_t d, bool bf16) : K_(K), Q_(Q), d_(d), bf16_(bf16) {
    if (!bf16 || !K.split_query) return;
    parts_.resize((size_t)G * 3 * d);
    for (int j = 0; j < G; ++j) np_ = std::max(np_, K.split_query(Q + j * d, d, parts_.data() + j * 3 * d));
  }
  float dot(int j, const void* row) const {
    if (np_) return K_.dot_split(parts_.data() + j * 3 * d_, np_, static_cast<const uint16_t*>(row), d_);
    return K_.dot_row(Q_ + j * d_, row, bf16_, d_);
  }
  // out[j] = <q_j, row> for j in [0, G)
  void dots(int G, const void* row, float* out) const {
    if (np_) K_.dots_split(parts_.data(), np_, G, static_cast<const uint16_t*>(row), d_, out);
    else K_.dots_row(Q_, d_, G, row, bf16_, d_, out);
  }

 private:
  const AttnKernels& K_;
  const float* Q_;
  int64_t d_;
  bool bf16_;
  int np_ = 0;  // bfloat16 parts per query; 0: the float kernels
  std::vector<uint16_t> parts_;
};

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
