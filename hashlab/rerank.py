"""A hashed per-label linear re-ranker over the input features (SparseMLP's last stage).

SparseMLP sees the input only through its hidden layer; linear XMC models (PECOS, the
trees' leaf classifiers) keep a weight per (label, feature). ``FeatureReranker`` adds that
to the MLP's shortlist: for a row x and a candidate label c of the MLP's top
``n_candidates``,

    score(x, c) = mlp_logit(x, c) + u[c] + sum_f x_f * V[hash(c, f)]

with V a table of 2**bits float32 weights shared through a hash of (label, feature) (the
hashing trick: no per-label feature lists, collisions act as noise) and u a per-label
bias. It is trained after the MLP, the MLP fixed, by softmax cross-entropy over each
training row's candidates (target: uniform over the true labels among them; rows with
none are skipped) with Adagrad. Measured on the benchmark's sets (benchmarks/README.md,
"What was tried"): +0.004 to +0.04 test P@1 over the MLP alone in the same time budget.
"""
from __future__ import annotations

import time

import numba
import numpy as np

from ._validate import check_int

MAX_BITS = 22            # at most 4M weights (16 MiB); fewer for fewer (label, feature) pairs
DEFAULT_CANDIDATES = 32  # the MLP's shortlist per row
DEFAULT_LR = 0.05        # Adagrad
EPOCHS = 2               # the second pass added 0.000-0.003 P@1, a third nothing
SHARE = 0.25             # of fit's time budget, kept for this stage
_CHUNK = 1024            # training rows shortlisted at a time (the stage's time is checked between)
_M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)


@numba.njit(inline="always", cache=True)
def _slot(label, feature, mask):
    x = (np.uint64(label) * _M1) ^ (np.uint64(feature) * _M2)
    x ^= x >> np.uint64(29)
    return np.int64(x & mask)


@numba.njit(parallel=True, cache=True)
def _scores(xp, xi, xd, cands, V, U, mask):
    n, C = cands.shape
    out = np.empty((n, C), np.float32)
    for i in numba.prange(n):
        for c in range(C):
            lab = cands[i, c]
            s = U[lab]
            for p in range(xp[i], xp[i + 1]):
                s += xd[p] * V[_slot(lab, xi[p], mask)]
            out[i, c] = s
    return out


_scores_serial = numba.njit(cache=True)(_scores.py_func)  # a few rows: no thread pool wake-up


@numba.njit(cache=True)
def _train_epoch(order, xp, xi, xd, cands, base, yp, yi, V, GV, U, GU, lr, mask):
    """One pass of Adagrad over the rows in ``order``; returns (loss sum, rows used)."""
    C = cands.shape[1]
    z = np.empty(C, np.float64)
    tgt = np.empty(C, np.float64)
    loss, used = 0.0, 0
    for ii in range(order.size):
        i = order[ii]
        npos = 0
        for c in range(C):
            tgt[c] = 0.0
            for q in range(yp[i], yp[i + 1]):
                if yi[q] == cands[i, c]:
                    tgt[c] = 1.0
            npos += int(tgt[c])
        if npos == 0:
            continue
        used += 1
        zmax = -np.inf
        for c in range(C):
            lab = cands[i, c]
            s = base[i, c] + U[lab]
            for p in range(xp[i], xp[i + 1]):
                s += xd[p] * V[_slot(lab, xi[p], mask)]
            z[c] = s
            zmax = max(zmax, s)
        tot = 0.0
        for c in range(C):
            z[c] = np.exp(z[c] - zmax)
            tot += z[c]
        for c in range(C):
            prob = z[c] / tot
            if tgt[c] > 0:
                loss -= np.log(max(prob, 1e-30)) / npos
            g = prob - tgt[c] / npos
            lab = cands[i, c]
            GU[lab] += g * g
            U[lab] -= lr * g / np.sqrt(GU[lab] + 1e-8)
            for p in range(xp[i], xp[i + 1]):
                k = _slot(lab, xi[p], mask)
                gg = g * xd[p]
                GV[k] += gg * gg
                V[k] -= lr * gg / np.sqrt(GV[k] + 1e-8)
    return loss, used


def _csr_parts(X):
    return X.indptr.astype(np.int64), X.indices.astype(np.int64), np.asarray(X.data, np.float32)


