"""The feature re-ranker (hashlab.rerank) against plain-Python references, and in SparseMLP."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from hashlab import SparseMLP
from hashlab.rerank import AB_INIT, FeatureReranker

from _mlp_reference import logits_bound
from _tolerance import U, assert_within, gamma

M64 = (1 << 64) - 1


def slot(label, feature, bits):
    """The table slot of (label, feature), in Python integers (an independent spelling of the hash)."""
    x = ((label * 0x9E3779B97F4A7C15) & M64) ^ ((feature * 0xC2B2AE3D27D4EB4F) & M64)
    x ^= x >> 29
    return x & ((1 << bits) - 1)


def scores64(rr, X, cands):
    """rr's scores of X's rows for cands in float64 and their float32 error bound in any order:
    gamma_{nnz+1} (|u[c]| + sum_f |x_f| |V[slot]|) (u[c] plus nnz products)."""
    out, bound = np.empty(cands.shape), np.empty(cands.shape)
    for i in range(cands.shape[0]):
        f, v = X.indices[X.indptr[i]:X.indptr[i + 1]], X.data[X.indptr[i]:X.indptr[i + 1]].astype(np.float64)
        for c, lab in enumerate(cands[i]):
            w = rr.V[[slot(int(lab), int(j), rr.bits) for j in f]].astype(np.float64)
            u = float(rr.U[lab])
            out[i, c] = u + v @ w
            bound[i, c] = gamma(f.size + 1) * (abs(u) + np.abs(v) @ np.abs(w))
    return out, bound


def rows(rng, n, d, density=0.2):
    X = sp.random(n, d, density=density, format="csr", dtype=np.float32, random_state=rng)
    X.data = rng.random(X.nnz, dtype=np.float32) + 0.1
    return X


def test_scores_are_the_hashed_linear_sum():
    rng = np.random.default_rng(0)
    rr = FeatureReranker(40, bits=12)
    rr.V[:] = rng.standard_normal(rr.V.size).astype(np.float32)
    rr.U[:] = rng.standard_normal(40).astype(np.float32)
    X = rows(rng, 7, 30)
    cands = rng.integers(0, 40, size=(7, 5))
    want, bound = scores64(rr, X, cands)
    assert_within(rr.scores(X, cands), want, bound, "re-ranker scores")


def test_rerank_sorts_base_plus_scores_ties_to_the_lower_label():
    rng = np.random.default_rng(1)
    rr = FeatureReranker(10, bits=10, loss="softmax")
    X = rows(rng, 3, 8)
    cands = np.array([[5, 3, 7, 1], [9, 8, 2, 0], [4, 6, 1, 2]])
    base = np.array([[1.0, 1.0, 0.5, 2.0], [0.0, 0.0, 0.0, 0.0], [3.0, 1.0, 2.0, 0.0]], np.float32)
    sc, lb = rr.rerank(X, base, cands, 3)  # all weights zero: the base order, ties by label
    assert lb.tolist() == [[1, 3, 5], [0, 2, 8], [4, 1, 6]]
    np.testing.assert_array_equal(sc, [[2, 1, 1], [0, 0, 0], [3, 2, 1]])
    rr.U[6] = 5.0  # a label's bias moves it up
    assert rr.rerank(X, base, cands, 1)[1][2, 0] == 6


def test_logistic_rerank_scales_the_base_and_adds_the_scalars():
    rng = np.random.default_rng(1)
    rr = FeatureReranker(10, bits=10)
    assert rr.loss == "logistic" and rr.link == "sigmoid"
    rr.V[:] = rng.standard_normal(rr.V.size).astype(np.float32)
    rr.ab[:] = (0.5, -1.25)
    X = rows(rng, 4, 8)
    cands = np.array([[5, 3, 7, 1], [9, 8, 2, 0], [4, 6, 1, 2], [0, 1, 2, 3]])
    base = rng.standard_normal((4, 4)).astype(np.float32) * 3
    s64, bound = scores64(rr, X, cands)
    rel = base.astype(np.float64) - base.max(1, keepdims=True)
    z = 0.5 * rel - 1.25 + s64
    zb = bound + 0.5 * gamma(1) * np.abs(base).max(1, keepdims=True) * 2 + U * (np.abs(z) + bound)
    sc, lb = rr.rerank(X, base, cands, 4)
    order = np.argsort(-z, 1, kind="stable")
    # the order wherever the float64 z are further apart than their bounds
    assert_within(sc, np.take_along_axis(z, order, 1), np.take_along_axis(zb, order, 1).max(1, keepdims=True),
                  "logistic z")
    gaps = np.diff(-np.sort(-z, 1), axis=1)
    clear = (-gaps > 2 * zb.max(1, keepdims=True)).all(1)
    assert clear.any()
    np.testing.assert_array_equal(lb[clear], np.take_along_axis(cands, order, 1)[clear])


def bce(z, t):
    """Binary cross-entropy of logits z against 0/1 targets t, summed (float64)."""
    z = np.asarray(z, np.float64)
    return float(np.sum(np.logaddexp(0, z) - t * z))


@pytest.mark.parametrize("loss", ["logistic", "softmax"])
def test_training_learns_which_feature_names_the_label(loss):
    # label of row i = its one non-zero feature's id mod 8; the base logits say nothing
    rng = np.random.default_rng(2)
    n, d, L = 400, 64, 8
    feat = rng.integers(0, d, n)
    X = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), feat)), shape=(n, d))
    Y = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), feat % L)), shape=(n, L))
    cands = np.tile(np.arange(L), (n, 1))
    base = np.zeros((n, L), np.float32)
    rr = FeatureReranker(L, bits=14, lr=0.2, loss=loss)
    losses = [rr.fit_epoch(X, cands, base, Y, rng) for _ in range(5)]
    # untrained: log(L) per row (softmax), or the cross-entropies of the initial z = b for one
    # positive and L - 1 negatives (logistic); the first pass already learns, the fifth is at a
    # fifth of it (softmax) or a third (logistic: each negative's sigmoid only tends to 0)
    untrained = np.log(L) if loss == "softmax" else bce(np.full(L, AB_INIT[1]), np.eye(L)[0])
    share = 0.2 if loss == "softmax" else 1 / 3
    assert losses[0] < untrained and losses[-1] < share * untrained and losses == sorted(losses, reverse=True)
    _, top = rr.rerank(X, base, cands, 1)
    assert (top[:, 0] == feat % L).mean() == 1.0


def test_rows_without_a_true_candidate():
    rng = np.random.default_rng(3)
    X = rows(rng, 5, 10, density=0.5)
    Y = sp.csr_matrix((np.ones(5, np.float32), (np.arange(5), np.full(5, 9))), shape=(5, 10))
    cands, base = np.tile(np.arange(4), (5, 1)), np.zeros((5, 4), np.float32)
    # softmax: nothing to spread the target over, the rows are skipped
    rr = FeatureReranker(10, bits=10, loss="softmax")
    assert np.isnan(rr.fit_epoch(X, cands, base, Y, rng))
    assert not rr.V.any() and not rr.U.any()
    # logistic: every candidate is a negative, so their biases go down and the others stay
    rr = FeatureReranker(10, bits=10)
    loss = rr.fit_epoch(X, cands, base, Y, rng)
    assert abs(loss - bce(np.full(4, AB_INIT[1]), np.zeros(4))) < 0.5
    assert (rr.U[:4] < 0).all() and not rr.U[4:].any() and rr.ab[1] < AB_INIT[1]


def xmc(seed=4, n=600, d=80, L=60):
    rng = np.random.default_rng(seed)
    X = rows(rng, n, d, density=0.1)
    W = rng.standard_normal((d, L)).astype(np.float32)
    top = np.argsort(-(X @ W), 1)[:, :2]
    Y = sp.csr_matrix((np.ones(top.size, np.float32), (np.repeat(np.arange(n), 2), top.ravel())), shape=(n, L))
    return X[:450], Y[:450], X[450:], Y[450:]


def test_sparse_mlp_predicts_mlp_shortlist_plus_reranker_scores(tmp_path):
    Xtr, Ytr, Xte, Yte = xmc()
    m = SparseMLP(80, 60, hidden=(16,), seed=0).fit(Xtr, Ytr, epochs=2, batch_size=64, verbose=False)
    rr = m.reranker
    assert rr is not None and m.rerank_report_["kept"] and m.rerank_report_["rows"] == 450
    # reference: the MLP's float64 logits, their top 32, plus the re-ranker's float64 scores
    logits, lbound = logits_bound([p.w for p in m.layers], [b.w for b in m.biases], m.out_w.w, m.out_b.w, Xte)
    short = np.argsort(-logits, 1, kind="stable")[:, :32]
    ranked = -np.sort(-logits, 1)
    # test-data precondition: the 32nd and 33rd logits further apart than their error bounds,
    # so that every float32 order shortlists the same labels
    assert (ranked[:, 31] - ranked[:, 32] > 2 * lbound.max(1)).all(), "ambiguous test data: a near tie"
    s64, sbound = scores64(rr, Xte, short)
    assert rr.loss == "logistic"
    a, b = rr.ab
    base = np.take_along_axis(logits, short, 1)
    z = a * (base - base.max(1, keepdims=True)) + b + s64
    # a times the two logits' bounds (the candidate's and the row maximum's), the scores', then
    # the float32 rounding of the difference and of the sum (float64 arithmetic in between)
    bb = np.take_along_axis(lbound, short, 1)
    zb = abs(a) * (bb + bb.max(1, keepdims=True) + U * 2 * np.abs(base).max(1, keepdims=True)) + sbound
    zb += U * (np.abs(z) + zb)
    sc, lb = m.predict_topk(Xte, 5)
    # sorted: each row's largest bound bounds its k-th largest (tests/test_slide.py)
    assert_within(sc, -np.sort(-z, 1)[:, :5], zb.max(1, keepdims=True), "re-ranked scores")
    assert set(lb[0]) == set(short[0][np.argsort(-z[0])[:5]])
    # checkpoint and float32 export predict identically; float16 within its rounding
    m.save(tmp_path / "ck.npz")
    m.save(tmp_path / "e32.npz", optimizer=False)
    m.save(tmp_path / "e16.npz", optimizer=False, dtype="float16")
    for name in ("ck.npz", "e32.npz"):
        r = SparseMLP.load(tmp_path / name)
        s1, l1 = r.predict_topk(Xte, 5)
        np.testing.assert_array_equal(l1, lb)
        np.testing.assert_array_equal(s1, sc)
    r16 = SparseMLP.load(tmp_path / "e16.npz")
    assert r16.reranker.GV is None
    p = m.evaluate(Xte, Yte, ks=(1,))["P@1"]
    assert abs(r16.evaluate(Xte, Yte, ks=(1,))["P@1"] - p) <= 0.05
    ck = SparseMLP.load(tmp_path / "ck.npz")
    np.testing.assert_array_equal(ck.reranker.GV, rr.GV)
    np.testing.assert_array_equal(ck.reranker.ab, rr.ab)
    np.testing.assert_array_equal(ck.reranker.Gab, rr.Gab)
    np.testing.assert_array_equal(r16.reranker.ab, rr.ab)  # two scalars: exact in a float16 export


def test_format4_file_loads_its_softmax_reranker(tmp_path):
    Xtr, Ytr, Xte, _ = xmc(seed=7)
    m = SparseMLP(80, 60, hidden=(16,), seed=0).fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False)
    m.reranker.V[:] = np.random.default_rng(0).standard_normal(m.reranker.V.size).astype(np.float32)
    m.save(tmp_path / "v5.npz", optimizer=False)
    # the layout of format 4: no loss, no scalars; its re-rankers were trained with the softmax
    with np.load(tmp_path / "v5.npz") as z:
        arrays = {n: z[n] for n in z.files if n != "rerank.ab"}
    state = json.loads(bytes(arrays["state"]).decode())
    state["format"] = 4
    del state["rerank"]["loss"]
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    np.savez(tmp_path / "v4.npz", **arrays)
    old = SparseMLP.load(tmp_path / "v4.npz")
    assert old.reranker.loss == "softmax"
    m.reranker.loss = "softmax"  # the same weights scored as base + scores
    for a, b in zip(old.predict_topk(Xte, 5), m.predict_topk(Xte, 5)):
        np.testing.assert_array_equal(a, b)


def test_reranker_improves_on_the_mlp_alone_here_and_fit_replaces_it():
    Xtr, Ytr, Xte, Yte = xmc(seed=5)
    a = SparseMLP(80, 60, hidden=(16,), seed=0).fit(Xtr, Ytr, epochs=2, batch_size=64, verbose=False, rerank=False)
    b = SparseMLP(80, 60, hidden=(16,), seed=0).fit(Xtr, Ytr, epochs=2, batch_size=64, verbose=False)
    assert a.reranker is None and b.reranker is not None
    # the same MLP (the re-ranker is fitted after it); the labels follow a linear teacher on the features
    np.testing.assert_array_equal(a.out_w.w, b.out_w.w)
    assert b.evaluate(Xte, Yte, ks=(1,))["P@1"] > a.evaluate(Xte, Yte, ks=(1,))["P@1"]
    first = b.reranker
    b.fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False)
    assert b.reranker is not None and b.reranker is not first
    b.fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False, rerank=False)
    assert b.reranker is None


def test_reranker_that_lowers_validation_p_at_1_is_dropped(monkeypatch):
    Xtr, Ytr, Xte, Yte = xmc(seed=6)
    # a re-ranker that learns nothing but pushes label 0 to the top: worse on validation
    monkeypatch.setattr(FeatureReranker, "fit_epoch", lambda self, *a: self.U.__setitem__(0, 1e6))
    m = SparseMLP(80, 60, hidden=(16,), seed=0)
    m.fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False, validation=(Xte, Yte))
    r = m.rerank_report_
    assert m.reranker is None and not r["kept"] and r["val_P@1_with"] < r["val_P@1_without"]


def test_bad_rerank_argument():
    Xtr, Ytr, _, _ = xmc()
    with pytest.raises(TypeError, match="rerank"):
        SparseMLP(80, 60, hidden=(8,)).fit(Xtr, Ytr, epochs=1, verbose=False, rerank="yes")
    with pytest.raises(ValueError, match="bits"):
        FeatureReranker(10, bits=40)
    with pytest.raises(ValueError, match="loss"):
        FeatureReranker(10, loss="hinge")


@pytest.mark.parametrize("C,positives", [(8, 3), (12, 12), (20, 4)])
def test_training_shortlist_keeps_true_labels_and_the_hardest_wrong_ones(C, positives):
    from hashlab.rerank import training_shortlist
    rng = np.random.default_rng(C)
    L = 24
    m = SparseMLP(30, L, hidden=(16,), seed=1)
    X = rows(rng, 40, 30)
    # label counts 0..L per row: rows with no true label, with fewer than `positives`, with
    # so many that the wrong ones run short of C - positives
    Y = sp.csr_matrix((rng.random((40, L)) < np.linspace(0, 1, 40)[:, None]).astype(np.float32))
    base, cands = training_shortlist(m, X, Y, C, positives=positives)
    logits, bound = logits_bound([p.w for p in m.layers], [b.w for b in m.biases], m.out_w.w, m.out_b.w, X)
    for i in range(40):
        true = set(Y.indices[Y.indptr[i]:Y.indptr[i + 1]].tolist())
        by_score = np.argsort(-logits[i], kind="stable")
        pos = [c for c in by_score if c in true]
        neg = [c for c in by_score if c not in true]
        # the plain top C with true labels beyond the first `positives` replaced by wrong ones
        top = list(by_score[:C])
        kept = [c for c in top if c not in true][:C] + [c for c in top if c in true][:positives]
        extra_neg = [c for c in neg if c not in kept][:C - len(kept)]
        want = kept + extra_neg + [c for c in pos if c not in kept][:C - len(kept) - len(extra_neg)]
        ranked = -np.sort(-logits[i])
        # test-data precondition: no two logits within twice their error bounds (else float32 may swap them)
        assert (np.diff(-ranked) > 2 * bound[i].max()).all(), "ambiguous test data: a near tie"
        assert set(cands[i].tolist()) == set(want)
        np.testing.assert_array_equal(cands[i], sorted(want, key=lambda c: -logits[i, c]))  # best first
        assert (np.abs(base[i] - logits[i, cands[i]]) <= bound[i, cands[i]]).all()
