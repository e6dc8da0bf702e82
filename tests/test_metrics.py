"""P@k against a brute-force Python reference, tie-breaking, input validation."""
import numpy as np
import pytest
import scipy.sparse as sp

from hashlab.metrics import most_frequent_baseline, precision_at_k, precision_at_ks, top_k_labels


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
