// Per-instruction-set kernels of the LSH-sampled attention (src_cpp/attention_*.cpp).
// attention_kernel.inc (with the attention_kernel_*.inc files it includes, one per concept)
// is compiled once per level (attention_{scalar,avx2,avx512,avx512bf16}.cpp) into the
// namespace of that level; kern() (src_cpp/attention_internal.h) picks a set at
// every call, so that hashlab._C.set_simd_level takes effect immediately.
#pragma once
#include <cstdint>

namespace hashlab {

// Cubic Hermite table of F(x) = log P[Binomial(l, e^x) >= m] on [x_lo, 0] (x = log p),
// continued linearly with slope m below x_lo, where F(x) = log C(l, m) + m x + O(l e^x).
// zero: m == 0, F = 0 (every key is sampled with probability 1).
struct LogUTable {
  bool zero = true;
  int n = 0;          // intervals
  float x_lo = 0, h = 0, inv_h = 0, slope_lo = 0;
  const float* F = nullptr;   // n + 1 values
  const float* dF = nullptr;  // n + 1 derivatives dF/dx
};

struct AttnKernels {
  // Table codes of rows [r0, r1) of X (`dim` columns; float32, or bfloat16
  // bit patterns when bf16), centred by `center` when not null: codes[t * cs + i] = the
  // SimHash key of table t. The bits are those of hashlab::hadamard_bits with the same
  // signs (rotation r: H D3_r H D2 H D1 (x - center), bit r*D + c = coordinate c > 0),
  // but a table's k bits are interleaved across rotations: bit j of table t is slot
  // s = k*t + j, i.e. coordinate s / n_rot of rotation s % n_rot (n_rot >= k, so the k
  // bits of a table come from k different rotations). With k consecutive coordinates of
  // one rotation (bits_to_keys' layout), the orthogonal rows of a rotation make the
  // bits of a table dependent and P[table collision] falls 10-25% below (1 - theta/pi)^k
  // at the angles that matter (d=128, k=10), which biases the importance weights;
  // interleaved, the measured collision rates match the formula (and Gaussian
  // projections) within 2%. norms[i] = |x - center| when norms is not null. Row i of X
  // starts at element i * xs (xs >= dim). codes is uint16_t* when codes16 (k <= 16),
  // uint32_t* otherwise.
  void (*hash_codes)(const void* X, bool bf16, int64_t xs, int64_t r0, int64_t r1, int64_t dim, const float* center,
                     const float* signs, int64_t D, int64_t n_rot, int k, int l, void* codes, bool codes16,
                     int64_t cs, float* norms);
  float (*dot)(const float* a, const float* b, int64_t d);
  // out[j] = <Q[j * qs ..], x> for j in [0, G)
  void (*dots)(const float* Q, int64_t qs, int G, const float* x, int64_t d, float* out);
  void (*axpy)(float a, const float* x, float* y, int64_t d);  // y += a x
  void (*bf16_to_f32)(const uint16_t* src, float* dst, int64_t d);
  // The same on rows given as float32 or bfloat16 (converted in registers).
  float (*dot_row)(const float* q, const void* row, bool bf16, int64_t d);
  // <q, row>, and *norm = |row - mean| from the same read of the row.
  float (*dot_norm_row)(const float* q, const void* row, const float* mean, bool bf16, int64_t d, float* norm);
  void (*dots_row)(const float* Q, int64_t qs, int G, const void* row, bool bf16, int64_t d, float* out);
  void (*axpy_row)(float a, const void* row, bool bf16, float* y, int64_t d);
  // z[i] = scale * dots[i] - F(k log(1 - theta_i / pi)) - extra, cos theta_i =
  // (dots[i] - qmu) / (qnorm * norms[i]) (0 when the denominator is 0).
  void (*correct_logits)(const float* dots, const float* norms, int64_t n, float qmu, float qnorm, float scale,
                         int k, const LogUTable& tab, float extra, float* z);
  // p = (1 - acos(cos)/pi)^k and u = exp(F(log p)) through the same vector code.
  void (*sampling_prob)(const float* cos, int64_t n, int k, const LogUTable& tab, float* p, float* u);

  // bfloat16 rows against queries in bfloat16 parts, by the CPU's bf16 dot product
  // (vdpbf16ps; null on levels without it). split_query writes q (d floats) as three
  // bfloat16 vectors at parts, parts + d, parts + 2d: hi = bf16(q), mid = bf16(q - hi),
  // lo = q - hi - mid, exact (8 + 8 + 8 of float32's 24 significant bits), and returns how
  // many are needed (1 when q is bfloat16 already, as a bf16 model's are). The products of
  // bf16 values are exact in float32, so the dot products sum exact terms: hi's in one
  // accumulator, as accurate as a float32 dot product, mid's and lo's (at most 2^-8 |q|)
  // in another. dots_split: G queries' parts at parts + j * 3 * d, np parts each.
  int (*split_query)(const float* q, int64_t d, uint16_t* parts);
  float (*dot_split)(const uint16_t* parts, int np, const uint16_t* row, int64_t d);
  void (*dots_split)(const uint16_t* parts, int np, int G, const uint16_t* row, int64_t d, float* out);
};

#define HASHLAB_DECLARE_ATTN_KERNELS(ISA) \
  namespace ISA {                         \
  extern const AttnKernels attn_kernels;  \
  }

HASHLAB_DECLARE_ATTN_KERNELS(scalar)
HASHLAB_DECLARE_ATTN_KERNELS(avx2)
HASHLAB_DECLARE_ATTN_KERNELS(avx512)
HASHLAB_DECLARE_ATTN_KERNELS(avx512bf16)

}  // namespace hashlab
