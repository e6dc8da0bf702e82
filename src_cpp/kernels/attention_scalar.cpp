// LSH-attention kernels for the scalar level (flags chosen by setup.py from the file name).
#define HL_ISA scalar
#include "attention_kernel.inc"
