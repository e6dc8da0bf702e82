"""Label votes of the nearest training rows in hidden space (SparseMLP's last stage).

The MLP scores every label on its own; a training row's label set also carries which labels
go together (a Python package depends on python3 and on python3-* libraries together). For a
row x with last hidden activation h (L2-normalised), ``HiddenNeighbours`` takes the
``n_neighbours`` training rows with the largest cosine to h, weights each by
max(cos, 0) ** ``power`` and sums their label indicators, normalised to sum 1 per row (the
votes). Predictions rank the labels by

    prob(shortlist scores)[c] + weight * votes[c]

over the union of the MLP's shortlist (its top max(k, 32), re-ranked when fit's re-ranker
is kept) and the voted labels, prob being the softmax over the shortlist of the MLP's logits
or the sigmoid of the (logistic) re-ranker's, label by label (``link``). ``weight`` is chosen by fit on the validation rows
(``fit_stage``), and the stage is dropped when no weight improves validation P@1.
Measured (benchmarks/README.md, "What was tried"): Debian Depends test P@1 0.733 -> 0.756,
P@5 0.360 -> 0.372 at a 15.4 s budget.

The search is exact up to EXACT_UP_TO stored rows (one sgemm per batch against the stored
(n_train, hidden) float32 activations); beyond, the cosines are those of the rows whose SimHash
codes are nearest in Hamming distance (SCAN_FACTOR per neighbour wanted), so prediction cost
still grows with the number of training rows, through the codes' scan.
"""
from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from . import _C
from . import neighbour_kernels as _k
from ._validate import check_int

DEFAULT_NEIGHBOURS = 30
DEFAULT_POWER = 4.0        # sharpens the votes toward the closest rows
WEIGHTS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # fit's grid (the shortlist softmax sums to 1; 16: mostly the votes)
SHORTLIST = 32             # the MLP's shortlist per row that the votes are added to
_BLOCK = 1024              # query rows per sgemm (n_train floats each)
CODE_BITS = 256            # SimHash bits per stored row for the Hamming pre-selection
EXACT_UP_TO = 8192         # stored rows up to which every cosine is computed
SCAN_FACTOR = 16           # rows pre-selected by Hamming distance per neighbour wanted
_SCAN_BLOCK = 64           # query rows whose pre-selected rows are gathered at a time
_VAL_BLOCK = 500           # validation rows fit scores between deadline checks
SHARE = 0.1                # of fit's time budget, kept for this stage


def unit_rows(H):
    """H (n, d) float32 with every row scaled to norm 1 (zero rows stay zero)."""
    H = np.asarray(H, np.float32)
    norms = np.linalg.norm(H, axis=1, keepdims=True)
    return np.ascontiguousarray(H / np.maximum(norms, np.float32(1e-12)), np.float32)


