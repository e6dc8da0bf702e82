"""A hashed per-label linear re-ranker over the input features (SparseMLP's last stage).

SparseMLP sees the input only through its hidden layer; linear XMC models (PECOS, the
trees' leaf classifiers) keep a weight per (label, feature). ``FeatureReranker`` adds that
to the MLP's shortlist: for a row x and a candidate label c of the MLP's top
``n_candidates`` (base logits m_c, largest m_max),

    loss "logistic" (default): z(x, c) = a (m_c - m_max) + b + u[c] + sum_f x_f V[hash(c, f)]
    loss "softmax":            z(x, c) = m_c + u[c] + sum_f x_f V[hash(c, f)]

with V a table of 2**bits float32 weights shared through a hash of (label, feature) (the
hashing trick: no per-label feature lists, collisions act as noise), u a per-label bias and
a, b two scalars. It is trained after the MLP, the MLP fixed, on training rows' shortlists of
true labels and the MLP's hardest wrong ones (``training_shortlist``), with Adagrad: "logistic" by a
binary cross-entropy per candidate (is c one of the row's labels?), so that sigmoid(z)
estimates P(c | x) label by label, as one-vs-all linear models do; "softmax" by softmax
cross-entropy over each row's candidates (target: uniform over the true ones; rows with none
are skipped), the loss of files written before format 5.

Why logistic: a softmax over a multi-label row splits the target among its labels, so a
label that nearly always comes with a frequent one (Debian's libsegyio1 with libc6) cannot
outrank it, although P@1 wants the label most likely present. On Debian Depends, SparseMLP
with the softmax re-ranker and the neighbour votes ranked libc6 first on 2,085 of 5,000 test
rows at precision 0.725 (omikuji: 1,745 rows at 0.799). The same MLP and rows (all 43,606
training rows' top 32), with the votes: test P@1 / P@5 0.7576 / 0.3725 softmax, 0.7734 /
0.3791 logistic. At 2x omikuji's time on a quiet
machine, test P@1 / P@5 went 0.7618 / 0.3766 -> 0.7702 / 0.3778 with the logistic loss, the
row order of fit_stage and SHARE 0.4 (benchmarks/README.md, "What was tried").
"""
from __future__ import annotations

import time

import numba
import numpy as np

from ._validate import check_choice, check_int
from .topk import dense_topk

MAX_BITS = 22            # at most 4M weights (16 MiB); fewer for fewer (label, feature) pairs
DEFAULT_CANDIDATES = 32  # the MLP's shortlist per row
DEFAULT_LR = 0.2         # Adagrad (logistic; 0.1 and 5 passes: 0.003 lower test P@1 on Debian Depends)
SOFTMAX_LR = 0.05        # the softmax loss's step
EPOCHS = 3
LOSSES = ("logistic", "softmax")
AB_INIT = (0.3, -2.0)    # logistic: a starts below 1 (the MLP's logits are over-confident on its
AB_LR = 0.02             # own training rows), b at a prior of sigmoid(-2) = 0.12 per candidate
POSITIVES = 16           # true labels at most in a training row's shortlist (see training_shortlist)
SHARE = 0.4              # of fit's time budget: Debian Depends at 16.2 s, test P@1 0.764 / 0.770 / 0.769 / 0.765 at 0.25 / 0.35 / 0.45 / 0.55
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


@numba.njit(inline="always", cache=True)
def _step(g, lab, a, b, xi, xd, V, GV, U, GU, lr, mask):
    """Adagrad step of label lab's bias and its weights for the row's features xi[a:b] (values
    xd[a:b]), given the loss's gradient g with respect to the row's score of lab."""
    GU[lab] += g * g
    U[lab] -= lr * g / np.sqrt(GU[lab] + 1e-8)
    for p in range(a, b):
        k = _slot(lab, xi[p], mask)
        gg = g * xd[p]
        GV[k] += gg * gg
        V[k] -= lr * gg / np.sqrt(GV[k] + 1e-8)


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
            _step(g, lab, xp[i], xp[i + 1], xi, xd, V, GV, U, GU, lr, mask)
    return loss, used


