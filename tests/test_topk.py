"""hashlab.topk.dense_topk against a plain numpy reference (full sort by (-score, id))."""
import numpy as np
import pytest
import scipy.sparse as sp

from hashlab import topk


def reference(H, W, b, k):
    S = H @ W.T + (b if b is not None else 0)
    order = np.lexsort((np.broadcast_to(np.arange(S.shape[1]), S.shape), -S), axis=1)[:, :k]
    return np.take_along_axis(S, order, 1), order


@pytest.mark.parametrize("n,L,d,k", [(1, 1, 1, 1), (7, 33, 5, 3), (300, 5000, 17, 5), (3, 10, 4, 10), (1100, 40, 6, 4)])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_full_sort(n, L, d, k, ties, monkeypatch):
    monkeypatch.setattr(topk, "BLOCK_BYTES", 4096)  # many label blocks, a partial last one
    # n = 1100: three row blocks of BLOCK_ROWS (512), a partial last one
    rng = np.random.default_rng(n + L)
    if ties:  # small integers: exact products, many equal scores
        H = rng.integers(-2, 3, (n, d)).astype(np.float32)
        W = rng.integers(-2, 3, (L, d)).astype(np.float32)
    else:
        H = rng.standard_normal((n, d), dtype=np.float32)
        W = rng.standard_normal((L, d), dtype=np.float32)
    b = rng.integers(-1, 2, L).astype(np.float32)
    for bias in (None, b):
        s, lab = topk.dense_topk(H, W, bias, k)
        rs, rl = reference(H, W, bias, k)
        np.testing.assert_array_equal(lab, rl)
        # the scores: float32 dot products in BLAS's order, within the standard bound
        # gamma_(d+1) * (sum |h_j w_j| + |b|) of their float64 values (u = 2^-24)
        h64, w64 = H.astype(np.float64), W.astype(np.float64)
        b64 = np.zeros(L) if bias is None else bias.astype(np.float64)
        exact = np.take_along_axis(h64 @ w64.T + b64, lab, 1)
        mag = np.take_along_axis(np.abs(h64) @ np.abs(w64).T + np.abs(b64), lab, 1)
        u = 2.0 ** -24
        assert (np.abs(s - exact) <= (d + 1) * u / (1 - (d + 1) * u) * mag).all()


def test_nan_scores_are_never_chosen():
    H = np.ones((2, 1), np.float32)
    W = np.array([[np.nan], [1.0], [2.0]], np.float32)
    _, lab = topk.dense_topk(H, W, None, 2)
    np.testing.assert_array_equal(lab, [[2, 1], [2, 1]])


@pytest.mark.parametrize("n,L,k", [(5, 12, 3), (600, 300, 8), (3, 6, 5)])
def test_excluded_labels_are_never_returned(n, L, k, monkeypatch):
    monkeypatch.setattr(topk, "BLOCK_BYTES", 2048)  # the excluded labels fall in several label blocks
    rng = np.random.default_rng(n + k)
    H = rng.standard_normal((n, 7), dtype=np.float32)
    W = rng.standard_normal((L, 7), dtype=np.float32)
    b = rng.standard_normal(L, dtype=np.float32)
    # row i excludes a random set; in the (3, 6, 5) case rows keep fewer than k labels
    mask = rng.random((n, L)) < (0.6 if L == 6 else 0.3)
    ex = sp.csr_matrix(mask.astype(np.float32))
    s, lab = topk.dense_topk(H, W, b, k, exclude=ex)
    S = (H.astype(np.float64) @ W.T.astype(np.float64) + b)
    for i in range(n):
        keep = np.flatnonzero(~mask[i])
        want = keep[np.argsort(-S[i, keep], kind="stable")][:k]
        np.testing.assert_array_equal(lab[i, :want.size], want)
        assert (lab[i, want.size:] == -1).all() and np.isneginf(s[i, want.size:]).all()
    with pytest.raises(ValueError, match="exclude"):
        topk.dense_topk(H, W, b, k, exclude=sp.csr_matrix((n + 1, L)))