class HiddenNeighbours:
    """Nearest training rows in hidden space and their label votes.

    Parameters: H (n_train, d) float32 last hidden activations of the training rows (rows
    normalised here), Y (n_train, n_labels) CSR label indicator, n_neighbours (int >= 1),
    power (float >= 0), weight (float >= 0, the votes' weight against the shortlist softmax).
    """

    def __init__(self, H, Y, n_neighbours=DEFAULT_NEIGHBOURS, power=DEFAULT_POWER, weight=1.0, projection=None,
                 seed=0):
        self.H = unit_rows(H)
        Y = sp.csr_matrix(Y, dtype=np.float32)
        if Y.shape[0] != self.H.shape[0]:
            raise ValueError(f"Y: expected {self.H.shape[0]} rows (one per row of H), got {Y.shape[0]}")
        Y.data[:] = 1.0
        self.Y = Y
        self.n_neighbours = check_int(n_neighbours, "n_neighbours", 1)
        self.power = float(power)
        self.weight = float(weight)
        if not (np.isfinite(self.power) and self.power >= 0):
            raise ValueError(f"power: expected a finite value >= 0, got {power!r}")
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight: expected a finite value >= 0, got {weight!r}")
        d = self.H.shape[1]
        if projection is None:
            projection = np.random.default_rng(seed).standard_normal((d, CODE_BITS), dtype=np.float32)
        self.projection = np.ascontiguousarray(projection, np.float32)
        if self.projection.shape != (d, CODE_BITS):
            raise ValueError(f"projection: expected ({d}, {CODE_BITS}), got {self.projection.shape}")
        self.codes = self._codes(self.H)
        self._y_indptr = self.Y.indptr.astype(np.int64)
        self._y_indices = self.Y.indices.astype(np.int64)

    def _codes(self, U):
        return _C.simhash_dense_bits(U, self.projection, CODE_BITS)

    @property
    def n_labels(self):
        return self.Y.shape[1]

    @property
    def nbytes(self):
        arrays = (self.H, self.Y.data, self.Y.indices, self.Y.indptr, self.projection, self.codes)
        return int(sum(a.nbytes for a in arrays))

    def neighbours(self, Hq):
        """(ids (m, kn) int64, cosines (m, kn) float32) of the kn = min(n_neighbours, n_train)
        training rows closest to each row of Hq (m, d), closest first. Up to EXACT_UP_TO stored
        rows, by every cosine; beyond, by the cosines of the SCAN_FACTOR * kn rows whose
        CODE_BITS-bit SimHash codes are nearest in Hamming distance (_C.hamming_topm)."""
        Q = unit_rows(Hq)
        if Q.ndim != 2 or Q.shape[1] != self.H.shape[1]:
            raise ValueError(f"Hq: expected (m, {self.H.shape[1]}), got {Q.shape}")
        n = self.H.shape[0]
        kn = min(self.n_neighbours, n)
        if n <= EXACT_UP_TO:
            cand = None
        else:
            cq, m = self._codes(Q), min(n, SCAN_FACTOR * kn)
            if Q.shape[0] < _SCAN_BLOCK:
                # a few rows (online prediction): one numba pass each, the same rows as the kernel's
                # (m smallest by (distance, id)); 0.77 -> 0.1 ms a row on Debian Depends' 43,606 rows
                return _k.nearest(Q, self.H, _k.hamming_pool(cq, self.codes, m), kn)
            cand = _C.hamming_topm(cq, self.codes, m)[0].astype(np.int64)
        ids = np.empty((Q.shape[0], kn), np.int64)
        cos = np.empty((Q.shape[0], kn), np.float32)
        step = _BLOCK if cand is None else _SCAN_BLOCK
        for s in range(0, Q.shape[0], step):
            q = Q[s:s + step]
            if cand is None:
                S, pool = q @ self.H.T, None
            else:
                pool = cand[s:s + step]
                S = np.einsum("md,mcd->mc", q, self.H[pool], optimize=True)
            part = np.argpartition(-S, kn - 1, axis=1)[:, :kn] if kn < S.shape[1] else \
                np.broadcast_to(np.arange(S.shape[1]), S.shape).copy()
            ps = np.take_along_axis(S, part, 1)
            order = np.argsort(-ps, axis=1, kind="stable")
            top = np.take_along_axis(part, order, 1)
            ids[s:s + step] = top if pool is None else np.take_along_axis(pool, top, 1)
            cos[s:s + step] = np.take_along_axis(ps, order, 1)
        return ids, cos

    def votes(self, Hq):
        """Label votes (m, n_labels) CSR float32 of the rows of Hq (m, d): the neighbours'
        label indicators weighted by max(cos, 0) ** power, each row summing to 1 (or all
        zero when no neighbour has a positive cosine)."""
        indptr, labels, values = self._vote_arrays(Hq)
        return sp.csr_matrix((values, labels, indptr), shape=(indptr.size - 1, self.n_labels))

    def _vote_arrays(self, Hq):
        """votes(Hq) as CSR arrays (indptr (m + 1,) int64, labels int64, values float32)."""
        ids, cos = self.neighbours(Hq)
        return _k.votes(ids, cos, self.power, self._y_indptr, self._y_indices)

    def blend(self, Hq, scores, labels, k, weight=None, link="softmax"):
        """Top-k of prob(scores) + weight * votes over each row's shortlist and voted labels.

        Hq (m, d) hidden activations; scores, labels (m, C) float32 / int64 the shortlist's
        logits and label ids (C >= 1, distinct per row); weight: None for self.weight; link:
        "softmax" (prob = the softmax over the row's C scores) or "sigmoid" (prob = 1 / (1 +
        e^-score), per label: a logistic re-ranker's scores).
        Returns (combined scores (m, k') float32, labels (m, k') int64), best first, ties to
        the lower label id, k' = min(k, n_labels); rows with fewer than k' labels in the
        union are filled with the lowest unused ids at score 0."""
        weight = self.weight if weight is None else float(weight)
        votes = self._vote_arrays(Hq) if weight > 0 else None
        return _blend_votes(scores, labels, votes, weight, self.n_labels, min(k, self.n_labels), link)


