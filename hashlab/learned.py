"""Learnable hashing (MONGOOSE, Chen et al. ICLR 2021): ``LearnedSimHash``.

A SimHash whose projection ``W`` is trained so that the (query, item) pairs with the
highest inner products share buckets and the lowest ones do not. It *is* a
``SimHash`` (kind "gaussian"): ``hash``, ``bits``, ``W``, ``k``, ``l``, ``key_bits``
behave the same, the same C++ kernels compute its keys (sign of the projections) and
it plugs into ``LSHTables`` unchanged. Only the training runs in numpy. When to
rehash and refit as the items move: ``DriftScheduler`` (hashlab/drift.py, re-exported
here).

Training objective (``LearnedSimHash.fit``)
-------------------------------------------
Mining, once per ``fit``/``partial_fit`` call: the exact inner products queries x
items, in chunks; for each query the positives are its ``ceil(top_fraction *
n_items)`` highest-scoring items (the top-0.1% level by default; a per-query level,
so that queries of large norm do not take all the positives) and the negatives the
items scoring below its ``neg_quantile`` quantile (the median by default). Every
epoch, LSH tables (``LSHTables``, the deployment structure, ``bucket_capacity``)
are built over the items with the current ``W`` and ``mine_queries`` of the queries
(a random subset) are looked up. The training pairs of the epoch, at most
``max_pairs`` per class: the positives the tables **miss** and the negatives they
**return** (MONGOOSE's hard pairs), plus a ``replay`` fraction (default 1/2) drawn
from all positives and from random below-level pairs, so that the steps do not undo
what the tables already get right (without it, found positives drift out of their
buckets and are mined again next epoch).

Relaxation: rows are scaled to unit norm, the columns ``w_b`` of W are kept at unit
norm (neither scale changes a sign), and bit b of a vector v is relaxed to
``s_b(v) = tanh(beta * <w_b, v/|v|> / sigma_b)``, sigma_b the standard deviation of
projection b over the step's rows (queries and items together; a constant for the
gradient). With a fixed scale instead, anisotropic data (rows within a small angle of
one another, like the hidden states of a language model) gives near-constant bits
whose relaxation looks uncertain rather than constant, and the loss rewards them.

``loss="bce"`` (default): binary cross-entropy on the relaxed probability that the
tables return the pair, the event the mining looks at. Bit b of a pair (q, x)
collides with probability ``c_b = (1 + s_b(q) s_b(x)) / 2``, table t with ``P_t =
prod_{b in t} c_b`` (its k bits), and the tables return the pair with ``U = 1 -
prod_t (1 - P_t)``. With target 1 for positives and 0 for negatives,

    loss = mean_pos [-log U]  +  mean_neg [-log(1 - U)]
         = mean_pos [-log(1 - prod_t (1 - P_t))]  +  mean_neg [-sum_t log(1 - P_t)]

(each class averaged separately; a class with no pairs contributes nothing). A
positive is satisfied by one table, as in a lookup. (The per-table variant, BCE on
each P_t averaged over tables, asks every table to hold every positive; on
anisotropic data it drives bits towards constants, with coarser buckets and lower
recall than the random start, so it is not offered.)

``loss="triplet"``: cosine triplet hinge with ``margin`` (1.0): each positive
(q, x+) is paired with a returned negative (q, x-) of the same query (or, when the
tables return none for q, a uniformly random item) and, with ``h(v)`` the relaxed
code over all k*l bits,

    loss = mean max(0, margin - cos(h(q), h(x+)) + cos(h(q), h(x-)))

It separates positives from negatives bit by bit but is blind to the tables: it
lowers collisions overall, positives included.

Initialisation (``fit(init="centred")``, default): the random Gaussian projection
of ``seed`` with, from every column, its component along the mean direction of the
unit queries and that of the unit items removed; hyperplanes then pass through the
data's cone (what centring the inputs does, for a hash without a bias term).
``init="random"`` keeps ``SimHash(dim, k, l, seed=seed).W``.

Optimiser: Adam on the columns of W, gradient projected on the tangent of the unit
sphere, columns renormalised after each step; ``lr`` is roughly the angle (radians)
a column turns per step. ``ceil(pairs / batch_size)`` steps per epoch, each on
``batch_size`` pairs (half positives, half negatives), drawn with replacement.
Deployment: W (float32, unit columns, zero padding columns) hashed by the C++
kernels: the binarised codes sign(<w_b, v>).

Cost: ``fit_seconds_`` (wall time of the last ``fit``, plus the ``partial_fit``
calls since), ``fit_info_`` (exact inner products, table builds and lookups,
gradient steps) and ``mining_history_`` (per epoch: positives missed, recall of the
positives by the tables before the epoch's steps, mean candidates, pairs used).
Judge a fit against the work it saves: see `hashlab bench learned` (hashlab/bench/learned.py).
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import scipy.sparse as sp

from ._validate import as_matrix, check_choice, check_float, check_int
from .drift import DriftScheduler, popcount32  # re-exported: the old import path
from .simhash import SimHash
from .tables import LSHTables

__all__ = ["LearnedSimHash", "DriftScheduler", "popcount32"]

LOSSES = ("bce", "triplet")
INITS = ("centred", "random")
_FORMAT = "hashlab.LearnedSimHash/1"
_EPS = 1e-7
_IP_CHUNK_BYTES = 64 << 20  # inner-product chunk (queries x items float32) during mining


def _unit_rows(X):
    """float32 rows scaled to unit norm (all-zero rows stay zero)."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    norms[norms == 0] = 1.0
    return (X / norms[:, None]).astype(np.float32)


