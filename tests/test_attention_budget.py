"""The adaptive sampling budget (hashlab.attention_budget): prompt_profile against brute force,
expected_sampled_fraction, allocate_min_collisions, and LSHKVIndex.set_min_collisions."""

import numpy as np
import pytest

from hashlab.attention import LSHKVIndex, sampling_probability


def _profile_brute(Q, K, sinks, window, scale, n_probe):
    from hashlab.attention_budget import _COS_BINS

    H, P, _ = Q.shape
    Hkv, t, _ = K.shape
    G = H // Hkv
    Kc = K.astype(np.float64) - K.astype(np.float64).mean(1, keepdims=True)
    masses, cos = [], []
    for h in range(H):
        for j in range(P - n_probe, P):
            s = t - P + j
            q = Q[h, j].astype(np.float64)
            lg = K[h // G, :s + 1].astype(np.float64) @ q * scale
            w = np.exp(lg - lg.max())
            w /= w.sum()
            hi = max(sinks, s + 1 - window)
            masses.append(w[sinks:hi].sum())
            for i in range(sinks, hi):
                cos.append(Kc[h // G, i] @ q / (np.linalg.norm(Kc[h // G, i]) * np.linalg.norm(q)))
    hist = np.bincount(np.clip(((np.array(cos) + 1) * (_COS_BINS / 2)).astype(int), 0, _COS_BINS - 1),
                       minlength=_COS_BINS)
    return np.mean(masses), hist / hist.sum(), np.array(cos)


def test_prompt_profile_against_brute_force():
    from hashlab.attention_budget import expected_sampled_fraction, prompt_profile

    rng = np.random.default_rng(3)
    K = rng.standard_normal((2, 70, 7)).astype(np.float32) + 0.5
    Q = rng.standard_normal((6, 20, 7)).astype(np.float32)
    mass, hist = prompt_profile(Q, K, sinks=3, window=9, scale=0.4, n_probe=12)
    bm, bh, cos = _profile_brute(Q, K, 3, 9, 0.4, 12)
    assert mass == pytest.approx(bm, rel=1e-9)
    np.testing.assert_array_equal(hist, bh)
    # the expected fraction is the mean sampling probability of those pairs (up to the binning)
    for k, l, m in ((3, 20, 2), (5, 60, 6), (2, 10, 1)):
        want = float(np.mean(sampling_probability(cos, k, l, m)[1]))
        assert expected_sampled_fraction(hist, k, l, m) == pytest.approx(want, abs=2e-3)
    assert expected_sampled_fraction(hist, 4, 30, 0) == pytest.approx(1.0)
    # nothing indexed yet: zero mass, empty histogram
    mass, hist = prompt_profile(Q[:, -5:], K[:, :10], sinks=3, window=9)
    assert mass == 0 and not hist.any()
    with pytest.raises(ValueError, match="queries"):
        prompt_profile(Q[:, :, :6], K)
    with pytest.raises(ValueError, match="queries"):
        prompt_profile(np.zeros((6, 80, 7), np.float32), K)
    with pytest.raises(TypeError, match="keys"):
        prompt_profile(Q, K.astype(np.int32))
    with pytest.raises(ValueError, match="cos_hist"):
        expected_sampled_fraction(hist[:10], 4, 30, 2)


def test_allocate_min_collisions_shares_the_budget_by_mass():
    from hashlab.attention_budget import allocate_min_collisions, expected_sampled_fraction, prompt_profile

    rng = np.random.default_rng(4)
    K = rng.standard_normal((1, 400, 16)).astype(np.float32)
    Q = rng.standard_normal((2, 64, 16)).astype(np.float32)
    _, hist = prompt_profile(Q, K)
    k, l = 5, 200
    prof = [(0.8, hist, k, l), (0.2, hist, k, l), (0.05, hist, k, l)]
    ms = allocate_min_collisions(prof, 0.05, power=1.0)
    assert ms[0] < ms[1] < ms[2]  # more mass, lower m, more keys sampled
    f = [expected_sampled_fraction(hist, k, l, m) for m in ms]
    assert f[0] > f[1] > f[2] and np.mean(f) == pytest.approx(0.05, rel=0.35)
    same = allocate_min_collisions(prof, 0.05, power=0.0)  # equal histograms: one m for all
    assert len(set(same)) == 1
    assert expected_sampled_fraction(hist, k, l, same[0]) == pytest.approx(0.05, rel=0.2)
    assert allocate_min_collisions([(0.0, hist, k, l), (0.3, np.zeros_like(hist), k, l)], 0.05) == [None, None]
    with pytest.raises(ValueError, match="target"):
        allocate_min_collisions(prof, 0.0)
    with pytest.raises(ValueError, match="power"):
        allocate_min_collisions(prof, 0.1, power=-1)


def test_set_min_collisions_equals_an_index_built_with_it():
    rng = np.random.default_rng(5)
    K = rng.standard_normal((2, 300, 16)).astype(np.float32)
    V = rng.standard_normal((2, 300, 16)).astype(np.float32)
    q = rng.standard_normal((4, 16)).astype(np.float32)
    a = LSHKVIndex(16, 2, k=5, l=50, min_collisions=9, window=8).append(K, V)
    b = LSHKVIndex(16, 2, k=5, l=50, min_collisions=3, window=8).append(K, V)
    assert a.set_min_collisions(3) is a and a.min_collisions == 3
    for x, y in zip(a.attend(q, return_stats=True), b.attend(q, return_stats=True)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="min_collisions"):
        a.set_min_collisions(51)
