"""The int8 pre-filtered top-k (hashlab.topk_int8) gives dense_topk's few-row result exactly."""
import numpy as np
import pytest

import hashlab.topk_int8 as T
from hashlab import SparseMLP
from hashlab.topk import dense_topk


def check_same(H, W, b, k):
    rows = T.Int8Rows(W)
    s1, l1 = T.topk_int8(H, W, b, k, rows)
    s0, l0 = dense_topk(H, W, b, k)  # fewer than 16 rows: its float32 scan
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_array_equal(s1, s0)
    return l1


@pytest.mark.parametrize("L,d", [(1, 1), (3, 3), (7, 17), (33, 512), (1000, 17), (5000, 64)])
@pytest.mark.parametrize("k", [1, 5, 32, 300])
def test_identical_to_the_float32_scan(L, d, k):
    rng = np.random.default_rng(L * 7 + d + k)
    W = (rng.standard_normal((L, d)) * 0.05).astype(np.float32)
    H = np.maximum(rng.standard_normal((3, d)), 0).astype(np.float32)
    H[1] = -H[1]  # negative activations too
    check_same(H, W, None, k)
    check_same(H, W, rng.standard_normal(L).astype(np.float32), k)


def test_reference_order_and_ties_to_the_lower_id():
    rng = np.random.default_rng(1)
    W = (rng.standard_normal((2000, 24)) * 0.1).astype(np.float32)
    W[1500] = W[700]  # a duplicate row: the same score, the lower id first
    W[1800] = 0.0     # an all-zero row (scale 0)
    h = np.abs(W[700]).astype(np.float32)[None] * np.sign(W[700])[None]
    labels = check_same(h, W, None, 10)
    assert labels[0, 0] == 700 and labels[0, 1] == 1500
    S = (h.astype(np.float64) @ W.T.astype(np.float64))[0]
    order = np.lexsort((np.arange(2000), -S))[:10]
    assert set(labels[0, 2:]) == set(order[2:])  # float64 reference (no near-ties beyond the pair here)


def test_an_uncertified_row_falls_back_and_stays_exact(monkeypatch):
    # every label nearly the same row: the int8 rounding is larger than the gaps between scores
    rng = np.random.default_rng(2)
    base = rng.standard_normal(64).astype(np.float32)
    W = (base[None] + rng.standard_normal((3000, 64)) * 1e-4).astype(np.float32)
    H = np.abs(rng.standard_normal((2, 64))).astype(np.float32)
    monkeypatch.setattr(T, "fallbacks", 0)
    check_same(H, W, None, 5)
    assert T.fallbacks == 2


def test_zero_and_non_finite_rows_of_h():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((500, 8)).astype(np.float32)
    b = rng.standard_normal(500).astype(np.float32)
    H = np.zeros((3, 8), np.float32)
    H[1, 2] = np.nan
    H[2, 0] = np.inf
    check_same(H, W, b, 4)


def test_two_threads_give_the_same_result(monkeypatch):
    rng = np.random.default_rng(4)
    W = (rng.standard_normal((4001, 40)) * 0.05).astype(np.float32)
    H = np.maximum(rng.standard_normal((2, 40)), 0).astype(np.float32)
    monkeypatch.setattr(T, "PARALLEL_FROM", 1)
    check_same(H, W, None, 7)


def test_bad_input():
    with pytest.raises(TypeError, match="float32"):
        T.Int8Rows(np.ones((3, 4)))
    with pytest.raises(ValueError, match="finite"):
        T.Int8Rows(np.array([[1.0, np.nan]], np.float32))
    W = np.ones((5, 4), np.float32)
    with pytest.raises(ValueError, match="Int8Rows of shape"):
        T.topk_int8(np.ones((1, 4), np.float32), W, None, 2, T.Int8Rows(np.ones((6, 4), np.float32)))
    with pytest.raises(ValueError, match="H, W"):
        T.topk_int8(np.ones((1, 3), np.float32), W, None, 2, T.Int8Rows(W))
    with pytest.raises(ValueError, match="b: expected"):
        T.topk_int8(np.ones((1, 4), np.float32), W, np.ones(4, np.float32), 2, T.Int8Rows(W))


def test_sparse_mlp_one_row_prediction_is_the_scan_of_the_current_weights():
    import scipy.sparse as sp
    rng = np.random.default_rng(5)
    X = sp.random(300, 50, density=0.2, format="csr", dtype=np.float32, random_state=5)
    Y = sp.csr_matrix((np.ones(300, np.float32), rng.integers(0, 400, 300), np.arange(301)), shape=(300, 400))
    m = SparseMLP(50, 400, hidden=(16,), seed=0).fit(X, Y, epochs=1, verbose=False, rerank=False, neighbours=False)
    for _ in range(2):  # after more training the int8 copy is rebuilt
        for i in (0, 7):
            H = m.hidden_activations(X[i:i + 1])
            want = dense_topk(H, m.out_w.w, m.out_b.w, 5)
            got = m.predict_topk(X[i:i + 1], 5)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
        m.fit(X, Y, epochs=1, verbose=False, rerank=False, neighbours=False)