@numba.njit(cache=True)
def _train_epoch_logistic(order, xp, xi, xd, cands, base, yp, yi, V, GV, U, GU, ab, Gab, lr, mask):
    """One pass of Adagrad on the per-candidate binary cross-entropy; returns (loss sum, rows)."""
    C = cands.shape[1]
    loss = 0.0
    for ii in range(order.size):
        i = order[ii]
        bmax = base[i, 0]
        for c in range(1, C):
            bmax = max(bmax, base[i, c])
        for c in range(C):
            lab = cands[i, c]
            t = 0.0
            for q in range(yp[i], yp[i + 1]):
                if yi[q] == lab:
                    t = 1.0
            f = np.float64(base[i, c]) - bmax
            s = ab[0] * f + ab[1] + U[lab]
            for p in range(xp[i], xp[i + 1]):
                s += xd[p] * V[_slot(lab, xi[p], mask)]
            if s >= 0:  # log(1 + e^-|s|) without overflow
                prob = 1.0 / (1.0 + np.exp(-s))
                loss += np.log1p(np.exp(-s)) + (1.0 - t) * s
            else:
                e = np.exp(s)
                prob = e / (1.0 + e)
                loss += np.log1p(e) - t * s
            g = prob - t
            g0 = g * f
            Gab[0] += g0 * g0
            # a >= 0: a larger MLP logit never lowers z (on rows the MLP has memorised, where
            # nearly every candidate is a true label, a would otherwise turn negative)
            ab[0] = max(0.0, ab[0] - AB_LR * g0 / np.sqrt(Gab[0] + 1e-8))
            Gab[1] += g * g
            ab[1] -= AB_LR * g / np.sqrt(Gab[1] + 1e-8)
            _step(g, lab, xp[i], xp[i + 1], xi, xd, V, GV, U, GU, lr, mask)
    return loss, order.size


@numba.njit(cache=True)
def _covering_order(perm, yp, yi, n_labels):
    """perm's rows reordered: first each row (in perm's order) that has a label no earlier row
    had, then the others in perm's order."""
    seen = np.zeros(n_labels, np.bool_)
    first = np.empty(perm.size, np.int64)
    rest = np.empty(perm.size, np.int64)
    nf = nr = 0
    for i in perm:
        new = False
        for q in range(yp[i], yp[i + 1]):
            if not seen[yi[q]]:
                new = True
                seen[yi[q]] = True
        if new:
            first[nf] = i
            nf += 1
        else:
            rest[nr] = i
            nr += 1
    return np.concatenate((first[:nf], rest[:nr]))


@numba.njit(cache=True)
def _with_positives(H, W, b, yp, yi, neg_s, neg_l, P, out_s, out_l):
    """Fills out_s / out_l (n, C) (see training_shortlist): the row's true labels (yp, yi CSR,
    scored h . w + b) and its wrong ones (neg_s / neg_l (n, C), best first, label -1 for none)
    merged best first, C of them, with at most P true ones while wrong ones are left."""
    n, C = out_s.shape
    d = H.shape[1]
    for i in range(n):
        npos = yp[i + 1] - yp[i]
        ps = np.empty(npos, np.float32)
        for q in range(npos):
            lab = yi[yp[i] + q]
            acc = np.float32(0.0)
            for t in range(d):
                acc += H[i, t] * W[lab, t]
            ps[q] = acc + b[lab]
        nneg = 0
        while nneg < C and neg_l[i, nneg] >= 0:
            nneg += 1
        order = np.argsort(-ps, kind="mergesort")  # stable: ties keep the lower label first
        a = c = 0
        for j in range(C):  # npos + nneg >= C: nneg = min(C, n_labels - npos)
            if a < npos and (c >= nneg or (a < P and ps[order[a]] >= neg_s[i, c])):
                out_s[i, j] = ps[order[a]]
                out_l[i, j] = yi[yp[i] + order[a]]
                a += 1
            else:
                out_s[i, j] = neg_s[i, c]
                out_l[i, j] = neg_l[i, c]
                c += 1
        for j in range(1, C):  # true labels taken after the wrong ran out: back in score order
            v, lab, p = out_s[i, j], out_l[i, j], j
            while p > 0 and (out_s[i, p - 1] < v or (out_s[i, p - 1] == v and out_l[i, p - 1] > lab)):
                out_s[i, p], out_l[i, p] = out_s[i, p - 1], out_l[i, p - 1]
                p -= 1
            out_s[i, p], out_l[i, p] = v, lab


