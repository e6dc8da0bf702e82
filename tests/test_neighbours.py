"""Hidden-space neighbour votes (hashlab.neighbours) against plain-Python references, and in SparseMLP."""
import math

import numpy as np
import pytest
import scipy.sparse as sp

from hashlab import SparseMLP, _C
from hashlab.neighbours import WEIGHTS, HiddenNeighbours, _blend_votes
from hashlab import neighbour_kernels as K

from _tolerance import dot_error_bound


def labels_csr(lists, n_labels):
    indptr = np.cumsum([0] + [len(x) for x in lists])
    return sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(lists).astype(np.int64), indptr),
                         shape=(len(lists), n_labels))


def reference_votes(Htr, lists, q, kn, power, n_labels):
    """Votes of one query in float64 and plain Python: {label: vote}."""
    unit = Htr / np.linalg.norm(Htr, axis=1, keepdims=True)
    cos = unit @ (q / np.linalg.norm(q))
    order = sorted(range(len(cos)), key=lambda j: -cos[j])[:kn]
    acc = {}
    for j in order:
        w = max(cos[j], 0.0) ** power if cos[j] > 0 else 0.0
        for lab in lists[j]:
            acc[lab] = acc.get(lab, 0.0) + w
    tot = sum(acc.values())
    return {lab: v / tot for lab, v in acc.items()} if tot > 0 else {}


def test_neighbours_and_votes_match_a_float64_reference():
    rng = np.random.default_rng(0)
    n, d, L = 300, 12, 25
    Htr = rng.standard_normal((n, d))
    lists = [rng.choice(L, size=rng.integers(1, 4), replace=False) for _ in range(n)]
    Hq = rng.standard_normal((9, d))
    nb = HiddenNeighbours(Htr.astype(np.float32), labels_csr(lists, L), n_neighbours=7, power=2.0)
    ids, cos = nb.neighbours(Hq.astype(np.float32))
    unit = Htr / np.linalg.norm(Htr, axis=1, keepdims=True)
    qs = Hq / np.linalg.norm(Hq, axis=1, keepdims=True)
    ref = qs @ unit.T
    # the float32 cosines are within the error of a d-term dot product of unit vectors (plus the
    # normalisations' roundings) of the float64 ones
    bound = dot_error_bound(np.abs(qs), np.abs(unit.T), n=d + 4)
    np.testing.assert_array_less(np.abs(cos - np.take_along_axis(ref, ids, 1)), np.take_along_axis(bound, ids, 1))
    for i in range(9):
        want = np.argsort(-ref[i], kind="stable")[:7]
        gap_ok = np.min(np.abs(np.diff(np.sort(ref[i])[::-1][:8]))) > 2 * bound[i].max()
        if gap_ok:  # no near-ties among the first 8: the order is the reference's
            assert ids[i].tolist() == want.tolist()
    V = nb.votes(Hq.astype(np.float32)).toarray()
    for i in range(9):
        want = reference_votes(Htr, lists, Hq[i], 7, 2.0, L)
        got = {int(j): float(V[i, j]) for j in np.flatnonzero(V[i])}
        assert set(got) == set(want)
        for lab, v in want.items():
            assert got[lab] == pytest.approx(v, rel=1e-4, abs=1e-6)
        assert sum(got.values()) == pytest.approx(1.0, rel=1e-5)


def test_votes_of_a_query_with_no_positive_cosine_are_empty():
    Htr = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    nb = HiddenNeighbours(Htr, labels_csr([[0], [1]], 3), n_neighbours=5)
    assert nb.votes(np.array([[-1.0, -1.0]], np.float32)).nnz == 0
    ids, _ = nb.neighbours(np.array([[1.0, 0.1]], np.float32))
    assert ids.tolist() == [[0, 1]]  # n_neighbours above n_train: all rows, closest first


