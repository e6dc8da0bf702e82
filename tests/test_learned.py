"""LearnedSimHash (MONGOOSE learnable hashing) and DriftScheduler, against numpy references.

The references here are independent of the kernels: fingerprints and table keys are
recomputed from the projection with float64 numpy signs, flipped bits are counted with
np.unpackbits, collisions of held-out pairs are counted per table from those keys.
"""
import os
import pickle

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _tolerance import U, assert_within, gamma
from hashlab import LSHTables, SimHash
from hashlab.learned import DriftScheduler, LearnedSimHash, popcount32

OK = (TypeError, ValueError)


# ---------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------

def ref_bits(W, nbits, V):
    """(n, nbits) bool: sign bits of the float64 projections."""
    return (V.astype(np.float64) @ W[:, :nbits].astype(np.float64)) > 0


def ref_keys(W, k, l, V):
    """(n, l) uint64 table keys: bit j of table t's key = bit t*k + j."""
    b = ref_bits(W, k * l, V).reshape(V.shape[0], l, k).astype(np.uint64)
    return (b << np.arange(k, dtype=np.uint64)).sum(axis=2)


def ref_fingerprints(sched, V):
    b = ref_bits(sched.hasher.W, sched.bits, V).astype(np.uint64)
    return (b << np.arange(sched.bits, dtype=np.uint64)).sum(axis=1)


def popcount_ref(x):
    x = np.asarray(x, dtype=np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def projection_margin(W, nbits, V):
    P = V.astype(np.float64) @ W[:, :nbits].astype(np.float64)
    return np.abs(P).min()


def anisotropic(rng, n=1500, d=24, nc=25, nq=240, spread=0.3):
    """Unit items in a cone around a common direction, clustered; queries near items."""
    offset = rng.standard_normal(d) * 2.0
    scales = np.exp(-np.arange(d) / 6.0)
    centers = rng.standard_normal((nc, d)) * scales
    X = offset + centers[rng.integers(0, nc, n)] + spread * rng.standard_normal((n, d)) * scales
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = X[rng.integers(0, n, nq)] + spread * rng.standard_normal((nq, d)) * scales
    return X.astype(np.float32), Q.astype(np.float32)


# ---------------------------------------------------------------------------
# DriftScheduler
# ---------------------------------------------------------------------------

def test_popcount32_matches_unpackbits(rng):
    x = rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32)
    x[:3] = [0, 0xFFFFFFFF, 0x80000001]
    assert np.array_equal(popcount32(x), popcount_ref(x.astype(np.uint64)))


def test_scheduler_unchanged_items_trigger_nothing(rng):
    d = 20
    sched = DriftScheduler(d, bits=12, threshold=0.05, seed=3)
    ids = rng.choice(1000, size=200, replace=False)
    V = rng.standard_normal((200, d)).astype(np.float32)
    changed, frac = sched.update(ids, V)
    assert np.array_equal(np.sort(changed), np.sort(ids)), "first-seen ids are reported as changed"
    assert frac == 0.0 and len(sched) == 200
    changed, frac = sched.update(ids, V)
    assert changed.size == 0 and changed.dtype == np.int64
    assert frac == 0.0 and sched.drift == 0.0
    assert not sched.should_refit and not sched.needs_refit(frac)
    # scaling a vector never changes its signs
    changed, frac = sched.update(ids[::-1], 3.0 * V[::-1])
    assert changed.size == 0 and frac == 0.0


