"""SLIDE-style sparse MLP training on CPU (Chen et al., MLSys 2020), done right.

Network: sparse input (CSR) -> dense hidden layers -> a huge output layer of which
each sample activates only ~target_active neurons: its true labels, then the
neurons its last hidden activation collides with in LSH tables over the output
weights (best collision count first), then random neurons if still short. Softmax
cross-entropy runs over that active set only.

What differs from the original SLIDE code (see ../shared/reference.md section 3):
- Lazy Adam: a batch updates only the rows it touched (output neurons and input
  features), with torch.optim.SparseAdam's rule; no dense pass over all weights.
- No per-neuron per-sample buffers: the C++ backward groups the batch's
  (neuron, sample, dz) triples by neuron, so each row is summed and stepped by one
  thread. Nothing is racy and results do not depend on the thread count.
- Table maintenance: rows changed since the last rehash are re-hashed on an
  exponentially growing schedule (first after ``rebuild_first`` batches, each period
  ``rebuild_growth`` times the previous); only rows whose keys changed are removed and
  reinserted.
- ``hash="learned"`` (MONGOOSE, Chen et al. ICLR 2021): a LearnedSimHash fitted on
  recent hidden activations (queries) and the output rows (items), and a
  DriftScheduler instead of rehashing every touched row: at each scheduled pass the
  rows touched since the last pass are fingerprinted (8-bit SimHash), only those
  whose fingerprint changed are re-hashed, and the hash function is refitted (one
  ``partial_fit`` epoch, then a full rebuild) only when the fingerprints of all rows
  have drifted past ``refit_threshold`` since the last fit. The projection stays the
  random one for the first ``learn_after`` batches (drift then only rebuilds the
  tables): fitted on the fast-moving early weights, the MONGOOSE objective slowed
  training several-fold (200K labels: P@1 0.03 against SimHash's 0.26 after 45 s),
  fitted after 800 batches it did not (benchmarks/README.md, learned section).
- Shuffled every epoch, evaluated on whole sets, configured at run time from Python.
"""
from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
import zipfile
import zlib

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import check_choice, check_float, check_int
from .learned import DriftScheduler, LearnedSimHash
from .metrics import propensities_from_counts, ranking_metrics
from .params import default_params
from .rerank import SHARE as RERANK_SHARE
from .rerank import FeatureReranker
from .rerank import fit_stage as _fit_rerank_stage
from . import neighbours as _nb
from .simhash import SimHash
from .tables import LSHTables
from .topk import dense_topk
from .train_control import SCHEDULES, EarlyStopping, RunClock, lr_factor
from .wta import DWTAHash

FORMAT_VERSION = 4  # 2: a "kind", checkpoint or inference-only; 3: the feature re-ranker; 4: neighbours; 1-3 load
SAVE_DTYPES = ("float32", "float16")  # weights of an inference-only file
ACTIVATIONS = ("relu", "tanh")
HASHES = ("dwta", "simhash", "learned")
DEFAULT_EPOCHS = 5      # fit's passes when neither epochs nor time_budget is given
DEFAULT_BATCH = 256
DEFAULT_HIDDEN = (512,)  # see SparseMLP's hidden for the measurements
CENTROID_SCALE = 10.0      # logit scale of centroid-initialised output rows (fit's init="centroid")
MAX_HELD_OUT = 20_000   # rows a fractional validation holds out, at most
# fit's automatic evaluations wait while they have taken more than this share of its time:
# scoring 2,000 rows against 20K labels costs as much as ~20 training batches, and at 10 per
# epoch they took 79% of a 30 s budget (amazon-670k-like at scale 0.03)
EVAL_SHARE = 0.1
_QUERY_BUFFER = 1024  # recent hidden activations kept as the learned hash's training queries


class _Adam:
    """Weights with their Adam moments (float32, C-contiguous)."""

    def __init__(self, w):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        self.m = np.zeros_like(self.w)
        self.v = np.zeros_like(self.w)

    def dense_step(self, g, lr, b1, b2, eps, t):
        """Plain Adam (torch.optim.Adam's rule) for small dense parameters."""
        self.m *= b1
        self.m += (1 - b1) * g
        self.v *= b2
        self.v += (1 - b2) * g * g
        step = lr / (1 - b1 ** t)
        denom = np.sqrt(self.v) / math.sqrt(1 - b2 ** t) + eps
        self.w -= (step * self.m / denom).astype(np.float32)

    @property
    def nbytes(self):
        return self.w.nbytes * 3


def _uniform(rng, shape, bound):
    """U(-bound, bound) float32 without float64 temporaries (huge output layers)."""
    w = rng.random(shape, dtype=np.float32)
    w *= np.float32(2 * bound)
    w -= np.float32(bound)
    return w


def _as_features(X, input_dim):
    if not sp.issparse(X):
        raise TypeError(f"X: expected a scipy.sparse CSR matrix (n, {input_dim}), got {type(X).__name__}")
    X = X.tocsr()
    if X.shape[1] != input_dim:
        raise ValueError(f"X: expected {input_dim} columns (input_dim), got {X.shape[1]}")
    if X.dtype.kind not in "fiub":
        raise TypeError(f"X: expected a real dtype, got {X.dtype}")
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    if X.nnz and not np.isfinite(X.data).all():
        pos = int(np.argmax(~np.isfinite(X.data)))
        row = int(np.searchsorted(X.indptr, pos, side="right") - 1)
        raise ValueError(f"X: expected finite values, got NaN or inf in row {row}")
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


def _as_labels(Y, n, output_dim):
    """Labels as a CSR indicator (n, output_dim) with sorted unique ids per row."""
    if sp.issparse(Y):
        Y = Y.tocsr()
        if Y.shape != (n, output_dim):
            raise ValueError(f"Y: expected shape ({n}, {output_dim}), got {Y.shape}")
        Y = Y.copy()
        Y.sum_duplicates()
        Y.eliminate_zeros()
    elif isinstance(Y, (list, tuple)):
        if len(Y) != n:
            raise ValueError(f"Y: expected {n} label lists (one per row of X), got {len(Y)}")
        lens = np.fromiter((len(r) for r in Y), dtype=np.int64, count=n)
        flat = np.fromiter((int(v) for r in Y for v in r), dtype=np.int64, count=int(lens.sum()))
        if flat.size and (flat.min() < 0 or flat.max() >= output_dim):
            bad = int(np.flatnonzero((flat < 0) | (flat >= output_dim))[0])
            row = int(np.searchsorted(np.cumsum(lens), bad, side="right"))
            raise ValueError(f"Y: expected labels in [0, {output_dim}), got {flat[bad]} in row {row}")
        indptr = np.concatenate([[0], np.cumsum(lens)])
        Y = sp.csr_matrix((np.ones(flat.size, np.float32), flat, indptr), shape=(n, output_dim))
        Y.sum_duplicates()
    else:
        raise TypeError(f"Y: expected a scipy.sparse indicator matrix or a list of label lists, got {type(Y).__name__}")
    empty = np.flatnonzero(np.diff(Y.indptr) == 0)
    if empty.size:
        raise ValueError(f"Y: expected at least one label per row, row {int(empty[0])} has none")
    return Y


