"""Learned hashing wired into sparse training (SparseMLP(hash="learned")) and output retrieval
(OutputRetriever(learned=True)).

References: exact top logits from numpy matrix products; table keys recomputed from the
learned projection with float64 signs; an untrained projection (same k, l, seed) as the
baseline a fit must beat.
"""
import numpy as np
import pytest

from hashlab import LSHTables, SimHash, SparseMLP
from hashlab.datasets import make_xmc
from hashlab.learned import LearnedSimHash
from hashlab.retrieval import OutputRetriever
from _tolerance import assert_within
from test_retrieval import score_bound

OK = (TypeError, ValueError)


def ref_keys(W, k, l, V):
    """(n, l) uint32 table keys from float64 signs (bit j of table t = projection t*k + j)."""
    b = ((V.astype(np.float64) @ W[:, :k * l].astype(np.float64)) > 0).reshape(V.shape[0], l, k)
    return (b.astype(np.uint64) << np.arange(k, dtype=np.uint64)).sum(axis=2).astype(np.uint32)


def top_recall(hasher, items, queries, exact_top, budget, capacity):
    """Fraction of each query's exact top items among its `budget` best-colliding candidates."""
    T = LSHTables(hasher, bucket_capacity=capacity, policy="fifo")
    T.insert(np.arange(items.shape[0]), items)
    ip, ids, _ = T.query(queries, 1, budget)
    return float(np.mean([np.isin(exact_top[i], ids[ip[i]:ip[i + 1]]).mean() for i in range(len(queries))]))


@pytest.fixture(scope="module")
def xmc():
    return make_xmc(6000, 500, n_features=5000, n_labels=5000, seed=1)


@pytest.fixture(scope="module")
def trained(xmc):
    Xtr, Ytr, _, _ = xmc
    m = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(64,), hash="learned", target_active=128, lr=3e-3,
                  rebuild_first=10, seed=0, learn_after=0)
    m.fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False)
    return m


def test_sparse_mlp_learned_fits_and_beats_its_untrained_projection(xmc, trained):
    _, _, Xte, _ = xmc
    m = trained
    assert m.refits >= 1 and m.hasher.loss_history_
    untrained = LearnedSimHash(m.hidden[-1], m.k, m.l, seed=m.seed + 2)
    assert not np.array_equal(untrained.W, m.hasher.W)
    # held-out activations as queries, the current output rows as items
    H = m.hidden_activations(Xte)
    W = m.out_w.w
    top = np.argsort(-(H.astype(np.float64) @ W.T.astype(np.float64)), axis=1)[:, :10]
    learned = top_recall(m.hasher, W, H, top, m.target_active, m.bucket_capacity)
    random = top_recall(untrained, W, H, top, m.target_active, m.bucket_capacity)
    assert learned > random + 0.05, (learned, random)


def test_sparse_mlp_learned_tables_hold_current_keys_of_rehashed_rows(trained):
    m = trained
    # every row's stored keys are the learned hasher's keys of some past version of the
    # row; right after a refit (full rebuild) they are the current ones
    m._fit_hasher()
    np.testing.assert_array_equal(m._keys, ref_keys(m.hasher.W, m.k, m.l, m.out_w.w))
    assert m.rows_rehashed <= (m.rebuilds + m.refits) * m.output_dim


def test_sparse_mlp_learned_keeps_the_random_projection_until_learn_after(xmc):
    """Before learn_after batches the hash is the untrained random projection (drift only
    rebuilds the tables); the first maintenance pass after it fits the projection."""
    Xtr, Ytr, _, _ = xmc
    m = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(32,), hash="learned", target_active=64, seed=4,
                  rebuild_first=4, learn_after=12)
    W0 = m.hasher.W.copy()
    m.fit(Xtr[:640], Ytr[:640], epochs=1, batch_size=64, verbose=False)  # 10 batches
    assert m.rebuilds >= 1 and np.array_equal(m.hasher.W, W0) and not m.hasher.loss_history_
    m.fit(Xtr[640:1536], Ytr[640:1536], epochs=1, batch_size=64, verbose=False)  # to batch 24
    assert m.hasher.loss_history_ and not np.array_equal(m.hasher.W, W0)


def test_sparse_mlp_learned_rehashes_only_moved_rows(xmc):
    Xtr, Ytr, _, _ = xmc
    m = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(32,), hash="learned", target_active=64, seed=3,
                  rebuild_first=5, learn_after=0)
    m.fit(Xtr[:640], Ytr[:640], epochs=1, batch_size=64, verbose=False)
    assert m.refits >= 1
    m._maintain_learned()  # flush the rows training touched since the last pass
    before_keys, before_rows = m._keys.copy(), m.rows_rehashed
    # move a known set of rows far (sign flip: every fingerprint bit flips) and mark them touched
    moved = np.arange(0, m.output_dim, 97)
    m.out_w.w[moved] *= -1
    m._dirty[moved] = 1
    refits = m.refits
    m._maintain_learned()
    assert m.refits == refits  # ~2% of the rows moved: below the refit threshold
    assert m.rows_rehashed - before_rows == moved.size
    changed = np.flatnonzero((m._keys != before_keys).any(axis=1))
    np.testing.assert_array_equal(changed, moved)
    np.testing.assert_array_equal(m._keys[moved], ref_keys(m.hasher.W, m.k, m.l, m.out_w.w[moved]))


