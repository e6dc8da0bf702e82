"""Ranking metrics for extreme classification.

    top_k_labels(scores, k) -> (n, k) int64 label ids, best first
    precision_at_k(scores_or_labels, Y, k) -> float
    precision_at_ks(scores_or_labels, Y, ks=(1, 3, 5)) -> {"P@1": ..., "P@3": ..., "P@5": ...}
    most_frequent_baseline(Y_train, Y_test, k) -> float

P@k is the standard XMC precision: the mean over rows of |top-k predictions ∩ true
labels| / k (k in the denominator even when a row has fewer than k true labels).
Predictions are either a float score matrix (n, m), ranked here, or an integer
matrix (n, >= k) of label ids already ranked best first (-1 marks "no prediction").
Y is a scipy.sparse (n, L) indicator (non-zero entries are the true labels) or a list
of n label lists.
"""
from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

from ._validate import _from_torch, check_int

__all__ = ["top_k_labels", "precision_at_k", "precision_at_ks", "most_frequent_baseline"]


def top_k_labels(scores, k):
    """The k best columns of each row of a score matrix, best first.

    Parameters
    ----------
    scores : array (n, m), floating dtype (numpy or torch CPU), finite values
    k : int in [1, m]

    Returns
    -------
    (n, k) int64 array of column ids. Ties are broken by the lower id first, so the
    result is deterministic (a plain argsort/argpartition is not).
    """
    scores = _from_torch(scores)
    if sp.issparse(scores):
        raise TypeError("scores: expected a dense array, got a scipy.sparse matrix")
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"scores: expected a numpy array, got {type(scores).__name__}")
    if scores.dtype.kind != "f":
        raise TypeError(f"scores: expected a floating dtype, got {scores.dtype}")
    if scores.ndim != 2:
        raise ValueError(f"scores: expected a 2-D array (n, m), got shape {scores.shape}")
    n, m = scores.shape
    k = check_int(k, "k", 1)
    if k > m:
        raise ValueError(f"k: expected at most {m} (the number of score columns), got {k}")
    if scores.size and not np.isfinite(scores).all():
        bad = int(np.argwhere(~np.isfinite(scores))[0][0])
        raise ValueError(f"scores: expected finite values, got NaN or inf in row {bad}")
    if n == 0:
        return np.zeros((0, k), dtype=np.int64)
    if k == m:
        return np.argsort(-scores, axis=1, kind="stable").astype(np.int64)
    # the k-th largest value of each row; every entry above it is in, ties at it are
    # resolved by id (np.nonzero lists each row's ids in increasing order)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    rows, cols = np.nonzero(scores >= kth[:, None])
    vals = scores[rows, cols]
    order = np.lexsort((cols, -vals, rows))
    rows, cols = rows[order], cols[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(rows.shape[0]) - starts[rows]
    keep = rank < k
    out = np.empty((n, k), dtype=np.int64)
    out[rows[keep], rank[keep]] = cols[keep]
    return out


def _as_truth(Y, n):
    """Y as a canonical CSR indicator with n rows (and >= 1 column), plus its width or None."""
    if sp.issparse(Y):
        if Y.ndim != 2 or Y.shape[0] != n:
            raise ValueError(f"Y: expected {n} rows (one per prediction row), got shape {Y.shape}")
        Y = sp.csr_matrix(Y, copy=True)
        Y.sum_duplicates()
        Y.eliminate_zeros()
        return Y, Y.shape[1]
    from .datasets import labels_to_csr
    if isinstance(Y, (str, bytes)) or not hasattr(Y, "__len__"):
        raise TypeError(f"Y: expected a scipy.sparse indicator matrix or a list of label lists, "
                        f"got {type(Y).__name__}")
    if isinstance(Y, np.ndarray) and Y.ndim == 2:
        raise TypeError("Y: expected a scipy.sparse indicator matrix or a list of label lists, "
                        "got a dense 2-D array (use scipy.sparse.csr_matrix(Y))")
    if len(Y) != n:
        raise ValueError(f"Y: expected {n} label lists (one per prediction row), got {len(Y)}")
    width = 1
    for i, r in enumerate(Y):
        if isinstance(r, (str, bytes)) or not hasattr(r, "__len__"):
            raise TypeError(f"Y: row {i}: expected a list of integer labels, got {type(r).__name__}")
        if len(r):
            try:
                width = max(width, int(max(r)) + 1)
            except (TypeError, ValueError):
                pass  # labels_to_csr reports it
    return labels_to_csr(Y, width), None


def _ranked(pred, k):
    """(n, k) int64 ranked label ids from a score matrix or an id matrix."""
    pred = _from_torch(pred)
    if sp.issparse(pred):
        raise TypeError("predictions: expected a dense score or label-id array, got a scipy.sparse matrix")
    if isinstance(pred, (list, tuple)):
        pred = np.asarray(pred)
    if not isinstance(pred, np.ndarray):
        raise TypeError(f"predictions: expected a numpy array of scores or label ids, got {type(pred).__name__}")
    if pred.dtype.kind == "f":
        return top_k_labels(pred, k)
    if pred.dtype.kind not in "iu":
        raise TypeError(f"predictions: expected float scores or integer label ids, got dtype {pred.dtype}")
    if pred.ndim != 2:
        raise ValueError(f"predictions: expected a 2-D array (n, >= {k}), got shape {pred.shape}")
    if pred.shape[1] < k:
        raise ValueError(f"predictions: expected at least k = {k} ranked label ids per row, "
                         f"got {pred.shape[1]}")
    ids = pred[:, :k].astype(np.int64)
    if ids.size:
        if ids.min() < -1:
            raise ValueError(f"predictions: expected label ids >= 0 (or -1 for none), got {int(ids.min())}")
        s = np.sort(ids, axis=1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if dup.any():
            i, j = np.argwhere(dup)[0]
            raise ValueError(f"predictions: row {int(i)}: expected distinct label ids in the top {k}, "
                             f"got {int(s[i, j])} twice")
    return ids


def _hits(ids, Y):
    """(n, k) bool: is ids[i, j] a true label of row i (Y canonical CSR)."""
    n, k = ids.shape
    L = Y.shape[1]
    if ids.size == 0 or Y.nnz == 0:
        return np.zeros((n, k), dtype=bool)
    indptr = Y.indptr.astype(np.int64)
    truth = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr)) * (L + 1) + Y.indices
    query = np.arange(n, dtype=np.int64)[:, None] * (L + 1) + np.minimum(ids, L)
    pos = np.searchsorted(truth, query)
    pos = np.minimum(pos, truth.shape[0] - 1)
    return (truth[pos] == query) & (ids >= 0)


