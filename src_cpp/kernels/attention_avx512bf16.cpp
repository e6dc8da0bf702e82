// LSH-attention kernels for the avx512bf16 level: the avx512 ones plus bfloat16 dot products
// (flags chosen by setup.py from the file name, when the compiler has -mavx512bf16).
#include "dispatch.h"
#if defined(__AVX512BF16__)
#define HL_ISA avx512bf16
#include "attention_kernel.inc"
namespace hashlab {
bool attention_bf16_built() { return true; }
}  // namespace hashlab
#else
// A compiler without AVX512_BF16: no kernels, and dispatch.cpp reports the level unsupported.
#include "attention_kernels.h"
namespace hashlab {
namespace avx512bf16 {
extern const AttnKernels attn_kernels = {};
}  // namespace avx512bf16
bool attention_bf16_built() { return false; }
}  // namespace hashlab
#endif
