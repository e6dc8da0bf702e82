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

import math

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import check_choice, check_float, check_int
from .csr import times_dense
from .learned import DriftScheduler, LearnedSimHash
from .metrics import propensities_from_counts, ranking_metrics
from .params import default_params
from . import neighbours as _nb
from .simhash import SimHash
from .slide_data import _as_features, _as_labels
from .slide_fit import _Training
from .slide_io import _ModelFile
from .slide_weights import _Adam, _uniform
from .tables import LSHTables
from .topk import SERIAL_ROWS, dense_topk
from .topk_int8 import Int8Rows, topk_int8
from .wta import DWTAHash

# Re-exported: SparseMLP's file format (hashlab.slide_io), training loop (hashlab.slide_fit), inputs
# (hashlab.slide_data) and parameters (hashlab.slide_weights) live in modules of their own; code
# imports these names from here.
from .slide_fit import (CENTROID_SCALE, DEFAULT_BATCH, DEFAULT_EPOCHS, EVAL_SHARE,  # noqa: F401
                        MAX_HELD_OUT)
from .slide_io import (FORMAT_VERSION, SAVE_DTYPES, _BadModelFile, _entry, _stored_reranker,  # noqa: F401
                       _stored_weights, _Weights, atomic_savez)

ACTIVATIONS = ("relu", "tanh")
HASHES = ("dwta", "simhash", "learned")
DEFAULT_HIDDEN = (512,)  # see SparseMLP's hidden for the measurements
_QUERY_BUFFER = 1024  # recent hidden activations kept as the learned hash's training queries
# target_active=None: the first fit trains the full softmax when rows have at least MANY_LABELS
# labels on average and there are at most FULL_SOFTMAX_MAX outputs (see target_active)
MANY_LABELS = 16
FULL_SOFTMAX_MAX = 16384


