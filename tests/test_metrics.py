"""Ranking metrics against brute-force Python references (and sklearn's ndcg_score), hand-worked
cases, tie-breaking, input validation."""
import math

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.metrics import ndcg_score

from hashlab.metrics import (most_frequent_baseline, ndcg_at_k, precision_at_k, precision_at_ks, propensities,
                             psndcg_at_k, psp_at_k, ranking_metrics, recall_at_k, top_k_labels)


def ref_topk(scores, k):
    return [sorted(range(len(row)), key=lambda j: (-row[j], j))[:k] for row in scores.tolist()]


def ref_precision(topk, labels, k):
    return float(np.mean([len(set(t[:k]) & set(l)) / k for t, l in zip(topk, labels)]))


def random_case(rng, n, m, ties):
    if ties:
        scores = rng.integers(0, 3, size=(n, m)).astype(np.float32)  # many ties
    else:
        scores = rng.standard_normal((n, m)).astype(np.float32)
    labels = [sorted(rng.choice(m, size=rng.integers(0, min(m, 5) + 1), replace=False).tolist()) for _ in range(n)]
    return scores, labels


def as_csr(labels, m):
    Y = sp.lil_matrix((len(labels), m), dtype=np.float32)
    for i, l in enumerate(labels):
        Y[i, l] = 1.0
    return Y.tocsr()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n,m", [(1, 1), (1, 5), (7, 3), (50, 17), (200, 64)])
def test_precision_matches_brute_force(rng, n, m, ties):
    scores, labels = random_case(rng, n, m, ties)
    Y = as_csr(labels, m)
    for k in sorted({1, 2, 3, 5, m}):
        if k > m:
            continue
        ref_ids = ref_topk(scores, k)
        assert top_k_labels(scores, k).tolist() == ref_ids
        expect = ref_precision(ref_ids, labels, k)
        assert precision_at_k(scores, Y, k) == pytest.approx(expect, abs=1e-12)
        assert precision_at_k(scores, labels, k) == pytest.approx(expect, abs=1e-12)
        ids = np.array(ref_ids, dtype=np.int32)
        assert precision_at_k(ids, Y, k) == pytest.approx(expect, abs=1e-12)
    ks = [k for k in (1, 3, 5) if k <= m]
    got = precision_at_ks(scores, Y, ks)
    assert list(got) == [f"P@{k}" for k in ks]
    for k in ks:
        assert got[f"P@{k}"] == pytest.approx(ref_precision(ref_topk(scores, k), labels, k), abs=1e-12)


def test_ties_prefer_lower_ids():
    scores = np.array([[1, 2, 2, 2, 0], [0, 0, 0, 0, 0], [-1, 5, -1, 5, -1]], np.float32)
    assert top_k_labels(scores, 2).tolist() == [[1, 2], [0, 1], [1, 3]]
    assert top_k_labels(scores, 4).tolist() == [[1, 2, 3, 0], [0, 1, 2, 3], [1, 3, 0, 2]]
    assert top_k_labels(scores.astype(np.float64), 5).tolist() == [[1, 2, 3, 0, 4], [0, 1, 2, 3, 4], [1, 3, 0, 2, 4]]


def test_known_values():
    ids = np.array([[3, 1, 0], [2, 4, -1]])
    Y = [[1, 3], [0]]
    assert precision_at_k(ids, Y, 1) == 0.5
    assert precision_at_k(ids, Y, 2) == 0.5
    assert precision_at_k(ids, Y, 3) == pytest.approx(2 / 6)
    # k larger than a row's label count still divides by k; explicit zeros in Y are not labels
    Ys = sp.csr_matrix((np.array([1.0, 0.0, 1.0], np.float32), np.array([1, 3, 0]), np.array([0, 2, 3])),
                       shape=(2, 5))
    assert precision_at_k(ids, Ys, 2) == 0.25


def test_precision_only_uses_first_k_columns():
    ids = np.array([[0, 1, 2, 3]])
    assert precision_at_k(ids, [[3]], 1) == 0.0
    assert precision_at_k(ids, [[3]], 4) == 0.25