def _one_hot(index, n):
    """(n, len(index)) sparse matrix with a 1 at (index[p], p): M @ G sums G's rows by index."""
    p = index.shape[0]
    return sp.csr_matrix((np.ones(p, dtype=np.float32), (index, np.arange(p))), shape=(n, p))


class LearnedSimHash(SimHash):
    """SimHash with a projection trained by the MONGOOSE objective (see the module docstring).

    Parameters
    ----------
    dim : int, input dimension.
    k : int in [1, 32], bits per table key.
    l : int in [1, 65535], number of tables.
    seed : int >= 0; the projection before any training is
        ``SimHash(dim, k, l, seed=seed).W`` (an untrained LearnedSimHash hashes exactly
        like that SimHash); ``fit`` starts from it (centred on the data by default,
        see ``init``); also the default seed of the training's sampling.

    A drop-in hasher: ``hash(X)``, ``bits(X)``, ``W`` (dim, wstride) float32, ``k``,
    ``l``, ``key_bits``, ``nbits``, ``nbytes``, usable by ``LSHTables`` and the numba
    twins in ``hashlab.jit``. Unlike SimHash it is not described by its constructor
    arguments: pickling, ``save``/``load`` keep ``W`` exactly, and two learned hashers
    are equal iff they have the same dim, k, l and identical ``W`` (their hash() is
    then identical; ``__hash__`` uses only dim, k, l so that it survives training).

    Example::

        h = LearnedSimHash(dim, k=8, l=16).fit(train_queries, items, epochs=8)
        tables = LSHTables(h); tables.insert(np.arange(len(items)), items)
        indptr, ids, counts = tables.query(test_queries)
        print(h.fit_seconds_, h.loss_history_)
    """

    def __init__(self, dim, k, l, seed=0):
        super().__init__(dim, k, l, kind="gaussian", seed=seed)
        self.fit_seconds_ = 0.0
        self.loss_history_ = []
        self.mining_history_ = []
        self.fit_info_ = {}
        self._opt = None  # Adam state, kept across partial_fit calls

    def _ctor_args(self):
        return dict(dim=self.dim, k=self.k, l=self.l, seed=self.seed)

    # -- identity, pickling, files ----------------------------------------------
    def __eq__(self, other):
        return (type(self) is type(other) and (self.dim, self.k, self.l) == (other.dim, other.k, other.l)
                and np.array_equal(self.W, other.W))

    def __hash__(self):
        return hash((type(self).__name__, self.dim, self.k, self.l))

    def __reduce__(self):
        return (_restore, (type(self), self._ctor_args(), self.W, self._state()))

    def __repr__(self):
        trained = f", trained {len(self.loss_history_)} epochs" if self.loss_history_ else ""
        return f"LearnedSimHash(dim={self.dim}, k={self.k}, l={self.l}, seed={self.seed}{trained})"

    def _state(self):
        return dict(fit_seconds_=float(self.fit_seconds_), loss_history_=[float(v) for v in self.loss_history_])

    def _set_W(self, W):
        W = np.asarray(W)
        if W.dtype != np.float32:
            raise TypeError(f"W: expected float32, got {W.dtype}")
        if W.shape != self.W.shape:
            raise ValueError(f"W: expected shape {self.W.shape}, got {W.shape}")
        if not np.isfinite(W).all():
            raise ValueError("W: expected finite values, got NaN or inf")
        self.W = np.ascontiguousarray(W).copy()

    def save(self, path):
        """Writes the hasher (dim, k, l, seed, W, training history) to ``path`` (.npz).

        Written to a temporary file in the same folder, then renamed over ``path``
        (os.replace), so a reader never sees a half-written file. ``path`` is used as
        given (no ".npz" is appended). Returns path.
        """
        path = os.fspath(path)
        folder = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(folder, f".tmp-learned-{os.getpid()}-{os.urandom(6).hex()}.npz")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # usual permissions (umask applies)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, format=np.array(_FORMAT), dim=np.int64(self.dim), k=np.int64(self.k),
                         l=np.int64(self.l), seed=np.uint64(self.seed), W=self.W,
                         fit_seconds=np.float64(self.fit_seconds_),
                         loss_history=np.asarray(self.loss_history_, dtype=np.float64))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path):
        """Reads a hasher written by ``save``; its W is bit-for-bit the saved one."""
        with np.load(os.fspath(path), allow_pickle=False) as z:
            if "format" not in z.files or str(z["format"]) != _FORMAT:
                raise ValueError(f"{path}: expected a file written by LearnedSimHash.save ({_FORMAT})")
            h = cls(int(z["dim"]), int(z["k"]), int(z["l"]), seed=int(z["seed"]))
            h._set_W(z["W"])
            h.fit_seconds_ = float(z["fit_seconds"])
            h.loss_history_ = [float(v) for v in z["loss_history"]]
        return h

    # -- training ---------------------------------------------------------------
    def fit(self, queries, items, epochs=10, lr=0.02, loss="bce", top_fraction=0.001, neg_quantile=0.5,
            max_pairs=8192, batch_size=1024, beta=2.0, margin=1.0, bucket_capacity=128, min_pairs=10,
            replay=0.5, mine_queries=512, init="centred", seed=None):
        """Trains W from its initial projection (see ``init``); returns self.

        queries: (nq, dim) float array (training queries); items: (n, dim) float
        array, n >= 2: the vectors the tables will hold.
        epochs: int >= 1; each = one mining pass (tables rebuilt with the current W)
            + ceil(pairs / batch_size) Adam steps.
        lr: float > 0, step size (about the radians a projection turns per step).
        loss: "bce" (default) | "triplet" (module docstring).
        top_fraction: float in (0, 0.5]; positives are each query's
            ceil(top_fraction * n) best items (default 0.001: the top 0.1%).
        neg_quantile: float in (0, 1); negatives score below that quantile of the
            query's scores (default 0.5: the median).
        max_pairs: int >= 1, pairs per class per epoch. batch_size: int >= 2, pairs
            per step (half positives, half negatives). beta: float > 0, sharpness of
            the tanh relaxation (in standard deviations of each projection).
            margin: float in [0, 2], triplet margin.
        bucket_capacity: int, bucket capacity of the mining tables (use your tables').
        min_pairs: int >= 1; fewer missed positives than this in the first epoch is a
            ValueError (nothing to learn from). Training stops early when a later
            epoch mines fewer.
        replay: float in [0, 1], fraction of each class drawn from all pairs rather
            than the hard ones. mine_queries: int >= 1, queries looked up per epoch.
        init: "centred" (default) | "random" (module docstring).
        seed: int >= 0, sampling seed (default: the hasher's seed).

        Restarts from the initial projection with fresh optimiser state and
        histories; ``partial_fit`` continues from the current W. Deterministic for a
        given seed and inputs (on a given BLAS).
        Raises TypeError for non-float arrays or wrong parameter types, ValueError
        for wrong shapes, non-finite values, empty inputs, out-of-range parameters,
        or too few positives mined.
        """
        init = check_choice(init, "init", INITS)
        saved = (self.W, self._opt, self.loss_history_, self.mining_history_, self.fit_seconds_, self.fit_info_)
        try:
            self.W = SimHash(self.dim, self.k, self.l, seed=self.seed).W
            if init == "centred":
                Q, _ = as_matrix(queries, "queries", self.dim)
                X, _ = as_matrix(items, "items", self.dim)
                self.W = _centred(self.W, self.nbits, (Q, X))
            self._opt = None
            self.loss_history_, self.mining_history_, self.fit_seconds_, self.fit_info_ = [], [], 0.0, {}
            return self._train(queries, items, epochs, lr, loss, top_fraction, neg_quantile, max_pairs,
                               batch_size, beta, margin, bucket_capacity, min_pairs, replay, mine_queries, seed)
        except BaseException:
            # a failed fit leaves the hasher as it was
            self.W, self._opt, self.loss_history_, self.mining_history_, self.fit_seconds_, self.fit_info_ = saved
            raise

    def partial_fit(self, queries, items, epochs=1, lr=0.02, loss="bce", top_fraction=0.001, neg_quantile=0.5,
                    max_pairs=8192, batch_size=1024, beta=2.0, margin=1.0, bucket_capacity=128, min_pairs=10,
                    replay=0.5, mine_queries=512, seed=None):
        """Continues training from the current W (and optimiser state); returns self.

        Same arguments as ``fit`` (default one epoch); mining uses these queries and
        items only. ``fit_seconds_``, ``loss_history_`` and ``mining_history_``
        accumulate over calls. Use it when the items drift (e.g. neurons during
        training, see ``DriftScheduler``). Once the hasher has been trained, an epoch
        in which the tables miss fewer than ``min_pairs`` positives ends the call
        without a step (recorded in ``mining_history_``) instead of raising.
        """
        return self._train(queries, items, epochs, lr, loss, top_fraction, neg_quantile, max_pairs, batch_size,
                           beta, margin, bucket_capacity, min_pairs, replay, mine_queries, seed)

    def _train(self, queries, items, epochs, lr, loss, top_fraction, neg_quantile, max_pairs, batch_size, beta,
               margin, bucket_capacity, min_pairs, replay, mine_queries, seed):
        t_start = time.perf_counter()
        Q, _ = as_matrix(queries, "queries", self.dim)
        X, _ = as_matrix(items, "items", self.dim)
        epochs = check_int(epochs, "epochs", 1, 1 << 20)
        lr = check_float(lr, "lr", 0.0, 10.0, lo_open=True)
        loss = check_choice(loss, "loss", LOSSES)
        top_fraction = check_float(top_fraction, "top_fraction", 0.0, 0.5, lo_open=True)
        neg_quantile = check_float(neg_quantile, "neg_quantile", 0.0, 1.0, lo_open=True)
        if neg_quantile >= 1.0:
            raise ValueError(f"neg_quantile: expected a number in (0, 1), got {neg_quantile}")
        max_pairs = check_int(max_pairs, "max_pairs", 1, 1 << 30)
        batch_size = check_int(batch_size, "batch_size", 2, 1 << 24)
        beta = check_float(beta, "beta", 0.0, 1e6, lo_open=True)
        margin = check_float(margin, "margin", 0.0, 2.0)
        bucket_capacity = check_int(bucket_capacity, "bucket_capacity", 1, 65535)
        min_pairs = check_int(min_pairs, "min_pairs", 1, 1 << 30)
        replay = check_float(replay, "replay", 0.0, 1.0)
        mine_queries = check_int(mine_queries, "mine_queries", 1, 1 << 30)
        seed = self.seed if seed is None else check_int(seed, "seed", 0, 2**63 - 1)
        if Q.shape[0] == 0:
            raise ValueError("queries: expected at least 1 row, got 0")
        if X.shape[0] < 2:
            raise ValueError(f"items: expected at least 2 rows, got {X.shape[0]}")
        if X.shape[0] >= (1 << 31) - 1:
            raise ValueError(f"items: expected fewer than 2^31 - 1 rows, got {X.shape[0]}")
        rng = np.random.default_rng([seed, len(self.loss_history_)])
        fresh = not self.loss_history_  # nothing trained yet: too few pairs is an error, not convergence
        info = self.fit_info_
        for key in ("exact_seconds", "tables_seconds", "steps_seconds", "steps"):
            info.setdefault(key, 0)

        t0 = time.perf_counter()
        n_top = min(X.shape[0] - 1, max(1, math.ceil(top_fraction * X.shape[0])))
        top, neg_level = _exact_levels(Q, X, n_top, neg_quantile)
        info["exact_seconds"] += time.perf_counter() - t0
        Qn, Xn = _unit_rows(Q), _unit_rows(X)
        if self._opt is None:
            self._opt = dict(m=np.zeros((self.dim, self.nbits)), v=np.zeros((self.dim, self.nbits)), t=0)
        V = self.W[:, :self.nbits].astype(np.float64)
        V /= np.maximum(np.linalg.norm(V, axis=0), 1e-30)

        for epoch in range(epochs):
            t0 = time.perf_counter()
            pos, neg, stats = self._mine(Q, X, top, neg_level, max_pairs, bucket_capacity, replay, mine_queries, rng)
            info["tables_seconds"] += time.perf_counter() - t0
            self.mining_history_.append(stats)
            if stats["missed_positives"] < min_pairs:
                if stats["n_top_pairs"] < min_pairs or (epoch == 0 and fresh):
                    raise ValueError(
                        f"fit: mined only {stats['missed_positives']} positive pairs (top pairs the tables miss) "
                        f"of {stats['n_top_pairs']}, expected at least min_pairs={min_pairs}: give more queries "
                        f"or items, raise top_fraction, or the tables already find their top pairs")
                break  # the tables already find (almost) every positive: nothing left to learn
            t0 = time.perf_counter()
            n_steps = max(1, math.ceil((pos.shape[0] + neg.shape[0]) / batch_size))
            losses = []
            for _ in range(n_steps):
                half = batch_size // 2
                bp = pos[rng.integers(0, pos.shape[0], size=half)]
                bn = neg[rng.integers(0, neg.shape[0], size=batch_size - half)] if neg.shape[0] else neg
                if loss == "bce":
                    value, G = _bce_grad(V, Qn, Xn, bp, bn, self.k, self.l, beta)
                else:
                    value, G = _triplet_grad(V, Qn, Xn, bp, neg, Xn.shape[0], beta, margin, rng)
                V = self._adam_step(V, G, lr)
                losses.append(value)
            info["steps_seconds"] += time.perf_counter() - t0
            info["steps"] += n_steps
            self.loss_history_.append(float(np.mean(losses)))
            self.W = np.zeros_like(self.W)
            self.W[:, :self.nbits] = V.astype(np.float32)
        self.fit_seconds_ += time.perf_counter() - t_start
        info["fit_seconds"] = self.fit_seconds_
        return self

    def _adam_step(self, V, G, lr, b1=0.9, b2=0.999):
        G = G - V * np.einsum("ij,ij->j", V, G)  # tangent to the unit sphere of each column
        o = self._opt
        o["t"] += 1
        o["m"] = b1 * o["m"] + (1 - b1) * G
        o["v"] = b2 * o["v"] + (1 - b2) * G * G
        mh = o["m"] / (1 - b1 ** o["t"])
        vh = o["v"] / (1 - b2 ** o["t"])
        V = V - (lr / math.sqrt(self.dim)) * mh / (np.sqrt(vh) + 1e-12)
        return V / np.maximum(np.linalg.norm(V, axis=0), 1e-30)

    def _mine(self, Q, X, top, neg_level, max_pairs, bucket_capacity, replay, mine_queries, rng):
        """Training pairs as (p, 2) int64 (query, item) arrays (positives, negatives) and stats.

        Hard pairs: the positives the current tables miss and the negatives they return.
        A ``replay`` fraction of each class is drawn instead from all positives (found
        or not) and from random below-level pairs (returned or not), so that the steps
        do not lose what the tables already get right.
        """
        tables = LSHTables(self, bucket_capacity=bucket_capacity)
        tables.insert(np.arange(X.shape[0], dtype=np.int32), X)
        nq, n = Q.shape[0], X.shape[0]
        qsel = np.arange(nq, dtype=np.int64)
        if nq > mine_queries:
            qsel = np.sort(rng.choice(nq, size=mine_queries, replace=False))
        indptr, ids, _ = tables.query(Q[qsel])
        qof = np.repeat(qsel, np.diff(indptr))
        cand_code = qof * n + ids
        top_code = (qsel[:, None] * n + top[qsel]).ravel()
        found = _contains(np.sort(cand_code), top_code)
        missed = top_code[~found]
        n_replay = int(round(replay * max_pairs))
        n_hard = max_pairs - n_replay
        if missed.size > n_hard:
            missed = rng.choice(missed, size=n_hard, replace=False)
        # returned negatives: score a sample of the candidates, keep those below the query's level
        sample = cand_code
        if sample.size > 4 * n_hard:
            sample = rng.choice(cand_code, size=4 * n_hard, replace=False)
        below = self._below(Q, X, sample, neg_level)
        negs = sample[below]
        if negs.size > n_hard:
            negs = rng.choice(negs, size=n_hard, replace=False)
        pos_all, neg_all = missed, negs
        if n_replay:
            pos_all = np.concatenate([missed, rng.choice(top_code, size=n_replay, replace=True)])
        if n_replay:
            rand = qsel[rng.integers(0, qsel.size, size=2 * n_replay)] * n + rng.integers(0, n, size=2 * n_replay)
            rand = rand[self._below(Q, X, rand, neg_level)][:n_replay]
            neg_all = np.concatenate([negs, rand])
        stats = dict(n_top_pairs=int(top_code.size), missed_positives=int((~found).sum()),
                     recall=float(found.mean()), mean_candidates=float(ids.size / qsel.size),
                     returned_negatives_est=float(below.mean() * ids.size) if sample.size else 0.0,
                     positives_used=int(pos_all.size), negatives_used=int(neg_all.size))
        pos = np.stack([pos_all // n, pos_all % n], axis=1)
        neg = np.stack([neg_all // n, neg_all % n], axis=1)
        return pos, neg, stats

    @staticmethod
    def _below(Q, X, codes, level):
        """Whether each pair code (query * n + item) scores below its query's level."""
        n = X.shape[0]
        qi, xi = codes // n, codes % n
        scores = np.empty(codes.size, dtype=np.float32)
        for s in range(0, codes.size, 65536):
            scores[s:s + 65536] = np.einsum("ij,ij->i", Q[qi[s:s + 65536]], X[xi[s:s + 65536]])
        return scores < level[qi]


def _centred(W, nbits, groups):
    """W with its first nbits columns projected orthogonally to the mean direction of each group's
    unit rows, then rescaled to unit norm: every hyperplane then contains those directions
    and splits data that sits in a narrow cone around them (what centring does for SimHash,
    without a bias term that the kernels do not have)."""
    M = []
    for R in groups:
        if R.shape[0]:
            mean = _unit_rows(R).astype(np.float64).mean(axis=0)
            if np.linalg.norm(mean) > 1e-6:
                M.append(mean)
    if not M or W.shape[0] <= len(M):
        return W
    Qb, _ = np.linalg.qr(np.stack(M, axis=1))
    V = W[:, :nbits].astype(np.float64)
    V -= Qb @ (Qb.T @ V)
    norms = np.linalg.norm(V, axis=0)
    if (norms < 1e-12).any():
        return W
    out = np.zeros_like(W)
    out[:, :nbits] = (V / norms).astype(np.float32)
    return out


def _contains(sorted_codes, codes):
    """codes[i] in sorted_codes, by binary search (np.isin hashes, far slower at millions)."""
    pos = np.searchsorted(sorted_codes, codes)
    pos[pos == sorted_codes.size] = 0
    return sorted_codes[pos] == codes if sorted_codes.size else np.zeros(codes.shape, dtype=bool)


def _exact_levels(Q, X, n_top, neg_quantile):
    """Each query's n_top best items (nq, n_top) int64 and its neg_quantile score level (nq,)."""
    nq, n = Q.shape[0], X.shape[0]
    top = np.empty((nq, n_top), dtype=np.int64)
    level = np.empty(nq, dtype=np.float32)
    chunk = max(1, _IP_CHUNK_BYTES // (4 * n))
    qpos = min(n - 1, max(0, int(neg_quantile * n)))
    XT = np.ascontiguousarray(X.T)
    for s in range(0, nq, chunk):
        S = Q[s:s + chunk] @ XT
        top[s:s + chunk] = np.argpartition(-S, n_top - 1, axis=1)[:, :n_top]
        level[s:s + chunk] = np.partition(S, qpos, axis=1)[:, qpos]
    return top, level


def _relax(V, Rq, Rx, beta):
    """tanh-relaxed bits of unit rows Rq and Rx: Sq, Sx (rows, nbits) float64 and the
    per-column factor c with dS/dproj = c * (1 - S^2).

    Projection b is scaled by beta / sigma_b, sigma_b the standard deviation of the
    projections of all these rows together (treated as a constant in the gradient):
    one relaxation per bit for queries and items, whatever the spread of the data along
    w_b. A bit that puts almost every row on one side is then saturated (collides for
    every pair, as its binary version does) rather than merely "fairly confident".
    """
    V32 = V.astype(np.float32)  # float32 products: half the time of float64, ample for a gradient
    Pq = (Rq @ V32).astype(np.float64)
    Px = (Rx @ V32).astype(np.float64)
    sd = np.concatenate([Pq, Px]).std(axis=0)
    col = beta / np.maximum(sd, 1e-12)
    return np.tanh(Pq * col), np.tanh(Px * col), col


def _backproject(R, dP):
    """R.T @ dP (rows float32, gradient w.r.t. the projections) as a float64 (dim, nbits) gradient."""
    return (R.T @ dP.astype(np.float32)).astype(np.float64)


def _bce_grad(V, Qn, Xn, pos, neg, k, l, beta):
    """Pairwise BCE on the relaxed probability that the tables return a pair, and its
    gradient in V (dim, nbits); see the module docstring."""
    pairs = np.concatenate([pos, neg]) if neg.shape[0] else pos
    y = np.zeros(pairs.shape[0], dtype=bool)
    y[:pos.shape[0]] = True
    uq, iq = np.unique(pairs[:, 0], return_inverse=True)
    ux, ix = np.unique(pairs[:, 1], return_inverse=True)
    Sq, Sx, col = _relax(V, Qn[uq], Xn[ux], beta)
    A, B = Sq[iq], Sx[ix]
    C = np.clip((1.0 + A * B) * 0.5, _EPS, 1.0)  # per-bit collision probabilities
    P = np.minimum(np.exp(np.log(C).reshape(-1, l, k).sum(axis=2)), 1.0 - _EPS)  # per table (p, l)
    log1mP = np.log1p(-P)
    miss = log1mP.sum(axis=1, keepdims=True)  # log prod_t (1 - P_t) = log(1 - U)
    npos, nneg = int(y.sum()), int((~y).sum())
    value = 0.0
    dP = np.empty_like(P)  # dloss / dP_t
    if npos:
        U = np.maximum(-np.expm1(miss[y]), _EPS)
        value += float(-np.log(U).mean())
        dP[y] = -np.exp(miss[y] - log1mP[y]) / (U * npos)
    if nneg:
        value += float(-miss[~y].mean())
        dP[~y] = 1.0 / ((1.0 - P[~y]) * nneg)
    dC = np.repeat(dP * P, k, axis=1) / C
    dA, dB = dC * B * 0.5, dC * A * 0.5
    Gq = _one_hot(iq, uq.size) @ dA
    Gx = _one_hot(ix, ux.size) @ dB
    G = _backproject(Qn[uq], Gq * (1.0 - Sq * Sq) * col) + _backproject(Xn[ux], Gx * (1.0 - Sx * Sx) * col)
    return value, G


def _cos_grad(a, b):
    """cos(a_i, b_i) per row and its gradients in a and b."""
    na = np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    nb = np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = np.einsum("ij,ij->i", a, b)[:, None] / (na * nb)
    ga = b / (na * nb) - cos * a / (na * na)
    gb = a / (na * nb) - cos * b / (nb * nb)
    return cos[:, 0], ga, gb


def _triplet_grad(V, Qn, Xn, pos, neg_pool, n_items, beta, margin, rng):
    """Cosine triplet hinge on relaxed codes and its gradient in V."""
    p = pos.shape[0]
    xneg = rng.integers(0, n_items, size=p)  # fallback: a random item
    if neg_pool.shape[0]:
        order = np.argsort(neg_pool[:, 0], kind="stable")
        nq_sorted = neg_pool[order, 0]
        lo = np.searchsorted(nq_sorted, pos[:, 0], side="left")
        hi = np.searchsorted(nq_sorted, pos[:, 0], side="right")
        has = hi > lo
        pick = lo[has] + (rng.random(int(has.sum())) * (hi[has] - lo[has])).astype(np.int64)
        xneg[has] = neg_pool[order[pick], 1]
    rows_q, rows_x = pos[:, 0], np.concatenate([pos[:, 1], xneg])
    uq, iq = np.unique(rows_q, return_inverse=True)
    ux, ix = np.unique(rows_x, return_inverse=True)
    Sq, Sx, col = _relax(V, Qn[uq], Xn[ux], beta)
    hq, hp, hn = Sq[iq], Sx[ix[:p]], Sx[ix[p:]]
    cp, gqp, gp = _cos_grad(hq, hp)
    cn, gqn, gn = _cos_grad(hq, hn)
    hinge = margin - cp + cn
    act = (hinge > 0)[:, None] / p
    value = float(np.maximum(hinge, 0).mean())
    dq = act * (gqn - gqp)
    dx = np.concatenate([-act * gp, act * gn])
    Gq = _one_hot(iq, uq.size) @ dq
    Gx = _one_hot(ix, ux.size) @ dx
    G = _backproject(Qn[uq], Gq * (1.0 - Sq * Sq) * col) + _backproject(Xn[ux], Gx * (1.0 - Sx * Sx) * col)
    return value, G


def _restore(cls, kwargs, W, state):
    h = cls(**kwargs)
    h._set_W(W)
    h.fit_seconds_ = state.get("fit_seconds_", 0.0)
    h.loss_history_ = list(state.get("loss_history_", []))
    return h
