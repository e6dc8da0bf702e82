"""Ranking metrics for extreme classification.

    top_k_labels(scores, k) -> (n, k) int64 label ids, best first
    precision_at_k(pred, Y, k) -> float          P@k
    precision_at_ks(pred, Y, ks=(1, 3, 5)) -> {"P@1": ..., "P@3": ..., "P@5": ...}
    ndcg_at_k(pred, Y, k) -> float               nDCG@k
    recall_at_k(pred, Y, k) -> float             R@k
    propensities(Y_train, n_labels=None, A=0.55, B=1.5) -> (L,) float64
    psp_at_k(pred, Y, k, propensity) -> float    propensity-scored P@k
    psndcg_at_k(pred, Y, k, propensity) -> float propensity-scored nDCG@k
    ranking_metrics(pred, Y, ks=(1, 3, 5), propensity=None) -> {"P@1": ..., "nDCG@1": ..., ...}
    most_frequent_baseline(Y_train, Y_test, k) -> float

The definitions are those of the Extreme Classification Repository (Jain, Prabhu and
Varma, "Extreme multi-label loss functions for recommendation, tagging, ranking & other
missing label applications", KDD 2016) as implemented by pyxclib
(github.com/kunaldahiya/pyxclib, xclib/evaluation/xc_metrics.py), with relevance binary:

    P@k      = mean_i |top-k_i ∩ y_i| / k          (k in the denominator even when |y_i| < k)
    nDCG@k   = mean_i DCG@k_i / IDCG_i,   DCG@k_i = sum_{l <= k} [pred_il in y_i] / log2(l + 1),
               IDCG_i = sum_{l <= min(k, |y_i|)} 1 / log2(l + 1)
    R@k      = mean_i |top-k_i ∩ y_i| / |y_i|
    PSP@k    = sum_i sum_{l <= k} [pred_il in y_i] / p(pred_il)  /  sum_i (best such sum for row i)
    PSnDCG@k = sum_i PSDCG@k_i / IDCG_i  /  sum_i (best PSDCG@k_i) / IDCG_i

Rows without true labels stay in every mean and contribute 0 (pyxclib's default,
remove_invalid=False; sklearn's ndcg_score does the same).

Predictions ("pred") are either a float score matrix (n, m), ranked here (ties -> lower
label id first), or an integer matrix (n, >= k) of label ids already ranked best first
(-1 marks "no prediction", a miss). Y is a scipy.sparse (n, L) indicator (non-zero
entries are the true labels) or a list of n label lists.
"""
from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

from ._validate import _from_torch, check_int

__all__ = ["top_k_labels", "precision_at_k", "precision_at_ks", "ndcg_at_k", "recall_at_k", "propensities",
           "propensities_from_counts", "psp_at_k", "psndcg_at_k", "ranking_metrics", "most_frequent_baseline"]


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


def _check_ks(ks):
    if isinstance(ks, numbers.Integral):
        ks = (ks,)
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__"):
        raise TypeError(f"ks: expected an iterable of positive ints, got {type(ks).__name__}")
    ks = [check_int(k, "k", 1) for k in ks]
    if not ks:
        raise ValueError("ks: expected at least one k, got none")
    return ks


def _check_propensity(propensity, L, width):
    """propensity as float64 (L,) with values in (0, 1]; L is Y's width or None (label lists)."""
    p = _from_torch(propensity)
    if not isinstance(p, np.ndarray):
        raise TypeError(f"propensity: expected a numpy array, got {type(p).__name__}")
    if p.dtype.kind != "f":
        raise TypeError(f"propensity: expected a floating dtype, got {p.dtype}")
    if p.ndim != 1:
        raise ValueError(f"propensity: expected a 1-D array (one entry per label), got shape {p.shape}")
    if L is not None and p.shape[0] != L:
        raise ValueError(f"propensity: expected {L} entries (Y's columns), got {p.shape[0]}")
    if L is None and p.shape[0] < width:
        raise ValueError(f"propensity: expected at least {width} entries (Y's largest label + 1), got {p.shape[0]}")
    bad = ~(np.isfinite(p) & (p > 0) & (p <= 1))
    if bad.any():
        j = int(np.argmax(bad))
        raise ValueError(f"propensity: expected finite values in (0, 1], got {p[j]} for label {j}")
    return p.astype(np.float64)