def test_scheduler_flags_exactly_the_items_whose_fingerprint_changed(rng):
    d, bits, n = 16, 10, 300
    sched = DriftScheduler(d, bits=bits, threshold=0.02, seed=7)
    ids = np.sort(rng.choice(2**31 - 1, size=n, replace=False))  # up to 2^31 - 2
    ids[-1] = 2**31 - 2
    V = rng.standard_normal((n, d)).astype(np.float32)
    sched.update(ids, V)
    W2 = V.copy()
    moved = rng.choice(n, size=60, replace=False)
    big, small = moved[:30], moved[30:]
    W2[big] = -W2[big] + 0.5 * rng.standard_normal((30, d))   # flips most bits
    W2[small] += 1e-3 * rng.standard_normal((30, d)).astype(np.float32)  # rarely flips any
    assert projection_margin(sched.hasher.W, bits, np.vstack([V, W2])) > 1e-5  # no sign within rounding
    before, after = ref_fingerprints(sched, V), ref_fingerprints(sched, W2)
    expect = ids[before != after]
    order = rng.permutation(n)
    changed, frac = sched.update(ids[order], W2[order])
    assert np.array_equal(np.sort(changed), np.sort(expect))
    assert set(ids[big]) <= set(changed.tolist()), "negated vectors must be flagged"
    assert np.array_equal(changed, ids[order][(before != after)[order]]), "changed ids keep the input order"
    want = popcount_ref(before ^ after).sum() / (bits * n)
    assert frac == pytest.approx(want, abs=1e-12)
    assert sched.drift == pytest.approx(want, abs=1e-12)
    assert sched.needs_refit(frac) == (want > 0.02) and sched.should_refit == (want > 0.02)
    # undoing the change: fingerprints return to the reference, drift back to 0, same flips again
    changed2, frac2 = sched.update(ids, V)
    assert np.array_equal(np.sort(changed2), np.sort(expect)) and frac2 == pytest.approx(want)
    assert sched.drift == 0.0
    sched.update(ids, W2)
    sched.reset()
    assert sched.drift == 0.0 and not sched.should_refit


def test_scheduler_counts_bits_not_integer_differences():
    """Fingerprint 0b0111 -> 0b1000: integer difference 1, but 4 bits flipped."""
    d, bits = 12, 4
    sched = DriftScheduler(d, bits=bits, threshold=0.5, seed=1)
    Wb = sched.hasher.W[:, :bits].astype(np.float64)

    def vector_with_code(code):
        target = np.array([1.0 if (code >> b) & 1 else -1.0 for b in range(bits)])
        return (np.linalg.pinv(Wb.T) @ target).astype(np.float32)  # Wb^T x = target exactly

    a, b = vector_with_code(0b0111), vector_with_code(0b1000)
    assert sched.fingerprints(a[None])[0] == 0b0111 and sched.fingerprints(b[None])[0] == 0b1000
    sched.update([5], a[None])
    changed, frac = sched.update([5], b[None])
    assert changed.tolist() == [5]
    assert frac == 4 / bits != abs(0b1000 - 0b0111) / bits
    assert sched.needs_refit(frac) and sched.should_refit
    # and the reverse: a difference of 8 in the integer codes that is a single bit
    sched.update([9], vector_with_code(0b0000)[None])
    _, frac = sched.update([9], vector_with_code(0b1000)[None])
    assert frac == 1 / bits


def test_scheduler_mixed_new_and_known_ids(rng):
    d = 8
    sched = DriftScheduler(d, bits=8, seed=2)
    V = rng.standard_normal((10, d)).astype(np.float32)
    sched.update(np.arange(10), V)
    V2 = np.vstack([-V[:4], rng.standard_normal((3, d)).astype(np.float32)])
    ids2 = np.array([0, 1, 2, 3, 100, 7_000_000, 2**31 - 2])
    changed, frac = sched.update(ids2, V2)
    assert changed.tolist() == [0, 1, 2, 3, 100, 7_000_000, 2**31 - 2]
    flips = popcount_ref(ref_fingerprints(sched, V[:4]) ^ ref_fingerprints(sched, -V[:4])).sum()
    assert frac == pytest.approx(flips / (8 * 4))  # new ids do not enter the fraction
    assert len(sched) == 13 and sched.ids.tolist() == list(range(10)) + [100, 7_000_000, 2**31 - 2]
    # drift is over all registered items' bits
    assert sched.drift == pytest.approx(flips / (8 * 13))
    sched.clear()
    assert len(sched) == 0 and sched.update([1], V[:1])[0].tolist() == [1]
    assert pickle.loads(pickle.dumps(sched)).ids.tolist() == [1]


# ---------------------------------------------------------------------------
# LearnedSimHash: training
# ---------------------------------------------------------------------------

