// LSH-sampled decode attention (MagicPIG, Chen et al. ICLR 2025) on the CPU, and the
// exact kernels it is compared with (dense, top-k).
//
// Per KV head the keys are centred by the mean of the prompt keys and hashed with
// structured-rotation SimHash (k bits x l tables: the bits of hashlab::hadamard_bits with
// the same signs, a table's k bits taken from k different rotations, see
// kernels/attention_kernels.h for why). A decode query (not
// centred) samples the indexed keys that share its bucket in at least m tables; each
// sampled logit q.k*scale is corrected by -log u, u = P[Binomial(l, p) >= m],
// p = (1 - theta/pi)^k with theta the angle between q and the centred key, and the
// sampled softmax is merged exactly (log-sum-exp) with the dense part: the first
// `sinks` tokens, the last `window` tokens, and the tokens that left the window but are
// not indexed yet (fewer than `chunk`).
//
// Memory layout (see attention_segment.h): the index is a list of segments, each covering a
// contiguous token range; per (segment, KV head, table) the keys are bucketed by the low
// kb bits of their code and every bucket's sorted token ids are Elias-Fano coded together
// with the code's remaining k - kb bits: about k + 2 bits per (key, table) plus the
// bucket offsets (12.3 bits at k=10 and 96K keys: ~0.44x a bfloat16 KV cache at l=150).
//
// Arrays are row-major and C-contiguous. KV heads are (n_kv_heads, t, head_dim), float32
// or bfloat16 bit patterns (uint16); queries (n_heads, head_dim) float32 with n_heads a
// multiple of n_kv_heads, query head h reading KV head h / (n_heads / n_kv_heads).
// Errors: std::invalid_argument for bad arguments, std::runtime_error for object state.
#pragma once
#include <cstdint>
#include <memory>

namespace hashlab {

struct AttentionConfig {
  int64_t head_dim = 0, n_kv_heads = 0;
  int k = 10, l = 150;
  int min_collisions = 2;     // 0: every indexed key sampled with u = 1 (exact dense attention)
  int64_t sinks = 4, window = 64;
  int64_t chunk = 256;        // tokens leaving the window join the index this many at a time
  int64_t max_sampled = 0;    // > 0: at most this many sampled keys per query head
  bool bf16 = false;          // KV stored as bfloat16
  uint64_t seed = 0;          // for the max_sampled subsampling
};

class LSHAttentionIndex {
 public:
  // signs: (n_rot + 2, D) float32 of +-1 (D = next power of two >= head_dim,
  // n_rot >= k, n_rot * D >= k * l), as hashlab.SimHash(kind="hadamard") draws them.
  LSHAttentionIndex(const AttentionConfig& cfg, const float* signs, int64_t n_rot);
  ~LSHAttentionIndex();
  LSHAttentionIndex(const LSHAttentionIndex&) = delete;
  LSHAttentionIndex& operator=(const LSHAttentionIndex&) = delete;

  // keys, values: (n_kv_heads, t, head_dim). The first call is the prompt: it sets the
  // centring mean of every KV head (t >= 1).
  void append(const void* keys, const void* values, int64_t t);
  // One decode step. out (n_heads, head_dim); lse (n_heads) log-sum-exp of the
  // (corrected) logits; touched (n_heads) sampled + dense keys. lse, touched may be null.
  void attend(const float* Q, int64_t n_heads, float scale, float* out, float* lse, int64_t* touched);
  // Changes m for later attends (0 <= m <= min(l, 255)); the tables do not depend on it.
  void set_min_collisions(int min_collisions);

  int64_t size() const;         // tokens stored
  int64_t n_indexed() const;    // tokens in the index: [sinks, sinks + n_indexed)
  int64_t n_segments() const;
  int64_t nbytes() const;       // index memory (tables, mean, signs, u table)
  int64_t kv_nbytes() const;    // the KV cache (keys + values of the stored tokens)
  const AttentionConfig& config() const;
  // Cumulative wall seconds spent hashing keys and building (or merging) tables.
  void build_seconds(double* hashing, double* tables) const;
  void key_mean(float* out) const;                    // (n_kv_heads, head_dim); zeros before append
  void indexed_codes(int64_t head, uint32_t* out) const;  // (n_indexed, l), decoded from the index

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Exact attention of each query head over all n keys of its KV head. K, V:
// (n_kv, n, d) float32 or bf16. out (n_heads, d); lse (n_heads) or null.
void dense_attention(const float* Q, int64_t n_heads, const void* K, const void* V, bool bf16, int64_t n_kv,
                     int64_t n, int64_t d, float scale, float* out, float* lse);

// Exact softmax over the budget[h] keys with the largest q.k of each head (all keys
// when budget[h] >= n).
void topk_attention(const float* Q, int64_t n_heads, const void* K, const void* V, bool bf16, int64_t n_kv,
                    int64_t n, int64_t d, const int64_t* budget, float scale, float* out, float* lse);

// p = (1 - acos(c)/pi)^k and u = P[Binomial(l, p) >= m] through the kernels' own code
// path (vectorised acos/log and the interpolation table of log u).
void attention_sampling_prob(const float* cos, int64_t n, int k, int l, int m, float* p, float* u);

// log P[Binomial(l, p) >= m] in double precision (the table's reference).
double log_binom_sf(int m, int l, double p);

}  // namespace hashlab