def _best_gains(Y, w, k):
    """(n, k) float64: each row's true-label weights w[l], largest first, zero-padded."""
    n, L = Y.shape[0], w.shape[0]
    by_weight = np.argsort(-w, kind="stable")
    place = np.empty(L, dtype=np.int64)
    place[by_weight] = np.arange(L, dtype=np.int64)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(Y.indptr))
    # one int64 sort (row major, then heaviest label first): 2-3x faster than a two-key lexsort at 4M nnz
    key = np.sort(rows * L + place[Y.indices])
    rank = np.arange(key.shape[0], dtype=np.int64) - Y.indptr[rows].astype(np.int64)
    keep = rank < k
    best = np.zeros((n, k), dtype=np.float64)
    best[rows[keep], rank[keep]] = w[by_weight[key[keep] % L]]
    return best


def _ratio(num, den):
    # den is 0 only when Y has no true label at all; every row then contributes 0
    return float(num / den) if den > 0 else 0.0


def _evaluate(pred, Y, ks, families, propensity=None):
    """{"<family>@k": float} for the families ("P", "nDCG", "R", "PSP", "PSnDCG") and ks given,
    family-major; pred is ranked and matched against Y once for all of them."""
    ks = _check_ks(ks)
    kmax = max(ks)
    ids = _ranked(pred, kmax)
    n = ids.shape[0]
    if n == 0:
        raise ValueError("predictions: expected at least one row, got 0")
    Y, L = _as_truth(Y, n)
    if L is not None and ids.size and ids.max() >= L:
        raise ValueError(f"predictions: expected label ids < {L} (Y's columns), got {int(ids.max())}")
    scored = any(f.startswith("PS") for f in families)
    if scored:
        w = 1.0 / _check_propensity(propensity, L, Y.shape[1])
        if ids.size and ids.max() >= w.shape[0]:
            raise ValueError(f"predictions: expected label ids < {w.shape[0]} (propensity's length), "
                             f"got {int(ids.max())}")
    hits = _hits(ids, Y)
    counts = np.diff(Y.indptr)
    disc = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))  # rank l (1-based) -> 1 / log2(l + 1)
    ideal = np.cumsum(disc)
    # IDCG over min(k, |y_i|) ranks; an empty row's DCG is 0, so its divisor (ideal[0]) is immaterial
    idcg = {k: ideal[np.clip(np.minimum(counts, k), 1, None) - 1] for k in ks}
    cum = np.cumsum(hits, axis=1)
    if scored:
        gain = np.where(hits, w[np.maximum(ids, 0)], 0.0)  # 1 / p of each hit (-1 ids are misses)
        best = _best_gains(Y, w, kmax)
    out = {}
    for f in families:
        if f == "P":
            out.update({f"P@{k}": float(cum[:, k - 1].mean() / k) for k in ks})
        elif f == "nDCG":
            dcg = np.cumsum(hits * disc, axis=1)
            out.update({f"nDCG@{k}": float((dcg[:, k - 1] / idcg[k]).mean()) for k in ks})
        elif f == "R":
            out.update({f"R@{k}": float((cum[:, k - 1] / np.maximum(counts, 1)).mean()) for k in ks})
        elif f == "PSP":
            got, top = np.cumsum(gain, axis=1), np.cumsum(best, axis=1)
            out.update({f"PSP@{k}": _ratio(got[:, k - 1].sum(), top[:, k - 1].sum()) for k in ks})
        else:
            got, top = np.cumsum(gain * disc, axis=1), np.cumsum(best * disc, axis=1)
            out.update({f"PSnDCG@{k}": _ratio((got[:, k - 1] / idcg[k]).sum(), (top[:, k - 1] / idcg[k]).sum())
                        for k in ks})
    return out


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
    return _evaluate(scores_or_labels, Y, ks, ("P",))


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
    return _evaluate(scores_or_labels, Y, (k,), ("P",))[f"P@{k}"]


