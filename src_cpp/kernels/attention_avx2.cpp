// LSH-attention kernels for the avx2 level (flags chosen by setup.py from the file name).
#define HL_ISA avx2
#include "attention_kernel.inc"