def training_shortlist(model, X, Y, C, positives=POSITIVES):
    """The candidates the re-ranker trains on for training rows X (n, d) CSR with labels Y (n,
    n_labels) CSR: (base logits float32 (n, C), labels int64 (n, C)), best first: the MLP's top C
    with at most ``positives`` true labels in it, the places of the others (lower-scored) taken
    by the MLP's best-scored wrong labels (true ones fill up only when wrong ones run out).

    Why: the MLP has seen these rows and ranks their labels on top far more than on new rows
    (Debian Depends: recall@32 0.94 on training rows, 0.71 on test rows); on rows with many
    labels its top 32 then holds almost no wrong label (delicious-200k-like: 31.8 of 32 true),
    and a re-ranker trained on it learns nothing that separates labels. With the wrong labels
    kept, fit at 2x the best peer's time: delicious-200k-like (scale 0.05) test P@1 / P@5 0.9322 /
    0.8142 -> 0.9474 / 0.8554; the teacher set 0.9462 / 0.7402 -> 0.9452 / 0.7338 and Debian
    Depends 0.7622 -> 0.7672, 0.7664 (within their run-to-run spread). Taking every true label,
    the MLP's low-scored ones too, dropped the stage on the teacher set (0.9382 / 0.7070): at test
    those are not candidates."""
    C = min(int(C), model.output_dim)
    Y = Y.tocsr()
    H = np.ascontiguousarray(model._hidden(X)[-1], np.float32)
    W, b = model.out_w.w, model.out_b.w
    neg_s, neg_l = dense_topk(H, W, b, C, exclude=Y)
    base, cands = np.empty((X.shape[0], C), np.float32), np.empty((X.shape[0], C), np.int64)
    _with_positives(H, W, b, Y.indptr.astype(np.int64), Y.indices.astype(np.int64), neg_s, neg_l,
                    int(positives), base, cands)
    return base, cands


def _csr_parts(X):
    return X.indptr.astype(np.int64), X.indices.astype(np.int64), np.asarray(X.data, np.float32)