def test_validation():
    scores = np.zeros((3, 4), np.float32)
    Y = [[0], [1], [2]]
    with pytest.raises(ValueError, match="at most 4"):
        precision_at_k(scores, Y, 5)
    with pytest.raises(ValueError):
        precision_at_k(scores, Y, 0)
    with pytest.raises(TypeError):
        precision_at_k(scores, Y, 1.0)
    with pytest.raises(ValueError, match="3"):
        precision_at_k(scores, Y[:2], 1)
    with pytest.raises(ValueError, match="rows"):
        precision_at_k(scores, sp.csr_matrix((2, 4)), 1)
    bad = scores.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="row 1"):
        precision_at_k(bad, Y, 1)
    with pytest.raises(TypeError):
        precision_at_k(scores.astype(bool), Y, 1)
    with pytest.raises(TypeError):
        precision_at_k(sp.csr_matrix(scores), Y, 1)
    with pytest.raises(TypeError):
        precision_at_k("abc", Y, 1)
    with pytest.raises(ValueError, match="2-D"):
        precision_at_k(np.zeros(4, np.int64), Y, 1)
    with pytest.raises(ValueError, match="at least k = 3"):
        precision_at_k(np.zeros((3, 2), np.int64), Y, 3)
    with pytest.raises(ValueError, match="-2"):
        precision_at_k(np.array([[-2], [0], [0]]), Y, 1)
    with pytest.raises(ValueError, match="row 1.*twice"):
        precision_at_k(np.array([[0, 1], [2, 2], [0, 1]]), Y, 2)
    precision_at_k(np.array([[0, 1], [-1, -1], [0, 1]]), Y, 2)  # -1 padding may repeat
    with pytest.raises(ValueError, match="< 4"):
        precision_at_k(np.array([[4], [0], [0]]), sp.csr_matrix((3, 4)), 1)
    with pytest.raises(ValueError, match="row 2"):
        precision_at_k(np.zeros((3, 1), np.int64), [[0], [1], [-3]], 1)
    with pytest.raises(TypeError, match="dense"):
        precision_at_k(scores, np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match="at least one row"):
        precision_at_k(np.zeros((0, 4), np.float32), [], 1)
    with pytest.raises(ValueError):
        precision_at_ks(scores, Y, ())


def test_most_frequent_baseline(rng):
    train = [rng.choice(20, size=3, replace=False, p=np.arange(20, 0, -1) / 210).tolist() for _ in range(300)]
    test = [rng.choice(20, size=2, replace=False).tolist() for _ in range(50)]
    counts = np.bincount(np.concatenate(train), minlength=20)
    for k in (1, 3, 5):
        top = sorted(range(20), key=lambda j: (-counts[j], j))[:k]
        expect = ref_precision([top] * 50, test, k)
        assert most_frequent_baseline(train, test, k) == pytest.approx(expect)
        assert most_frequent_baseline(as_csr(train, 20), as_csr(test, 20), k) == pytest.approx(expect)
    # ties by frequency: lower id first
    assert most_frequent_baseline([[1, 2], [2, 1]], [[1], [2]], 1) == 0.5
    assert most_frequent_baseline([[1, 2], [2, 1]], [[1], [1]], 1) == 1.0
    with pytest.raises(ValueError, match="columns"):
        most_frequent_baseline(as_csr(train, 20), sp.csr_matrix((3, 21)), 1)


# --- nDCG, recall, propensity-scored metrics ---------------------------------------------------------

def ref_ndcg_recall(topk, labels, k):
    """Per-row loop: binary-relevance nDCG@k (ideal over min(k, |y|) ranks) and recall@k; empty rows give 0."""
    nd, rc = [], []
    for t, l in zip(topk, labels):
        ls = set(l)
        dcg = sum(1 / math.log2(r + 2) for r, j in enumerate(t[:k]) if j in ls)
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(ls))))
        nd.append(dcg / idcg if ls else 0.0)
        rc.append(len(set(t[:k]) & ls) / len(ls) if ls else 0.0)
    return float(np.mean(nd)), float(np.mean(rc))


