"""Statistics of LSH-sampled attention (hashlab.attention): the estimator averaged over hash
seeds approaches dense attention, top-k at the same budget does not; per-pair collision rates
match the formula u(theta)."""
import math

import numpy as np
from scipy.stats import binom

from hashlab.attention import LSHKVIndex, topk_attention

from _attention_reference import codes_of, np_dense, rel


def test_estimator_is_unbiased_topk_is_not():
    """Non-sparse attention with values correlated with the logits: averaged over hash
    seeds the LSH estimate approaches dense attention (its denominator, exp(lse), is an
    unbiased estimate of the dense one); top-k at the same budget stays off."""
    rng = np.random.default_rng(7)
    d, n = 64, 2000
    K = rng.standard_normal((1, n, d)).astype(np.float32)
    Q = (1.5 * rng.standard_normal((1, d))).astype(np.float32)
    V = rng.standard_normal((1, n, d)).astype(np.float32)
    V[0, :, 0] = K[0] @ Q[0] / math.sqrt(d)
    ref, ref_lse = np_dense(Q, K, V)
    outs, dens, touched = [], [], []
    for seed in range(200):
        idx = LSHKVIndex(d, 1, k=8, l=100, window=16, seed=seed)
        idx.append(K, V)
        o, lse, t = idx.attend(Q, return_stats=True)
        outs.append(o[0])
        dens.append(math.exp(lse[0] - ref_lse[0]))
        touched.append(t[0])
    outs, dens = np.array(outs), np.array(dens)
    single = np.mean([rel(o, ref[0]) for o in outs])
    mean_err = rel(outs.mean(0), ref[0])
    budget = int(np.mean(touched))
    assert 0.03 * n < budget < 0.3 * n  # sparse sampling, far from dense
    topk_err = rel(topk_attention(Q, K, V, budget)[0], ref[0])
    assert abs(dens.mean() - 1) < 4 * dens.std() / math.sqrt(len(dens)) + 0.02, dens.mean()
    assert mean_err < 0.2 * single, (mean_err, single)
    assert mean_err < 0.05 and topk_err > 4 * mean_err, (mean_err, topk_err)


def test_collision_rate_matches_formula():
    """Per-pair P[>= m collisions] over hash seeds against u(theta): the structured
    rotations, with a table's bits spread over rotations, behave like independent bits."""
    rng = np.random.default_rng(3)
    d, k, l, m, n_pairs, seeds = 128, 10, 150, 2, 400, 40
    theta = 1.3
    x = rng.standard_normal((n_pairs, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    z = rng.standard_normal((n_pairs, d))
    z -= (z * x).sum(1, keepdims=True) * x
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = math.cos(theta) * x + math.sin(theta) * z
    hits = 0
    for s in range(seeds):
        idx = LSHKVIndex(d, 1, k=k, l=l, seed=s)
        cx = codes_of(idx.hasher, idx.table_bits, x)
        cy = codes_of(idx.hasher, idx.table_bits, y)
        hits += ((cx == cy).sum(1) >= m).sum()
    u = binom.sf(m - 1, l, (1 - theta / math.pi) ** k)
    rate = hits / (n_pairs * seeds)
    assert abs(rate / u - 1) < 0.06, (rate, u)
