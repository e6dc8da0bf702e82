"""LSHKVIndex(learned=True): a fitted per-KV-head map A, keys stored as A k, queries hashed as A^-T q.

- logits and attention are unchanged: forced sampling (min_collisions=0) equals a float64
  numpy dense reference, and so does the log-sum-exp;
- the estimator stays unbiased: over hash seeds, the sampled estimate of a fixed linear
  functional (the softmax numerator of one value coordinate, exp(lse) * out[:, 0]) and of the
  denominator exp(lse) average to their exact values within a few standard errors, learned
  and random alike;
- the fit does what it is for, on held-out queries: more of each query's top keys sampled
  (sampling probability from the kernels' own ``sampling_probability``) without more keys
  sampled in total, measured from the index's touched counts; A = I does not;
- bad input and wrong order of calls raise.
"""
import math

import numpy as np
import pytest

from _attention_reference import ORDERS32, np_dense, np_dense32, rowdot32  # the dense references
from _tolerance import U, assert_close_to_f64, assert_within, gamma
from hashlab.attention import LSHKVIndex, _bf16_to_f32, _f32_to_bf16, fit_key_transform, sampling_probability

pytest.importorskip("torch")


def anisotropic(rng, n_kv, n, nq, d=32, signal=8, noise=3.0):
    """Keys whose large variance lies in directions the queries ignore: q.k depends on the
    first ``signal`` coordinates only, so with A = I the angle is dominated by the noise.
    Returns keys (n_kv, n, d), values, prompt queries (n_kv * 2, nq, d) (2 query heads per
    KV head) and held-out decode queries (n_kv * 2, d)."""
    K = rng.standard_normal((n_kv, n, d)).astype(np.float32)
    K[..., signal:] *= noise
    V = rng.standard_normal((n_kv, n, d)).astype(np.float32)
    Q = np.zeros((n_kv * 2, nq + 1, d), np.float32)
    Q[..., :signal] = 2.0 * rng.standard_normal((n_kv * 2, nq + 1, signal))
    Q[..., signal:] = 0.1 * rng.standard_normal((n_kv * 2, nq + 1, d - signal))
    return K, V, Q[:, :-1], Q[:, -1]


# a short fit; weak regularisation, as the planted structure needs cond(A) ~ 8
FAST = dict(steps=60, max_queries=256, reg=0.003)


def np_learned32(Q, K, V, A, order, bf16=False):
    """Dense attention in float32 the way a learned index computes it: keys A k (rounded
    to bfloat16 when bf16), queries q A^-1 (A^-1 rounded from float64, as the index does),
    every product in one of ORDERS32. Returns (out, lse)."""
    n_kv, n, d = K.shape
    G = Q.shape[0] // n_kv
    A_inv = np.linalg.inv(A.astype(np.float64)).astype(np.float32)
    Kt = np.stack([rowdot32(K[g][:, None, :], A[g][None], order) for g in range(n_kv)])
    if bf16:
        Kt = _bf16_to_f32(_f32_to_bf16(Kt))
    Qt = np.concatenate([rowdot32(Q[g * G:(g + 1) * G, None, :], A_inv[g].T[None], order) for g in range(n_kv)])
    return np_dense32(Qt, Kt, V, 1 / math.sqrt(d), order)


@pytest.fixture(scope="module")
def fitted():
    """A learned index (k=6, l=40) fitted on an anisotropic prompt, and its data."""
    rng = np.random.default_rng(0)
    K, V, Qp, Qd = anisotropic(rng, 2, 1200, 300)
    idx = LSHKVIndex(32, 2, k=6, l=40, window=16, learned=True).fit(Qp, K, **FAST)
    return idx, K, V, Qp, Qd


def test_transform_is_fitted_and_well_conditioned(fitted):
    idx = fitted[0]
    A = idx.transform
    assert A.shape == (2, 32, 32) and A.dtype == np.float32
    # expm of a symmetric matrix in float64, rounded to float32: a[i, j] and a[j, i] round to
    # the same or to adjacent floats, at most one ulp <= 2u |a| apart
    At = A.transpose(0, 2, 1)
    assert_within(A, At, 2 * U * np.maximum(np.abs(A), np.abs(At)), what="symmetry")
    assert (np.linalg.cond(A) < 50).all()
    assert not np.allclose(A, np.eye(32), atol=0.05)


