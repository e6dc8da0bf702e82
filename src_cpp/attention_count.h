// Collision counting of a decode query: for every (segment, table) walk the query's
// bucket and count the collisions per token; the result is a bitmap of sampled tokens.
#pragma once
#include <cstdint>
#include <vector>

#include "attention_segment.h"

namespace hashlab {
namespace attn {

// Collision counters of one query head over the token range. The sampled tokens end up
// marked in a bitmap, word w at sel[w * stride]. m = 1: a first collision marks (stride
// 1). m = 2: the words of a "seen once" bitmap and of the sampled one alternate
// (stride 2, once at sel[2w - 1]): one cache line holds both, and the two bitmaps of
// n/8 bytes each stay in L1/L2 where a byte per token would not. m >= 3: saturating
// uint8 counts.
struct Counters {
  int m = 2;
  uint8_t* cnt = nullptr;
  uint64_t* sel = nullptr;
  int stride = 1;
};

// All collisions of one query head (codes qc[t * qstride]) with KV head g's index.
void count_head(const std::vector<Segment>& segs, int64_t g, int l, const uint32_t* qc, int64_t qstride,
                const Counters& C);

}  // namespace attn
}  // namespace hashlab
