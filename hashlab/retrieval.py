"""Output-space retrieval (HALOS, Liu et al. MLSys 2022): top-k of a huge output layer.

An ``OutputRetriever`` indexes the rows of an output layer ``W`` (n_classes, dim)
(with an optional bias ``b``) so that, for a hidden vector ``x``, it finds the
classes with the largest logits ``<x, w_i> + b_i`` without computing all of them:
LSH returns a small candidate set, and exact logits are computed on the candidates
only (``hashlab._C.gather_scores``).

Inner-product search with SimHash
---------------------------------
SimHash ranks by angle, not by inner product. Every step below keeps the ranking
of the logits of a query exactly (they change all of a query's logits by the same
amount, or not at all), so that the angle ranks by logit:

1. Item centring: ``w -> w - mu`` (mu = mean row) shifts all logits of a query by
   ``-<x, mu>``. Output layers have a large common direction; removing it spreads the
   angles.
2. Query centring (only with calibration ``queries``): ``x -> x - nu`` (nu = mean
   query), with ``<nu, w_i - mu>`` folded into the bias, so that the logits are exact.
3. Balancing (a linear change of basis, inner products unchanged):
   items ``P w``, queries ``P^-1 x`` with ``P = S_x^(1/4)`` (S_x = covariance of the
   calibration queries) or, without queries, ``P = S_w^(-1/4)`` (S_w = covariance of
   the centred rows). Hidden states of language models put most of their norm in a
   few directions that barely separate the classes; balancing the two spectra makes
   the angle far more informative (on SmolLM2's head the top logit's rank in Hamming
   distance drops ~20x; see benchmarks/README.md).
4. Bias: items ``[w', c / s]``, queries ``[x', s]`` where ``c`` is the (folded) bias;
   ``s`` balances the two norms (``s = sqrt(|x'| * rms(c) / rms|w'|)`` with
   calibration queries, else 1, the MONGOOSE ``[w, b] / [x, 1]`` trick).
5. Norm equalisation (Neyshabur & Srebro's simple-LSH): with M the largest item norm,
   items ``[v / M, sqrt(1 - |v|^2 / M^2)]`` (all of norm 1) and queries ``[u / |u|, 0]``;
   then cos(query, item) = logit' / (|u| M), a monotone function of the logit.

The hashed vectors have ``dim + 1`` coordinates (``dim + 2`` with a bias or query
centring); a custom ``hasher`` must accept that many (``hash_dim``).

Search
------
- ``"tables"``: ``l`` LSH tables of ``k``-bit SimHash keys (``LSHTables``); a
  query's candidates are ranked by collision count and the best ``max_candidates``
  kept. Query cost grows with l * n / 2^k, not with n: for huge layers (> 100K rows)
  whose hidden vectors are well aligned with their top classes (trained XMC models).
- ``"scan"``: every class keeps ``k * l`` sign bits (packed); a query computes the
  Hamming distance to all of them (popcount, SIMD) and keeps the ``max_candidates``
  closest. This is the collision count of one-bit tables, the statistically most
  efficient use of the bits when the top class is only slightly better aligned than
  the rest (language-model heads), at O(n * bits / 64) word operations per query.
  The kernel (``_C.hamming_topm``) is linear per query: a cut-off estimated on a
  sample of the codes, one pass keeping the rows under it, a counting sort; batches of
  queries share each block of codes in cache.
- ``"auto"`` (default): "scan". Above 2^17 classes it keeps 256 bits per class and
  re-scores 2,000 candidates (measured 2026-11-22: a 670K x 128 layer at 0.72 ms/query,
  13x dense, P@1 1.00 of dense; a 200K-label SparseMLP at P@1 equal to dense where
  "tables" reached 0.36 of it); up to 2^17, 2,048 bits and 2% of the classes.

``max_candidates`` defaults to ``ceil(target_fraction * n_classes)``; a query with
fewer than ``k`` candidates is scored densely (exact).

Learned hashing (``learned=True``, MONGOOSE)
--------------------------------------------
The hyperplanes are fitted (``hashlab.LearnedSimHash``) on the transformed calibration
queries and items, so that each query's top logits share its buckets ("tables") or
agree with it on more bits ("scan"), instead of being drawn at random. Only the
hashing changes; the exact re-scoring of the candidates does not. "scan" uses the
learned sign bits directly; its training objective groups them into tables of
``LEARNED_SCAN_K`` bits (the bits are the same whatever the grouping). The fit costs
seconds to minutes (``fit_seconds``); it pays off when many queries follow.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import _from_torch, as_ids, check_choice, check_float, check_int
from .params import default_params
from .simhash import SimHash
from .tables import LSHTables
from .topk import dense_topk

__all__ = ["OutputRetriever", "dense_topk"]

LARGE_LAYER = 1 << 17               # above: fewer scan bits and a fixed candidate count
BALANCE_POWER = 0.25               # P = S^(+-1/4)
DEFAULT_FRACTION = {"scan": 0.02, "tables": 0.005}
DEFAULT_SCAN_BITS = 2048
LARGE_SCAN_BITS = 256
LARGE_SCAN_CANDIDATES = 2000
DEFAULT_TABLES_L = 64
MAX_SCAN_BITS = 1023 * 64           # the scan kernel's limit (16-bit distances)
LEARNED_SCAN_K = 8                 # bits per table in the fitting objective of a learned "scan"


# ---------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------
def _as_float_matrix(x, name, dim=None, allow_1d=False):
    """A finite float32 (n, dim) C-contiguous array (TypeError / ValueError otherwise)."""
    x = _from_torch(x)
    if sp.issparse(x):
        raise TypeError(f"{name}: expected a dense float array, got a scipy.sparse matrix")
    if not isinstance(x, (np.ndarray, list, tuple)):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating dtype (float32), got {x.dtype}")
    if x.ndim == 1 and allow_1d:
        x = x[None, :]
    if x.ndim != 2:
        want = "(n, dim)" if dim is None else f"(n, {dim})"
        raise ValueError(f"{name}: expected a 2-D array of shape {want}, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns (the layer's dim), got {x.shape[1]}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.size and not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"{name}: expected finite values, got NaN or inf in row {bad}")
    return x


def _as_bias(b, n, name="bias"):
    b = _from_torch(b)
    if not isinstance(b, (np.ndarray, list, tuple)):
        raise TypeError(f"{name}: expected a numpy array, torch tensor or None, got {type(b).__name__}")
    b = np.asarray(b)
    if b.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating dtype (float32), got {b.dtype}")
    if b.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {b.shape}")
    b = np.ascontiguousarray(b, dtype=np.float32)
    if not np.isfinite(b).all():
        raise ValueError(f"{name}: expected finite values, got NaN or inf at {int(np.argmax(~np.isfinite(b)))}")
    return b


def _sym_power(S, p, floor=1e-6):
    """S^p for a symmetric PSD matrix (eigenvalues floored at floor * the largest)."""
    ev, V = np.linalg.eigh(S)
    ev = np.maximum(ev, max(float(ev[-1]), 1e-30) * floor)
    return (V * ev ** p) @ V.T


def csr_topk(indptr, ids, scores, k):
    """Top-k within each CSR row (rows must hold >= k entries): (scores (n, k), labels (n, k)).

    Vectorised: the rows are padded to the longest one with -inf.
    """
    n = indptr.shape[0] - 1
    lens = np.diff(indptr)
    width = int(lens.max()) if n else 0
    S = np.full((n, max(width, k)), -np.inf, np.float32)
    L = np.full((n, max(width, k)), np.iinfo(np.int64).max, np.int64)
    if ids.size:
        rows = np.repeat(np.arange(n), lens)
        pos = np.arange(ids.size) - np.repeat(indptr[:-1], lens)
        S[rows, pos] = scores
        L[rows, pos] = ids
    if S.shape[1] > k:
        part = np.argpartition(-S, k - 1, axis=1)[:, :k]
        S, L = np.take_along_axis(S, part, 1), np.take_along_axis(L, part, 1)
    order = np.lexsort((L, -S), axis=1)
    return np.take_along_axis(S, order, 1), np.take_along_axis(L, order, 1)


# ---------------------------------------------------------------------------------
# the retriever
# ---------------------------------------------------------------------------------
class OutputRetriever:
    """LSH index over the rows of an output layer, for top-k logits without computing all.

    Parameters
    ----------
    weight : (n_classes, dim) float array or torch CPU tensor
        The output layer (logit i = <x, weight[i]> + bias[i]). Kept by reference when it
        is float32 and C-contiguous (else copied): do not change it in place without
        calling ``update`` (which writes the new rows into it).
    bias : (n_classes,) float array, or None
    k, l : int, optional
        Bits per table key and tables ("tables"), or together the k*l sign bits per
        class ("scan": default 32 x 64 = 2048, or 32 x 8 = 256 above 2^17 classes). For
        "tables", ``l`` defaults to 64 and ``k`` is chosen with ``hashlab.default_params``
        from ``target_fraction``.
    target_fraction : float in (0, 1], optional
        Fraction of the classes scored exactly per query (default 0.02 for "scan", or
        2,000 classes above 2^17; 0.005 for "tables"); sets ``max_candidates`` unless
        that is given.
    seed : int, seeds the hash functions.
    search : "auto" | "scan" | "tables" (see the module docstring).
    queries : (m, dim) float array, optional
        Calibration hidden vectors (e.g. a few thousand from real inputs): used for
        query centring and the balancing transform, which makes retrieval much more
        accurate on language-model heads.
    hasher : optional hashlab hasher over ``hash_dim`` = dim + 1 (dim + 2 with a bias or
        ``queries``) inputs, e.g. a learned one; "scan" needs one with ``bits()``.
        Default: ``SimHash(kind="hadamard")``.
    max_candidates : int, optional, candidates kept per query (best collision counts).
    kind : SimHash kind of the default hasher ("hadamard", "gaussian" or "sparse").
    balance : bool, apply the balancing transform (step 3; default True).
    norm_ranges : int, norm-ranging LSH (Yan et al. 2018): the classes are split into
        this many quantile groups of their transformed norm, each equalised with its own
        M, so that short rows are not drowned by the longest one. Candidates from
        different groups are then ranked by exact logits (default 1: one global M).
    learned : bool, fit the hyperplanes on ``queries`` (required) and the classes with
        the MONGOOSE objective (``hashlab.LearnedSimHash``; see the module docstring)
        instead of drawing them at random. Not with ``hasher``.
    learn_options : dict, optional, keyword arguments of ``LearnedSimHash.fit``
        (default: epochs=6, lr=0.02, bucket_capacity 128).

    Attributes: ``fit_seconds`` (time spent fitting a learned hash, 0.0 otherwise).
    """

    def __init__(self, weight, bias=None, k=None, l=None, target_fraction=None, seed=0, search="auto",
                 queries=None, hasher=None, max_candidates=None, kind="hadamard", balance=True, norm_ranges=1,
                 learned=False, learn_options=None):
        W = _as_float_matrix(weight, "weight")
        n, d = W.shape
        if n == 0 or d == 0:
            raise ValueError(f"weight: expected a non-empty (n_classes, dim) array, got shape {W.shape}")
        if n >= np.iinfo(np.int32).max:
            raise ValueError(f"weight: expected fewer than 2^31 - 1 classes, got {n}")
        b = None if bias is None else _as_bias(bias, n)
        Xq = None if queries is None else _as_float_matrix(queries, "queries", d)
        if Xq is not None and Xq.shape[0] < 2:
            raise ValueError(f"queries: expected at least 2 calibration rows, got {Xq.shape[0]}")
        self.search = check_choice(search, "search", ("auto", "scan", "tables"))
        if self.search == "auto":
            self.search = "scan"
        if target_fraction is None:
            target_fraction = DEFAULT_FRACTION[self.search]
            if self.search == "scan" and n > LARGE_LAYER and max_candidates is None:
                target_fraction = LARGE_SCAN_CANDIDATES / n
        self.target_fraction = check_float(target_fraction, "target_fraction", 0.0, 1.0, lo_open=True)
        self.seed = check_int(seed, "seed", 0, 2**63 - 1)
        self.kind = check_choice(kind, "kind", ("hadamard", "gaussian", "sparse"))
        if not isinstance(balance, (bool, np.bool_)):
            raise TypeError(f"balance: expected a bool, got {type(balance).__name__}")
        self.balance = bool(balance)
        self.norm_ranges = check_int(norm_ranges, "norm_ranges", 1, 1 << 16)
        if not isinstance(learned, (bool, np.bool_)):
            raise TypeError(f"learned: expected a bool, got {type(learned).__name__}")
        self.learned = bool(learned)
        if self.learned and Xq is None:
            raise ValueError("learned=True: expected calibration queries (queries=...) to fit the hash on")
        if self.learned and hasher is not None:
            raise ValueError("learned, hasher: expected one or the other (learned=True fits its own hasher)")
        if learn_options is not None and not self.learned:
            raise ValueError("learn_options: expected None unless learned=True")
        if learn_options is not None and not isinstance(learn_options, dict):
            raise TypeError(f"learn_options: expected a dict, got {type(learn_options).__name__}")
        self.fit_seconds = 0.0
        if max_candidates is None:
            max_candidates = max(1, math.ceil(self.target_fraction * n))
        self.max_candidates = check_int(max_candidates, "max_candidates", 1)
        self.weight, self.bias = W, b
        src = _from_torch(weight)
        self.owns_weight = not (isinstance(src, np.ndarray) and np.shares_memory(W, src))
        self.n_classes, self.dim = n, d
        self._fit_transform(Xq)
        self._make_hasher(k, l, hasher)
        if self.learned:
            self._fit_hasher(Xq, learn_options or {})
        self._index(np.arange(n, dtype=np.int32), W, b)

    def _fit_hasher(self, Xq, options):
        """Replaces the random hasher by a LearnedSimHash with as many sign bits (same k, l for
        "tables"), fitted on the transformed calibration queries and all classes."""
        from .learned import LearnedSimHash
        h = self.hasher
        if self.search == "tables":
            learned = LearnedSimHash(self.hash_dim, h.key_bits, h.l, seed=self.seed)
        else:
            nbits = int(h.key_bits) * int(h.l)
            learned = LearnedSimHash(self.hash_dim, LEARNED_SCAN_K, -(-nbits // LEARNED_SCAN_K), seed=self.seed)
        opts = dict(epochs=6, lr=0.02, bucket_capacity=128, seed=self.seed)
        opts.update(options)
        items = self._items_hashed(np.arange(self.n_classes))
        learned.fit(self._queries_hashed(Xq), items, **opts)
        self.fit_seconds = float(learned.fit_seconds_)
        self.hasher = learned
        if self.search == "scan":
            self.nbits = int(learned.nbits)
            self._bits = np.zeros((self.n_classes, -(-self.nbits // 64)), dtype=np.uint64)
        else:
            self.tables = LSHTables(learned, bucket_capacity=self.tables.bucket_capacity, policy="fifo",
                                    range_bits=self.tables.range_bits, seed=self.seed)

    # -- the transform --------------------------------------------------------------
    def _fit_transform(self, Xq):
        W, b = self.weight.astype(np.float64), self.bias
        self.mu = W.mean(0)
        Wc = W - self.mu
        self.nu = None if Xq is None else Xq.astype(np.float64).mean(0)
        P = Pinv = None
        if self.balance:
            if Xq is not None:
                Xc = Xq.astype(np.float64) - self.nu
                S = Xc.T @ Xc / Xc.shape[0]
                P, Pinv = _sym_power(S, BALANCE_POWER), _sym_power(S, -BALANCE_POWER)
            elif W.shape[0] >= 2:
                S = Wc.T @ Wc / W.shape[0]
                P, Pinv = _sym_power(S, -BALANCE_POWER), _sym_power(S, BALANCE_POWER)
        self._P = P          # items: (w - mu) @ P ; queries: (x - nu) @ Pinv  (P symmetric)
        self._Pinv = Pinv
        self.augmented = b is not None or self.nu is not None
        self.s = 1.0
        if self.augmented:
            c = self._folded_bias(Wc, b)
            if Xq is not None:
                xq = self._query_space(Xq)
                wq = Wc @ P if P is not None else Wc
                xn = float(np.median(np.linalg.norm(xq, axis=1)))
                wn = float(np.sqrt((wq ** 2).sum(1).mean()))
                cn = float(np.sqrt((c ** 2).mean()))
                if xn > 0 and wn > 0 and cn > 0:
                    self.s = math.sqrt(xn * cn / wn)
        self.hash_dim = self.dim + (2 if self.augmented else 1)
        self._set_norm_ranges(np.sqrt(self._item_norms2(np.arange(self.n_classes))))

    def _set_norm_ranges(self, norms):
        """M per class: the largest norm of its range (norm_ranges quantile groups)."""
        R = min(self.norm_ranges, self.n_classes)
        order = np.argsort(norms, kind="stable")
        group = np.empty(self.n_classes, np.int32)
        group[order] = (np.arange(self.n_classes) * R) // self.n_classes
        tops = np.zeros(R)
        np.maximum.at(tops, group, norms)
        tops[tops <= 0] = 1.0  # all-zero rows: every logit ties; any candidate set is exact
        self.M = float(tops.max())
        self._range_of, self._range_M = group, tops

    def _folded_bias(self, Wc, b):
        c = np.zeros(Wc.shape[0]) if b is None else b.astype(np.float64)
        if self.nu is not None:
            c = c + Wc @ self.nu
        return c

    def _item_space(self, rows, W=None, b=None):
        """Transformed (balanced, augmented) item vectors, float64, before norm equalisation."""
        W = self.weight[rows] if W is None else W
        b = (self.bias[rows] if self.bias is not None else None) if b is None else b
        Wc = W.astype(np.float64) - self.mu
        v = Wc @ self._P if self._P is not None else Wc
        if self.augmented:
            v = np.hstack([v, (self._folded_bias(Wc, b) / self.s)[:, None]])
        return v

    def _item_norms2(self, rows, chunk=65536):
        out = np.empty(len(rows))
        for s in range(0, len(rows), chunk):
            v = self._item_space(rows[s:s + chunk])
            out[s:s + chunk] = (v * v).sum(1)
        return out

    def _items_hashed(self, rows, W=None, b=None):
        """float32 (len(rows), hash_dim) norm-equalised item vectors."""
        v = self._item_space(rows, W, b) / self._range_M[self._range_of[rows]][:, None]
        extra = np.sqrt(np.maximum(0.0, 1.0 - (v * v).sum(1)))
        return np.ascontiguousarray(np.hstack([v, extra[:, None]]), dtype=np.float32)

    def _query_space(self, X):
        x = X.astype(np.float64)
        if self.nu is not None:
            x = x - self.nu
        return x @ self._Pinv if self._Pinv is not None else x

    def transform_queries(self, H):
        """Norm-equalised hashed vectors of hidden vectors H (n, dim): float32 (n, hash_dim)."""
        H = _as_float_matrix(H, "H", self.dim, allow_1d=True)
        return self._queries_hashed(H)

    def transform_items(self, rows=None):
        """Norm-equalised hashed vectors of the classes ``rows`` (default all): (m, hash_dim)."""
        rows = np.arange(self.n_classes) if rows is None else as_ids(rows, "rows", unique=False)
        return self._items_hashed(rows)

    def _queries_hashed(self, H):
        u = self._query_space(H)
        if self.augmented:
            u = np.hstack([u, np.full((u.shape[0], 1), self.s)])
        nrm = np.linalg.norm(u, axis=1, keepdims=True)
        u = np.divide(u, nrm, out=np.zeros_like(u), where=nrm > 0)
        return np.ascontiguousarray(np.hstack([u, np.zeros((u.shape[0], 1))]), dtype=np.float32)

    # -- hashing and indexing -----------------------------------------------------------
    def _make_hasher(self, k, l, hasher):
        n = self.n_classes
        if hasher is not None:
            for attr in ("hash", "l", "key_bits"):
                if not hasattr(hasher, attr):
                    raise TypeError(f"hasher: expected a hashlab hasher (hash(), l, key_bits), got "
                                    f"{type(hasher).__name__}")
            hd = getattr(hasher, "dim", None)
            if hd is not None and hd != self.hash_dim:
                raise ValueError(f"hasher: expected dim == hash_dim == {self.hash_dim} (dim + "
                                 f"{self.hash_dim - self.dim}), got {hd}")
            if self.search == "scan" and not hasattr(hasher, "bits"):
                raise TypeError("hasher: search='scan' needs a hasher with bits() (sign bits); use search='tables'")
            if k is not None or l is not None:
                raise ValueError("k, l: expected None when a hasher is given (it has its own)")
            self.hasher = hasher
        elif self.search == "scan":
            k = 32 if k is None else check_int(k, "k", 1, 32)
            bits = DEFAULT_SCAN_BITS if self.n_classes <= LARGE_LAYER else LARGE_SCAN_BITS
            l = max(1, bits // k) if l is None else check_int(l, "l", 1, 65535)
            self.hasher = SimHash(self.hash_dim, k, l, kind=self.kind, seed=self.seed)
        else:
            l = DEFAULT_TABLES_L if l is None else check_int(l, "l", 1, 65535)
            # small keys and many tables, so that collision counts rank (the best
            # max_candidates are kept): k for ~16x target_fraction unrelated classes
            p = default_params(n, self.hash_dim, min(1.0, 16 * self.target_fraction), family="simhash", l=l)
            k = p.k if k is None else check_int(k, "k", 1, 32)
            self.hasher = SimHash(self.hash_dim, k, l, kind=self.kind, seed=self.seed)
        self.k, self.l = int(self.hasher.key_bits), int(self.hasher.l)
        if self.search == "tables":
            key_bits = int(self.hasher.key_bits)
            rb = min(key_bits, 24, max(8, math.ceil(math.log2(n)) + 1))
            # buckets are not uniform (items cluster): let them hold every id they get, so
            # that collision counts are exact (memory grows with the ids stored, not the cap)
            cap = int(min(65535, n))
            self.tables = LSHTables(self.hasher, bucket_capacity=cap, policy="fifo", range_bits=rb, seed=self.seed)
            self._bits = None
        else:
            self.tables = None
            self.nbits = int(getattr(self.hasher, "nbits", self.hasher.key_bits * self.hasher.l))
            if self.nbits > MAX_SCAN_BITS:
                raise ValueError(f"k, l: search='scan' keeps at most {MAX_SCAN_BITS:,} bits per class, got "
                                 f"{self.nbits:,}")
            self._bits = np.zeros((n, -(-self.nbits // 64)), dtype=np.uint64)

    def _index(self, rows, W=None, b=None, chunk=65536):
        for s in range(0, len(rows), chunk):
            r = rows[s:s + chunk]
            V = self._items_hashed(r, None if W is None else W[s:s + chunk],
                                   None if b is None else b[s:s + chunk])
            if self.tables is not None:
                self.tables.insert_keys(r, self.hasher.hash(V))
            else:
                self._bits[r] = self.hasher.bits(V)

    # -- queries ------------------------------------------------------------------------
    def candidates(self, H, max_candidates=None):
        """Candidate classes of hidden vectors H (n, dim) (1-D: one row).

        Returns CSR (indptr int64 (n + 1,), ids int32, counts int32): a row's candidates
        ordered by collision count (tables) or agreeing bits (scan), best first, at most
        ``max_candidates`` (default self.max_candidates) of them.
        """
        H = _as_float_matrix(H, "H", self.dim, allow_1d=True)
        m = self.max_candidates if max_candidates is None else check_int(max_candidates, "max_candidates", 1)
        return self._candidates(H, m)

    def _candidates(self, H, m):
        n = H.shape[0]
        if n == 0:
            return np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32)
        Q = self._queries_hashed(H)
        if self.tables is not None:
            return self.tables.query_keys(self.hasher.hash(Q), 1, m)
        return self._scan(self.hasher.bits(Q), m)

    def _scan(self, bq, m):
        n, m = bq.shape[0], min(m, self.n_classes)
        ids, dist = _C.hamming_topm(bq, self._bits, m)  # linear time per query, (distance, id) order
        indptr = np.arange(0, n * m + 1, m, dtype=np.int64)
        return indptr, ids.ravel(), (self.nbits - dist).ravel()

    def scores(self, H, indptr, ids):
        """Exact logits of the candidates (CSR indptr/ids) of hidden vectors H: float32 aligned with ids."""
        H = _as_float_matrix(H, "H", self.dim, allow_1d=True)
        return self._gather(H, np.ascontiguousarray(indptr, dtype=np.int64), np.ascontiguousarray(ids, dtype=np.int32))

    def _gather(self, H, indptr, ids):
        """gather_scores; with fewer queries than threads, each query's candidates are split
        into one part per thread (the kernel is parallel over queries)."""
        t = _C.get_num_threads()
        n = H.shape[0]
        if n >= t or ids.size < 256 * t:
            return _C.gather_scores(H, self.weight, self.bias, indptr, ids)
        parts = np.linspace(indptr[:-1], indptr[1:], t + 1).round().astype(np.int64)  # (t + 1, n)
        sub_ptr = np.concatenate([parts[:-1].T.ravel(), indptr[-1:]])
        Hs = np.ascontiguousarray(np.repeat(H, t, axis=0))
        return _C.gather_scores(Hs, self.weight, self.bias, sub_ptr, ids)

    def topk(self, H, k=5, max_candidates=None):
        """Top-k classes of hidden vectors H (n, dim) (1-D: one row).

        Exact logits are computed on the candidates only; a row with fewer than k
        candidates is scored densely. k larger than n_classes returns all classes.
        Returns (scores float32 (n, k), labels int64 (n, k)), best first.
        """
        H = _as_float_matrix(H, "H", self.dim, allow_1d=True)
        k = min(check_int(k, "k", 1), self.n_classes)
        m = self.max_candidates if max_candidates is None else check_int(max_candidates, "max_candidates", 1)
        n = H.shape[0]
        if n == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        if k == self.n_classes:
            return dense_topk(H, self.weight, self.bias, k)
        indptr, ids, _ = self._candidates(H, max(m, k))
        sc = self._gather(H, indptr, ids)
        lens = np.diff(indptr)
        short = np.flatnonzero(lens < k)
        if short.size == 0:
            return csr_topk(indptr, ids, sc, k)
        out_s = np.empty((n, k), np.float32)
        out_l = np.empty((n, k), np.int64)
        out_s[short], out_l[short] = dense_topk(H[short], self.weight, self.bias, k)
        ok = np.flatnonzero(lens >= k)
        if ok.size:
            sel = np.concatenate([np.arange(indptr[i], indptr[i + 1]) for i in ok])
            sub_ptr = np.zeros(ok.size + 1, np.int64)
            np.cumsum(lens[ok], out=sub_ptr[1:])
            out_s[ok], out_l[ok] = csr_topk(sub_ptr, ids[sel], sc[sel], k)
        return out_s, out_l

    # -- maintenance ---------------------------------------------------------------------
    def update(self, rows, new_weight, new_bias=None):
        """Replaces rows of the layer and re-indexes them (remove + reinsert).

        rows: (m,) distinct class ids; new_weight: (m, dim) their new rows; new_bias:
        (m,) their new biases (only with a bias). The new rows are written into
        ``self.weight`` (the caller's array when it was kept by reference). The
        transform (centring, balancing, M) is kept; a row longer than M in the
        transformed space makes the whole index rebuild with a new M. Returns the
        number of rows re-indexed.
        """
        rows = as_ids(rows, "rows")
        if rows.size and int(rows.max()) >= self.n_classes:
            raise ValueError(f"rows: expected ids in [0, {self.n_classes}), got {int(rows.max())}")
        Wn = _as_float_matrix(new_weight, "new_weight", self.dim, allow_1d=True)
        if Wn.shape[0] != rows.size:
            raise ValueError(f"new_weight: expected {rows.size} rows (one per id), got {Wn.shape[0]}")
        if new_bias is not None:
            if self.bias is None:
                raise ValueError("new_bias: expected None, the layer has no bias")
            bn = _as_bias(new_bias, rows.size, "new_bias")
        else:
            bn = None if self.bias is None else self.bias[rows]
        if rows.size == 0:
            return 0
        self.weight[rows] = Wn
        if bn is not None:
            self.bias[rows] = bn
        v = self._item_space(rows)
        if np.any((v * v).sum(1) > self._range_M[self._range_of[rows]] ** 2 * (1 + 1e-6)):
            self._set_norm_ranges(np.sqrt(self._item_norms2(np.arange(self.n_classes))))
            self.rebuild()
            return self.n_classes
        if self.tables is not None:
            self.tables.remove(rows)
        self._index(rows)
        return int(rows.size)

    def rebuild(self):
        """Re-indexes every row with the current transform (after in-place weight changes)."""
        if self.tables is not None:
            self.tables.clear()
        self._index(np.arange(self.n_classes, dtype=np.int32))

    # -- evaluation ----------------------------------------------------------------------
    def recall_report(self, H, labels=None, max_candidates=None):
        """Quality of the candidate sets on hidden vectors H (n, dim).

        labels: optional true labels, an (n,) integer array, a list of n label lists, or an
        (n, n_classes) scipy.sparse indicator. Returns a dict:
          top_logit_recall: fraction of rows whose dense argmax is a candidate;
          label_recall: fraction of (row, true label) pairs whose label is a candidate
            (None without labels); label_recall_any: rows with at least one;
          candidate_fraction: mean candidates per row / n_classes; mean_candidates.
        """
        H = _as_float_matrix(H, "H", self.dim, allow_1d=True)
        n = H.shape[0]
        m = self.max_candidates if max_candidates is None else check_int(max_candidates, "max_candidates", 1)
        indptr, ids, _ = self._candidates(H, m)
        lens = np.diff(indptr)
        row_of = np.repeat(np.arange(n), lens)
        _, top = dense_topk(H, self.weight, self.bias, 1)
        hit = np.zeros(n, bool)
        hit[row_of[ids == top[row_of, 0]]] = True
        out = {"n": n, "top_logit_recall": float(hit.mean()) if n else float("nan"),
               "candidate_fraction": float(lens.mean() / self.n_classes) if n else 0.0,
               "mean_candidates": float(lens.mean()) if n else 0.0,
               "label_recall": None, "label_recall_any": None}
        if labels is not None:
            Y = _labels_csr(labels, n, self.n_classes)
            cand = sp.csr_matrix((np.ones(ids.size, np.int8), ids, indptr), shape=(n, self.n_classes))
            found = Y.multiply(cand)
            found.eliminate_zeros()
            per_row = np.diff(found.indptr)
            out["label_recall"] = float(found.nnz / max(Y.nnz, 1))
            out["label_recall_any"] = float((per_row > 0).mean()) if n else float("nan")
        return out

    @property
    def nbytes(self) -> int:
        """Bytes of the index (tables or packed bits, hasher, transform); the weights are
        counted only when the retriever holds its own copy (``owns_weight``)."""
        if self.tables is not None:
            total = self.tables.nbytes
        else:
            total = self._bits.nbytes + _hasher_bytes(self.hasher)
        for a in (self.mu, self.nu, self._P, self._Pinv):
            if a is not None:
                total += a.nbytes
        if self.owns_weight:
            total += self.weight.nbytes + (self.bias.nbytes if self.bias is not None else 0)
        return int(total)

    def __repr__(self):
        return (f"OutputRetriever(n_classes={self.n_classes}, dim={self.dim}, search={self.search!r}, k={self.k}, "
                f"l={self.l}, max_candidates={self.max_candidates}, bias={self.bias is not None}, "
                f"calibrated={self.nu is not None}, learned={self.learned})")


def _hasher_bytes(h):
    hb = getattr(h, "nbytes", 0)
    return int(hb) if isinstance(hb, numbers.Integral) else 0


def _labels_csr(labels, n, n_classes):
    """True labels as a CSR indicator (n, n_classes)."""
    labels = _from_torch(labels)
    if sp.issparse(labels):
        Y = labels.tocsr()
        if Y.shape != (n, n_classes):
            raise ValueError(f"labels: expected shape ({n}, {n_classes}), got {Y.shape}")
        Y = (Y != 0).astype(np.int8).tocsr()
        return Y
    if isinstance(labels, np.ndarray):
        if labels.dtype.kind not in "iu":
            raise TypeError(f"labels: expected integer labels, got {labels.dtype}")
        if labels.shape != (n,):
            raise ValueError(f"labels: expected shape ({n},), got {labels.shape}")
        lists = labels[:, None]
        lens = np.ones(n, np.int64)
        flat = labels.astype(np.int64)
    elif isinstance(labels, (list, tuple)):
        if len(labels) != n:
            raise ValueError(f"labels: expected {n} label lists, got {len(labels)}")
        lists = [np.atleast_1d(np.asarray(r)) for r in labels]
        for r in lists:
            if r.size and r.dtype.kind not in "iu":
                raise TypeError(f"labels: expected integer labels, got {r.dtype}")
        lens = np.array([r.size for r in lists], np.int64)
        flat = np.concatenate([r.astype(np.int64) for r in lists]) if n else np.zeros(0, np.int64)
    else:
        raise TypeError(f"labels: expected an integer array, list of label lists or scipy.sparse matrix, "
                        f"got {type(labels).__name__}")
    if flat.size and (flat.min() < 0 or flat.max() >= n_classes):
        bad = int(flat.min() if flat.min() < 0 else flat.max())
        raise ValueError(f"labels: expected labels in [0, {n_classes}), got {bad}")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(lens, out=indptr[1:])
    Y = sp.csr_matrix((np.ones(flat.size, np.int8), flat, indptr), shape=(n, n_classes))
    Y.sum_duplicates()
    Y.data[:] = 1
    return Y