def test_sparse_mlp_learned_save_load_keeps_hash_state(tmp_path, xmc):
    Xtr, Ytr, Xte, _ = xmc
    kw = dict(hidden=(32,), hash="learned", target_active=64, seed=5, rebuild_first=4, learn_after=0)
    a = SparseMLP(Xtr.shape[1], Ytr.shape[1], **kw)
    a.fit(Xtr[:1024], Ytr[:1024], epochs=1, batch_size=64, verbose=False)
    assert a.refits >= 1 and a.hasher._opt is not None
    a.save(tmp_path / "m.npz")
    b = SparseMLP.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(a.hasher.W, b.hasher.W)
    assert (a.refits, a.rows_rehashed, a.hasher.loss_history_) == (b.refits, b.rows_rehashed, b.hasher.loss_history_)
    assert a._hash_fitted and b._hash_fitted  # a loaded model refits, it does not restart from random
    for part in ("m", "v", "t"):
        np.testing.assert_array_equal(a.hasher._opt[part], b.hasher._opt[part])
    for part in ("_ids", "_codes", "_base", "_drift_bits"):
        np.testing.assert_array_equal(getattr(a._sched, part), getattr(b._sched, part))
    np.testing.assert_array_equal(a._qbuf, b._qbuf)
    np.testing.assert_array_equal(a._keys, b._keys)
    np.testing.assert_array_equal(a.predict_topk(Xte, 5)[1], b.predict_topk(Xte, 5)[1])
    # a refit after loading continues from the saved optimiser state, as it would have
    a._fit_hasher()
    b._fit_hasher()
    np.testing.assert_array_equal(a.hasher.W, b.hasher.W)
    # a checkpoint that lost its hash state is refused, not silently re-randomised
    with np.load(tmp_path / "m.npz") as z:
        kept = {name: z[name] for name in z.files if name != "hash_W"}
    np.savez(tmp_path / "broken.npz", **kept)
    with pytest.raises(ValueError, match="learned hash state"):
        SparseMLP.load(tmp_path / "broken.npz")


def test_sparse_mlp_learned_bad_input():
    with pytest.raises(ValueError):
        SparseMLP(10, 20, hash="learned", refit_threshold=0.0)
    with pytest.raises(ValueError):
        SparseMLP(10, 20, hash="learned", refit_threshold=1.5)
    with pytest.raises(ValueError, match="learn_after"):
        SparseMLP(10, 20, hash="learned", learn_after=-1)
    with pytest.raises(TypeError, match="learn_after"):
        SparseMLP(10, 20, hash="learned", learn_after=2.5)
    with pytest.raises(ValueError):
        SparseMLP(10, 20, hash="mongoose")


# ---------------------------------------------------------------------------
# OutputRetriever(learned=True)
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clustered():
    """Classes in 40 clusters around a common offset; queries near random classes."""
    rng = np.random.default_rng(0)
    n, d = 3000, 32
    C = rng.standard_normal((40, d)) * 2
    W = (C[rng.integers(0, 40, n)] + rng.standard_normal((n, d)) + 3).astype(np.float32)
    b = (0.1 * rng.standard_normal(n)).astype(np.float32)
    def Hq(m):
        return (W[rng.integers(0, n, m)] + 0.5 * rng.standard_normal((m, d))).astype(np.float32)
    return W, b, Hq(800), Hq(300)


def test_retriever_learned_raises_top_logit_recall_at_equal_candidates(clustered):
    W, b, Htr, Hte = clustered
    kw = dict(queries=Htr, search="tables", target_fraction=0.005, seed=1)
    rnd = OutputRetriever(W, b, **kw)
    lrn = OutputRetriever(W, b, learned=True, learn_options=dict(epochs=3), **kw)
    assert isinstance(lrn.hasher, LearnedSimHash) and lrn.fit_seconds > 0
    assert (lrn.k, lrn.l, lrn.max_candidates) == (rnd.k, rnd.l, rnd.max_candidates)
    r0, r1 = rnd.recall_report(Hte), lrn.recall_report(Hte)
    assert r1["mean_candidates"] <= lrn.max_candidates  # the same cap as the random index
    assert r1["top_logit_recall"] > r0["top_logit_recall"] + 0.1, (r0, r1)
    # the re-scoring stays exact: scores of returned labels are their true logits
    s, lab = lrn.topk(Hte[:50], 3)
    H = Hte[:50]
    exact = H.astype(np.float64) @ W.T.astype(np.float64) + b
    assert_within(s, np.take_along_axis(exact, lab, 1), np.take_along_axis(score_bound(H, W, b), lab, 1), "scores")


def test_retriever_learned_bad_input(clustered):
    W, b, Htr, _ = clustered
    with pytest.raises(ValueError, match="queries"):
        OutputRetriever(W, b, learned=True)
    with pytest.raises(ValueError, match="hasher"):
        OutputRetriever(W, b, queries=Htr, learned=True, hasher=SimHash(W.shape[1] + 2, 8, 4))
    with pytest.raises(TypeError):
        OutputRetriever(W, b, queries=Htr, learned=1)
    with pytest.raises(TypeError):
        OutputRetriever(W, b, queries=Htr, learned=True, learn_options=[("epochs", 1)])
    with pytest.raises(ValueError):
        OutputRetriever(W, b, queries=Htr, learn_options=dict(epochs=1))
    with pytest.raises(ValueError):
        OutputRetriever(W, b, queries=Htr, learned=True, search="tables", learn_options=dict(epochs=0))