def retrieved_fraction(W, k, l, Q, X, pairs):
    """Fraction of (query, item) pairs that share a key in at least one table (numpy reference)."""
    kq, kx = ref_keys(W, k, l, Q), ref_keys(W, k, l, X)
    return float((kq[pairs[:, 0]] == kx[pairs[:, 1]]).any(axis=1).mean())


def heldout_pairs(Q, X, top_fraction, rng):
    S = Q.astype(np.float64) @ X.T.astype(np.float64)
    n_top = max(1, int(np.ceil(top_fraction * X.shape[0])))
    top = np.argsort(-S, axis=1)[:, :n_top]
    pos = np.stack([np.repeat(np.arange(Q.shape[0]), n_top), top.ravel()], axis=1)
    ri = rng.integers(0, X.shape[0], size=(Q.shape[0], 20))
    low = S[np.arange(Q.shape[0])[:, None], ri] < np.median(S, axis=1)[:, None]
    neg = np.stack([np.repeat(np.arange(Q.shape[0]), 20), ri.ravel()], axis=1)[low.ravel()]
    return pos, neg


def bit_agreement(W, nbits, Q, X, pairs):
    bq, bx = ref_bits(W, nbits, Q), ref_bits(W, nbits, X)
    return float((bq[pairs[:, 0]] == bx[pairs[:, 1]]).mean())


@pytest.mark.parametrize("loss", ["bce", "triplet"])
def test_training_helps_heldout_positives_and_negatives(loss, rng):
    """On anisotropic data a random projection's bits split the items poorly: negatives collide,
    positives are missed in many tables. Training from that same projection (init="random") on
    some queries must, on the other queries' pairs, separate positives from negatives better.

    "bce" optimises retrieval by the tables (the union over tables): held-out positives must be
    retrieved more often and negatives less often. "triplet" (cosine of whole codes) optimises
    per-bit agreement: the negatives' agreement must fall and the gap between positives and
    negatives widen.
    """
    X, Q = anisotropic(rng)
    Qtr, Qte = Q[:160], Q[160:]
    k, l, top_fraction = 12, 4, 0.01
    h = LearnedSimHash(X.shape[1], k, l, seed=4)
    W0 = h.W.copy()
    assert np.array_equal(W0, SimHash(X.shape[1], k, l, seed=4).W)
    pos, neg = heldout_pairs(Qte, X, top_fraction, rng)
    h.fit(Qtr, X, epochs=6, lr=0.05, loss=loss, top_fraction=top_fraction, init="random", max_pairs=2048,
          batch_size=512, seed=0)
    if loss == "bce":
        before = retrieved_fraction(W0, k, l, Qte, X, pos), retrieved_fraction(W0, k, l, Qte, X, neg)
        after = retrieved_fraction(h.W, k, l, Qte, X, pos), retrieved_fraction(h.W, k, l, Qte, X, neg)
        assert after[0] > before[0] + 0.15, (before, after)
        assert after[1] < before[1] - 0.05, (before, after)
    else:
        before = bit_agreement(W0, k * l, Qte, X, pos), bit_agreement(W0, k * l, Qte, X, neg)
        after = bit_agreement(h.W, k * l, Qte, X, pos), bit_agreement(h.W, k * l, Qte, X, neg)
        assert after[1] < before[1] - 0.1, (before, after)
        assert after[0] - after[1] > before[0] - before[1] + 0.1, (before, after)
    assert len(h.loss_history_) == len(h.mining_history_) == 6 and h.fit_seconds_ > 0
    assert np.all(np.isfinite(h.loss_history_))
    # the deployed hash is the sign of the trained projection: the C++ keys equal the numpy reference
    sure = (np.abs(X.astype(np.float64) @ h.W[:, :k * l].astype(np.float64)) > 1e-5).reshape(-1, l, k).all(2)
    assert np.array_equal(h.hash(X).astype(np.uint64)[sure], ref_keys(h.W, k, l, X)[sure])