def ref_ps(topk, labels, w, k):
    """Per-row loop of pyxclib's psprecision / psndcg: ratios of set-wide sums, w = 1 / propensity."""
    num_p = den_p = num_n = den_n = 0.0
    for t, l in zip(topk, labels):
        ls = set(l)
        gain = [w[j] if j in ls else 0.0 for j in t[:k]]
        best = sorted((w[j] for j in ls), reverse=True)[:k]
        idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(ls)))) or 1.0  # empty row: both sums 0
        num_p += sum(gain)
        den_p += sum(best)
        num_n += sum(g / math.log2(r + 2) for r, g in enumerate(gain)) / idcg
        den_n += sum(b / math.log2(r + 2) for r, b in enumerate(best)) / idcg
    return num_p / den_p, num_n / den_n


def hand_case():
    # row 0: predicted 0, 5, 2 against {2, 5, 7}: hits at ranks 2 and 3
    # row 1: predicted 4, 1, 3 against {3}: a hit at rank 3
    # row 2: no true labels (counts as 0 in every mean)
    ids = np.array([[0, 5, 2], [4, 1, 3], [1, 2, 3]])
    Y = [[2, 5, 7], [3], []]
    w = np.array([1, 2, 4, 2, 1, 5, 1, 10], np.float64)  # 1 / propensity; row 0's labels weigh 4, 5, 10
    return ids, Y, w


def test_ndcg_recall_hand_computed():
    ids, Y, _ = hand_case()
    c = 1 / math.log2(3)  # discount at rank 2; rank 1 -> 1, rank 3 -> 1/2
    # nDCG@1: no hit at rank 1 anywhere -> 0
    # nDCG@2: row 0 DCG = c, IDCG = 1 + c; row 1: 0; row 2: 0
    # nDCG@3: row 0 DCG = c + 1/2, IDCG = 1 + c + 1/2; row 1 DCG = 1/2, IDCG over min(3, 1) = 1 rank = 1
    assert ndcg_at_k(ids, Y, 1) == 0.0
    assert ndcg_at_k(ids, Y, 2) == pytest.approx((c / (1 + c)) / 3, abs=1e-15)
    assert ndcg_at_k(ids, Y, 3) == pytest.approx(((c + 0.5) / (1.5 + c) + 0.5) / 3, abs=1e-15)
    # R@2: row 0 1/3; R@3: row 0 2/3, row 1 1/1; row 2 always 0
    assert recall_at_k(ids, Y, 1) == 0.0
    assert recall_at_k(ids, Y, 2) == pytest.approx(1 / 9, abs=1e-15)
    assert recall_at_k(ids, Y, 3) == pytest.approx(5 / 9, abs=1e-15)
    # a perfect ranking scores 1 on rows with labels; -1 padding is a miss
    assert ndcg_at_k(np.array([[7, 2, 5], [3, -1, -1]]), Y[:2], 3) == pytest.approx(1.0, abs=1e-15)
    assert recall_at_k(np.array([[7, 2, 5], [3, -1, -1]]), Y[:2], 3) == 1.0


def test_ps_metrics_hand_computed():
    ids, Y, w = hand_case()
    p = 1 / w
    c = 1 / math.log2(3)
    # PSP: hit weights row 0 [0, 5, 4], row 1 [0, 0, 2]; best row 0 [10, 5, 4], row 1 [2, 0, 0]
    assert psp_at_k(ids, Y, 1, p) == 0.0                                   # 0 / (10 + 2)
    assert psp_at_k(ids, Y, 2, p) == pytest.approx(5 / 17, abs=1e-15)     # 5 / (15 + 2)
    assert psp_at_k(ids, Y, 3, p) == pytest.approx(11 / 21, abs=1e-15)    # (9 + 2) / (19 + 2)
    # PSnDCG: each row's PSDCG over its binary IDCG (row 0: 1 + c at k = 2, 1.5 + c at k = 3; row 1: 1)
    assert psndcg_at_k(ids, Y, 1, p) == 0.0
    assert psndcg_at_k(ids, Y, 2, p) == pytest.approx((5 * c / (1 + c)) / ((10 + 5 * c) / (1 + c) + 2), abs=1e-15)
    assert psndcg_at_k(ids, Y, 3, p) == pytest.approx(((5 * c + 2) / (1.5 + c) + 1) / ((12 + 5 * c) / (1.5 + c) + 2),
                                                      abs=1e-15)
    # predicting each row's rarest labels first is the best achievable: 1
    assert psp_at_k(np.array([[7, 5, 2], [3, 0, 1], [0, 1, 2]]), Y, 3, p) == pytest.approx(1.0, abs=1e-15)
    assert psndcg_at_k(np.array([[7, 5, 2], [3, 0, 1], [0, 1, 2]]), Y, 3, p) == pytest.approx(1.0, abs=1e-15)
    # no true label anywhere: every row contributes 0 to both sums -> 0.0
    assert psp_at_k(ids, [[], [], []], 2, p) == 0.0
    assert psndcg_at_k(ids, [[], [], []], 2, p) == 0.0