class FeatureReranker:
    """Hashed per-label linear scores over input features, added to a base model's shortlist.

    Parameters: n_labels (int), bits (table of 2**bits float32 weights, 10..30), n_candidates
    (shortlist length the owner scores), lr (Adagrad step). Arrays: V (2**bits,) float32, U
    (n_labels,) float32, and their Adagrad sums GV, GU (None in an inference-only copy).
    """

    def __init__(self, n_labels, bits=MAX_BITS, n_candidates=DEFAULT_CANDIDATES, lr=DEFAULT_LR):
        self.n_labels = check_int(n_labels, "n_labels", 1)
        self.bits = check_int(bits, "bits", 10, 30)
        self.n_candidates = check_int(n_candidates, "n_candidates", 1)
        self.lr = float(lr)
        self.V = np.zeros(1 << self.bits, np.float32)
        self.U = np.zeros(self.n_labels, np.float32)
        self.GV = np.zeros_like(self.V)
        self.GU = np.zeros_like(self.U)

    @property
    def _mask(self):
        return np.uint64((1 << self.bits) - 1)

    @property
    def nbytes(self):
        return int(sum(a.nbytes for a in (self.V, self.U, self.GV, self.GU) if a is not None))

    def fit_epoch(self, X, cands, base, Y, rng):
        """One Adagrad pass over X's rows in a random order.

        X (n, d) CSR float32; cands (n, C) int64 label ids of each row's shortlist; base (n, C)
        float32 base logits of those labels; Y (n, n_labels) CSR indicator; rng a numpy
        Generator. Returns the mean cross-entropy over the rows with a true label among their
        candidates (nan if none has)."""
        xp, xi, xd = _csr_parts(X)
        loss, used = _train_epoch(rng.permutation(X.shape[0]).astype(np.int64), xp, xi, xd,
                                  np.ascontiguousarray(cands, np.int64), np.ascontiguousarray(base, np.float32),
                                  Y.indptr.astype(np.int64), Y.indices.astype(np.int64), self.V, self.GV, self.U,
                                  self.GU, self.lr, self._mask)
        return loss / used if used else float("nan")

    def scores(self, X, cands):
        """The added scores u[c] + sum_f x_f V[hash(c, f)] of X's (n, d) CSR rows for their
        candidates cands (n, C) int64: (n, C) float32."""
        xp, xi, xd = _csr_parts(X)
        fn = _scores if X.shape[0] >= 64 else _scores_serial
        return fn(xp, xi, xd, np.ascontiguousarray(cands, np.int64), self.V, self.U, self._mask)

    def rerank(self, X, base, cands, k):
        """Top-k of each row's candidates by base + scores: (scores (n, k) float32, labels (n, k)
        int64), best first, ties to the lower label id. base, cands: (n, C) with C >= k."""
        z = np.asarray(base, np.float32) + self.scores(X, cands)
        by_label = np.argsort(cands, axis=1, kind="stable")       # ties: the lower label first
        zs, cs = np.take_along_axis(z, by_label, 1), np.take_along_axis(cands, by_label, 1)
        top = np.argsort(-zs, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(zs, top, 1), np.take_along_axis(cs, top, 1).astype(np.int64)


def fit_stage(model, X, Y, val, deadline, seed):
    """Fits a FeatureReranker to ``model``'s dense shortlists of training rows X (n, d) CSR with
    labels Y (n, n_labels) CSR, the model fixed (``model.reranker`` must be None).

    deadline: time.perf_counter() value or None. With a deadline, rows are shortlisted in a
    random order, _CHUNK at a time, while the next chunk is expected to end within 70% of the
    time left (at least one chunk), then trained on for EPOCHS passes or until the deadline (at
    least one); nothing is trained when no time is left. val: (X_val, Y_val) or
    None: with it, the re-ranker is kept only if it does not lower validation P@1.
    Returns (FeatureReranker or None, report dict: rows, epochs, seconds, val P@1 without and
    with it, kept)."""
    t0 = time.perf_counter()
    report = dict(rows=0, epochs=0, seconds=0.0, kept=False)
    if deadline is not None and deadline - t0 <= 0:
        return None, report
    pairs = float(model.output_dim) * float(model.input_dim)  # a slot per (label, feature) at most
    rr = FeatureReranker(model.output_dim, bits=int(np.clip(np.ceil(np.log2(pairs)), 10, MAX_BITS)))
    C = min(rr.n_candidates, model.output_dim)
    n = X.shape[0]
    order = np.random.default_rng(seed).permutation(n)
    stop_at = None if deadline is None else t0 + 0.7 * (deadline - t0)
    parts, taken, last = [], 0, 0.0
    # a chunk is shortlisted only if, at the last chunk's pace, it ends before stop_at
    while taken < n and (stop_at is None or not parts or time.perf_counter() + last < stop_at):
        tc = time.perf_counter()
        rows = np.sort(order[taken:taken + _CHUNK])
        taken += rows.size
        parts.append((rows,) + model.predict_topk(X[rows], k=C))
        last = time.perf_counter() - tc
    rows = np.concatenate([p[0] for p in parts])
    base, cands = np.vstack([p[1] for p in parts]), np.vstack([p[2] for p in parts])
    Xs, Ys = X[rows], Y[rows]
    rng = np.random.default_rng(seed + 1)
    for ep in range(EPOCHS):
        if ep and deadline is not None and time.perf_counter() >= deadline:
            break
        rr.fit_epoch(Xs, cands, base, Ys, rng)
        report["epochs"] = ep + 1
    report["rows"] = int(rows.size)
    keep = True
    if val is not None:
        Xv, Yv = val
        vb, vc = model.predict_topk(Xv, k=C)
        _, top = rr.rerank(Xv, vb, vc, 1)
        report["val_P@1_without"] = _p1(vc[:, :1], Yv)
        report["val_P@1_with"] = _p1(top, Yv)
        keep = report["val_P@1_with"] >= report["val_P@1_without"]
    report["kept"] = bool(keep)
    report["seconds"] = time.perf_counter() - t0
    return (rr if keep else None), report


def _p1(top, Y):
    """P@1 of top (n, 1) label ids against the CSR indicator Y."""
    return float(np.asarray(Y[np.arange(top.shape[0]), top[:, 0]]).ravel().astype(bool).mean())