def fit_stage(model, X, Y, val, deadline):
    """Builds ``model``'s HiddenNeighbours from its training rows X (n, d) CSR and labels Y
    (n, n_labels) CSR (``model.neighbours`` must be None) and picks its weight from WEIGHTS:
    the best validation P@1 among the weights that do not lower validation P@5, val = (X_val,
    Y_val) (on the full teacher set, the same model: test P@1 / P@5 0.9390 / 0.7122 without the
    votes, 0.9398 / 0.7055 at weight 0.5 and 0.9354 / 0.6860 at 2, the weights P@1 alone picked
    in two runs). With a deadline (a time.perf_counter() value or None), validation rows are
    scored _VAL_BLOCK at a time until it passes (at least one block). Returns
    (HiddenNeighbours or None, report dict: seconds, val_rows, val_P@1_without,
    val_P@5_without, val_P@1_by_weight {weight: P@1}, val_P@5_by_weight, val_P@1_with, weight,
    kept). Nothing is built without validation rows or once the deadline has passed; the stage
    is dropped when no such weight raises validation P@1."""
    t0 = time.perf_counter()
    report = dict(seconds=0.0, kept=False, weight=0.0)
    if val is None or (deadline is not None and deadline - t0 <= 0):
        return None, report
    nb = HiddenNeighbours(model.hidden_activations(X), Y)
    Xv, Yv = val
    link = "softmax" if model.reranker is None else model.reranker.link
    parts = []
    for s in range(0, Xv.shape[0], _VAL_BLOCK):
        if parts and deadline is not None and time.perf_counter() >= deadline:
            break
        Xb = Xv[s:s + _VAL_BLOCK]
        sc, lb = model._shortlist(Xb, SHORTLIST)
        parts.append((sc, lb, nb._vote_arrays(model.hidden_activations(Xb))))
    sc, lb = np.vstack([p[0] for p in parts]), np.vstack([p[1] for p in parts])
    votes = _concat_votes([p[2] for p in parts])
    Yv = sp.csr_matrix(Yv)[:lb.shape[0]]
    k5 = min(5, lb.shape[1])
    base, base5 = _p1_of(lb[:, :1], Yv), _pk_of(lb[:, :k5], Yv)
    best, best_w = base, 0.0
    report["val_P@1_by_weight"] = by_weight = {}
    report["val_P@5_by_weight"] = by_weight5 = {}
    for w in WEIGHTS:
        _, top = _blend_votes(sc, lb, votes, w, nb.n_labels, k5, link)
        p1, p5 = _p1_of(top, Yv), _pk_of(top, Yv)
        by_weight[w], by_weight5[w] = p1, p5
        if p1 > best and p5 >= base5:
            best, best_w = p1, w
    nb.weight = best_w
    report.update({"val_rows": int(lb.shape[0]), "val_P@1_without": base, "val_P@5_without": base5,
                   "val_P@1_with": best, "weight": best_w, "kept": best_w > 0,
                   "seconds": time.perf_counter() - t0})
    return (nb if best_w > 0 else None), report