@pytest.mark.parametrize("n,m", [(1, 2), (7, 3), (50, 17), (200, 64)])
def test_ndcg_matches_sklearn(rng, n, m):
    # continuous scores (no ties: sklearn averages tied gains); binary relevance with rows of 0, < k and
    # >= k labels. sklearn's ideal DCG@k sorts y_true, so it is the sum over min(k, |y_i|) ranks, as here,
    # and it scores rows without labels 0: the definitions agree on every row.
    scores = rng.standard_normal((n, m))
    labels = [sorted(rng.choice(m, size=rng.integers(0, m + 1), replace=False).tolist()) for _ in range(n)]
    Y = as_csr(labels, m)
    for k in sorted({1, 2, 3, 5, m}):
        if k > m:
            continue
        expect = ndcg_score(Y.toarray(), scores, k=k)
        assert ndcg_at_k(scores, Y, k) == pytest.approx(expect, rel=1e-12, abs=1e-15)
        assert ndcg_at_k(scores, labels, k) == pytest.approx(expect, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("n,m", [(1, 1), (7, 3), (50, 17), (300, 64)])
def test_metrics_match_loop_reference(rng, n, m):
    scores, labels = random_case(rng, n, m, ties=True)
    Y = as_csr(labels, m)
    p = rng.uniform(0.05, 1.0, size=m)
    w = (1 / p).tolist()
    ks = [k for k in (1, 2, 3, 5) if k <= m]
    got = ranking_metrics(scores, Y, ks, propensity=p)
    assert list(got) == ([f"P@{k}" for k in ks] + [f"nDCG@{k}" for k in ks] + [f"R@{k}" for k in ks]
                         + [f"PSP@{k}" for k in ks] + [f"PSnDCG@{k}" for k in ks])
    for k in ks:
        topk = ref_topk(scores, k)
        nd, rc = ref_ndcg_recall(topk, labels, k)
        if any(labels):
            psp, psn = ref_ps(topk, labels, w, k)
        else:
            psp = psn = 0.0
        for key, expect, value in [("P", ref_precision(topk, labels, k), precision_at_k(scores, labels, k)),
                                   ("nDCG", nd, ndcg_at_k(scores, Y, k)), ("R", rc, recall_at_k(scores, labels, k)),
                                   ("PSP", psp, psp_at_k(scores, Y, k, p)),
                                   ("PSnDCG", psn, psndcg_at_k(np.array(topk), labels, k, p))]:
            assert value == pytest.approx(expect, rel=1e-12, abs=1e-15), key
            assert got[f"{key}@{k}"] == value, key
    assert list(ranking_metrics(scores, Y, ks)) == [f"{f}@{k}" for f in ("P", "nDCG", "R") for k in ks]


def ref_propensities(labels, L, A, B):
    N = len(labels)
    C = (math.log(N) - 1) * (B + 1) ** A
    counts = [sum(1 for r in labels if l in set(r)) for l in range(L)]
    return np.array([1 / (1 + C * (c + B) ** -A) for c in counts], np.float64)


def test_propensities(rng):
    labels = [rng.choice(30, size=rng.integers(0, 6), replace=False, p=np.arange(30, 0, -1) / 465).tolist()
              for _ in range(400)]
    for A, B in [(0.55, 1.5), (0.5, 0.4), (0.6, 2.6)]:
        expect = ref_propensities(labels, 32, A, B)  # labels 30, 31 never occur
        got = propensities(labels, n_labels=32, A=A, B=B)
        assert got.dtype == np.float64 and got.shape == (32,)
        np.testing.assert_allclose(got, expect, rtol=1e-14, atol=0)
        np.testing.assert_allclose(propensities(as_csr(labels, 32), A=A, B=B), expect, rtol=1e-14, atol=0)
    counts = np.bincount(np.concatenate(labels).astype(np.int64), minlength=32)
    got = propensities(labels, 32)
    assert ((got > 0) & (got < 1)).all()
    # a more frequent label has a larger propensity (its hits count less)
    assert (np.diff(got[np.argsort(counts, kind="stable")]) >= 0).all()
    assert propensities(labels).shape == (max(max(r) for r in labels if r) + 1,)


def test_new_metrics_validation():
    ids, Y, w = hand_case()
    p = 1 / w
    scores = np.zeros((3, 8), np.float32)
    for f in (ndcg_at_k, recall_at_k):
        with pytest.raises(ValueError):
            f(ids, Y, 0)
        with pytest.raises(TypeError):
            f(ids, Y, 1.5)
        with pytest.raises(ValueError, match="3"):
            f(ids, Y[:2], 1)
        with pytest.raises(ValueError, match="2-D"):
            f(ids[0], Y, 1)
        with pytest.raises(ValueError, match="at most 8"):
            f(scores, Y, 9)
    for f in (psp_at_k, psndcg_at_k):
        with pytest.raises(ValueError):
            f(ids, Y, 0, p)
        with pytest.raises(ValueError, match="8 entries"):
            f(ids, as_csr(Y, 8), 1, p[:7])
        with pytest.raises(ValueError, match="at least 8"):
            f(ids, Y, 1, p[:7])  # label lists: must cover label 7
        with pytest.raises(ValueError, match="< 8"):
            f(np.array([[8], [0], [0]]), Y, 1, p)  # a predicted id past the propensity vector
        with pytest.raises(ValueError, match="1-D"):
            f(ids, Y, 1, p[None, :])
        with pytest.raises(TypeError):
            f(ids, Y, 1, p.tolist())
        with pytest.raises(TypeError):
            f(ids, Y, 1, None)
        with pytest.raises(TypeError, match="floating"):
            f(ids, Y, 1, np.ones(8, np.int64))
        for bad in (0.0, 1.5, np.nan, -0.2):
            q = p.copy()
            q[3] = bad
            with pytest.raises(ValueError, match="label 3"):
                f(ids, Y, 1, q)
    with pytest.raises(ValueError):
        ranking_metrics(ids, Y, ())
    with pytest.raises(ValueError, match="at least k = 5"):
        ranking_metrics(ids, Y, (1, 5))
    with pytest.raises(TypeError):
        ranking_metrics(ids, Y, "135")
    train = [[0, 1], [1], [2]]
    with pytest.raises(ValueError, match="A"):
        propensities(train, A=-0.5)
    with pytest.raises(ValueError, match="A"):
        propensities(train, A=0)
    with pytest.raises(ValueError, match="B"):
        propensities(train, B=-1.0)
    with pytest.raises(ValueError, match="B"):
        propensities(train, B=np.inf)
    with pytest.raises(TypeError):
        propensities(train, A="0.5")
    with pytest.raises(ValueError, match="at least 3 rows"):
        propensities(train[:2])
    with pytest.raises(ValueError, match="columns"):
        propensities(as_csr(train, 3), n_labels=4)
    with pytest.raises(ValueError, match="n_labels"):
        propensities(train, n_labels=2)
    with pytest.raises(ValueError):
        propensities(train, n_labels=0)
    with pytest.raises(TypeError):
        propensities(5)
    with pytest.raises(TypeError, match="dense"):
        propensities(np.ones((3, 3)))
