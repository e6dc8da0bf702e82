// LSH-attention kernels for the avx512 level (flags chosen by setup.py from the file name).
#define HL_ISA avx512
#include "attention_kernel.inc"
