// The attention engine shared by the LSH index and the exact kernels. The query heads of
// a KV head go in subgroups of up to 32; a subgroup's keys (dense token ranges, and the
// union of its heads' sampled-token bitmaps) are cut into parts of about equal size, each
// part reads its key and value rows once for all its heads and yields per head (max, sum
// of exp, sum of exp * v), flash-decoding style; the parts are merged with log-sum-exp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "kernels/attention_kernels.h"

namespace hashlab {
namespace attn {

// Row i of KV head g: pages of 2^shift rows, `stride` bytes apart from `offset` on
// (the index keeps a token's key and value rows side by side: stride = 2 * row_bytes).
struct Rows {
  const uint8_t* const* pages = nullptr;
  int64_t pages_per_head = 1;
  int shift = 40;
  int64_t row_bytes = 0, stride = 0, offset = 0;
  const uint8_t* row(int64_t g, int64_t i) const {
    return pages[g * pages_per_head + (i >> shift)] + offset + (i & ((int64_t(1) << shift) - 1)) * stride;
  }
};

// Heads [h0, h0 + Gs) of KV head g (Gs <= 32).
struct SubGroup {
  int64_t g, h0;
  int Gs;
};

// The sampled logits' correction -log u and max_sampled factor (on: the index).
struct Correction {
  bool on = false;
  const LogUTable* tab = nullptr;
  int k = 0;
  const float* kmean = nullptr;    // the key mean of KV head g (set per subgroup)
  const float* qmu = nullptr;      // per head (absolute head index)
  const float* qnorm = nullptr;
  const float* extra = nullptr;
};

// One part of a subgroup (index into the subgroup list).
struct Task {
  int sg = 0;
  int64_t w0 = 0, w1 = 0;  // words of the subgroup's bitmaps
  std::vector<std::pair<int64_t, int64_t>> ranges;
};

std::vector<SubGroup> make_subgroups(int64_t n_heads, int64_t n_kv);

// Word boundaries that split the union of a subgroup's bitmaps into up to `want` parts
// of about equal size (at least ~256 keys each): {0, ..., nw}.
std::vector<int64_t> split_union(const SubGroup& sg, const uint64_t* sel, int64_t nw, int64_t want);

// Parts per subgroup so that the threads get about 8 parts each.
int64_t parts_wanted(size_t n_subgroups);

// One part: its sampled keys (words [t.w0, t.w1) of its subgroup's bitmaps) and dense
// ranges, into part (Gs * (d + 2) floats). kmeans: (n_kv, d), the correction's key means.
void run_task(const AttnKernels& K, const Rows& Kr, const Rows& Vr, bool bf16, const float* Q, int64_t d,
              float scale, const std::vector<SubGroup>& sgs, const uint64_t* sel, int64_t nw, const Task& t,
              const Correction& cor_base, const float* kmeans, float* part);

// Merges the parts of every head: out = acc / sum, lse = max + log(sum).
void merge_parts(const std::vector<SubGroup>& sgs, const std::vector<Task>& tasks, const std::vector<float>& parts,
                 int64_t d, float* out, float* lse);

// Runs the parts of every subgroup over the threads and merges them. Sampled keys: the
// per-head bitmaps sel (nw words per head; null: none). dense_block > 0 cuts the dense
// ranges into parts of that many keys (the exact kernels); otherwise they go to part 0.
void run_attention(const AttnKernels& K, const Rows& Kr, const Rows& Vr, bool bf16, const float* Q, int64_t d,
                   float scale, const std::vector<SubGroup>& sgs, const uint64_t* sel, int64_t nw,
                   const std::vector<std::pair<int64_t, int64_t>>& dense, int64_t dense_block,
                   const Correction& cor_base, const float* kmeans, float* out, float* lse);

// Queries' heads against the KV heads: n_heads a positive multiple of n_kv.
void check_heads(int64_t n_heads, int64_t n_kv, int64_t d);

}  // namespace attn
}  // namespace hashlab
