"""Error bounds of hashlab.attention.sampling_probability (tests/test_attention.py), derived
from how the kernels compute p = (1 - acos(c)/pi)^k and u = P[Binomial(l, p) >= m]
(src_cpp/kernels/attention_kernel_logits.inc), with u the float64 binomial tail from scipy.

p = exp(k log r), r = 1 - acos(c)/pi. r is the Cephes asin polynomial (peak relative error
2.5e-7, 4.2 u) and at most eight roundings: relative error 12 u. log r is Cephes logf (1.3
u) times k (one more rounding), and exp adds at most 2 u; so

    |p - p*| <= p* u (k (12 + 3 |log r|) + 2) + 2^-126 + (1e-30)^k,

the last two terms for the float32 underflow and the clamp of r at 1e-30.

u = exp(F(x)), F(x) = log P[Binomial(l, e^x) >= m] from a cubic Hermite table of 4096
intervals on [x_lo, 0], x_lo = log(1e-7 / l), continued linearly with slope m below
(attention_kernels.h, LogUTable). Checked against the binomial tail at the kernel's own p,
x = log p (to 2 u: p = exp(x) rounded), its error is that of the table:
- the interpolation error |H(x) - F(x)| of the table's construction, measured here by the
  same interpolant in float64 from scipy's F and F' at the nodes;
- x off by 2 u, and by 4 u (|x_lo| + |x|) in locating the interval (x_lo and 1/h stored in
  float32, a subtraction and a product), times F' (0 <= F' <= m: F' = m pmf(m) / u);
- the evaluation: F and F' at the nodes rounded to float32, the basis polynomials and
  their sum, at most 10 u (|F_i| + |F_i+1| + h (|F'_i| + |F'_i+1|));
- exp, 2 u.
"""
import numpy as np
from scipy.stats import binom

from _tolerance import U

TABLE_INTERVALS = 4096


def p_bound(cos, p_exact, k):
    """Bound on |p - p*| at float32 cosines ``cos`` (float64 values)."""
    r = 1 - np.arccos(cos) / np.pi
    with np.errstate(divide="ignore"):
        log_r = np.where(r > 0, np.abs(np.log(np.where(r > 0, r, 1.0))), 0.0)
    return p_exact * U * (k * (12 + 3 * log_r) + 2) + 2.0 ** -126 + 1e-30 ** k


def _F(x, l, m):
    """(F, F') at x = log p in float64: F = log P[Binomial(l, p) >= m], F' = m pmf(m) / u."""
    p = np.exp(x)
    u = binom.sf(m - 1, l, p)
    return np.log(u), m * binom.pmf(m, l, p) / u


def u_bound(p, l, m):
    """(u*, bound) at the kernel's p (float32 values, in (0, 1]): the exact tail at p and the
    bound on the kernel's |u - u*|."""
    x = np.log(np.asarray(p, np.float64))
    x_lo = np.log(1e-7 / l)
    h = -x_lo / TABLE_INTERVALS
    F, dF = _F(x, l, m)
    i = np.clip(np.floor((x - x_lo) / h), 0, TABLE_INTERVALS - 1)
    xi, xj = x_lo + i * h, x_lo + (i + 1) * h
    Fi, dFi = _F(xi, l, m)
    Fj, dFj = _F(xj, l, m)
    f = (x - xi) / h
    g = 1 - f
    herm = ((1 + 2 * f) * g * g * Fi + f * f * (3 - 2 * f) * Fj + h * (f * g * g * dFi - f * f * g * dFj))
    F0, _ = _F(np.array(x_lo), l, m)
    below = x < x_lo
    interp = np.abs(np.where(below, F0 + m * (x - x_lo), herm) - F)
    locate = m * (2 * U + 4 * U * (abs(x_lo) + np.abs(x)))
    evaluate = 10 * U * np.where(below, np.abs(F0) + m * np.abs(x - x_lo),
                                 np.abs(Fi) + np.abs(Fj) + h * (np.abs(dFi) + np.abs(dFj)))
    D = interp + locate + evaluate + 2 * U
    u = np.exp(F)
    return u, u * np.expm1(D)