def test_logits_unchanged_and_forced_sampling_equals_dense(fitted):
    _, K, V, _, Qd = fitted
    A = fitted[0].transform
    # the identity behind the design, on the stored maps: (q A^-1).(A k) = q.k, in float32
    # with a float32 inverse. Bound: the maps' own error E = A^-1 A - I (float64, of the
    # stored float32 values), |q| |E| |k|, plus the roundings of q A^-1, A k and their dot,
    # ((1 + gamma_d)^3 - 1) (|q| |A^-1|).(|A| |k|)
    q = Qd.reshape(2, 2, 32)[:, 0]
    A_inv = np.linalg.inv(A)
    qk_t = np.einsum("hd,htd->ht", np.einsum("hd,hde->he", q, A_inv), K @ A.transpose(0, 2, 1))
    q_abs, K_abs, A_abs, Ai_abs = (np.abs(x.astype(np.float64)) for x in (q, K, A, A_inv))
    E = np.abs(np.einsum("hde,hef->hdf", A_inv.astype(np.float64), A.astype(np.float64)) - np.eye(32))
    bound = (np.einsum("hd,hde,hte->ht", q_abs, E, K_abs)
             + ((1 + gamma(32)) ** 3 - 1) * np.einsum("hd,hde,hef,htf->ht", q_abs, Ai_abs, A_abs, K_abs))
    assert_within(qk_t, np.einsum("hd,htd->ht", q.astype(np.float64), K.astype(np.float64)), bound, "q.k")
    # through the kernels: every indexed key sampled with probability 1 (m = 0)
    idx = LSHKVIndex(32, 2, k=6, l=40, min_collisions=0, window=16, learned=True)
    idx.transform = A
    idx.append(K[:, :1000], V[:, :1000]).append(K[:, 1000:], V[:, 1000:])
    out, lse, touched = idx.attend(Qd, return_stats=True)
    # the float64 reference of the plain logits; the float32 ones through the maps
    ref, ref_lse = np_dense(Qd, K, V)
    refs32 = [np_learned32(Qd, K, V, A, o) for o in ORDERS32]
    assert_close_to_f64(out, ref, [r[0] for r in refs32], what="out")
    assert_close_to_f64(lse, ref_lse, [r[1] for r in refs32], what="lse")
    assert (touched == 1200).all()


def test_bfloat16_learned_index_close_to_dense(fitted):
    _, K, V, _, Qd = fitted
    idx = LSHKVIndex(32, 2, k=6, l=40, min_collisions=0, window=16, learned=True, dtype="bfloat16")
    idx.transform = fitted[0].transform
    idx.append(K, V)
    # the float32 references store A k in bfloat16 too: the bound is what that rounding costs
    ref, _ = np_dense(Qd, K, V)
    refs32 = [np_learned32(Qd, K, V, idx.transform, o, bf16=True)[0] for o in ORDERS32]
    assert_close_to_f64(idx.attend(Qd), ref, refs32, what="bfloat16 out")


@pytest.mark.parametrize("learned", [False, True])
def test_estimator_unbiased_over_seeds(fitted, learned):
    """exp(lse) (denominator) and exp(lse) * out[h, 0] (numerator of a value coordinate) are
    importance-sampling sums with the true probabilities: their means over hash seeds match
    the exact values within a few standard errors."""
    _, K, V, _, Qd = fitted
    K, V, Q = K[:1, :800], V[:1, :800].copy(), Qd[:1] * 0.5  # not too peaked: many keys matter
    V[0, :, 0] = 1.0 + 0.5 * (K[0] @ Q[0]) / math.sqrt(32)  # a value correlated with the logits
    ref, ref_lse = np_dense(Q, K, V)
    dens, nums = [], []
    for seed in range(120):
        idx = LSHKVIndex(32, 1, k=6, l=40, window=16, seed=seed, learned=learned)
        if learned:
            idx.transform = fitted[0].transform[:1]
        idx.append(K, V)
        o, lse, _ = idx.attend(Q, return_stats=True)
        w = math.exp(lse[0] - ref_lse[0])
        dens.append(w)
        nums.append(w * o[0, 0])
    for est, exact in ((np.array(dens), 1.0), (np.array(nums), ref[0, 0])):
        se = est.std() / math.sqrt(len(est))
        assert est.std() > 0  # really sampled
        assert abs(est.mean() - exact) < 4 * se + 1e-3 * abs(exact), (est.mean(), exact, se)


def _top_recall_and_count(idx, A, K, Qd, top=10, seeds=8):
    """(expected recall of each held-out query's top-``top`` indexed keys, from the kernels'
    sampling_probability of the transformed angle; mean sampled keys per query head, from
    the index's touched counts over ``seeds`` hash seeds)."""
    n_kv, n, d = K.shape
    G = Qd.shape[0] // n_kv
    sinks, end = idx.sinks, n - idx.window
    recall = []
    for h, q in enumerate(Qd):
        g = h // G
        kc = (K[g] - K[g].mean(0))[sinks:end].astype(np.float64)
        qt, kt = q @ np.linalg.inv(A[g]), kc @ A[g].T
        cos = np.clip(kt @ qt / (np.linalg.norm(kt, axis=1) * np.linalg.norm(qt)), -1, 1)
        _, u = sampling_probability(cos, idx.k, idx.l, idx.min_collisions)
        recall.append(u[np.argsort(-(kc @ q))[:top]].mean())
    touched = []
    for seed in range(seeds):
        ix = LSHKVIndex(d, n_kv, k=idx.k, l=idx.l, window=idx.window, seed=seed, learned=True)
        ix.transform = A
        ix.append(K, np.zeros_like(K))
        touched.append(ix.attend(Qd, return_stats=True)[2] - (len(ix) - ix.n_indexed))
    return float(np.mean(recall)), float(np.mean(touched))