@pytest.mark.parametrize("link", ["softmax", "sigmoid"])
def test_blend_adds_weighted_votes_to_the_shortlist_probabilities(link):
    rng = np.random.default_rng(1)
    n, d, L = 50, 6, 12
    Htr = rng.standard_normal((n, d)).astype(np.float32)
    lists = [rng.choice(L, size=2, replace=False) for _ in range(n)]
    nb = HiddenNeighbours(Htr, labels_csr(lists, L), n_neighbours=5, power=1.0, weight=0.7)
    Hq = rng.standard_normal((4, d)).astype(np.float32)
    labels = np.array([rng.choice(L, size=4, replace=False) for _ in range(4)])
    scores = rng.standard_normal((4, 4)).astype(np.float32) * 3
    sc, lb = nb.blend(Hq, scores, labels, 6, link=link)
    V = nb.votes(Hq).toarray().astype(np.float64)
    for i in range(4):
        z = {}
        e = [math.exp(float(s) - float(scores[i].max())) for s in scores[i]]
        for lab, v, s in zip(labels[i], e, scores[i]):
            # softmax over the row's shortlist, or each label's own sigmoid
            z[int(lab)] = v / sum(e) if link == "softmax" else 1 / (1 + math.exp(-float(s)))
        for lab in np.flatnonzero(V[i]):
            z[int(lab)] = z.get(int(lab), 0.0) + 0.7 * V[i, lab]
        for lab in range(L):  # missing labels score 0: the lowest ids fill the tail
            z.setdefault(lab, 0.0)
        want = sorted(z, key=lambda lab: (-z[lab], lab))[:6]
        assert lb[i].tolist() == want
        np.testing.assert_allclose(sc[i], [z[lab] for lab in want], rtol=1e-5, atol=1e-7)


def test_blend_pads_short_rows_with_the_lowest_unused_ids():
    # weight 0: the shortlist probabilities alone; a label whose probability underflows to 0
    # ranks as an unlisted one (by id)
    scores = np.array([[0.0, -1e4, np.log(0.25)], [2.0, 1.0, 0.5]], np.float32)
    labels = np.array([[3, 0, 1], [4, 2, 0]])
    vals, cols = _blend_votes(scores, labels, None, 0.0, 6, 5)
    p = np.exp([0.0, np.log(0.25)]) / np.exp([0.0, np.log(0.25)]).sum()
    assert cols[0].tolist() == [3, 1, 0, 2, 4]
    np.testing.assert_allclose(vals[0], [p[0], p[1], 0, 0, 0], rtol=1e-6)
    assert cols[1].tolist() == [4, 2, 0, 1, 3]


def reference_pool(cq, codes, m):
    """The m rows of smallest Hamming distance, ties to the lower id, in numpy."""
    dist = np.bitwise_count(cq[:, None, :] ^ codes[None, :, :]).sum(2)
    return np.stack([np.lexsort((np.arange(codes.shape[0]), d))[:m] for d in dist])


@pytest.mark.parametrize("words,m", [(1, 1), (1, 7), (4, 30), (4, 500), (2, 64)])
def test_hamming_pool_is_the_m_nearest_codes_ties_to_the_lower_id(words, m):
    rng = np.random.default_rng(words * 100 + m)
    # few set bits: many equal distances, so the tie rule decides
    codes = (rng.random((500, words, 64)) < 0.05).astype(np.uint64)
    codes = (codes << np.arange(64, dtype=np.uint64)).sum(2).astype(np.uint64)
    cq = codes[rng.integers(0, 500, 9)] ^ np.uint64(1)
    np.testing.assert_array_equal(K.hamming_pool(cq, codes, m), reference_pool(cq, codes, m))
    ids, _ = _C.hamming_topm(cq, codes, m)  # the batch kernel: the same rows in the same order
    np.testing.assert_array_equal(ids, reference_pool(cq, codes, m))