def test_partial_fit_continues_and_fit_restarts(rng):
    X, Q = anisotropic(rng, n=600, nq=80)
    h = LearnedSimHash(X.shape[1], 4, 4, seed=1)
    kw = dict(top_fraction=0.02, max_pairs=256, batch_size=128, lr=0.05, seed=3)
    h.fit(Q, X, epochs=2, **kw)
    W1, t1 = h.W.copy(), h.fit_seconds_
    h.partial_fit(Q, X, **kw)
    assert len(h.loss_history_) == 3 and h.fit_seconds_ > t1 and not np.array_equal(h.W, W1)
    h.fit(Q, X, epochs=2, **kw)
    assert len(h.loss_history_) == 2 and np.array_equal(h.W, W1), "fit restarts from the seed: same result"
    # unit columns in float64, each entry rounded once to float32: |norm - 1| <= u (plus the
    # float64 arithmetic)
    norm_bound = U + gamma(h.W.shape[0] + 4, u=2.0 ** -53)
    assert_within(np.linalg.norm(h.W[:, :16].astype(np.float64), axis=0), np.ones(16), norm_bound, "column norms")
    # once trained, an epoch with fewer than min_pairs missed positives ends partial_fit without a step
    n_top_pairs = h.mining_history_[-1]["n_top_pairs"]
    assert h.mining_history_[-1]["missed_positives"] < n_top_pairs
    h.partial_fit(Q, X, min_pairs=n_top_pairs, **kw)
    assert len(h.loss_history_) == 2 and np.array_equal(h.W, W1) and len(h.mining_history_) == 3
    with pytest.raises(ValueError, match="positive pairs"):  # but too little data is an error
        h.partial_fit(Q, X, min_pairs=n_top_pairs + 1, **kw)
    assert not h.W[:, 16:].any(), "padding columns stay zero"


# ---------------------------------------------------------------------------
# LearnedSimHash: a drop-in hasher
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(99)
    X, Q = anisotropic(rng, n=500, d=17, nq=60)
    h = LearnedSimHash(17, 5, 7, seed=2).fit(Q, X, epochs=2, top_fraction=0.02, max_pairs=256, batch_size=128)
    return h, X, Q


def test_keys_identical_across_simd_levels(trained, each_simd):
    h, X, Q = trained
    V = np.vstack([X, Q, np.zeros((1, 17), np.float32)])
    res = each_simd(lambda: (h.bits(V), h.hash(V)))
    ref_bits_, ref_keys_ = next(iter(res.values()))
    for lv, (bits, keys) in res.items():
        assert np.array_equal(bits, ref_bits_), lv
        assert np.array_equal(keys, ref_keys_), lv
    sure = (np.abs(V.astype(np.float64) @ h.W[:, :35].astype(np.float64)) > 1e-5).reshape(-1, 7, 5).all(2)
    assert np.array_equal(ref_keys_.astype(np.uint64)[sure], ref_keys(h.W, 5, 7, V)[sure])


def test_pickle_and_save_load_keep_W_exactly(trained, tmp_path):
    h, X, Q = trained
    untrained = LearnedSimHash(17, 5, 7, seed=2)
    assert h != untrained and h == h and hash(h) == hash(untrained)
    p = pickle.loads(pickle.dumps(h))
    path = tmp_path / "h.npz"
    assert h.save(path) == str(path) and os.listdir(tmp_path) == ["h.npz"], "no temporary file left"
    g = LearnedSimHash.load(path)
    for other in (p, g):
        assert type(other) is LearnedSimHash and other == h
        assert other.W.tobytes() == h.W.tobytes()
        assert np.array_equal(other.hash(X), h.hash(X)) and np.array_equal(other.bits(Q), h.bits(Q))
        assert other.loss_history_ == h.loss_history_ and other.fit_seconds_ == h.fit_seconds_
    # save over an existing file: replaced atomically
    g.W[0, 0] += 1.0
    g.save(path)
    assert LearnedSimHash.load(path) == g != h
    # works in LSHTables like any hasher
    t = LSHTables(h, bucket_capacity=64)
    t.insert(np.arange(X.shape[0]), X)
    indptr, ids, _ = t.query(X[:5])
    for i in range(5):
        assert i in ids[indptr[i]:indptr[i + 1]]


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------

