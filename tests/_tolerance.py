"""Tolerances for float32 kernels taken from error bounds, not from a fixed atol/rtol.

A kernel that sums in float32 gets a different result for every summation order, vector
width and blocking; a fixed ``atol`` is a bound on none of them (issue 16: one element of
360 off by 2.57e-6 against ``atol=2e-6`` on an AVX-512 machine). The reference is always
computed in float64, and the kernel's distance to it is bounded in one of two ways.

(a) By the error of independent float32 computations (flash-attention's method):
    ``assert_close_to_f64(actual, ref64, refs32, c)`` asserts, elementwise,

        |actual - ref64| <= c * max_r max_i |ref32_r - ref64|_i  +  u |ref64|

    with each ``ref32_r`` the same quantity computed in float32 in its own order (BLAS
    matrix-vector products, numpy's pairwise sums, sequential cumulative sums, the keys
    reversed or permuted). The bound holds for any order of the kernel as long as the
    kernel is about as accurate as a plain float32 implementation; c (3 by default) is the
    margin. Use it for results that mix many roundings: softmax attention, where the error
    sits in a few logits and in sums over thousands of keys.

    Why several float32 orders and not one: on a small output the largest error of one
    order is driven by a handful of roundings (the logits of the few keys that carry the
    weight), so it is a noisy estimate. Measured on the attention tests with other random
    data (scalar and AVX2; c = 3): one BLAS-order reference gave a worst |err| / bound of
    1.27 on dense attention at d = 33 (a spurious failure); three orders (BLAS, pairwise,
    reversed) gave 4.09 once, on top-5 attention whose output hangs on two logits; eight
    orders (tests/test_attention.py, ORDERS32) gave at most 0.51 over 60 data seeds of the
    dense, top-k and forced-sampling tests and 0.50 over 25 seeds of the LSH ones. And why
    sequential sums: the kernels accumulate over the keys in one running float32 sum per
    part, whose error grows faster with the number of terms than numpy's pairwise sum or
    BLAS's blocked one (at d = 1 the kernel's error was 4x that of BLAS's order), so
    pairwise references alone would fail a correct kernel; references that sum the keys
    one by one, in several orders, bound any blocking and vector width.

    The floor u |ref64| is the rounding of the exact result to float32, which no kernel
    can avoid.

(b) By a bound derived from n and the value range, for results with a known error
    analysis, mostly dot products (Higham, Accuracy and Stability of Numerical Algorithms,
    2nd ed., section 3.1): computed in any order, with or without FMA,

        |fl(a . b) - a . b| <= gamma_n * sum_i |a_i| |b_i|,   gamma_n = n u / (1 - n u),

    u = 2^-24 the float32 unit roundoff. Each extra rounded operation on the result (a bias
    added, a scale multiplied) adds one to n. ``dot_error_bound`` computes it and
    ``assert_within`` checks any elementwise bound.

Both assertions return the worst ratio |actual - ref64| / bound; with the environment
variable HASHLAB_TOLERANCE_LOG set to a file name, each check appends a line
``<test id> <what> <ratio>`` to it (how the ratios in the test report were measured).
"""
import os

import numpy as np

U = 2.0 ** -24  # float32 unit roundoff: |fl(x) - x| <= U |x|


def gamma(n, u=U):
    """gamma_n = n u / (1 - n u): the relative error bound of n rounded operations."""
    n = np.asarray(n, np.float64)
    assert np.all(n * u < 1), "gamma_n needs n u < 1"
    return n * u / (1 - n * u)


def dot_error_bound(a_abs, b_abs, n=None):
    """gamma_n * (|a| @ |b|) in float64: the bound on the error of every float32 dot
    product in ``a @ b``, in any summation order. a_abs (..., k), b_abs (k, ...) or (k,);
    n defaults to k (pass k + 1 when a bias is added in float32, and so on)."""
    a_abs = np.abs(np.asarray(a_abs, np.float64))
    b_abs = np.abs(np.asarray(b_abs, np.float64))
    return gamma(a_abs.shape[-1] if n is None else n) * (a_abs @ b_abs)


def unit_norm_bound(n):
    """Bound on |norm - 1| of an n-vector normalised in float64 and rounded to float32 once
    per coordinate, its norm taken in float64: each coordinate's rounding moves the norm by
    at most U relative; the float64 norm, scale and the check's own norm add gamma_{2n+5}
    in double precision."""
    return U + gamma(2 * np.asarray(n) + 5, u=2.0 ** -53)


def _log(what, ratio):
    path = os.environ.get("HASHLAB_TOLERANCE_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(path, "a") as f:
            f.write(f"{test}\t{what}\t{ratio:.4g}\n")


def assert_within(actual, ref64, bound, what="result"):
    """Asserts |actual - ref64| <= bound elementwise (infinities must match exactly);
    returns the worst ratio |actual - ref64| / bound."""
    a = np.asarray(actual, np.float64)
    r = np.asarray(ref64, np.float64)
    b = np.broadcast_to(np.asarray(bound, np.float64), r.shape)
    assert a.shape == r.shape, f"{what}: shape {a.shape} != reference {r.shape}"
    fin = np.isfinite(r)
    assert np.array_equal(a[~fin], r[~fin]), f"{what}: non-finite entries differ from the reference"
    err = np.abs(a[fin] - r[fin])
    b = b[fin]
    if err.size == 0:
        return 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(err == 0, 0.0, err / b)
    worst = int(np.argmax(ratios))
    ratio = float(ratios[worst])
    _log(what, ratio)
    assert ratio <= 1, (f"{what}: |error| {err[worst]:.3g} exceeds its bound {b[worst]:.3g} "
                        f"(ratio {ratio:.3g}) at flat index {worst} of the finite entries, "
                        f"reference {r[fin][worst]:.8g}, got {a[fin][worst]:.8g}")
    return ratio


def float32_error(ref64, refs32):
    """Largest |ref32 - ref64| over the finite entries of every float32 reference."""
    r = np.asarray(ref64, np.float64)
    refs32 = [refs32] if isinstance(refs32, np.ndarray) else list(refs32)
    assert refs32, "expected at least one float32 reference"
    fin = np.isfinite(r)
    err = 0.0
    for x in refs32:
        x = np.asarray(x, np.float64)
        assert x.shape == r.shape, f"float32 reference shape {x.shape} != {r.shape}"
        if fin.any():
            err = max(err, float(np.abs(x[fin] - r[fin]).max()))
    return err


def assert_close_to_f64(actual, ref64, refs32, c=3.0, extra=0.0, what="result"):
    """Method (a): |actual - ref64| <= c * float32_error(ref64, refs32) + U |ref64| + extra,
    elementwise. refs32: one float32 result or a list of them (different orders); extra:
    an elementwise bound on errors the float32 references do not share (0 if none).
    Returns the worst ratio |actual - ref64| / bound."""
    r = np.asarray(ref64, np.float64)
    with np.errstate(invalid="ignore"):
        bound = c * float32_error(r, refs32) + U * np.abs(r) + extra
    return assert_within(actual, r, bound, what)