def test_few_rows_give_what_the_batch_path_gives(monkeypatch):
    import hashlab.neighbours as N
    rng = np.random.default_rng(7)
    n, d, L = 900, 24, 30
    Htr = rng.standard_normal((n, d)).astype(np.float32)
    lists = [rng.choice(L, size=rng.integers(1, 5), replace=False) for _ in range(n)]
    nb = HiddenNeighbours(Htr, labels_csr(lists, L), n_neighbours=9, power=3.0, weight=1.5)
    monkeypatch.setattr(N, "EXACT_UP_TO", 100)
    Hq = rng.standard_normal((70, d)).astype(np.float32)
    ids, cos = nb.neighbours(Hq)  # >= _SCAN_BLOCK rows: _C.hamming_topm and einsum
    V = nb.votes(Hq).toarray()
    scores = rng.standard_normal((70, 8)).astype(np.float32)
    labels = np.array([rng.choice(L, size=8, replace=False) for _ in range(70)])
    sc, lb = nb.blend(Hq, scores, labels, 5)
    for i in (0, 1, 33, 69):
        one = Hq[i:i + 1]
        i1, c1 = nb.neighbours(one)
        np.testing.assert_array_equal(i1[0], ids[i])
        np.testing.assert_allclose(c1[0], cos[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(nb.votes(one).toarray()[0], V[i], rtol=1e-5, atol=1e-7)
        s1, l1 = nb.blend(one, scores[i:i + 1], labels[i:i + 1], 5)
        np.testing.assert_array_equal(l1[0], lb[i])
        np.testing.assert_allclose(s1[0], sc[i], rtol=1e-5, atol=1e-7)


def memorised_xmc(seed=0, n=600, d=60, L=40):
    """Rows of 12 "prototypes" (a sparse pattern plus noise), each with its own label set
    of 3 labels: the label sets go together, the per-label signal is weak."""
    rng = np.random.default_rng(seed)
    protos = [rng.choice(d, size=6, replace=False) for _ in range(12)]
    sets = [rng.choice(L, size=3, replace=False) for _ in range(12)]
    rows, cols, vals, lists = [], [], [], []
    for i in range(n):
        p = int(rng.integers(12))
        f = np.unique(np.concatenate([rng.choice(protos[p], size=4, replace=False), rng.integers(0, d, 3)]))
        rows += [i] * f.size
        cols += f.tolist()
        vals += (rng.random(f.size) + 0.5).tolist()
        lists.append(sets[p])
    X = sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(n, d))
    Y = labels_csr(lists, L)
    return X[:400], Y[:400], X[400:500], Y[400:500], X[500:], Y[500:]


def test_sparse_mlp_predicts_the_blend_and_round_trips(tmp_path):
    Xtr, Ytr, Xva, Yva, Xte, Yte = memorised_xmc(seed=3)
    m = SparseMLP(60, 40, hidden=(16,), seed=0)
    m.fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False, validation=(Xva, Yva))
    r = m.neighbours_report_
    by, by5 = r["val_P@1_by_weight"], r["val_P@5_by_weight"]
    assert r["val_rows"] == 100 and set(by) == set(by5) == set(WEIGHTS)
    # the report's figures: each weight's blend of the validation rows, scored by hand
    probe = HiddenNeighbours(m.hidden_activations(Xtr), Ytr)
    Hv, (sv, lv) = m.hidden_activations(Xva), m._shortlist(Xva, 32)
    truth = [set(Yva.indices[Yva.indptr[i]:Yva.indptr[i + 1]]) for i in range(Yva.shape[0])]
    for w in WEIGHTS:
        _, top = probe.blend(Hv, sv, lv, 5, weight=w, link=m.reranker.link)
        assert by[w] == pytest.approx(np.mean([top[i, 0] in t for i, t in enumerate(truth)]))
        assert by5[w] == pytest.approx(np.mean([len(set(top[i]) & t) / 5 for i, t in enumerate(truth)]))
    assert r["val_P@5_without"] == pytest.approx(np.mean([len(set(lv[i, :5]) & t) / 5 for i, t in enumerate(truth)]))
    # kept exactly when a weight that keeps validation P@5 raises P@1, with the best such one
    # (the smallest of ties)
    fair = [w for w in WEIGHTS if by5[w] >= r["val_P@5_without"]]
    best = max(fair, key=lambda w: (by[w], -w)) if fair else None
    assert r["kept"] == (best is not None and by[best] > r["val_P@1_without"])
    if r["kept"]:
        assert m.neighbours.weight == best
    else:  # the re-ranked MLP is good enough here: the prediction path is checked with a set weight
        assert m.neighbours is None
        m.neighbours = HiddenNeighbours(m.hidden_activations(Xtr), Ytr, weight=2.0)
    nb = m.neighbours
    assert m.reranker is not None and nb.H.shape == (400, 16)
    # reference: the prediction without the votes (MLP + re-ranker) blended by hand
    nb_saved, m.neighbours = m.neighbours, None
    sc0, lb0 = m.predict_topk(Xte, 32)
    m.neighbours = nb_saved
    assert m.reranker.link == "sigmoid"  # the logistic re-ranker's z become probabilities label by label
    want = nb.blend(m.hidden_activations(Xte), sc0, lb0, 5, link="sigmoid")
    got = m.predict_topk(Xte, 5)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    for name, kw in (("ck.npz", {}), ("e32.npz", dict(optimizer=False))):
        m.save(tmp_path / name, **kw)
        back = SparseMLP.load(tmp_path / name)
        np.testing.assert_array_equal(back.predict_topk(Xte, 5)[1], got[1])
        assert back.neighbours.weight == nb.weight
    m.save(tmp_path / "e16.npz", optimizer=False, dtype="float16")
    r16 = SparseMLP.load(tmp_path / "e16.npz")
    assert r16.neighbours.H.dtype == np.float32
    assert abs(r16.evaluate(Xte, Yte, ks=(1,))["P@1"] - m.evaluate(Xte, Yte, ks=(1,))["P@1"]) <= 0.05