def test_bad_inputs(rng, tmp_path):
    X, Q = anisotropic(rng, n=300, d=8, nq=40)
    h = LearnedSimHash(8, 4, 3)
    fast = dict(epochs=1, top_fraction=0.02, max_pairs=64, batch_size=32)
    with pytest.raises(ValueError, match="columns"):
        h.fit(Q[:, :7], X, **fast)
    with pytest.raises(ValueError, match="columns"):
        h.fit(Q, X[:, :5], **fast)
    with pytest.raises(ValueError, match="at least 1 row"):
        h.fit(Q[:0], X, **fast)
    with pytest.raises(ValueError, match="at least 2 rows"):
        h.fit(Q, X[:1], **fast)
    bad = Q.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        h.fit(bad, X, **fast)
    h.fit(Q, X, **fast)
    W_before, hist_before = h.W.copy(), list(h.loss_history_)
    with pytest.raises(ValueError, match="positive pairs"):
        h.fit(Q[:2], X[:50], **fast)  # 2 queries x 1 top item: fewer than min_pairs=10
    assert np.array_equal(h.W, W_before) and h.loss_history_ == hist_before, "a failed fit changes nothing"
    with pytest.raises(TypeError):
        h.fit(Q.astype(np.int32), X, **fast)
    with pytest.raises(TypeError):
        h.fit("queries", X, **fast)
    with pytest.raises(ValueError):
        h.fit(Q, X, loss="hinge")
    with pytest.raises(TypeError):
        h.fit(Q, X, loss=1)
    with pytest.raises(TypeError):
        h.fit(Q, X, epochs=1.5)
    for kw in (dict(epochs=0), dict(lr=0.0), dict(lr=np.inf), dict(top_fraction=0.0), dict(neg_quantile=1.0),
               dict(beta=-1.0), dict(replay=1.5), dict(init="pca")):
        with pytest.raises(ValueError):
            h.fit(Q, X, **{**fast, **kw})
    with pytest.raises(TypeError):
        LearnedSimHash(8, 4, 3, seed=0.5)
    with pytest.raises(ValueError):
        LearnedSimHash(8, 33, 3)
    with pytest.raises(ValueError, match="columns"):
        h.hash(X[:, :3])
    np.savez(tmp_path / "other.npz", W=h.W)
    with pytest.raises(ValueError, match="LearnedSimHash.save"):
        LearnedSimHash.load(tmp_path / "other.npz")
    # scheduler
    with pytest.raises(ValueError):
        DriftScheduler(8, bits=33)
    with pytest.raises(ValueError):
        DriftScheduler(8, threshold=0.0)
    with pytest.raises(TypeError):
        DriftScheduler(8, bits=8.0)
    s = DriftScheduler(8)
    with pytest.raises(ValueError, match="columns"):
        s.update([0, 1], X[:2, :7])
    with pytest.raises(ValueError, match="one per id"):
        s.update([0, 1, 2], X[:2])
    with pytest.raises(ValueError, match="unique"):
        s.update([1, 1], X[:2])
    with pytest.raises(ValueError):
        s.update([2**31 - 1], X[:1])
    with pytest.raises(ValueError):
        s.update([-1], X[:1])
    with pytest.raises(TypeError):
        s.update(np.array([0.0, 1.0]), X[:2])
    with pytest.raises(TypeError):
        s.update([0, 1], X[:2].astype(np.int64))
    with pytest.raises(ValueError, match="finite"):
        s.update([0], np.full((1, 8), np.nan, np.float32))
    with pytest.raises(ValueError):
        s.needs_refit(1.5)
    assert len(s) == 0, "failed updates register nothing"


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(ids=st.one_of(st.lists(st.integers(-5, 2**32), max_size=4), st.just(np.zeros((2, 2), np.int64)),
                     st.just("ab"), st.none(), st.just([0.5, 1.5])),
       rows=st.integers(0, 4), cols=st.integers(0, 9),
       dtype=st.sampled_from([np.float32, np.float64, np.int32, np.bool_]),
       fill=st.sampled_from([0.0, 1.0, np.nan, np.inf]))
def test_scheduler_update_sweep(ids, rows, cols, dtype, fill):
    s = DriftScheduler(8, bits=5)
    with np.errstate(all="ignore"):
        V = np.full((rows, cols), fill).astype(dtype)
    try:
        changed, frac = s.update(ids, V)
    except OK:
        return
    assert changed.dtype == np.int64 and 0.0 <= frac <= 1.0