def _concat_votes(blocks):
    """Row blocks of vote CSR arrays (indptr, labels, values), in order, as one such triple."""
    indptrs, start = [np.zeros(1, np.int64)], 0
    for vp, _, _ in blocks:
        indptrs.append(vp[1:] + start)
        start += int(vp[-1])
    return (np.concatenate(indptrs), np.concatenate([b[1] for b in blocks]).astype(np.int64),
            np.concatenate([b[2] for b in blocks]).astype(np.float32))


def _blend_votes(scores, labels, votes, weight, n_labels, k, link="softmax"):
    """HiddenNeighbours.blend with the votes given as CSR arrays (indptr (m + 1,) int64, labels
    int64, values float32), or None when weight is 0."""
    if link not in ("softmax", "sigmoid"):
        raise ValueError(f"link: expected 'softmax' or 'sigmoid', got {link!r}")
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, np.int64)
    m, C = labels.shape
    if link == "sigmoid":
        p = 0.5 * (1.0 + np.tanh(0.5 * scores))  # = 1 / (1 + e^-s), without overflow
    else:
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
    if weight > 0:
        vp, vl, vv = votes
    else:
        vp, vl, vv = np.zeros(m + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return _k.blend_topk(np.ascontiguousarray(p), np.ascontiguousarray(labels), vp, vl, vv, float(weight),
                         n_labels, k)


def _pk_of(top, Y):
    """P@k of top (n, k) label ids (k = its width) against the CSR indicator Y."""
    Y = sp.csr_matrix(Y)
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    return float((np.asarray(Y[rows, top.ravel()]).ravel() != 0).mean())


def _p1_of(top, Y):
    """P@1 of top (n, >=1) label ids against the CSR indicator Y."""
    return _pk_of(top[:, :1], Y)


def to_arrays(nb, store):
    """(state dict, arrays dict) of ``nb`` for a model file; store(array, name) gives the
    array as the file keeps it (float32, or float16 in a float16 export)."""
    state = dict(n_neighbours=nb.n_neighbours, power=nb.power, weight=nb.weight)
    arrays = {"neighbours.H": store(nb.H, "neighbours.H"),
              "neighbours.Y.indptr": nb.Y.indptr.astype(np.int64),
              "neighbours.Y.indices": nb.Y.indices.astype(np.int32)}
    return state, arrays


def from_arrays(z, state, n_labels, width, entry, bad):
    """The HiddenNeighbours stored in the open archive z (None if state has none); entry(z,
    name, shape, kinds) reads a checked array, bad(message) is the exception to raise."""
    cfg = state.get("neighbours")
    if cfg is None:
        return None
    H = entry(z, "neighbours.H", (None, width), "f")
    if not np.isfinite(H).all():
        raise bad("neighbours.H: expected finite values")
    n = H.shape[0]
    indptr = entry(z, "neighbours.Y.indptr", (n + 1,), "iu").astype(np.int64)
    indices = entry(z, "neighbours.Y.indices", (None,), "iu").astype(np.int64)
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise bad("neighbours.Y.indptr: expected a non-decreasing indptr from 0 to len(indices)")
    if indices.size and (indices.min() < 0 or indices.max() >= n_labels):
        raise bad(f"neighbours.Y.indices: expected label ids in [0, {n_labels})")
    Y = sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(n, n_labels))
    try:
        return HiddenNeighbours(np.asarray(H, np.float32), Y, cfg["n_neighbours"], cfg["power"], cfg["weight"])
    except (TypeError, ValueError, KeyError) as e:
        raise bad(f"neighbours: {e}") from None