def test_votes_help_where_label_sets_go_together():
    Xtr, Ytr, Xva, Yva, Xte, Yte = memorised_xmc(seed=3)
    kw = dict(epochs=1, batch_size=64, verbose=False, validation=(Xva, Yva), rerank=False)
    a = SparseMLP(60, 40, hidden=(16,), seed=0).fit(Xtr, Ytr, neighbours=False, **kw)
    b = SparseMLP(60, 40, hidden=(16,), seed=0).fit(Xtr, Ytr, **kw)
    assert a.neighbours is None and b.neighbours is not None
    np.testing.assert_array_equal(a.out_w.w, b.out_w.w)  # the same MLP: the stage comes after it
    assert b.evaluate(Xte, Yte, ks=(1,))["P@1"] > a.evaluate(Xte, Yte, ks=(1,))["P@1"]
    b.fit(Xtr, Ytr, neighbours=False, **kw)
    assert b.neighbours is None


def test_no_stage_without_validation_rows_or_time():
    Xtr, Ytr, _, _, _, _ = memorised_xmc()
    m = SparseMLP(60, 40, hidden=(8,), seed=0).fit(Xtr, Ytr, epochs=1, verbose=False)
    assert m.neighbours is None and not m.neighbours_report_["kept"]


def test_bad_arguments_and_damaged_files(tmp_path):
    Xtr, Ytr, Xva, Yva, _, _ = memorised_xmc()
    with pytest.raises(TypeError, match="neighbours"):
        SparseMLP(60, 40, hidden=(8,)).fit(Xtr, Ytr, epochs=1, verbose=False, neighbours="yes")
    H = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="Y: expected 3 rows"):
        HiddenNeighbours(H, labels_csr([[0], [1]], 3))
    with pytest.raises(ValueError, match="power"):
        HiddenNeighbours(H, labels_csr([[0], [1], [2]], 3), power=-1)
    with pytest.raises(ValueError, match="weight"):
        HiddenNeighbours(H, labels_csr([[0], [1], [2]], 3), weight=float("nan"))
    nb = HiddenNeighbours(H, labels_csr([[0], [1], [2]], 3))
    with pytest.raises(ValueError, match="Hq"):
        nb.neighbours(np.ones((2, 5), np.float32))
    m = SparseMLP(60, 40, hidden=(8,), seed=0)
    m.fit(Xtr, Ytr, epochs=1, verbose=False, validation=(Xva, Yva), rerank=False)
    if m.neighbours is None:
        m.neighbours = HiddenNeighbours(m.hidden_activations(Xtr), Ytr)
    path = tmp_path / "m.npz"
    m.save(path, optimizer=False)
    z = dict(np.load(path))
    z["neighbours.Y.indices"] = z["neighbours.Y.indices"].copy()
    z["neighbours.Y.indices"][0] = 40
    bad = tmp_path / "bad.npz"
    np.savez(bad, **z)
    with pytest.raises(ValueError, match="bad.npz.*label ids in"):
        SparseMLP.load(bad)
    z = dict(np.load(path))
    z["neighbours.H"] = z["neighbours.H"][:, :5]
    np.savez(bad, **z)
    with pytest.raises(ValueError, match="neighbours.H"):
        SparseMLP.load(bad)