def ndcg_at_k(pred, Y, k):
    """The standard XMC nDCG at k (Jain et al. 2016; pyxclib's ndcg), binary relevance.

    Parameters
    ----------
    pred : (n, m) float scores (ranked here, ties -> lower id first), or (n, >= k) int
        label ids ranked best first (-1 = no prediction)
    Y : scipy.sparse (n, L) indicator, or a list of n label lists
    k : int >= 1

    Returns
    -------
    float in [0, 1]: mean over rows of DCG@k / IDCG, DCG@k = sum_{l <= k} rel_l / log2(l + 1),
    IDCG = sum_{l <= min(k, |y_i|)} 1 / log2(l + 1) (the DCG of a perfect ranking). A row
    with no true labels contributes 0 and still counts in the mean (the XMC repository's
    convention, and sklearn's ndcg_score's).

    Raises as precision_at_k.
    """
    k = check_int(k, "k", 1)
    return _evaluate(pred, Y, (k,), ("nDCG",))[f"nDCG@{k}"]


def recall_at_k(pred, Y, k):
    """Recall at k: mean over rows of |top-k ∩ y_i| / |y_i|.

    Parameters
    ----------
    pred : (n, m) float scores or (n, >= k) int ranked label ids (-1 = no prediction)
    Y : scipy.sparse (n, L) indicator, or a list of n label lists
    k : int >= 1

    Returns
    -------
    float in [0, 1]. A row with no true labels contributes 0 and still counts in the mean
    (pyxclib's recall does the same), so a set with empty rows cannot reach 1.

    Raises as precision_at_k.
    """
    k = check_int(k, "k", 1)
    return _evaluate(pred, Y, (k,), ("R",))[f"R@{k}"]


def _positive(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value}")
    return value


def propensities(Y_train, n_labels=None, A=0.55, B=1.5):
    """Label propensities of Jain et al. 2016 (the XMC repository's PS metrics).

    p_l = 1 / (1 + C (N_l + B)^-A),  C = (ln N - 1) (B + 1)^A,
    N = training rows, N_l = training rows with label l. Rare labels get small p_l (their
    hits weigh 1 / p_l in psp_at_k / psndcg_at_k). pyxclib's compute_inv_propesity
    returns 1 / p_l; this returns p_l itself.

    Parameters
    ----------
    Y_train : scipy.sparse (N, L) indicator or a list of N label lists; N >= 3 (C > 0
        needs ln N > 1)
    n_labels : int >= 1 or None. None: Y_train's columns (sparse) or its largest label + 1
        (lists). Given: must equal a sparse Y_train's columns, or exceed every listed label.
    A : float > 0. The repository's values: 0.55 (default), 0.5 Wikipedia, 0.6 Amazon.
    B : float > 0. 1.5 (default), 0.4 Wikipedia, 2.6 Amazon.

    Returns
    -------
    (L,) float64 array, values in (0, 1).
    """
    A = _positive(A, "A")
    B = _positive(B, "B")
    if sp.issparse(Y_train):
        N = Y_train.shape[0]
    elif hasattr(Y_train, "__len__") and not isinstance(Y_train, (str, bytes)):
        N = len(Y_train)
    else:
        raise TypeError(f"Y_train: expected a scipy.sparse indicator matrix or a list of label lists, "
                        f"got {type(Y_train).__name__}")
    if n_labels is not None:
        n_labels = check_int(n_labels, "n_labels", 1)
        if sp.issparse(Y_train) and Y_train.shape[1] != n_labels:
            raise ValueError(f"Y_train: expected {n_labels} columns (n_labels), got {Y_train.shape[1]}")
    Y, L = _as_truth(Y_train, N)
    if L is None:
        if n_labels is not None and Y.shape[1] > n_labels:
            raise ValueError(f"Y_train: expected labels < n_labels = {n_labels}, got {Y.shape[1] - 1}")
        L = n_labels if n_labels is not None else Y.shape[1]
    if N < 3:
        raise ValueError(f"Y_train: expected at least 3 rows (C = (ln N - 1)(B + 1)^A must be > 0), got {N}")
    return propensities_from_counts(np.bincount(Y.indices, minlength=L), N, A, B)