class SparseMLP:
    """An MLP with a huge output layer trained sparsely with LSH-selected neurons.

    Parameters
    ----------
    input_dim, output_dim : int, features and labels.
    hidden : tuple of int, hidden layer widths. Default DEFAULT_HIDDEN, (512,): in 40 s of
        fit it beat 128 on every set tried (test P@1, 128 -> 512: amazon-670k-like at 0.03,
        20K labels, 0.455 -> 0.668; a hidden-teacher set with 20K labels 0.928 -> 0.942;
        Debian Depends, 15K labels, 0.744 -> 0.760; and in 10 s on the four quick benchmark
        sets: 0.520 -> 0.637, 0.886 -> 0.938, 0.941 -> 0.939, 0.672 -> 0.684); 1024 was no
        better than 512 (0.680, 0.941, 0.750). On a 100K-label make_xmc set a random 128-wide
        ReLU projection of the label centroids ranks at P@1 0.05, a 512-wide one at 0.40.
    activation : "relu" | "tanh", for the hidden layers.
    hash : "simhash" (default) | "dwta" | "learned", the family hashing output neurons
        and activations ("learned": MONGOOSE LearnedSimHash + DriftScheduler, see the
        module docstring). SimHash is the default: on the 200K-label benchmark, trained
        side by side on one stream, it leaves the early P@1 plateau ~2.5x sooner than DWTA
        (P@1 0.15 after 26 s vs 66 s, 0.30 after 44 s vs 104 s) at about the same
        samples/s; DWTA catches up after ~2 minutes (benchmarks/README.md, learned section).
    k, l : codes per key and tables; l defaults to 50 and k is chosen with
        hashlab.default_params so that about twice target_active neurons are
        retrieved for unrelated activations (then trimmed by collision count).
    target_active : active output neurons per sample (labels included); default
        min(output_dim, max(512, output_dim // 100)). target_active >= output_dim
        trains the full softmax.
    lr : Adam learning rate (betas 0.9, 0.999, eps 1e-8); default 5e-3, the peak of fit's
        schedule (3 epochs on 15K Debian labels: P@1 0.59 at 1e-3, 0.74 at 5e-3, 0.72 at 1e-2).
    seed : int, drives initialisation, hashing, shuffling and random fill.
    bucket_capacity, rebuild_first, rebuild_growth : table capacity (default from
        default_params), batches before the first rehash, and the growth factor of
        the rehash period (capped at 4 * rebuild_first batches). For hash="learned",
        the same schedule times the drift checks.
    refit_threshold : float in (0, 1], hash="learned" only: fraction of flipped
        fingerprint bits (over all output rows, since the last fit) that triggers a
        refit of the hash function and a full rebuild.
    learn_after : int >= 0, hash="learned" only: batches trained on the random
        projection before the first maintenance pass that fits it (default 800).

    Attributes: ``rebuilds`` (table maintenance passes), ``refits`` (drift-triggered full
    rebuilds, each refitting the learned hash once it is trained) and
    ``rows_rehashed`` (rows whose keys were recomputed, all passes), ``history``.
    """

    reranker = None       # FeatureReranker of the last fit (rerank=True), or None
    rerank_report_ = None  # what fit's re-ranking stage did (hashlab.rerank.fit_stage)
    neighbours = None     # HiddenNeighbours of the last fit (neighbours=True), or None
    neighbours_report_ = None  # what fit's neighbour stage did (hashlab.neighbours.fit_stage)

    def __init__(self, input_dim, output_dim, hidden=None, activation="relu", hash="simhash", k=None, l=None,
                 target_active=None, lr=5e-3, seed=0, bucket_capacity=None, rebuild_first=50,
                 rebuild_growth=1.2, bin_size=8, refit_threshold=0.1, learn_after=800):
        self._configure(input_dim, output_dim, hidden, activation, hash, k, l, target_active, lr, seed,
                        bucket_capacity, rebuild_first, rebuild_growth, bin_size, refit_threshold, learn_after)
        self._init_params()
        self._build_tables()
        if self.hash == "learned":
            self._sched.update(np.arange(self.output_dim), self.out_w.w)

    def _configure(self, input_dim, output_dim, hidden, activation, hash, k, l, target_active, lr, seed,
                   bucket_capacity, rebuild_first, rebuild_growth, bin_size, refit_threshold=0.1, learn_after=800):
        self.input_dim = check_int(input_dim, "input_dim", 1, 2**31 - 2)
        self.output_dim = check_int(output_dim, "output_dim", 2, 2**31 - 2)
        if hidden is None:
            hidden = DEFAULT_HIDDEN
        if isinstance(hidden, (int, np.integer)):
            hidden = (hidden,)
        if not isinstance(hidden, (tuple, list)) or not hidden:
            raise TypeError(f"hidden: expected a non-empty tuple of layer widths, got {hidden!r}")
        self.hidden = tuple(check_int(h, "hidden", 1, 65536) for h in hidden)
        self.activation = check_choice(activation, "activation", ACTIVATIONS)
        self.hash = check_choice(hash, "hash", HASHES)
        if target_active is None:
            target_active = min(self.output_dim, max(512, self.output_dim // 100))
        self.target_active = check_int(target_active, "target_active", 1)
        self.lr = check_float(lr, "lr", 0.0, 10.0, lo_open=True)
        self.seed = check_int(seed, "seed", 0, 2**32 - 1)
        self.rebuild_first = check_int(rebuild_first, "rebuild_first", 1)
        self.rebuild_growth = check_float(rebuild_growth, "rebuild_growth", 1.0, 100.0)
        self.bin_size = check_int(bin_size, "bin_size", 2, 256)
        self.refit_threshold = check_float(refit_threshold, "refit_threshold", 0.0, 1.0, lo_open=True)
        self.learn_after = check_int(learn_after, "learn_after", 0, None)
        # Many tables (SLIDE uses 50) so that collision counts rank the candidates;
        # k so that about twice target_active neurons are retrieved.
        self.l = 50 if l is None else check_int(l, "l", 1, 65535)
        frac = min(1.0, 2.0 * self.target_active / self.output_dim)
        family = "dwta" if self.hash == "dwta" else "simhash"
        p = default_params(self._lsh_items(), self.hidden[-1], frac, family=family, bin_size=self.bin_size,
                           l=self.l)
        self.k = p.k if k is None else check_int(k, "k", 1, 32)
        self.bucket_capacity = p.bucket_capacity if bucket_capacity is None else \
            check_int(bucket_capacity, "bucket_capacity", 1, 65535)
        self._range_bits = p.range_bits
        self.step = 0
        self._epoch_rng = np.random.default_rng(self.seed + 1)
        self._next_rebuild = self.rebuild_first
        self._period = float(self.rebuild_first)
        self.rebuilds = 0
        self.refits = 0
        self.rows_rehashed = 0
        self.history = []
        self._lr_scale = 1.0     # the lr schedule's current factor (fit sets it per batch)
        self.label_counts_ = None  # training rows per label, all fit calls (propensity-scored metrics)
        self.train_rows_ = 0
        self.best_step_ = None   # step of the weights restore_best put back
        self.hasher = None
        if self.hash == "learned":
            d = self.hidden[-1]
            self._sched = DriftScheduler(d, bits=8, threshold=self.refit_threshold, seed=self.seed + 6)
            self._qbuf = np.zeros((_QUERY_BUFFER, d), np.float32)  # ring buffer of hidden activations
            self._qfill = 0
            self._hash_fitted = False  # the first fit has run (after learn_after batches)

    def _lsh_items(self):
        """Output rows one set of tables holds (the whole layer here; a shard when sharded)."""
        return self.output_dim

    def _init_params(self):
        rng = np.random.default_rng(self.seed)
        self._init_hidden(rng)
        self._init_output(rng)

    def _init_hidden(self, rng):
        sizes = (self.input_dim,) + self.hidden
        # input layer: rows are features (gathered per non-zero); N(0, 1/width)
        w0 = rng.standard_normal((self.input_dim, self.hidden[0]), dtype=np.float32)
        w0 *= np.float32(1 / math.sqrt(self.hidden[0]))
        self.layers = [_Adam(w0)]
        for a, b in zip(sizes[1:-1], sizes[2:]):  # dense hidden layers, torch.nn.Linear's init
            self.layers.append(_Adam(_uniform(rng, (a, b), 1 / math.sqrt(a))))
        self.biases = [_Adam(np.zeros(h, np.float32)) for h in self.hidden]

    def _init_output(self, rng):
        d = self.hidden[-1]
        self.out_w = _Adam(_uniform(rng, (self.output_dim, d), 1 / math.sqrt(d)))
        self.out_b = _Adam(np.zeros(self.output_dim, np.float32))

    # -- hashing of the output layer ---------------------------------------------------
    def _make_hasher(self):
        d = self.hidden[-1]
        hseed = self.seed + 2
        if self.hash == "dwta":
            return DWTAHash(d, self.k, self.l, bin_size=self.bin_size, seed=hseed)
        if self.hash == "learned":  # random Gaussian SimHash until the first fit
            return LearnedSimHash(d, self.k, self.l, seed=hseed)
        return SimHash(d, self.k, self.l, kind="gaussian", seed=hseed)

    def _build_tables(self, keys=None):
        """Tables over every output row with ``self.hasher`` (made on first use); keys (output_dim, l)
        uint32 if already known."""
        if self.hasher is None:
            self.hasher = self._make_hasher()
        rb = min(self._range_bits, self.hasher.key_bits)
        self.tables = LSHTables(self.hasher, bucket_capacity=self.bucket_capacity, policy="reservoir",
                                range_bits=rb, seed=self.seed + 3)
        n = self.out_w.w.shape[0]
        self._keys = self.hasher.hash(self.out_w.w) if keys is None else keys
        self.tables.insert_keys(np.arange(n, dtype=np.int32), self._keys)
        self.tables.freeze()  # read-optimised between rehashes
        self._dirty = np.zeros(n, dtype=np.uint8)

    def _rehash(self):
        """Re-hashes rows updated since the last rehash; moves those whose keys changed."""
        rows = np.flatnonzero(self._dirty).astype(np.int32)
        if rows.size:
            keys = self.hasher.hash(self.out_w.w[rows])
            changed = np.flatnonzero((keys != self._keys[rows]).any(axis=1))
            ids = rows[changed]
            if ids.size:
                self.tables.thaw()
                self.tables.remove(ids)
                self.tables.insert_keys(ids, keys[changed])
                self.tables.freeze()
                self._keys[ids] = keys[changed]
        self._dirty[:] = 0
        self.rebuilds += 1
        self.rows_rehashed += rows.size
        self._advance_schedule()

    def _advance_schedule(self):
        # the period grows geometrically but never past 4x the first one: late in
        # training the weights still move, and stale tables hurt both training and
        # LSH inference (measured: 640-batch periods cost most of LSH P@1)
        self._period = min(self._period * self.rebuild_growth, 4.0 * self.rebuild_first)
        self._next_rebuild = self.step + max(1, int(round(self._period)))

    # -- forward / backward ----------------------------------------------------------
    def _act(self, z):
        return np.maximum(z, 0, out=z) if self.activation == "relu" else np.tanh(z, out=z)

    def _act_grad(self, h, g):
        if self.activation == "relu":
            g *= h > 0
        else:
            g *= 1 - h * h
        return g

    def _hidden(self, X):
        """Hidden activations of every layer for CSR rows X: list of (n, width) float32."""
        hs = [np.ascontiguousarray(self._act(np.asarray(X @ self.layers[0].w) + self.biases[0].w),
                                   dtype=np.float32)]
        for W, b in zip(self.layers[1:], self.biases[1:]):
            hs.append(np.ascontiguousarray(self._act(hs[-1] @ W.w + b.w), dtype=np.float32))
        return hs

    def _train_batch(self, X, Y):
        hs = self._hidden(X)
        H = hs[-1]
        keys = self.hasher.hash(H)
        if self.target_active >= self.output_dim:
            cind, cids = np.zeros(X.shape[0] + 1, np.int64), np.zeros(0, np.int32)
        else:
            cind, cids, _ = self.tables.query_keys(keys, 1, self.target_active)
        self.step += 1
        t, lr = self.step, self.lr * self._lr_scale
        loss, active, _, dH = _C.sparse_output_train(
            H, cind, cids, Y.indptr.astype(np.int64), Y.indices.astype(np.int32), self.target_active,
            (self.seed * 1_000_003 + t) & (2**64 - 1), self.out_w.w, self.out_w.m, self.out_w.v,
            self.out_b.w, self.out_b.m, self.out_b.v, lr, 0.9, 0.999, 1e-8, t, self._dirty)
        g = dH
        for i in range(len(self.hidden) - 1, -1, -1):
            g = self._act_grad(hs[i], g)
            self.biases[i].dense_step(g.sum(0), lr, 0.9, 0.999, 1e-8, t)
            if i > 0:
                gW = hs[i - 1].T @ g
                g_prev = g @ self.layers[i].w.T
                self.layers[i].dense_step(gW, lr, 0.9, 0.999, 1e-8, t)
                g = g_prev
        # input layer: only the features present in the batch
        Xt = X.T.tocsr()
        rows = np.flatnonzero(np.diff(Xt.indptr))
        G = np.ascontiguousarray(Xt[rows] @ g, dtype=np.float32)
        L0 = self.layers[0]
        _C.adam_rows(L0.w, L0.m, L0.v, rows.astype(np.int64), G, lr, 0.9, 0.999, 1e-8, t)
        if self.hash == "learned":
            self._remember_queries(H)
            if self.step >= self._next_rebuild:
                self._maintain_learned()
        elif self.step >= self._next_rebuild:
            self._rehash()
        return loss, active

    # -- learned hashing (MONGOOSE) ---------------------------------------------------------
    def _remember_queries(self, H):
        """Keeps some of this batch's hidden rows (batches are shuffled: a random subset) in the ring
        buffer of fit queries."""
        take = H[:max(1, _QUERY_BUFFER // 32)]
        pos = (self._qfill + np.arange(take.shape[0])) % _QUERY_BUFFER
        self._qbuf[pos] = take
        self._qfill += take.shape[0]

    def _fit_hasher(self):
        """Fits (first call: from the random projection in use) or refits the learned hash on the
        buffered activations and the output rows, then rebuilds the tables. Too few mined pairs
        (tiny layers whose tables already find every top pair) keep the current projection."""
        # the newest half of the buffer: mining costs queries x output rows inner products
        n = min(self._qfill, _QUERY_BUFFER // 2)
        Q = self._qbuf[(self._qfill - n + np.arange(n)) % _QUERY_BUFFER]
        kw = dict(bucket_capacity=self.bucket_capacity, mine_queries=256, max_pairs=4096, seed=self.seed + 7)
        try:
            if not self._hash_fitted:
                self.hasher.fit(Q, self.out_w.w, epochs=3, init="random", **kw)
            else:
                self.hasher.partial_fit(Q, self.out_w.w, epochs=1, **kw)
        except ValueError as e:
            if not str(e).startswith("fit: mined only"):
                raise
        self._hash_fitted = True
        self._rebuild_all()

    def _rebuild_all(self):
        """Tables rebuilt over every output row with the current hash; drift counted from here."""
        self.refits += 1
        self._build_tables()
        self._sched.clear()
        self._sched.update(np.arange(self.output_dim), self.out_w.w)
        self.rows_rehashed += self.output_dim

    def _maintain_learned(self):
        """Drift-driven maintenance: re-hash rows whose fingerprint changed; refit on drift (before
        learn_after batches: keep the random projection and rebuild)."""
        rows = np.flatnonzero(self._dirty)
        if not self._hash_fitted and self.step >= self.learn_after:
            self._fit_hasher()
        else:
            changed, _ = self._sched.update(rows, self.out_w.w[rows])
            if self._sched.should_refit and self._hash_fitted:
                self._fit_hasher()
            elif self._sched.should_refit:
                self._rebuild_all()
            elif changed.size:
                ids = changed.astype(np.int32)
                keys = self.hasher.hash(self.out_w.w[ids])
                self.tables.thaw()
                self.tables.remove(ids)
                self.tables.insert_keys(ids, keys)
                self.tables.freeze()
                self._keys[ids] = keys
                self.rows_rehashed += ids.size
        self._dirty[:] = 0
        self.rebuilds += 1
        self._advance_schedule()

    # -- public API ----------------------------------------------------------------------
    def fit(self, X, Y, epochs=None, batch_size=DEFAULT_BATCH, validation=None, checkpoint=None,
            checkpoint_every=None, eval_every=None, eval_size=2000, verbose=True, time_budget=None,
            early_stopping=None, restore_best=True, lr_schedule="linear", warmup=0.05, init="centroid",
            rerank=True, neighbours=True):
        """Trains on X (n, input_dim) CSR float32 with labels Y; returns self.

        Y: CSR indicator (n, output_dim) or a list of n label lists. Shuffles every epoch;
        can be called again to continue (each call is one planned run of the lr schedule).

        Length: ``epochs`` passes over the rows and/or ``time_budget`` seconds of wall clock
        (training, evaluations and checkpoints all count; checked after every batch, so
        fit returns at most one batch and one evaluation after the budget). Neither given:
        DEFAULT_EPOCHS passes; only time_budget: as many passes as fit in it.
        lr_schedule: "linear" (default), "cosine" or "constant" over the planned run (the
        fraction of planned batches, or of the budget, done; see hashlab.train_control),
        after a linear warm-up over the first ``warmup`` fraction (float in [0, 1)).

        validation: None, (X_val, Y_val), or a float in (0, 0.5): that fraction of the
        given rows (a seeded random choice, at most 20,000 rows) is held out of training.
        P@1 on ``eval_size`` of its rows (int, or None for all of them; a fixed random
        sample) is computed every ``eval_every`` batches (default: 10 times per epoch, and at
        least every 5% of a time budget, skipped while evaluations have taken more than
        EVAL_SHARE of the time so far) and after the last batch, shown on the progress bar and
        appended to ``self.history``. early_stopping: None or int patience: stop after that
        many evaluations in a row without a better P@1. restore_best (default True, with
        validation): at the end the weights of the best evaluation are put back (the Adam
        moments stay the latest) and the tables rebuilt over them.

        checkpoint: a path saved atomically every ``checkpoint_every`` batches (default:
        each epoch) and at the end. KeyboardInterrupt stops after the current batch, leaving
        the model consistent and the last checkpoint intact. ``self.history`` records: time
        (training seconds, evaluations excluded, cumulative over fit calls), step, samples,
        loss (moving average), lr, P@1. ``self.label_counts_`` accumulates training rows per label.

        init: "centroid" (default) or "random", used only by the first fit of a new model:
        "centroid" sets each output row with training rows to the hidden activation of its
        label's L2-normalised feature centroid (PIFA, as PECOS clusters labels), unit length
        times CENTROID_SCALE / the mean hidden norm, so training starts from a nearest-centroid
        classifier instead of chance; labels without rows keep the random init.
        rerank: True (default) ends fit with a FeatureReranker (hashlab.rerank: hashed per-label
        linear weights over the input features, added to the MLP's top-32 logits; trained on the
        training rows' shortlists, the MLP fixed), given hashlab.rerank.SHARE (25%) of
        time_budget, and kept only if it does not lower validation P@1 (when validation is
        given); ``predict_topk`` and ``evaluate`` then use it, ``rerank_report_`` says what it
        did. Every fit call trains a new one on the model it leaves.
        neighbours: True (default) then adds the label votes of the 30 training rows nearest in
        hidden space to the top-32 (hashlab.neighbours.HiddenNeighbours: cosine, weighted by
        cos ** 4), with the weight of the votes chosen on the validation rows (up to
        hashlab.neighbours.SHARE, 10%, of time_budget, taken from the MLP's share) and dropped when
        no weight raises validation P@1; needs validation rows (without them nothing is built).
        It keeps the training rows' hidden activations (n, hidden[-1]) float32 and labels in
        the model and its files: prediction then costs one more product against them.
        ``neighbours_report_`` says what it did.
        """
        self._check_trainable()
        X = _as_features(X, self.input_dim)
        n = X.shape[0]
        if n == 0:
            raise ValueError("X: expected at least one row, got an empty data set")
        Y = _as_labels(Y, n, self.output_dim)
        if time_budget is not None:
            time_budget = check_float(time_budget, "time_budget", 0.0, 1e9, lo_open=True)
        if epochs is None:
            epochs = DEFAULT_EPOCHS if time_budget is None else None
        else:
            epochs = check_int(epochs, "epochs", 0)
        batch_size = check_int(batch_size, "batch_size", 1)
        if eval_size is not None:
            eval_size = check_int(eval_size, "eval_size", 1)
        if early_stopping is not None:
            early_stopping = check_int(early_stopping, "early_stopping", 1)
            if validation is None:
                raise ValueError("early_stopping: expected validation data (a tuple or a held-out fraction), got None")
        lr_schedule = check_choice(lr_schedule, "lr_schedule", SCHEDULES)
        warmup = check_float(warmup, "warmup", 0.0, 1.0, hi_open=True)
        if checkpoint_every is not None:
            checkpoint_every = check_int(checkpoint_every, "checkpoint_every", 1)
        X, Y, val = self._split_validation(X, Y, validation, eval_size)
        n = X.shape[0]
        n_batches = -(-n // batch_size)
        auto_eval = eval_every is None
        if auto_eval:
            eval_every = max(1, n_batches // 10)
        else:
            eval_every = check_int(eval_every, "eval_every", 1)
        init = check_choice(init, "init", ("centroid", "random"))
        for name, flag in (("rerank", rerank), ("neighbours", neighbours)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name}: expected a bool, got {type(flag).__name__}")
        # both score the MLP they were fitted on: refitted at the end
        self.reranker = self.neighbours = None
        t_start = time.perf_counter()
        stages = (RERANK_SHARE if rerank else 0.0) + (_nb.SHARE if neighbours and val is not None else 0.0)
        mlp_budget = None if time_budget is None else time_budget * (1 - stages)
        clock = RunClock(None, mlp_budget)  # the budget covers the init and everything after it
        if init == "centroid" and self.step == 0:
            self._init_from_centroids(X, Y)
        counts = np.bincount(Y.indices, minlength=self.output_dim).astype(np.int64)
        self.label_counts_ = counts if self.label_counts_ is None else self.label_counts_ + counts
        self.train_rows_ += n

        from tqdm.auto import tqdm

        interrupted = []
        restore = None
        if threading.current_thread() is threading.main_thread():
            restore = signal.signal(signal.SIGINT, lambda *a: interrupted.append(True))
        clock.total_batches = None if epochs is None else epochs * n_batches
        stopper = EarlyStopping(early_stopping, restore_best and val is not None)
        total = epochs * n if epochs is not None else None
        bar = tqdm(total=total, unit="samples", disable=not verbose, dynamic_ncols=True)
        seen, ema, eval_s = 0, None, 0.0  # eval_s: evaluation time, kept off the training clock
        last_eval = 0.0
        train_time, prior = (self.history[-1]["time"], self.history[-1]["samples"]) if self.history else (0.0, 0)
        stop = False
        try:
            epoch = 0
            while not stop and (epochs is None or epoch < epochs):
                order = self._epoch_rng.permutation(n)
                for b in range(n_batches):
                    self._lr_scale = lr_factor(lr_schedule, clock.progress(), warmup)
                    idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
                    loss, _ = self._train_batch(X[idx], Y[idx])
                    clock.batches += 1
                    seen += idx.size
                    ema = loss / idx.size if ema is None else 0.95 * ema + 0.05 * loss / idx.size
                    bar.update(idx.size)
                    out_of_time = clock.out_of_time()
                    elapsed = clock.elapsed() - eval_s
                    last = out_of_time or (epochs is not None and epoch == epochs - 1 and b == n_batches - 1)
                    # with a budget: every 5% of it too
                    by_time = time_budget is not None and elapsed - last_eval >= 0.05 * time_budget
                    planned = (b + 1) % eval_every == 0 or b == n_batches - 1 or by_time
                    if auto_eval and eval_s > EVAL_SHARE * clock.elapsed():
                        planned = False
                    due = val is not None and (planned or last)
                    if due:
                        last_eval = elapsed
                    dt, p1 = self._report_progress(bar, val if due else None, ema, seen, elapsed, train_time, prior)
                    eval_s += dt
                    if p1 is not None and stopper.update(p1, self.step, self._weights):
                        stop = True
                    if checkpoint is not None and checkpoint_every is not None and self.step % checkpoint_every == 0:
                        self.save(checkpoint)
                    if interrupted:
                        raise KeyboardInterrupt
                    if stop or out_of_time:
                        stop = True
                        break
                epoch += 1
                if checkpoint is not None and checkpoint_every is None:
                    self.save(checkpoint)
        finally:
            bar.close()
            self._lr_scale = 1.0
            if restore is not None:
                signal.signal(signal.SIGINT, restore)
        if stopper.snapshot is not None and stopper.best > self.history[-1]["P@1"]:
            self._restore_weights(stopper.snapshot)
            self.best_step_ = stopper.best_step
        if rerank:
            deadline = None if time_budget is None else \
                t_start + time_budget * (1 - (_nb.SHARE if neighbours and val is not None else 0.0))
            self.reranker, self.rerank_report_ = _fit_rerank_stage(self, X, Y, val, deadline, self.seed + 7)
            if verbose:
                r = self.rerank_report_
                vals = f", val P@1 {r['val_P@1_without']:.4f} -> {r['val_P@1_with']:.4f}" if "val_P@1_with" in r else ""
                print(f"re-ranker: {r['rows']} rows, {r['epochs']} epochs, {r['seconds']:.1f} s{vals}, "
                      f"{'kept' if r['kept'] else 'not kept'}")
        if neighbours:
            deadline = None if time_budget is None else t_start + time_budget
            self.neighbours, self.neighbours_report_ = _nb.fit_stage(self, X, Y, val, deadline)
            if verbose and "val_P@1_with" in self.neighbours_report_:
                r = self.neighbours_report_
                print(f"neighbours: weight {r['weight']:g}, {r['seconds']:.1f} s, val P@1 "
                      f"{r['val_P@1_without']:.4f} -> {r['val_P@1_with']:.4f}, {'kept' if r['kept'] else 'not kept'}")
        if checkpoint is not None:
            self.save(checkpoint)
        return self

    def _init_from_centroids(self, X, Y, block=16384):
        """Output rows from the labels' feature centroids (see fit's init); X, Y canonical CSR."""
        C = (Y.T.tocsr() @ X).tocsr()  # (output_dim, input_dim) sums of each label's rows
        norms = np.sqrt(np.asarray(C.multiply(C).sum(1)).ravel())
        has = np.flatnonzero(norms > 0)
        if has.size == 0:
            return
        C = sp.diags((1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32)) @ C
        h_norm = float(np.linalg.norm(self._hidden(X[:2000])[-1], axis=1).mean())
        if not h_norm > 0:
            return
        for s in range(0, has.size, block):
            ids = has[s:s + block]
            E = self._hidden(C[ids].astype(np.float32))[-1]
            n = np.linalg.norm(E, axis=1, keepdims=True)
            ok = n[:, 0] > 0
            self.out_w.w[ids[ok]] = E[ok] * np.float32(CENTROID_SCALE / h_norm) / n[ok]
        self._build_tables()
        if self.hash == "learned":
            self._sched.clear()
            self._sched.update(np.arange(self.output_dim), self.out_w.w)

    def _weights(self):
        """Every trained weight array (the order _restore_weights expects)."""
        return [p.w for _, p in self._named_params()]

    def _restore_weights(self, arrays):
        """Puts back weights copied by _weights() and rebuilds the tables over them."""
        for (_, p), a in zip(self._named_params(), arrays):
            p.w[...] = a
        self._build_tables()
        if self.hash == "learned":
            self._sched.clear()
            self._sched.update(np.arange(self.output_dim), self.out_w.w)

    def _report_progress(self, bar, val, ema, seen, elapsed, train_time, prior):
        """Progress-bar figures; with val (X_val, Y_val), also P@1 appended to history (clock
        stopped). Returns (seconds the evaluation took, P@1 or None)."""
        post = {"loss": f"{ema:.3f}", "samples/s": f"{seen / max(elapsed, 1e-9):.0f}"}
        te = time.perf_counter()
        p1 = None
        if val is not None:
            p1 = self._precision_at_1(*val)
            post["val P@1"] = f"{p1:.4f}"
            self.history.append({"time": train_time + elapsed, "step": self.step, "samples": prior + seen,
                                 "loss": ema, "lr": self.lr * self._lr_scale, "P@1": p1})
        bar.set_postfix(post, refresh=False)
        return time.perf_counter() - te, p1

    def _split_validation(self, X, Y, validation, eval_size):
        """(X, Y, validation) -> (training rows, their labels, (X_val, Y_val) sample or None).

        validation: None, a tuple (X_val, Y_val), or a fraction of (X, Y) to hold out."""
        if validation is None:
            return X, Y, None
        rng = np.random.default_rng(self.seed + 4)
        if isinstance(validation, (float, np.floating)):
            frac = check_float(validation, "validation", 0.0, 0.5, lo_open=True, hi_open=True)
            n = X.shape[0]
            n_val = min(MAX_HELD_OUT, max(1, int(round(frac * n))))
            if n_val < 1 or n_val >= n:
                raise ValueError(f"validation: a fraction {frac} of {n} rows holds out {n_val}; expected 1 to {n - 1}")
            perm = rng.permutation(n)
            held, kept = np.sort(perm[:n_val]), np.sort(perm[n_val:])
            Xv, Yv, X, Y = X[held], Y[held], X[kept], Y[kept]
        elif isinstance(validation, (tuple, list)) and len(validation) == 2:
            Xv = _as_features(validation[0], self.input_dim)
            Yv = _as_labels(validation[1], Xv.shape[0], self.output_dim)
        else:
            raise TypeError(f"validation: expected a tuple (X_val, Y_val) or a float fraction, got "
                            f"{type(validation).__name__}")
        if eval_size is not None and eval_size < Xv.shape[0]:
            sub = np.sort(rng.permutation(Xv.shape[0])[:eval_size])
            Xv, Yv = Xv[sub], Yv[sub]
        return X, Y, (Xv, Yv)

    def hidden_activations(self, X):
        """Last hidden layer of CSR rows X: (n, hidden[-1]) float32."""
        return self._hidden(_as_features(X, self.input_dim))[-1]

    def predict_topk(self, X, k=5, mode="dense", batch_size=256):
        """Top-k labels of CSR rows X (n, input_dim).

        mode "dense" scores every label; "lsh" scores only the candidates an
        OutputRetriever over the output layer returns (hashlab.retrieval, built on first
        use and after training steps), falling back to dense scoring for rows with fewer
        than k candidates. With a re-ranker (fit's rerank), the top max(k, 32) so found are
        re-scored by it; with neighbours (fit's neighbours), the top max(k, 32) then get the
        label votes of the nearest training rows added (hashlab.neighbours: the returned
        scores are then softmax probabilities plus weighted votes, not logits). Returns
        (scores float32 (n, k), labels int64 (n, k)), best first; ties go to the lower label id.
        """
        return self._predict(X, k, mode, batch_size, True)

    def _shortlist(self, X, k, mode="dense", batch_size=256):
        """predict_topk without the neighbour votes (the MLP, re-ranked if fit kept a re-ranker)."""
        return self._predict(X, k, mode, batch_size, False)

    def _predict(self, X, k, mode, batch_size, use_neighbours):
        X = _as_features(X, self.input_dim)
        k = min(check_int(k, "k", 1), self.output_dim)
        mode = check_choice(mode, "mode", ("dense", "lsh"))
        batch_size = check_int(batch_size, "batch_size", 1)
        n = X.shape[0]
        rr = self.reranker
        nb = self.neighbours if use_neighbours else None
        short = k if rr is None and nb is None else min(self.output_dim, max(k, _nb.SHORTLIST))
        scores = np.empty((n, k), np.float32)
        labels = np.empty((n, k), np.int64)
        for s in range(0, n, batch_size):
            Xb = X[s:s + batch_size]
            H = self._hidden(Xb)[-1]
            if mode == "dense":
                sc, lb = dense_topk(H, self.out_w.w, self.out_b.w, short)
            else:
                sc, lb = self._lsh_topk(H, short)
            if rr is not None:
                sc, lb = rr.rerank(Xb, sc, lb, short if nb is not None else k)
            if nb is not None:
                sc, lb = nb.blend(H, sc, lb, k)
            scores[s:s + batch_size], labels[s:s + batch_size] = sc, lb
        return scores, labels

    def _lsh_topk(self, H, k):
        """Top-k by output-space retrieval (hashlab.retrieval.OutputRetriever over the output
        layer), rebuilt when the weights have changed (keyed on ``self.step``)."""
        from .retrieval import OutputRetriever
        cached = getattr(self, "_retriever", None)
        if cached is None or cached[0] != self.step or cached[1].weight is not self.out_w.w:
            self._retriever = (self.step, OutputRetriever(self.out_w.w, self.out_b.w, seed=self.seed + 5))
        return self._retriever[1].topk(H, k)

    def evaluate(self, X, Y, ks=(1, 3, 5), mode="dense", propensity=None):
        """Ranking metrics of the top-max(ks) predictions over all rows of X (n, input_dim) CSR.

        Y: CSR indicator (n, output_dim) or n label lists. Returns a dict of floats: P@k,
        nDCG@k, R@k for every k in ks (hashlab.metrics.ranking_metrics), and PSP@k, PSnDCG@k
        when propensities are known: ``propensity`` (output_dim,) float in (0, 1], or else
        those of the training labels this model saw (``label_counts_``; Jain et al. 2016,
        A=0.55, B=1.5, hashlab.metrics.propensities).
        """
        X = _as_features(X, self.input_dim)
        Y = _as_labels(Y, X.shape[0], self.output_dim)
        ks = tuple(check_int(k, "ks", 1) for k in ks)
        _, top = self.predict_topk(X, max(ks), mode=mode)
        if propensity is None and self.label_counts_ is not None and self.train_rows_ >= 3:
            propensity = propensities_from_counts(self.label_counts_, self.train_rows_)
        return ranking_metrics(top, Y, ks, propensity=propensity)

    def _precision_at_1(self, X, Y):
        """P@1 of validated CSR rows (fit's progress evaluations)."""
        _, top = self.predict_topk(X, 1)
        return _precision(top, Y, (1,))["P@1"]

    @property
    def nbytes(self):
        """Bytes of weights, Adam moments, LSH tables and stored keys."""
        params = sum(p.nbytes for p in self.layers + self.biases + [self.out_w, self.out_b])
        stages = sum(st.nbytes for st in (self.reranker, self.neighbours) if st is not None)
        if self.inference_only:  # weights alone: no moments, tables or keys
            return int(params + stages)
        extra = self._sched.nbytes + self._qbuf.nbytes if self.hash == "learned" else 0
        extra += stages
        return int(params + self.tables.nbytes + self._keys.nbytes + self._dirty.nbytes + extra)

    # -- persistence ---------------------------------------------------------------------
    def _config(self):
        return dict(input_dim=self.input_dim, output_dim=self.output_dim, hidden=list(self.hidden),
                    activation=self.activation, hash=self.hash, k=self.k, l=self.l,
                    target_active=self.target_active, lr=self.lr, seed=self.seed,
                    bucket_capacity=self.bucket_capacity, rebuild_first=self.rebuild_first,
                    rebuild_growth=self.rebuild_growth, bin_size=self.bin_size,
                    refit_threshold=self.refit_threshold, learn_after=self.learn_after)

    @property
    def inference_only(self):
        """True for a model loaded from an inference-only file (``save(path, optimizer=False)``):
        it predicts and evaluates, it does not train."""
        return self.out_w.m is None

    def _check_trainable(self):
        """RuntimeError for an inference-only model (fit's first check)."""
        if self.inference_only:
            raise RuntimeError("inference-only model (saved with optimizer=False): it has no optimizer state or "
                               "hash tables to train with; load a training checkpoint (written by save(path)) "
                               "to continue training")

    def save(self, path, optimizer=True, dtype="float32"):
        """Writes the model to ``path`` (.npz), atomically.

        optimizer=True (default), a training checkpoint: weights, Adam moments, hash keys, the
        rehash schedule, the learned hash's state and the shuffling rng, so that ``load`` then
        ``fit`` continues exactly where training stopped. The LSH tables are stored as each
        neuron's current keys and rebuilt at load; where a bucket had overflowed, the rebuilt
        bucket keeps a different sample of its neurons.

        optimizer=False, an inference-only file: weights and biases (no moments or hash keys:
        under a third of a checkpoint's size in float32), the configuration, ``step``,
        ``history``, ``label_counts_`` and ``train_rows_``.
        ``load`` gives a model that predicts and evaluates (mode="lsh" builds its retriever from
        the weights) and that ``fit`` refuses.

        dtype : "float32" | "float16", the stored weights of an inference-only file. float16
            halves the file again and rounds every weight and bias to float16 (relative error
            <= 2**-11, absolute <= 2**-25 below 2**-14; loaded back as float32; ValueError if a
            value is beyond float16's 65504). Checkpoints are float32 only.

        Written to a temporary file in the same folder, then renamed, so an interrupted save
        never damages an existing file.
        """
        path = os.fspath(path)
        if not isinstance(optimizer, (bool, np.bool_)):
            raise TypeError(f"optimizer: expected a bool, got {type(optimizer).__name__}")
        dtype = check_choice(dtype, "dtype", SAVE_DTYPES)
        if optimizer and dtype != "float32":
            raise ValueError(f"dtype: expected 'float32' for a checkpoint (optimizer=True), got {dtype!r}")
        if optimizer and self.inference_only:
            raise RuntimeError("inference-only model (saved with optimizer=False): no optimizer state to "
                               "checkpoint; use save(path, optimizer=False)")
        if optimizer:
            state, arrays = self._checkpoint_state()
        else:
            state = dict(format=FORMAT_VERSION, kind="inference", dtype=dtype, config=self._config(),
                         step=self.step, history=self.history)
            arrays = {}
        counts = getattr(self, "label_counts_", None)
        if counts is not None:  # with the rows they count: the propensities of PSP@k need both
            arrays["label_counts"] = np.asarray(counts, dtype=np.int64)
            state["train_rows"] = int(getattr(self, "train_rows_", 0))
        rr = self.reranker
        if rr is not None:
            state["rerank"] = dict(bits=rr.bits, n_candidates=rr.n_candidates, lr=rr.lr)
            arrays["rerank.V"], arrays["rerank.U"] = (rr.V, rr.U) if optimizer else \
                (_stored_weights(rr.V, dtype, "rerank.V"), _stored_weights(rr.U, dtype, "rerank.U"))
            if optimizer:
                arrays["rerank.GV"], arrays["rerank.GU"] = rr.GV, rr.GU
        if self.neighbours is not None:
            store = (lambda a, name: a) if optimizer else (lambda a, name: _stored_weights(a, dtype, name))
            state["neighbours"], extra = _nb.to_arrays(self.neighbours, store)
            arrays.update(extra)
        arrays["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
        for name, p in self._named_params():
            if optimizer:
                arrays[name + ".w"], arrays[name + ".m"], arrays[name + ".v"] = p.w, p.m, p.v
            else:
                arrays[name + ".w"] = _stored_weights(p.w, dtype, name)
        atomic_savez(path, arrays)

    def _checkpoint_state(self):
        """(state dict, arrays) of a training checkpoint, weights and moments aside."""
        state = dict(format=FORMAT_VERSION, kind="checkpoint", config=self._config(), step=self.step,
                     rebuilds=self.rebuilds, next_rebuild=self._next_rebuild, period=self._period,
                     history=self.history, epoch_rng=self._epoch_rng.bit_generator.state,
                     range_bits=self._range_bits, refits=self.refits, rows_rehashed=self.rows_rehashed)
        arrays = {"keys": self._keys, "dirty": self._dirty}
        if self.hash == "learned":
            h = self.hasher
            state.update(qfill=self._qfill, drift_bits=self._sched._drift_bits, hash_fit_seconds=h.fit_seconds_,
                         hash_fitted=self._hash_fitted,
                         hash_loss_history=list(h.loss_history_))
            arrays.update(hash_W=h.W, qbuf=self._qbuf, sched_ids=self._sched._ids,
                          sched_codes=self._sched._codes, sched_base=self._sched._base)
            if h._opt is not None:  # the hash's Adam state: later refits continue from it
                arrays.update(hash_opt_m=h._opt["m"], hash_opt_v=h._opt["v"], hash_opt_t=np.int64(h._opt["t"]))
        return state, arrays

    def _named_params(self):
        for i, p in enumerate(self.layers):
            yield f"layer{i}", p
        for i, p in enumerate(self.biases):
            yield f"bias{i}", p
        yield "out_w", self.out_w
        yield "out_b", self.out_b

    def _param_shapes(self):
        """{name: shape} of every parameter, in _named_params order."""
        sizes = (self.input_dim,) + self.hidden
        shapes = {f"layer{i}": (a, b) for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}
        shapes.update({f"bias{i}": (h,) for i, h in enumerate(self.hidden)})
        shapes.update(out_w=(self.output_dim, self.hidden[-1]), out_b=(self.output_dim,))
        return shapes

    @classmethod
    def load(cls, path):
        """Loads a file written by ``save``: a checkpoint (``fit`` then resumes where it stopped;
        also format 1, written before inference-only files existed) or an inference-only file
        (``inference_only`` is True; weights stored as float16 come back as float32).

        Raises FileNotFoundError for a missing file and ValueError naming the file for anything
        that is not a complete model of this format: another format version, a damaged or
        truncated file, an .npz from elsewhere, a missing array, a shape that does not match
        the stored configuration.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"expected a model file, got a folder: {path}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such model file: {path}")
        try:
            with open(path, "rb") as f:
                if f.read(4) != b"PK\x03\x04":  # what every non-empty .npz (a zip archive) starts with
                    raise _BadModelFile("not a hashlab model file (not an .npz archive)")
            with np.load(path, allow_pickle=False) as z:
                return cls._from_npz(z)
        except _BadModelFile as e:
            raise ValueError(f"{path}: {e}") from None
        except (ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # a damaged archive (bad CRC, cut short) or a state that does not decode
            raise ValueError(f"{path}: cannot read the model ({type(e).__name__}: {e}); the file is damaged, "
                             "truncated or not written by SparseMLP.save") from None

    @classmethod
    def _from_npz(cls, z):
        """The model stored in the open archive z; raises _BadModelFile or a decoding error."""
        if "state" not in z.files:
            raise _BadModelFile("not a hashlab model file (no 'state' entry)")
        state = json.loads(bytes(_entry(z, "state", (None,), "u")).decode())
        if not isinstance(state, dict) or "format" not in state:
            raise _BadModelFile("not a hashlab model file (no format in its state)")
        fmt = state["format"]
        if not isinstance(fmt, int) or fmt not in range(1, FORMAT_VERSION + 1):
            newer = " (written by a newer hashlab?)" if isinstance(fmt, int) and fmt > FORMAT_VERSION else ""
            raise _BadModelFile(f"expected model format 1 to {FORMAT_VERSION}, got {fmt!r}{newer}")
        kind = state.get("kind", "checkpoint")  # format 1 files are all checkpoints
        if kind not in ("checkpoint", "inference"):
            raise _BadModelFile(f"expected kind 'checkpoint' or 'inference', got {kind!r}")
        model = cls.__new__(cls)
        model._configure(**state["config"])
        model.step, model.history = int(state["step"]), list(state["history"])
        shapes = model._param_shapes()
        trainable = kind == "checkpoint"
        params = {}
        for name, shape in shapes.items():
            p = _Adam.__new__(_Adam) if trainable else _Weights.__new__(_Weights)
            for part in "wmv" if trainable else "w":
                setattr(p, part, np.ascontiguousarray(_entry(z, f"{name}.{part}", shape, "f"), dtype=np.float32))
            params[name] = p
        n_hidden = len(model.hidden)
        model.layers = [params[f"layer{i}"] for i in range(n_hidden)]
        model.biases = [params[f"bias{i}"] for i in range(n_hidden)]
        model.out_w, model.out_b = params["out_w"], params["out_b"]
        model.label_counts_, model.train_rows_ = None, 0
        if "label_counts" in z.files:
            counts = _entry(z, "label_counts", (model.output_dim,), "iu").astype(np.int64)
            if counts.size and counts.min() < 0:
                raise _BadModelFile("label_counts: expected non-negative counts")
            model.label_counts_, model.train_rows_ = counts, int(state.get("train_rows", 0))
        model.reranker = _stored_reranker(z, state, model.output_dim, trainable)
        model.neighbours = _nb.from_arrays(z, state, model.output_dim, model.hidden[-1], _entry, _BadModelFile)
        if trainable:
            model._restore_training(z, state)
        else:  # no tables, keys or learned-hash state: prediction needs none of them
            model.tables = model._keys = model._dirty = None
            if model.hash == "learned":
                model._sched = model._qbuf = None
        return model

    def _restore_training(self, z, state):
        """The rehash schedule, rng, hash keys (tables rebuilt from them) and learned-hash state
        of a checkpoint."""
        self.rebuilds, self._next_rebuild, self._period = state["rebuilds"], state["next_rebuild"], state["period"]
        self._range_bits = state["range_bits"]
        self._epoch_rng.bit_generator.state = state["epoch_rng"]
        self.refits, self.rows_rehashed = state.get("refits", 0), state.get("rows_rehashed", 0)
        keys = np.ascontiguousarray(_entry(z, "keys", (self.output_dim, self.l), "u"), dtype=np.uint32)
        dirty = np.ascontiguousarray(_entry(z, "dirty", (self.output_dim,), "u"), dtype=np.uint8)
        if self.hash == "learned":
            self._restore_learned(z, state)
        self._build_tables(keys)
        self._dirty = dirty

    def _restore_learned(self, z, state):
        """The learned hasher, the drift fingerprints and the query buffer of a checkpoint."""
        need = ("hash_W", "qbuf", "sched_ids", "sched_codes", "sched_base")
        if any(name not in z.files for name in need):
            raise _BadModelFile("a hash='learned' checkpoint without its learned hash state")
        self.hasher = self._make_hasher()
        self.hasher._set_W(np.asarray(_entry(z, "hash_W", self.hasher.W.shape, "f")))
        self.hasher.fit_seconds_ = float(state["hash_fit_seconds"])
        self.hasher.loss_history_ = [float(v) for v in state["hash_loss_history"]]
        self._hash_fitted = bool(state.get("hash_fitted", self.hasher.loss_history_))
        if "hash_opt_m" in z.files:
            shape = (self.hasher.dim, self.hasher.nbits)
            m = np.asarray(_entry(z, "hash_opt_m", shape, "f"), np.float64)
            v = np.asarray(_entry(z, "hash_opt_v", shape, "f"), np.float64)
            self.hasher._opt = dict(m=m, v=v, t=int(_entry(z, "hash_opt_t", (), "iu")))
        self._qbuf = np.ascontiguousarray(_entry(z, "qbuf", self._qbuf.shape, "f"), dtype=np.float32)
        self._qfill = int(state["qfill"])
        s = self._sched
        s._ids, s._codes, s._base = (np.asarray(z["sched_ids"], np.int64), np.asarray(z["sched_codes"], np.uint32),
                                     np.asarray(z["sched_base"], np.uint32))
        if not (s._ids.ndim == 1 and s._ids.shape == s._codes.shape == s._base.shape):
            raise _BadModelFile("drift fingerprints have mismatched shapes")
        s._drift_bits = int(state["drift_bits"])

    def to_torch(self):
        """A dense torch.nn.Module with the same weights (see hashlab.torch.SparseMLPModule): the
        MLP's logits, without the feature re-ranker (``reranker`` re-scores their top 32)."""
        from .torch import SparseMLPModule
        return SparseMLPModule.from_sparse_mlp(self)

    def __repr__(self):
        return (f"SparseMLP(input_dim={self.input_dim}, output_dim={self.output_dim}, hidden={self.hidden}, "
                f"hash={self.hash!r}, k={self.k}, l={self.l}, target_active={self.target_active}, step={self.step})")


def atomic_savez(path, arrays):
    """np.savez of a dict of arrays to path through a temporary file in the same folder,
    fsynced then renamed over path: a reader or a crash never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".hashlab-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _BadModelFile(ValueError):
    """A model file that is not a complete model of this format (load adds the path)."""


class _Weights:
    """A parameter of an inference-only model: weights (float32, C-contiguous), no moments."""

    m = v = None

    def __init__(self, w):
        self.w = np.ascontiguousarray(w, dtype=np.float32)

    @property
    def nbytes(self):
        return self.w.nbytes


def _stored_weights(w, dtype, name):
    """w as an inference-only file stores it: as is (float32) or rounded to float16."""
    if dtype == "float32":
        return w
    with np.errstate(over="ignore"):
        w16 = w.astype(np.float16)
    if np.isinf(w16).any() and not np.isinf(w).any():
        raise ValueError(f"dtype: expected weights within float16's range (|w| <= 65504), got max |{name}| = "
                         f"{float(np.abs(w).max()):.4g}; save with dtype='float32'")
    return w16


def _stored_reranker(z, state, n_labels, trainable):
    """The FeatureReranker stored in the open archive z (None if it has none)."""
    cfg = state.get("rerank")
    if cfg is None:
        return None
    rr = FeatureReranker.__new__(FeatureReranker)
    rr.n_labels, rr.bits, rr.n_candidates, rr.lr = n_labels, int(cfg["bits"]), int(cfg["n_candidates"]), float(cfg["lr"])
    shapes = {"V": (1 << rr.bits,), "U": (n_labels,)}
    for part in ("V", "U", "GV", "GU") if trainable else ("V", "U"):
        arr = _entry(z, f"rerank.{part}", shapes[part.lstrip("G")], "f")
        setattr(rr, part, np.ascontiguousarray(arr, dtype=np.float32))
    if not trainable:
        rr.GV = rr.GU = None
    return rr


def _entry(z, name, shape, kinds):
    """Array ``name`` of the open archive z with the given shape (None: any length) and dtype kind
    (a string of numpy kind codes), else _BadModelFile."""
    if name not in z.files:
        raise _BadModelFile(f"missing array {name!r}")
    a = z[name]
    if a.dtype.kind not in kinds:
        raise _BadModelFile(f"{name}: expected dtype kind {kinds!r}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise _BadModelFile(f"{name} has shape {a.shape}, expected {want}")
    return a


def _precision(top, Y, ks):
    """P@k of ranked predictions top (n, >= max(ks)) against the CSR indicator Y."""
    n = top.shape[0]
    rows = np.repeat(np.arange(n), top.shape[1])
    hit = np.asarray(Y[rows, top.ravel()]).reshape(top.shape) != 0
    return {f"P@{k}": float(hit[:, :k].sum() / (k * n)) for k in ks}