def test_hamming_preselection_keeps_the_closest_of_the_nearest_codes(monkeypatch):
    import hashlab.neighbours as N
    rng = np.random.default_rng(4)
    n, d, L = 500, 16, 10
    Htr = rng.standard_normal((n, d)).astype(np.float32)
    lists = [rng.choice(L, size=1) for _ in range(n)]
    Hq = rng.standard_normal((70, d)).astype(np.float32)  # above _SCAN_BLOCK: the kernel path too
    nb = HiddenNeighbours(Htr, labels_csr(lists, L), n_neighbours=5)
    exact_ids, exact_cos = nb.neighbours(Hq)
    monkeypatch.setattr(N, "EXACT_UP_TO", 100)
    monkeypatch.setattr(N, "SCAN_FACTOR", 4)
    for rows in (Hq, Hq[:3]):  # the batch kernel and the few-rows path
        ids, cos = nb.neighbours(rows)
        # reference pre-selection: Hamming distances of the sign codes in numpy
        unit = Htr / np.linalg.norm(Htr, axis=1, keepdims=True)
        q = rows / np.linalg.norm(rows, axis=1, keepdims=True)
        bits_tr, bits_q = (unit @ nb.projection) > 0, (q @ nb.projection) > 0
        dist = (bits_q[:, None, :] != bits_tr[None, :, :]).sum(2)
        for i in range(rows.shape[0]):
            cut = np.sort(dist[i])[19]  # the 20th smallest distance: 4 x 5 rows pre-selected
            assert np.all(dist[i, ids[i]] <= cut)
            # among rows within the cut-off, the returned ones have the largest cosines (up to ties at it)
            cos_ref = unit[ids[i]] @ q[i]
            np.testing.assert_allclose(cos[i], cos_ref, rtol=0, atol=1e-5)
            inside = np.flatnonzero(dist[i] < cut)
            better = (unit[inside] @ q[i]) > cos[i].min() + 1e-5
            assert set(inside[better]) <= set(ids[i])
    monkeypatch.setattr(N, "SCAN_FACTOR", 1000)  # pre-selects every row: the exact answer
    ids, cos = nb.neighbours(Hq)
    np.testing.assert_array_equal(ids, exact_ids)


def test_concat_votes_equals_scipy_vstack():
    """fit_stage joins per-block vote arrays: the same matrix as stacking the blocks' CSR."""
    from hashlab.neighbours import _concat_votes
    rng = np.random.default_rng(3)
    H = rng.standard_normal((60, 8)).astype(np.float32)
    Y = labels_csr([rng.choice(12, size=rng.integers(1, 4), replace=False) for _ in range(60)], 12)
    nb = HiddenNeighbours(H, Y, n_neighbours=5)
    Q = rng.standard_normal((23, 8)).astype(np.float32)
    blocks = [nb._vote_arrays(Q[s:s + 7]) for s in range(0, 23, 7)]  # 7, 7, 7, 2 rows
    vp, vl, vv = _concat_votes(blocks)
    got = sp.csr_matrix((vv, vl, vp), shape=(23, 12)).toarray()
    ref = sp.vstack([sp.csr_matrix((b[2], b[1], b[0]), shape=(b[0].size - 1, 12)) for b in blocks]).toarray()
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(got, nb.votes(Q).toarray())
    assert vp.dtype == np.int64 and vl.dtype == np.int64 and vv.dtype == np.float32