def precision_at_ks(scores_or_labels, Y, ks=(1, 3, 5)):
    """P@k for several k at once.

    Parameters
    ----------
    scores_or_labels : (n, m) float scores, or (n, >= max(ks)) int ranked label ids
        (-1 = no prediction, counted as a miss).
    Y : scipy.sparse (n, L) indicator or a list of n label lists
    ks : iterable of positive ints

    Returns
    -------
    dict {"P@k": float} in the order of ks.
    """
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    ks = [check_int(k, "k", 1) for k in ks]
    if not ks:
        raise ValueError("ks: expected at least one k, got none")
    kmax = max(ks)
    ids = _ranked(scores_or_labels, kmax)
    n = ids.shape[0]
    if n == 0:
        raise ValueError("predictions: expected at least one row, got 0")
    Y, L = _as_truth(Y, n)
    if L is not None and ids.size and ids.max() >= L:
        raise ValueError(f"predictions: expected label ids < {L} (Y's columns), got {int(ids.max())}")
    cum = np.cumsum(_hits(ids, Y), axis=1)
    return {f"P@{k}": float(cum[:, k - 1].mean() / k) for k in ks}


def precision_at_k(scores_or_labels, Y, k):
    """The standard XMC precision at k.

    Parameters
    ----------
    scores_or_labels : array (n, m) or (n, >= k)
        Float scores (ranked here, ties -> lower label id first) or int label ids already
        ranked best first (its first k columns are used; -1 = no prediction).
    Y : scipy.sparse (n, L) indicator, or a list of n label lists
    k : int >= 1

    Returns
    -------
    float: mean over rows of |top-k ∩ true labels| / k.

    Raises TypeError for other dtypes/types, ValueError for shape mismatches, k out of
    range, NaN/inf scores, ids out of range or repeated within a row's top k.
    """
    k = check_int(k, "k", 1)
    return precision_at_ks(scores_or_labels, Y, (k,))[f"P@{k}"]


def most_frequent_baseline(Y_train, Y_test, k):
    """P@k of predicting, for every test row, the k most frequent training labels.

    Parameters
    ----------
    Y_train : scipy.sparse (n_train, L) indicator or list of label lists
    Y_test : scipy.sparse (n_test, L) indicator or list of label lists
    k : int >= 1

    Returns
    -------
    float. Frequency ties are broken by the lower label id. A learned model should beat it.
    """
    k = check_int(k, "k", 1)
    if sp.issparse(Y_train):
        ntr = Y_train.shape[0]
    elif hasattr(Y_train, "__len__") and not isinstance(Y_train, (str, bytes)):
        ntr = len(Y_train)
    else:
        raise TypeError(f"Y_train: expected a scipy.sparse indicator matrix or a list of label lists, "
                        f"got {type(Y_train).__name__}")
    Ytr, _ = _as_truth(Y_train, ntr)
    counts = np.bincount(Ytr.indices, minlength=max(Ytr.shape[1], k)).astype(np.float64)
    top = np.argsort(-counts, kind="stable")[:k]
    n = Y_test.shape[0] if sp.issparse(Y_test) else len(Y_test)
    if n == 0:
        raise ValueError("Y_test: expected at least one row, got 0")
    if sp.issparse(Y_test) and sp.issparse(Y_train) and Y_test.shape[1] != Y_train.shape[1]:
        raise ValueError(f"Y_test: expected {Y_train.shape[1]} columns (Y_train's), got {Y_test.shape[1]}")
    ids = np.broadcast_to(top, (n, k))
    Yte, L = _as_truth(Y_test, n)
    if L is not None and L < top.max() + 1:
        ids = np.where(ids < L, ids, -1)
    return float(np.cumsum(_hits(ids, Yte), axis=1)[:, -1].mean() / k)