def propensities_from_counts(label_counts, n_rows, A=0.55, B=1.5):
    """``propensities`` from the training rows per label: label_counts (L,) non-negative
    ints or floats, n_rows int >= 3 (N). Returns (L,) float64 in (0, 1)."""
    A = _positive(A, "A")
    B = _positive(B, "B")
    counts = np.asarray(label_counts, dtype=np.float64)
    if counts.ndim != 1 or not np.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"label_counts: expected a 1-D array of finite counts >= 0, got shape {counts.shape}")
    N = check_int(n_rows, "n_rows", 3)
    C = (np.log(N) - 1.0) * (B + 1.0) ** A
    return 1.0 / (1.0 + C * (counts + B) ** -A)


def psp_at_k(pred, Y, k, propensity):
    """Propensity-scored precision at k, normalised as in the XMC repository / pyxclib.

    PSP@k = sum_i sum_{l <= k} [pred_il in y_i] / p(pred_il)  /  sum_i sum of the k largest
    1 / p(l) over l in y_i (all of them when |y_i| < k): the ratio of the set's sums, i.e.
    pyxclib's psprecision (xclib/evaluation/xc_metrics.py), whose mean-over-rows and 1 / k
    factors cancel. It is 1 exactly when every row's top k are its k rarest true labels.

    Parameters
    ----------
    pred : (n, m) float scores or (n, >= k) int ranked label ids (-1 = no prediction)
    Y : scipy.sparse (n, L) indicator, or a list of n label lists
    k : int >= 1
    propensity : (L,) float array, values in (0, 1] (e.g. propensities(Y_train)); with
        label lists for Y, at least (largest label + 1) entries and ids in pred below its length

    Returns
    -------
    float in [0, 1]; 0.0 when Y has no true label at all (rows without labels add 0 to
    both sums).

    Raises as precision_at_k, and TypeError / ValueError for a propensity of the wrong
    type, dtype, length or values.
    """
    k = check_int(k, "k", 1)
    return _evaluate(pred, Y, (k,), ("PSP",), propensity)[f"PSP@{k}"]


def psndcg_at_k(pred, Y, k, propensity):
    """Propensity-scored nDCG at k, normalised as in the XMC repository / pyxclib.

    With PSDCG@k_i = sum_{l <= k} [pred_il in y_i] / (p(pred_il) log2(l + 1)), its best value
    BEST_i (row i's true labels ranked by 1 / p, rarest first) and IDCG_i the binary ideal
    DCG over min(k, |y_i|) ranks (as in ndcg_at_k):

        PSnDCG@k = sum_i PSDCG@k_i / IDCG_i  /  sum_i BEST_i / IDCG_i,

    exactly pyxclib's psndcg (xclib/evaluation/xc_metrics.py: _ndcg of the weighted hits over
    _ndcg of the best weighted ranking, both divided per row by the binary IDCG); so it is a
    ratio of sums over the set, with each row weighted by 1 / IDCG_i, not a mean of per-row ratios.

    Parameters
    ----------
    pred : (n, m) float scores or (n, >= k) int ranked label ids (-1 = no prediction)
    Y : scipy.sparse (n, L) indicator, or a list of n label lists
    k : int >= 1
    propensity : (L,) float array, values in (0, 1] (see psp_at_k)

    Returns
    -------
    float in [0, 1]; 0.0 when Y has no true label at all.

    Raises as psp_at_k.
    """
    k = check_int(k, "k", 1)
    return _evaluate(pred, Y, (k,), ("PSnDCG",), propensity)[f"PSnDCG@{k}"]


def ranking_metrics(pred, Y, ks=(1, 3, 5), propensity=None):
    """P@k, nDCG@k, R@k (and PSP@k, PSnDCG@k given propensities) for several k, ranking once.

    Parameters
    ----------
    pred : (n, m) float scores or (n, >= max(ks)) int ranked label ids (-1 = no prediction)
    Y : scipy.sparse (n, L) indicator, or a list of n label lists
    ks : int or iterable of ints >= 1
    propensity : None, or (L,) float array with values in (0, 1] (see psp_at_k)

    Returns
    -------
    dict of floats, keys in this order: "P@k" for k in ks, then "nDCG@k", "R@k", and with a
    propensity "PSP@k", "PSnDCG@k"; each value equals what the single-metric function returns.
    """
    families = ("P", "nDCG", "R") + (() if propensity is None else ("PSP", "PSnDCG"))
    return _evaluate(pred, Y, ks, families, propensity)


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
