"""numpy references for LSH-sampled attention (hashlab.attention), shared by the attention tests.

Dense attention in float64 (np_dense) and in float32 in eight summation orders (np_dense32,
rowdot32, softmax32: tests/_tolerance.py's method (a)); MagicPIG from scratch (np_lsh, from
SimHash.bits and scipy's binomial tail); the checks against them (check_attention,
check_dense, check_lsh); the avx512bf16 level's extra error bounds; planted test data.
"""
import math

import numpy as np
from scipy.special import logsumexp
from scipy.stats import binom

from hashlab.attention import sampling_probability

from _tolerance import U, assert_close_to_f64, gamma


def _heads(Q, K, V, scale):
    """Q (H, d), K, V as float64, the GQA group size H // n_kv and the scale (1 / sqrt(d) by default)."""
    Q, K, V = (np.asarray(a, np.float64) for a in (Q, K, V))
    return Q, K, V, Q.shape[0] // K.shape[0], 1 / math.sqrt(Q.shape[1]) if scale is None else scale


def np_dense(Q, K, V, scale=None):
    """float64 dense attention with GQA; returns (out, lse)."""
    Q, K, V, G, scale = _heads(Q, K, V, scale)
    out, lse = np.zeros(Q.shape), np.zeros(Q.shape[0])
    for h in range(Q.shape[0]):
        z = scale * (K[h // G] @ Q[h])
        lse[h] = logsumexp(z)
        out[h] = np.exp(z - lse[h]) @ V[h // G]
    return out, lse


ORDERS32 = tuple(range(8))


def _perm(n, order):
    """The order of n terms for float32 reference ``order``: forward (0, 1), reversed (2),
    else a permutation drawn from the order number."""
    if order < 2:
        return np.arange(n)
    return np.arange(n)[::-1] if order == 2 else np.random.default_rng(order).permutation(n)


def rowdot32(A, B, order):
    """float32 sum_i A[r, i] * B[r, i] per row r (B broadcasts) in one of ORDERS32:
    products summed by BLAS (0), by numpy's pairwise sum (1), else sequentially in the
    order of _perm."""
    P = np.asarray(A, np.float32) * np.asarray(B, np.float32)
    if P.shape[-1] == 0:
        return np.zeros(P.shape[:-1], np.float32)
    if order == 0:
        return P @ np.ones(P.shape[-1], np.float32)
    if order == 1:
        return P.sum(-1)
    return np.cumsum(P[..., _perm(P.shape[-1], order)], axis=-1)[..., -1]


def softmax32(z, Vr, order):
    """float32 (out, lse) of logits z (n,) over value rows Vr (n, d): exp against the max,
    then one running sum over the keys (as the kernels do per block) in the order of _perm."""
    z, Vr = np.asarray(z, np.float32), np.asarray(Vr, np.float32)
    if z.size == 0:
        return np.zeros(Vr.shape[1], np.float32), np.float32(-np.inf)
    perm = _perm(z.size, order)
    m = z.max()
    p = np.exp(z - m)[perm]
    s = np.cumsum(p)[-1]
    return np.cumsum(p[:, None] * Vr[perm], axis=0)[-1] / s, m + np.log(s)


def np_dense32(Q, K, V, scale=None, order=0):
    """np_dense in float32, in one of ORDERS32."""
    Q, K, V = (np.asarray(a, np.float32) for a in (Q, K, V))
    H, d = Q.shape
    G = H // K.shape[0]
    s = np.float32(1 / math.sqrt(d) if scale is None else scale)
    out, lse = np.zeros((H, d), np.float32), np.zeros(H, np.float32)
    for h in range(H):
        out[h], lse[h] = softmax32(s * rowdot32(K[h // G], Q[h], order), V[h // G], order)
    return out, lse


def check_attention(out, lse, ref, refs32, what="attention", extra=(0.0, 0.0)):
    """out (and lse unless None) against the float64 reference (out, lse), bounded by the
    float32 references' errors (method (a) of tests/_tolerance.py); extra: bounds (on out,
    on lse) of errors the float32 references do not share."""
    assert_close_to_f64(out, ref[0], [r[0] for r in refs32], extra=extra[0], what=what + " out")
    if lse is not None:
        assert_close_to_f64(lse, ref[1], [r[1] for r in refs32], extra=extra[1], what=what + " lse")


def check_dense(out, lse, Q, K, V, scale=None, what="dense", extra=(0.0, 0.0)):
    """out (and lse) of attention over every key against np_dense and np_dense32."""
    check_attention(out, lse, np_dense(Q, K, V, scale), [np_dense32(Q, K, V, scale, o) for o in ORDERS32], what,
                    extra)


def bf16_logit_extra(q, Kh):
    """Per key row of Kh: what the avx512bf16 level's q.k adds to a float32 dot product's
    error (src_cpp/kernels/attention_kernels.h): the query's mid and lo parts, at most
    2^-8 |q|, summed in their own float32 accumulator over at most 2d products (gamma_2d
    2^-8 sum|q||k|), the sum of the two accumulators (u |q.k|), and vdpbf16ps's flush of
    denormal inputs, products and sums (< 2^-126 each: 6d of them, and 3 sum|k| for the
    parts)."""
    d = q.shape[0]
    A = np.abs(Kh) @ np.abs(q)
    return gamma(2 * d) * 2.0 ** -8 * A + U * np.abs(Kh @ q) + 2.0 ** -126 * (3 * np.abs(Kh).sum(1) + 6 * d)


def bf16_level_extra(Q, K, V, scale=None):
    """Bounds (on out, on lse) of what the avx512bf16 level adds to attention's error: with
    logit i off by e_i (bf16_logit_extra, scaled) and D = max e_i, softmax weight i moves by
    a factor within e^(+-(e_i + D)): out by sum_i p_i expm1(e_i + D) |v_i|, lse by D."""
    Q, K, V, G, scale = _heads(Q, K, V, scale)
    out, lse = np.zeros(Q.shape), np.zeros(Q.shape[0])
    for h in range(Q.shape[0]):
        Kh, Vh = K[h // G], V[h // G]
        e = scale * bf16_logit_extra(Q[h], Kh)
        z = scale * (Kh @ Q[h])
        p = np.exp(z - logsumexp(z))
        out[h] = (p * np.expm1(e + e.max())) @ np.abs(Vh)
        lse[h] = e.max()
    return out, lse


def codes_of(hasher, tb, X):
    """Table codes through the public SimHash: bits of hasher.bits, picked by table_bits."""
    bits = np.unpackbits(hasher.bits(np.ascontiguousarray(X, np.float32)).view(np.uint8), axis=1,
                         bitorder="little").astype(np.uint64)
    k = tb.shape[1]
    return (bits[:, tb] << np.arange(k, dtype=np.uint64)).sum(2)


def np_lsh(idx, K, V, Q, scale=None, order=None):
    """From-scratch numpy MagicPIG over the tokens the index holds (K, V as stored, float32).

    order None: float64, u = P[Binomial(l, p) >= m] from scipy. order in ORDERS32: the same
    in float32 in that order, u from the kernels' own sampling_probability (checked against
    scipy in test_u_against_binomial) at the float32 cosine.
    Returns (out, lse, touched)."""
    f32 = order is not None
    K32, V32 = np.asarray(K, np.float32), np.asarray(V, np.float32)
    n_kv, n, d = K32.shape
    H = Q.shape[0]
    G = H // n_kv
    scale = 1 / math.sqrt(d) if scale is None else scale
    s32 = np.float32(scale)
    k, l, m = idx.k, idx.l, idx.min_collisions
    s_end = min(idx.sinks, n)
    i_end = idx.sinks + idx.n_indexed
    dense = np.r_[np.arange(s_end), np.arange(max(i_end, s_end), n)].astype(int)
    mu = idx.key_mean
    qcodes = codes_of(idx.hasher, idx.table_bits, Q)
    out, lse, touched = np.zeros((H, d)), np.zeros(H), np.zeros(H, int)
    for g in range(n_kv):
        kc = K32[g, idx.sinks:i_end] - mu[g]  # float32, exactly as the kernel centres
        kcodes = codes_of(idx.hasher, idx.table_bits, kc) if len(kc) else np.zeros((0, l), np.uint64)
        norms = np.sqrt(rowdot32(kc, kc, order)) if f32 else np.linalg.norm(kc.astype(np.float64), axis=1)
        for h in range(g * G, (g + 1) * G):
            coll = (kcodes == qcodes[h]).sum(1)
            sel = np.flatnonzero(coll >= m) if m > 0 else np.arange(len(kc))
            ids = idx.sinks + sel
            rows = np.r_[dense, ids].astype(int)
            touched[h] = len(rows)
            if f32:
                q = np.asarray(Q[h], np.float32)
                cos = np.clip(rowdot32(kc[sel], q, order) / (norms[sel] * np.sqrt(rowdot32(q, q, order))), -1, 1)
                lu = np.log(sampling_probability(cos, k, l, m)[1]) if m > 0 else np.zeros(len(sel), np.float32)
                assert np.isfinite(lu).all()
                z = np.r_[s32 * rowdot32(K32[g, dense], q, order), s32 * rowdot32(K32[g, ids], q, order) - lu]
                out[h], lse[h] = softmax32(z, V32[g, rows], order)
                continue
            q = Q[h].astype(np.float64)
            cos = np.clip((kc[sel].astype(np.float64) @ q) / (norms[sel] * np.linalg.norm(q)), -1, 1)
            p = (1 - np.arccos(cos) / np.pi) ** k
            u = binom.sf(m - 1, l, p) if m > 0 else np.ones_like(p)
            zs = scale * (K32[g, ids].astype(np.float64) @ q) - np.log(u)
            zd = scale * (K32[g, dense].astype(np.float64) @ q)
            z = np.r_[zd, zs]
            lse[h] = logsumexp(z)
            w = np.exp(z - lse[h])
            out[h] = w @ V32[g, rows].astype(np.float64)
    return out, lse, touched


def check_lsh(out, lse, idx, K, V, Q, scale=None, what="lsh"):
    """out (and lse) of idx.attend against np_lsh in float64, bounded by np_lsh's float32
    errors; returns the float64 reference's touched counts."""
    ref_out, ref_lse, touched = np_lsh(idx, K, V, Q, scale)
    refs32 = [np_lsh(idx, K, V, Q, scale, o)[:2] for o in ORDERS32]
    check_attention(out, lse, (ref_out, ref_lse), refs32, what)
    return touched


def rel(a, b):
    return np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b)


def planted(rng, n_kv, n, d, H, n_hot=8, strength=3.0):
    """Gaussian K/V/Q with a few keys planted near each query (high attention)."""
    K = rng.standard_normal((n_kv, n, d)).astype(np.float32)
    V = rng.standard_normal((n_kv, n, d)).astype(np.float32)
    Q = rng.standard_normal((H, d)).astype(np.float32)
    G = H // n_kv
    for h in range(H):
        hot = rng.choice(np.arange(8, n - 80), n_hot, replace=False)
        K[h // G, hot] += strength * Q[h] / np.linalg.norm(Q[h]) * math.sqrt(d)
    return K, V, Q