class SparseMLP(_Training, _ModelFile):
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
        min(output_dim, max(512, output_dim // 100)), except that the first fit trains the
        full softmax (target_active = output_dim) when its rows have MANY_LABELS (16) or more
        labels on average and output_dim <= FULL_SOFTMAX_MAX (16,384). target_active >=
        output_dim trains the full softmax (BLAS products, every row's Adam step each batch).
        Why: with 75 labels per row among 512 active neurons the sampled softmax's validation
        P@1 swings by up to 0.3 between evaluations; delicious-200k-like at scale 0.05 (10,272
        labels, 75.5 per row), fit(time_budget=120): test P@1 / P@5 0.9692 / 0.9011 full,
        0.9632 / 0.8784 at 2,048, 0.9572 / 0.8640 at 4,096 (as many batches as 2,048: the
        sparse kernel's per-pair products are no faster than the full BLAS ones); at 269.5 s
        0.9736 / 0.9082 full, 0.9504 / 0.8585 at 512. Not for few labels per row: Debian
        Depends (17,827 labels, 4.7 per row) at 14.7 s 0.7528 full vs 0.7680 at 512 (3.4x
        the time per batch).
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

    _AUTO_FULL = True     # target_active=None lets the first fit choose the full softmax
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
        self._auto_active = target_active is None and self._AUTO_FULL  # fit may choose the full softmax
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
        return self._hidden_from(self._first_product(X))

    def _first_product(self, X):
        """X (n, input_dim) CSR times the first layer's weights: (n, hidden[0]) float32 (no bias)."""
        W0 = self.layers[0].w
        fast = sp.issparse(X) and X.format == "csr" and X.dtype == np.float32 and W0.dtype == np.float32 \
            and W0.flags.c_contiguous
        return times_dense(X, W0) if fast else np.ascontiguousarray(X @ W0, dtype=np.float32)

    def _hidden_from(self, z):
        """Hidden activations of every layer from z (n, hidden[0]) float32, the rows' product with
        the first layer's weights (its bias not yet added)."""
        hs = [np.ascontiguousarray(self._act(z + self.biases[0].w), dtype=np.float32)]
        for W, b in zip(self.layers[1:], self.biases[1:]):
            hs.append(np.ascontiguousarray(self._act(hs[-1] @ W.w + b.w), dtype=np.float32))
        return hs

    def _train_batch(self, X, Y):
        hs = self._hidden(X)
        H = hs[-1]
        self.step += 1
        t, lr = self.step, self.lr * self._lr_scale
        indptr, ids = Y.indptr.astype(np.int64), Y.indices.astype(np.int32)
        if self.target_active >= self.output_dim:
            loss, active, dH = self._full_output_step(H, indptr, ids, lr, t)
        else:
            cind, cids, _ = self.tables.query_keys(self.hasher.hash(H), 1, self.target_active)
            loss, active, _, dH = _C.sparse_output_train(
                H, cind, cids, indptr, ids, self.target_active, (self.seed * 1_000_003 + t) & (2**64 - 1),
                self.out_w.w, self.out_w.m, self.out_w.v, self.out_b.w, self.out_b.m, self.out_b.v, lr,
                0.9, 0.999, 1e-8, t, self._dirty)
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

    def _full_output_step(self, H, indptr, ids, lr, t):
        """Every output neuron active: the softmax over all labels through BLAS products and one
        Adam step on every row (the sparse kernel's all-active path does the same per pair, ~3x
        slower). H (n, d) float32; labels as CSR indptr (n + 1,) int64, ids int32. Returns
        (loss summed over rows, active pairs, dH (n, d) float32)."""
        W, b = self.out_w, self.out_b
        Z = H @ W.w.T
        Z += b.w
        loss = _C.softmax_xent_grad(Z, indptr, ids)  # Z is now dLoss/dZ
        dH = np.ascontiguousarray(Z @ W.w)  # with the weights before the step, as the sparse kernel
        rows = np.arange(self.output_dim, dtype=np.int64)
        _C.adam_rows(W.w, W.m, W.v, rows, np.ascontiguousarray(Z.T @ H), lr, 0.9, 0.999, 1e-8, t)
        _C.adam_rows(b.w, b.m, b.v, rows, Z.sum(0)[:, None], lr, 0.9, 0.999, 1e-8, t)
        self._dirty[:] = 1
        return loss, Z.size, dH

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
    def hidden_activations(self, X):
        """Last hidden layer of CSR rows X: (n, hidden[-1]) float32."""
        return self._hidden(_as_features(X, self.input_dim))[-1]

    def predict_topk(self, X, k=5, mode="dense", batch_size=256):
        """Top-k labels of CSR rows X (n, input_dim).

        mode "dense" scores every label (calls of fewer than 16 rows through an int8 copy of the
        output layer, the float32 result certified by an error bound: hashlab.topk_int8); "lsh"
        scores only the candidates an
        OutputRetriever over the output layer returns (hashlab.retrieval, built on first
        use and after training steps), falling back to dense scoring for rows with fewer
        than k candidates. With a re-ranker (fit's rerank), the top max(k, 32) so found are
        re-scored by it (hashlab.rerank: the scores are then its logits z); with neighbours
        (fit's neighbours), the top max(k, 32) then get the label votes of the nearest training
        rows added (hashlab.neighbours: the returned scores are then probabilities, the
        re-ranker's sigmoid(z) or the softmax of the MLP's logits, plus weighted votes). Returns
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
            Xb = X if n <= batch_size else X[s:s + batch_size]  # a CSR slice costs 0.1 ms a call
            H = self._hidden(Xb)[-1]
            if mode == "dense" and H.shape[0] < SERIAL_ROWS:
                sc, lb = topk_int8(H, self.out_w.w, self.out_b.w, short, self._int8_rows())
            elif mode == "dense":
                sc, lb = dense_topk(H, self.out_w.w, self.out_b.w, short)
            else:
                sc, lb = self._lsh_topk(H, short)
            if rr is not None:
                sc, lb = rr.rerank(Xb, sc, lb, short if nb is not None else k)
            if nb is not None:
                sc, lb = nb.blend(H, sc, lb, k, link="softmax" if rr is None else rr.link)
            scores[s:s + batch_size], labels[s:s + batch_size] = sc, lb
        return scores, labels

    def _int8_rows(self):
        """The output layer's int8 copy for few-row prediction (hashlab.topk_int8), rebuilt when
        the weights have changed (keyed on ``self.step``); not saved in model files."""
        cached = getattr(self, "_int8", None)
        if cached is None or cached[0] != self.step or cached[1] is not self.out_w.w:
            self._int8 = (self.step, self.out_w.w, Int8Rows(self.out_w.w))
        return self._int8[2]

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
        """Bytes of weights, Adam moments, LSH tables and stored keys (and of the output layer's
        int8 copy once a few-row prediction has built it)."""
        params = sum(p.nbytes for p in self.layers + self.biases + [self.out_w, self.out_b])
        stages = sum(st.nbytes for st in (self.reranker, self.neighbours) if st is not None)
        cached = getattr(self, "_int8", None)
        stages += cached[2].nbytes if cached is not None else 0
        if self.inference_only:  # weights alone: no moments, tables or keys
            return int(params + stages)
        extra = self._sched.nbytes + self._qbuf.nbytes if self.hash == "learned" else 0
        extra += stages
        return int(params + self.tables.nbytes + self._keys.nbytes + self._dirty.nbytes + extra)

    # -- configuration and parameters (save and load: hashlab.slide_io) -------------------
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

    def to_torch(self):
        """A dense torch.nn.Module with the same weights (see hashlab.torch.SparseMLPModule): the
        MLP's logits, without the feature re-ranker (``reranker`` re-scores their top 32)."""
        from .torch import SparseMLPModule
        return SparseMLPModule.from_sparse_mlp(self)

    def __repr__(self):
        return (f"SparseMLP(input_dim={self.input_dim}, output_dim={self.output_dim}, hidden={self.hidden}, "
                f"hash={self.hash!r}, k={self.k}, l={self.l}, target_active={self.target_active}, step={self.step})")


def _precision(top, Y, ks):
    """P@k of ranked predictions top (n, >= max(ks)) against the CSR indicator Y."""
    n = top.shape[0]
    rows = np.repeat(np.arange(n), top.shape[1])
    hit = np.asarray(Y[rows, top.ravel()]).reshape(top.shape) != 0
    return {f"P@{k}": float(hit[:, :k].sum() / (k * n)) for k in ks}