def test_fit_raises_recall_of_top_keys_without_sampling_more(fitted):
    """Held-out decode queries: the fitted maps sample more of each query's top keys than
    A = I (the random index), at no larger mean sampled count."""
    idx, K, _, _, _ = fitted
    rng = np.random.default_rng(5)
    Qd = anisotropic(rng, 2, 10, 20)[2].reshape(-1, 32)  # 80 new queries of the same distribution
    eye = np.broadcast_to(np.eye(32, dtype=np.float32), (2, 32, 32))
    r0, c0 = _top_recall_and_count(idx, eye, K, Qd)
    r1, c1 = _top_recall_and_count(idx, idx.transform, K, Qd)
    assert r1 > r0 + 0.06, (r0, r1)  # measured: 0.36 -> 0.46
    assert c1 < 1.05 * c0, (c0, c1)


def test_fit_uses_the_recent_queries(fitted):
    """recent=r fits on the queries of the last r prompt positions only."""
    _, K, _, Qp, _ = fitted
    mk = lambda: LSHKVIndex(32, 2, k=6, l=40, window=16, learned=True)  # noqa: E731
    a = mk().fit(Qp, K, recent=50, **FAST).transform
    b = mk().fit(Qp[:, -50:], K, recent=10**6, **FAST).transform
    c = mk().fit(Qp, K, recent=10**6, **FAST).transform
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_fit_on_isotropic_data_stays_near_identity():
    """Nothing to learn: with isotropic keys and queries the map stays close to I."""
    rng = np.random.default_rng(1)
    A = fit_key_transform(rng.standard_normal((300, 16)), rng.standard_normal((800, 16)), k=6, l=40, **FAST)
    assert np.abs(A - np.eye(16)).max() < 0.3


def test_learned_false_is_the_plain_index(fitted):
    _, K, V, _, Qd = fitted
    a = LSHKVIndex(32, 2, k=6, l=40, window=16, seed=3).append(K, V)
    b = LSHKVIndex(32, 2, k=6, l=40, window=16, seed=3, learned=False).append(K, V)
    assert a.transform is None and b.transform is None
    for x, y in zip(a.attend(Qd, return_stats=True), b.attend(Qd, return_stats=True)):
        assert np.array_equal(x, y)


def test_bad_input_and_call_order(fitted):
    _, K, V, Qp, _ = fitted
    mk = lambda **kw: LSHKVIndex(32, 2, k=6, l=40, window=16, **{"learned": True, **kw})  # noqa: E731
    with pytest.raises(TypeError):
        LSHKVIndex(32, 2, learned="yes")
    with pytest.raises(RuntimeError, match="fit"):
        mk().append(K, V)  # learned=True needs the maps first
    with pytest.raises(RuntimeError):
        LSHKVIndex(32, 2).fit(Qp, K)  # not a learned index
    idx = mk()
    idx.transform = fitted[0].transform
    idx.append(K, V)
    with pytest.raises(RuntimeError):
        idx.fit(Qp, K)  # keys already hashed
    with pytest.raises(RuntimeError):
        idx.transform = fitted[0].transform
    with pytest.raises(ValueError, match="queries"):
        mk().fit(Qp[0], K)  # 2-d queries
    with pytest.raises(ValueError, match="queries"):
        mk().fit(Qp[:3], K)  # 3 heads for 2 KV heads
    with pytest.raises(ValueError, match="queries"):
        mk().fit(Qp[..., :16], K)
    with pytest.raises(ValueError, match="keys"):
        mk().fit(Qp, K[:1])
    bad = Qp.copy()
    bad[1, 5, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        mk().fit(bad, K)
    with pytest.raises(TypeError):
        mk().fit(Qp.astype(np.int32), K)
    with pytest.raises(ValueError, match="keys"):
        mk().fit(Qp, K[:, :0])
    short = mk(sinks=4).fit(Qp, K[:, :5])  # one key after the sinks: nothing to learn, A = I
    assert np.array_equal(short.transform, np.broadcast_to(np.eye(32), (2, 32, 32)))
    with pytest.raises(ValueError):
        mk().transform = np.eye(32, dtype=np.float32)
    with pytest.raises(ValueError, match="conditioned"):
        mk().transform = np.zeros((2, 32, 32), np.float32)
    with pytest.raises(ValueError, match="finite"):
        mk().transform = np.full((2, 32, 32), np.nan, np.float32)
    with pytest.raises(ValueError):
        fit_key_transform(np.ones((4, 8)), np.ones((10, 7)))
    with pytest.raises(ValueError):
        fit_key_transform(np.ones((4, 8)), np.ones((10, 8)), steps=-1)
    for ratio in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="budget_ratio"):
            fit_key_transform(np.ones((4, 8)), np.ones((10, 8)), budget_ratio=ratio)
    with pytest.raises(ValueError, match="recent"):
        mk().fit(Qp, K, recent=0)
    with pytest.raises(TypeError, match="recent"):
        mk().fit(Qp, K, recent=2.5)