class FeatureReranker:
    """Hashed per-label linear scores over input features, added to a base model's shortlist.

    Parameters: n_labels (int), bits (table of 2**bits float32 weights, 10..30), n_candidates
    (shortlist length the owner scores), lr (Adagrad step; None: DEFAULT_LR for "logistic",
    SOFTMAX_LR for "softmax"), loss ("logistic" or "softmax", see the module docstring).
    Arrays: V (2**bits,) float32, U (n_labels,) float32, ab (2,) float64 the scalars a, b
    (logistic), and the Adagrad sums GV, GU, Gab (None in an inference-only copy).
    """

    def __init__(self, n_labels, bits=MAX_BITS, n_candidates=DEFAULT_CANDIDATES, lr=None, loss="logistic"):
        self.n_labels = check_int(n_labels, "n_labels", 1)
        self.bits = check_int(bits, "bits", 10, 30)
        self.n_candidates = check_int(n_candidates, "n_candidates", 1)
        self.loss = check_choice(loss, "loss", LOSSES)
        self.lr = float((DEFAULT_LR if loss == "logistic" else SOFTMAX_LR) if lr is None else lr)
        self.V = np.zeros(1 << self.bits, np.float32)
        self.U = np.zeros(self.n_labels, np.float32)
        self.ab = np.array(AB_INIT, np.float64)
        self.GV = np.zeros_like(self.V)
        self.GU = np.zeros_like(self.U)
        self.Gab = np.zeros(2, np.float64)

    @property
    def link(self):
        """How z becomes a probability: "sigmoid" per label (logistic) or "softmax" over a row."""
        return "sigmoid" if self.loss == "logistic" else "softmax"

    @property
    def _mask(self):
        return np.uint64((1 << self.bits) - 1)

    @property
    def nbytes(self):
        return int(sum(a.nbytes for a in (self.V, self.U, self.ab, self.GV, self.GU, self.Gab) if a is not None))

    def fit_epoch(self, X, cands, base, Y, rng):
        """One Adagrad pass over X's rows in a random order.

        X (n, d) CSR float32; cands (n, C) int64 label ids of each row's shortlist; base (n, C)
        float32 base logits of those labels; Y (n, n_labels) CSR indicator; rng a numpy
        Generator. Returns the mean loss per row used: logistic, the sum over the row's
        candidates of their binary cross-entropies, every row; softmax, the cross-entropy over
        the rows with a true label among their candidates (nan if none has)."""
        xp, xi, xd = _csr_parts(X)
        if self.loss == "logistic":
            loss, used = _train_epoch_logistic(
                rng.permutation(X.shape[0]).astype(np.int64), xp, xi, xd, np.ascontiguousarray(cands, np.int64),
                np.ascontiguousarray(base, np.float32), Y.indptr.astype(np.int64), Y.indices.astype(np.int64),
                self.V, self.GV, self.U, self.GU, self.ab, self.Gab, self.lr, self._mask)
            return loss / used if used else float("nan")
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
        """Top-k of each row's candidates by z (module docstring: a (base - row max) + b + scores,
        or base + scores for the softmax loss): (z (n, k) float32, labels (n, k) int64), best
        first, ties to the lower label id. base (n, C) float32 logits, cands (n, C) int64, C >= k."""
        base = np.asarray(base, np.float32)
        if self.loss == "logistic":
            rel = (base - base.max(axis=1, keepdims=True)).astype(np.float64)
            z = (self.ab[0] * rel + self.ab[1] + self.scores(X, cands)).astype(np.float32)
        else:
            z = base + self.scores(X, cands)
        by_label = np.argsort(cands, axis=1, kind="stable")       # ties: the lower label first
        zs, cs = np.take_along_axis(z, by_label, 1), np.take_along_axis(cands, by_label, 1)
        top = np.argsort(-zs, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(zs, top, 1), np.take_along_axis(cs, top, 1).astype(np.int64)


def _bits(model):
    """Table size for ``model``: a slot per (label, feature) at most, 2**MAX_BITS at most."""
    pairs = float(model.output_dim) * float(model.input_dim)
    return int(np.clip(np.ceil(np.log2(pairs)), 10, MAX_BITS))


def reserve(model, X, Y, n_val, budget, sample=512):
    """Seconds fit keeps for this stage out of ``budget``: at most SHARE of it, and no more than
    2 x its cost measured on ``sample`` of the training rows X (n, d) CSR / Y, scaled to all
    n rows and the n_val validation rows (shortlisting each, then EPOCHS training passes)."""
    n = X.shape[0]
    rows = np.sort(np.random.default_rng(0).permutation(n)[:min(n, sample)])
    C = min(DEFAULT_CANDIDATES, model.output_dim)
    rr = FeatureReranker(model.output_dim, bits=_bits(model))  # the table's size sets its cache misses
    for part in (rows[:16], rows):  # the first call loads the compiled kernels: not timed
        t0 = time.perf_counter()
        base, cands = training_shortlist(model, X[part], Y[part], C)
        t1 = time.perf_counter()
        rr.fit_epoch(X[part], cands, base, Y[part], np.random.default_rng(0))
        t2 = time.perf_counter()
    per_row = ((t1 - t0) * (n + n_val) + EPOCHS * (t2 - t1) * n) / rows.size
    return min(SHARE * budget, 2.0 * per_row)  # 2x: the sample's timing varied 2x run to run


def fit_stage(model, X, Y, val, deadline, seed, visited=None):
    """Fits a FeatureReranker to ``model``'s shortlists (``training_shortlist``) of training rows
    X (n, d) CSR with labels Y (n, n_labels) CSR, the model fixed (``model.reranker`` must be None).

    deadline: time.perf_counter() value or None. With a deadline, rows are shortlisted _CHUNK at
    a time, while the next chunk is expected to end within 70% of the time left (at least one
    chunk), in a random order that puts first the rows with a label no earlier row had (a
    label's per-feature weights are learnt from its rows: on Debian Depends, 8,192 rows so
    ordered gave test P@1 0.7634 against 0.7570 for 8,192 random ones), the rows the MLP has not
    trained on (False in ``visited``, a bool (n,) array or None) before the others (the MLP
    fitted on 28,000 Debian rows for one pass: a re-ranker on the 15,606 others gave test P@1
    0.7498, on 15,606 of its rows 0.7402), then trained on for EPOCHS passes or until the deadline (at
    least one); nothing is trained when no time is left. val: (X_val, Y_val) or
    None: with it, the re-ranker is kept only if it does not lower validation P@1.
    Returns (FeatureReranker or None, report dict: rows, epochs, seconds, val P@1 without and
    with it, kept)."""
    t0 = time.perf_counter()
    report = dict(rows=0, epochs=0, seconds=0.0, kept=False)
    if deadline is not None and deadline - t0 <= 0:
        return None, report
    rr = FeatureReranker(model.output_dim, bits=_bits(model))
    C = min(rr.n_candidates, model.output_dim)
    n = X.shape[0]
    perm = np.random.default_rng(seed).permutation(n)
    yp, yi = Y.indptr.astype(np.int64), Y.indices.astype(np.int64)
    if visited is None or not visited.any() or visited.all():
        order = _covering_order(perm, yp, yi, model.output_dim)
    else:
        v = visited[perm]
        order = np.concatenate((_covering_order(perm[~v], yp, yi, model.output_dim),
                                _covering_order(perm[v], yp, yi, model.output_dim)))
    stop_at = None if deadline is None else t0 + 0.7 * (deadline - t0)
    parts, taken, last = [], 0, 0.0
    # a chunk is shortlisted only if, at the last chunk's pace, it ends before stop_at
    while taken < n and (stop_at is None or not parts or time.perf_counter() + last < stop_at):
        tc = time.perf_counter()
        rows = np.sort(order[taken:taken + _CHUNK])
        taken += rows.size
        parts.append((rows,) + training_shortlist(model, X[rows], Y[rows], C))
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
