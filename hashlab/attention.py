"""LSH-sampled decode attention (MagicPIG, Chen et al. ICLR 2025) on the CPU.

Top-k attention is biased when attention is not sparse; MagicPIG samples keys with
locality-sensitive hashing instead and corrects every sampled logit by its sampling
probability (importance sampling), so that the estimate stays close to dense attention.

Algorithm (per KV head; query heads of one GQA group share their KV head's index):

- keys are centred by the mean of the prompt keys (the first ``append``), then hashed
  with SimHash, k bits x l tables (default 10 x 150);
- a decode query (not centred) samples the indexed keys that share its bucket in at
  least ``min_collisions`` (m, default 2) tables;
- a sampled key at angle theta to the query (theta between q and the *centred* key) was
  sampled with probability u = P[Binomial(l, p) >= m], p = (1 - theta/pi)^k (for m = 2:
  u = 1 - (1-p)^l - l p (1-p)^(l-1)); its logit becomes q.k*scale - log u;
- softmax over the sampled keys, merged exactly (log-sum-exp) with the dense part: the
  first ``sinks`` tokens, the last ``window`` tokens, and the tokens that left the window
  but are not indexed yet (tokens join the index ``chunk`` at a time as they leave the
  window, so long generations stay sampled).

What differs from MagicPIG's CPU path: structured-rotation SimHash (H D3 H D2 H D1,
fast Walsh-Hadamard; ``SimHash(kind="hadamard")``'s signs) instead of a dense Gaussian
projection, so that hashing 96K keys takes well under a second instead of 16 s; a
table's k bits come from k different rotations (k consecutive coordinates of one rotation
are dependent and would make u 10-25% too large); Elias-Fano-coded tables at about k + 2
bits per (key, table) instead of 32-bit ids (at l=150 about 235 bytes per key and KV head,
plus 4 for the key's norm: ~0.46x a bfloat16 KV cache at head_dim 128 and 96K tokens,
where MagicPIG's is ~1.16x; the index does not depend on head_dim, so at head_dim 64 it is
~0.9x); the sampled sets of a GQA group merged so that every key/value row is read once
per group; run-time SIMD dispatch (AVX-512 / AVX2 / SSE2), vectorised exp/log/acos; a
run-time thread count (``hashlab.set_num_threads``); k up to 32; float32 or bfloat16 KV.

Arrays: numpy arrays or torch CPU tensors. bfloat16 data is given as uint16 bit patterns
(numpy) or torch.bfloat16 tensors (read zero-copy through ``.view(torch.int16)``); float
arrays given to a bfloat16 index are rounded to nearest even.

Learned transform (``learned=True``, MONGOOSE-style learnable hashing that keeps the
estimator unbiased): per KV head an invertible map A (head_dim x head_dim) is fitted on the
prompt's queries and keys (``fit``). The index stores k' = A k and hashes, centres and
corrects in that space with its usual random rotations; decode queries become
q' = A^-T q, so q'.k' = q.k (logits unchanged) and the correction uses the true sampling
probability of the transformed pair: the estimate stays unbiased. What A changes is the
angle, cos' = q.(k - mean) / (|A^-T q| |A (k - mean)|), i.e. which keys a query collides
with. A = expm(S), S symmetric (A is s.p.d.; an orthogonal part would not change the
angles), is fitted with torch autograd to maximise the mean sampling probability u of
each prompt query's top inner-product keys (queries of the last 1,024 prompt positions,
nearest the decode queries), with a penalty keeping the mean u over all keys (the
expected sampled count) at or below that of A = I (or a fraction ``budget_ratio`` of it),
and a small penalty on |S|_F keeping A well conditioned (cond(A) <= exp(2 |S|_2)). A
learned hash without a known sampling probability (``hashlab.learned.LearnedSimHash``)
would break the importance correction; this keeps the hash random given A. torch is
imported by ``fit`` only.

Also here, with the same interface, for comparisons: ``dense_attention`` (exact) and
``topk_attention`` (exact softmax over the top-``budget`` keys of each head), both C++
kernels fast enough for 100K-token contexts; and ``sampling_probability`` (p and u of
given cosines, through the kernels' own code path).
"""
from __future__ import annotations

import math

import numpy as np

from . import _C
from ._validate import _from_torch, check_choice, check_float, check_int
from .simhash import SimHash

DTYPES = ("float32", "bfloat16")
MAX_HEAD_DIM = 4096

__all__ = ["LSHKVIndex", "dense_attention", "topk_attention", "sampling_probability", "table_bits",
           "fit_key_transform"]


def _next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


def _n_rot(head_dim: int, k: int, l: int) -> int:
    """Rotations the index uses: enough for k*l bits, and at least k (one per bit of a table)."""
    D = _next_pow2(head_dim)
    return max(-(-k * l // D), k)


def table_bits(head_dim: int, k: int, l: int) -> np.ndarray:
    """(l, k) int64: bit j of table t's code is bit ``table_bits[t, j]`` of the index's
    ``hasher.bits(x)`` (slot s = k*t + j is coordinate s // n_rot of rotation s % n_rot,
    i.e. bit (s % n_rot) * D + s // n_rot)."""
    D = _next_pow2(head_dim)
    n_rot = _n_rot(head_dim, k, l)
    s = np.arange(k * l, dtype=np.int64)
    return ((s % n_rot) * D + s // n_rot).reshape(l, k)


# ---------------------------------------------------------------------------
# Input conversion
# ---------------------------------------------------------------------------

def _torch_bf16(x):
    """A torch.bfloat16 CPU tensor as a numpy uint16 array (zero-copy when contiguous)."""
    mod = type(x).__module__
    if mod.startswith("torch") and hasattr(x, "dtype") and str(x.dtype) == "torch.bfloat16":
        import torch
        if x.device.type != "cpu":
            raise TypeError(f"expected a CPU tensor, got one on {x.device}")
        return x.detach().contiguous().view(torch.int16).numpy().view(np.uint16)
    return x


def _array(x, name):
    x = _from_torch(_torch_bf16(x))
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    return x


def _f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (finite input)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def _bf16_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << np.uint32(16)).view(np.float32)


def _check_finite(x, name):
    if x.size == 0:
        return
    if x.dtype == np.uint16:
        bad = (x & np.uint16(0x7F80)) == np.uint16(0x7F80)
    else:
        bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"{name}: expected finite values, got NaN or inf")


def _kv(x, name, want=None):
    """KV array as C-contiguous float32 or uint16 (bfloat16 bits).

    want: "float32" or "bfloat16" to convert to, or None to keep the input's kind
    (float -> float32, uint16 / torch.bfloat16 -> bfloat16 bits). NaN and inf are
    rejected by the C++ core (LSHKVIndex.append scans the new tokens; the exact kernels
    check their output), without a numpy pass over the whole cache.
    """
    x = _array(x, name)
    if x.dtype == np.uint16:
        kind = "bfloat16"
    elif x.dtype.kind == "f":
        kind = "float32"
    else:
        raise TypeError(f"{name}: expected a float array or bfloat16 (uint16 bit patterns / torch.bfloat16), "
                        f"got {x.dtype}")
    want = want or kind
    if kind == "float32":
        x = np.ascontiguousarray(x, dtype=np.float32)
        return _f32_to_bf16(x) if want == "bfloat16" else x
    x = np.ascontiguousarray(x)
    return x if want == "bfloat16" else _bf16_to_f32(x)


def _queries(q, head_dim=None):
    q = _array(q, "queries")
    if q.dtype == np.uint16:
        q = _bf16_to_f32(q)
    elif q.dtype.kind != "f":
        raise TypeError(f"queries: expected a float array, got {q.dtype}")
    if q.ndim != 2 or (head_dim is not None and q.shape[1] != head_dim):
        want = "(n_heads, head_dim)" if head_dim is None else f"(n_heads, {head_dim})"
        raise ValueError(f"queries: expected shape {want}, got {q.shape}")
    q = np.ascontiguousarray(q, dtype=np.float32)
    _check_finite(q, "queries")
    return q


def _check_kv_shapes(K, V, n_kv=None, head_dim=None):
    want = f"({'n_kv_heads' if n_kv is None else n_kv}, t, {'head_dim' if head_dim is None else head_dim})"
    for a, name in ((K, "keys"), (V, "values")):
        if a.ndim != 3 or (n_kv is not None and a.shape[0] != n_kv) or \
                (head_dim is not None and a.shape[2] != head_dim):
            raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    if V.shape != K.shape:
        raise ValueError(f"values: expected the keys' shape {K.shape}, got {V.shape}")


def _scale(scale, head_dim):
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return check_float(scale, "scale", 0.0, None, lo_open=True)


def _heads(n_heads, n_kv):
    if n_heads < 1 or n_heads % n_kv:
        raise ValueError(f"queries: expected a number of heads that is a positive multiple of n_kv_heads={n_kv}, "
                         f"got {n_heads}")


# ---------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------

class LSHKVIndex:
    """KV cache of one attention layer with an LSH index for sampled decode attention.

    Parameters
    ----------
    head_dim : int, 1 .. 4096.
    n_kv_heads : int >= 1.
    k, l : bits per table (1 .. 32) and tables (1 .. 65535); defaults 10 x 150 (MagicPIG).
    min_collisions : int, m in [0, min(l, 255)]: a key is sampled when it shares the query's
        bucket in at least m tables. m = 0 samples every indexed key with probability 1,
        i.e. exact dense attention through the sampled path (a test hook). A steeper
        sampling curve (fewer bits, more tables and a larger m, e.g. k=5, l=200, m=16)
        samples the keys near the query's direction more surely and the background less:
        on SmolLM2 it halves the output error at the same number of sampled keys, but
        buckets hold n / 2^k keys, so counting costs ~l n / 2^k per query head (6n at
        5 x 200 against 0.15n at 10 x 150; benchmarks/README.md, SmolLM2 attention).
    sinks, window : int >= 0, the always-dense first and last tokens (4 and 64).
    seed : int >= 0, draws the rotations (``hasher``) and the subsampling of ``max_sampled``.
    max_sampled : None or int >= 1: at most this many sampled keys per query head; beyond
        it a uniform random subset is kept and its weights multiplied by
        (sampled / max_sampled), which keeps the estimate consistent.
    dtype : "float32" or "bfloat16", how keys and values are stored.
    chunk : int >= 1, tokens leaving the window join the index this many at a time.
    learned : bool. True: hash through a learned per-KV-head map (see the module doc);
        ``fit(queries, keys)`` on the prompt (or setting ``transform``) must come before
        the first ``append``. Keys are stored transformed; values, logits and outputs are
        unchanged. False (default): no transform, exactly the plain index.

    Attributes: ``transform`` ((n_kv_heads, head_dim, head_dim) float32 maps A, or None),
    ``hasher`` (the SimHash whose ``bits`` the codes are made of; see
    ``table_bits``), ``nbytes`` (index memory: tables, means, signs),
    ``kv_nbytes`` (the stored keys and values), ``n_indexed``, ``n_segments``, ``len()``.
    """

    def __init__(self, head_dim, n_kv_heads, k=10, l=150, min_collisions=2, sinks=4, window=64, seed=0,
                 max_sampled=None, dtype="float32", chunk=256, learned=False):
        self.head_dim = check_int(head_dim, "head_dim", 1, MAX_HEAD_DIM)
        self.n_kv_heads = check_int(n_kv_heads, "n_kv_heads", 1, 1 << 16)
        self.k = check_int(k, "k", 1, 32)
        self.l = check_int(l, "l", 1, 65535)
        self.min_collisions = check_int(min_collisions, "min_collisions", 0, min(self.l, 255))
        self.sinks = check_int(sinks, "sinks", 0, 2**31 - 2)
        self.window = check_int(window, "window", 0, 2**31 - 2)
        self.seed = check_int(seed, "seed", 0, 2**63 - 1)
        self.max_sampled = None if max_sampled is None else check_int(max_sampled, "max_sampled", 1, 2**31 - 2)
        self.dtype = check_choice(dtype, "dtype", DTYPES)
        self.chunk = check_int(chunk, "chunk", 1, 2**31 - 2)
        if not isinstance(learned, (bool, np.bool_)):
            raise TypeError(f"learned: expected a bool, got {type(learned).__name__}")
        self.learned = bool(learned)
        self._A = self._A_inv = None
        D = _next_pow2(self.head_dim)
        n_rot = _n_rot(self.head_dim, self.k, self.l)
        kk = min(32, D)
        # the rotation bank: all n_rot * D bits (its signs depend on seed, D and n_rot only)
        self.hasher = SimHash(self.head_dim, kk, n_rot * D // kk, kind="hadamard", seed=self.seed)
        assert self.hasher.signs.shape == (n_rot + 2, D)
        self.table_bits = table_bits(self.head_dim, self.k, self.l)
        self._core = _C.LSHAttentionIndex(self.head_dim, self.n_kv_heads, self.k, self.l, self.min_collisions,
                                          self.sinks, self.window, self.chunk, self.max_sampled or 0,
                                          self.dtype == "bfloat16", self.seed, self.hasher.signs)

    def fit(self, queries, keys, recent=1024, **options):
        """Fits the per-KV-head maps of a ``learned=True`` index on the prompt, before the first append.

        queries: (n_heads, t_q, head_dim) float, the prompt's queries (n_heads a multiple of
        n_kv_heads; query head h belongs to KV head h // (n_heads // n_kv_heads)); keys:
        (n_kv_heads, t >= 1, head_dim) float, the prompt's keys (the first ``sinks``, never
        sampled, are left out of the fit; with fewer than 2 keys left the maps are I).
        recent: int >= 1, only the queries of the last ``recent`` prompt positions are used:
        decode queries come next, and with rotary position embeddings the queries nearest
        in position resemble them most (on SmolLM2, fitting on the last 1,024 instead of
        all 4,096 positions gave +2.7 points of top-10 recall at the same budget).
        ``options`` go to ``fit_key_transform`` (seed defaults to the index's). Sets
        ``transform``; returns self. Needs torch.
        """
        if not self.learned:
            raise RuntimeError("fit() needs an index built with learned=True")
        if len(self):
            raise RuntimeError("fit() must come before the first append(): the index already holds keys "
                               "hashed without the transform")
        Q = _array(queries, "queries")
        K = _array(keys, "keys")
        for x, name in ((Q, "queries"), (K, "keys")):
            if x.dtype.kind != "f":
                raise TypeError(f"{name}: expected a float array, got {x.dtype}")
        if Q.ndim != 3 or Q.shape[2] != self.head_dim or Q.shape[1] < 1:
            raise ValueError(f"queries: expected shape (n_heads, t_q >= 1, {self.head_dim}), got {Q.shape}")
        _heads(Q.shape[0], self.n_kv_heads)
        if K.ndim != 3 or K.shape[0] != self.n_kv_heads or K.shape[2] != self.head_dim:
            raise ValueError(f"keys: expected shape ({self.n_kv_heads}, t, {self.head_dim}), got {K.shape}")
        _check_finite(Q, "queries")
        _check_finite(K, "keys")
        if K.shape[1] < 1:
            raise ValueError(f"keys: expected at least one prompt key, got shape {K.shape}")
        Q = Q[:, -check_int(recent, "recent", 1, None):]
        K = K[:, self.sinks:]
        G = Q.shape[0] // self.n_kv_heads
        if K.shape[1] < 2:  # a prompt of (almost) only sinks: nothing to learn from
            self.transform = np.broadcast_to(np.eye(self.head_dim, dtype=np.float32), (self.n_kv_heads,) +
                                             (self.head_dim,) * 2)
            return self
        options.setdefault("seed", self.seed)
        A = np.stack([fit_key_transform(Q[g * G:(g + 1) * G].reshape(-1, self.head_dim), K[g], k=self.k, l=self.l,
                                        min_collisions=self.min_collisions, **options)
                      for g in range(self.n_kv_heads)])
        self.transform = A
        return self

    @property
    def transform(self):
        """(n_kv_heads, head_dim, head_dim) float32 maps A (keys are stored as A k, decode
        queries hashed as A^-T q), or None. Settable before the first append of a
        ``learned=True`` index, e.g. to reuse maps fitted on another prompt."""
        return None if self._A is None else self._A.copy()

    @transform.setter
    def transform(self, A):
        if not self.learned:
            raise RuntimeError("transform can only be set on an index built with learned=True")
        if len(self):
            raise RuntimeError("transform must be set before the first append()")
        A = _array(A, "transform")
        if A.dtype.kind != "f":
            raise TypeError(f"transform: expected a float array, got {A.dtype}")
        d = self.head_dim
        if A.shape != (self.n_kv_heads, d, d):
            raise ValueError(f"transform: expected shape ({self.n_kv_heads}, {d}, {d}), got {A.shape}")
        A = np.ascontiguousarray(A, dtype=np.float64)
        _check_finite(A, "transform")
        cond = np.linalg.cond(A)
        if not np.all(cond < 1e6):
            raise ValueError(f"transform: expected invertible, well-conditioned maps (condition number < 1e6), "
                             f"got {float(np.max(cond)):.3g}")
        self._A = A.astype(np.float32)
        # q' = q A^-1 per query row, so the kernels' q'.k' equals q.k
        self._A_inv = np.linalg.inv(A).astype(np.float32)

    def append(self, keys, values):
        """Appends t tokens: keys and values (n_kv_heads, t, head_dim). The first call is the
        prompt (t >= 1): its keys' mean centres every later hash of that KV head.
        With learned=True the keys are stored transformed (``transform``), which must be
        fitted or set first."""
        if self.learned:
            if self._A is None:
                raise RuntimeError("learned=True: call fit(queries, keys) on the prompt (or set transform) "
                                   "before the first append()")
            K = _kv(keys, "keys", "float32")
        else:
            K = _kv(keys, "keys", self.dtype)
        V = _kv(values, "values", self.dtype)
        _check_kv_shapes(K, V, self.n_kv_heads, self.head_dim)
        if len(self) == 0 and K.shape[1] == 0:
            raise ValueError("keys: expected at least one token in the first append (the prompt), got 0")
        if self.learned:
            K = np.matmul(K, self._A.transpose(0, 2, 1))  # k' = A k, row-wise
            if self.dtype == "bfloat16":
                K = _f32_to_bf16(K)
        if K.shape[1]:
            self._core.append(K, V)
        return self

    def attend(self, queries, scale=None, return_stats=False):
        """One decode step: queries (n_heads, head_dim), n_heads a multiple of n_kv_heads
        (query head h reads KV head h // (n_heads // n_kv_heads)). scale defaults to
        1/sqrt(head_dim).

        Returns out (n_heads, head_dim) float32; with return_stats, (out, lse, touched):
        lse (n_heads,) float32 the log-sum-exp of the corrected logits, touched (n_heads,)
        int64 the keys used (sampled + dense).
        """
        if len(self) == 0:
            raise RuntimeError("index is empty; call append() first")
        Q = _queries(queries, self.head_dim)
        _heads(Q.shape[0], self.n_kv_heads)
        if self.learned:
            G = Q.shape[0] // self.n_kv_heads
            Q = np.ascontiguousarray(np.matmul(Q.reshape(self.n_kv_heads, G, -1), self._A_inv).reshape(Q.shape))
        out, lse, touched = self._core.attend(Q, _scale(scale, self.head_dim))
        return (out, lse, touched) if return_stats else out

    def set_min_collisions(self, min_collisions):
        """Changes m for the following ``attend`` calls (the tables do not depend on it): how
        an adaptive budget (``allocate_min_collisions``) applies its choice after the prompt
        is in. Returns self."""
        m = check_int(min_collisions, "min_collisions", 0, min(self.l, 255))
        self._core.set_min_collisions(m)
        self.min_collisions = m
        return self

    def __len__(self):
        return len(self._core)

    @property
    def nbytes(self) -> int:
        """Index memory in bytes (tables, means, rotation signs), without the KV."""
        return int(self._core.nbytes)

    @property
    def kv_nbytes(self) -> int:
        """Bytes of the stored keys and values."""
        return int(self._core.kv_nbytes)

    @property
    def build_seconds(self):
        """(hashing, tables): cumulative wall seconds spent hashing keys and building or
        merging tables (the index build, without copying the KV)."""
        h, t = self._core.build_seconds
        return float(h), float(t)

    @property
    def n_indexed(self) -> int:
        """Tokens in the index: positions [sinks, sinks + n_indexed); the rest is attended densely."""
        return int(self._core.n_indexed)

    @property
    def n_segments(self) -> int:
        return int(self._core.n_segments)

    @property
    def key_mean(self) -> np.ndarray:
        """(n_kv_heads, head_dim) float32 centring means (zeros before the first append;
        of the transformed keys with learned=True)."""
        return self._core.key_mean()

    def indexed_codes(self, head) -> np.ndarray:
        """(n_indexed, l) uint32 table codes of KV head ``head``'s indexed keys, decoded from the index."""
        return self._core.indexed_codes(check_int(head, "head", 0, self.n_kv_heads - 1))

    def __repr__(self):
        return (f"LSHKVIndex(head_dim={self.head_dim}, n_kv_heads={self.n_kv_heads}, k={self.k}, l={self.l}, "
                f"min_collisions={self.min_collisions}, sinks={self.sinks}, window={self.window}, "
                f"dtype={self.dtype!r}, learned={self.learned}, tokens={len(self)}, indexed={self.n_indexed})")


# ---------------------------------------------------------------------------
# Exact kernels
# ---------------------------------------------------------------------------

def _dense_args(queries, keys, values):
    Q = _queries(queries)
    K = _kv(keys, "keys")
    V = _kv(values, "values")
    if K.dtype != V.dtype:
        raise TypeError(f"keys, values: expected the same dtype, got {K.dtype} and {V.dtype}")
    _check_kv_shapes(K, V, None, Q.shape[1])
    if Q.shape[1] < 1:
        raise ValueError(f"queries: expected head_dim >= 1, got shape {Q.shape}")
    if K.shape[0] < 1:
        raise ValueError(f"keys: expected at least one KV head, got shape {K.shape}")
    _heads(Q.shape[0], K.shape[0])
    return Q, K, V


def dense_attention(queries, keys, values, scale=None, return_lse=False):
    """Exact attention of one decode step.

    queries (n_heads, d); keys, values (n_kv_heads, n, d), float or bfloat16 (uint16 bits /
    torch.bfloat16), n_heads a multiple of n_kv_heads. Returns out (n_heads, d) float32
    (and lse (n_heads,) with return_lse).
    """
    Q, K, V = _dense_args(queries, keys, values)
    out, lse = _C.dense_attention(Q, K, V, _scale(scale, Q.shape[1]))
    return (out, lse) if return_lse else out


def topk_attention(queries, keys, values, budget, scale=None, return_lse=False):
    """Exact softmax over the ``budget`` keys with the largest q.k of each query head
    (ties by position). budget: int, or (n_heads,) ints (e.g. the keys LSH touched).
    Same arrays as ``dense_attention``: queries (n_heads, d), keys and values
    (n_kv_heads, n, d), float or bfloat16; returns out (n_heads, d) float32 (and lse)."""
    Q, K, V = _dense_args(queries, keys, values)
    H = Q.shape[0]
    if isinstance(budget, (bool, np.bool_)):
        raise TypeError("budget: expected an integer or an integer array, got bool")
    if np.isscalar(budget):
        b = np.full(H, check_int(budget, "budget", 0, None), dtype=np.int64)
    else:
        b = _array(budget, "budget")
        if b.dtype.kind not in "iu":
            raise TypeError(f"budget: expected integers, got {b.dtype}")
        if b.shape != (H,):
            raise ValueError(f"budget: expected shape ({H},), got {b.shape}")
        if b.size and b.min() < 0:
            raise ValueError(f"budget: expected budgets >= 0, got {int(b.min())}")
        b = np.ascontiguousarray(b, dtype=np.int64)
    out, lse = _C.topk_attention(Q, K, V, b, _scale(scale, Q.shape[1]))
    return (out, lse) if return_lse else out


def sampling_probability(cos_theta, k, l, min_collisions=2):
    """(p, u) for cosines of the angle between query and centred key, computed by the
    kernels' own code: p = (1 - acos(c)/pi)^k, u = P[Binomial(l, p) >= min_collisions].
    cos_theta: real array of any shape, values in [-1, 1]; p and u are float32 of its shape."""
    c = _array(cos_theta, "cos_theta")
    if c.dtype.kind not in "fiu":
        raise TypeError(f"cos_theta: expected a real array, got {c.dtype}")
    shape = c.shape
    c = np.ascontiguousarray(c, dtype=np.float32).reshape(-1)
    _check_finite(c, "cos_theta")
    if c.size and (c.min() < -1.0 or c.max() > 1.0):
        raise ValueError("cos_theta: expected values in [-1, 1]")
    k = check_int(k, "k", 1, 32)
    l = check_int(l, "l", 1, 65535)
    m = check_int(min_collisions, "min_collisions", 0, min(l, 255))
    p, u = _C.attention_sampling_prob(c, k, l, m)
    return p.reshape(shape), u.reshape(shape)


def _binom_sf_terms(l: int, js):
    """log C(l, j) for j in js (float64 list)."""
    return [math.lgamma(l + 1) - math.lgamma(j + 1) - math.lgamma(l - j + 1) for j in js]


def _sampling_u(cos, k: int, l: int, m: int, log: bool = False):
    """torch: u = P[Binomial(l, p) >= m], p = (1 - acos(cos)/pi)^k, differentiable in cos.

    u = 1 - sum_{j<m} pmf(j) (m is small); with log=True, log u, switching to the leading
    term C(l, m) p^m (1-p)^(l-m) of the upper tail where 1 - sum cancels (u < 1e-9)."""
    import torch

    eps = 1e-6 if cos.dtype == torch.float32 else 1e-12
    p = (1 - torch.arccos(cos.clamp(-1 + eps, 1 - eps)) / math.pi) ** k
    p = p.clamp(1e-30 if cos.dtype == torch.float32 else 1e-300, 1 - 1e-7)
    lp, l1p = torch.log(p), torch.log1p(-p)
    low = sum(torch.exp(c + j * lp + (l - j) * l1p) for j, c in zip(range(m), _binom_sf_terms(l, range(m))))
    u = 1 - low
    if not log:
        return u
    lead = _binom_sf_terms(l, [m])[0] + m * lp + (l - m) * l1p
    return torch.where(u > 1e-9, torch.log(u.clamp_min(1e-9)), lead)


def fit_key_transform(queries, keys, k=10, l=150, min_collisions=2, n_pos=16, steps=100, lr=0.02,
                      max_queries=1024, budget_queries=256, budget_keys=1024, reg=0.03, budget_penalty=30.0,
                      budget_ratio=1.0, seed=0) -> np.ndarray:
    """Fits one KV head's map A (see the module doc) with torch autograd; returns (d, d) float32.

    queries: (n_q, d) float, the prompt queries of the KV head's query heads; keys: (n, d)
    float, its prompt keys (centred here by their mean, as the index does). Positives: each
    of up to ``max_queries`` sampled queries' top-``n_pos`` keys by inner product. The loss,
    minimised over S (A = expm(S), S symmetric, from S = 0 i.e. A = I) by Adam
    (``steps``, ``lr``):

        -mean u(positives) + budget_penalty * relu(log(B / (budget_ratio * B_I)))^2 + reg * |S|_F^2

    with u the index's sampling probability (k, l, min_collisions) of the transformed pair
    and B the mean u over ``budget_queries`` x ``budget_keys`` pairs (the expected fraction
    of keys sampled), B_I its value at A = I: A may not make a query sample more keys.
    ``budget_ratio`` in (0, 1] lowers the target to that fraction of B_I, a margin for
    queries the fit has not seen: on SmolLM2's decode queries the count runs ~8% above B_I
    with 1.0 and ~5% below with 0.9 (benchmarks/README.md, learned section). It is not
    free: on data without that drift (tests/test_attention_learned.py's anisotropic keys)
    0.9 drives this non-convex fit to fewer collisions of every kind, and the recall of
    the top keys falls below A = I's.
    The maximised quantity is the expected recall of the positives (mean u rather than mean
    log u, which favours the hopeless pairs at the expense of recall).
    """
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("fit_key_transform (LSHKVIndex(learned=True).fit) needs torch") from e
    Q = _array(queries, "queries")
    K = _array(keys, "keys")
    for x, name in ((Q, "queries"), (K, "keys")):
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a float array, got {x.dtype}")
    if Q.ndim != 2 or Q.shape[0] < 1 or Q.shape[1] < 1:
        raise ValueError(f"queries: expected shape (n_q >= 1, d >= 1), got {Q.shape}")
    if K.ndim != 2 or K.shape[1] != Q.shape[1] or K.shape[0] < 2:
        raise ValueError(f"keys: expected shape (n >= 2, {Q.shape[1]}), got {K.shape}")
    _check_finite(Q, "queries")
    _check_finite(K, "keys")
    k = check_int(k, "k", 1, 32)
    l = check_int(l, "l", 1, 65535)
    m = check_int(min_collisions, "min_collisions", 0, min(l, 255))
    n_pos = check_int(n_pos, "n_pos", 1, None)
    steps = check_int(steps, "steps", 0, None)
    lr = check_float(lr, "lr", 0.0, None, lo_open=True)
    max_queries = check_int(max_queries, "max_queries", 1, None)
    budget_queries = check_int(budget_queries, "budget_queries", 1, None)
    budget_keys = check_int(budget_keys, "budget_keys", 1, None)
    reg = check_float(reg, "reg", 0.0, None)
    budget_penalty = check_float(budget_penalty, "budget_penalty", 0.0, None)
    budget_ratio = check_float(budget_ratio, "budget_ratio", 0.0, 1.0, lo_open=True)
    rng = np.random.default_rng(check_int(seed, "seed", 0, 2**63 - 1))
    d = Q.shape[1]
    if m == 0:  # every key is sampled with probability 1 whatever A is
        return np.eye(d, dtype=np.float32)

    Q = Q[rng.choice(len(Q), min(max_queries, len(Q)), replace=False)]
    Qt = torch.tensor(Q, dtype=torch.float64)
    Kc = torch.tensor(K, dtype=torch.float64)
    Kc = Kc - Kc.mean(0)
    S_all = Qt @ Kc.T  # q.(k - mean) ranks keys as q.k does, per query
    pos = S_all.topk(min(n_pos, len(K)), dim=1).indices
    S_pos, K_pos = S_all.gather(1, pos), Kc[pos]
    nb = min(budget_queries, len(Q))
    sub = torch.as_tensor(rng.choice(len(K), min(budget_keys, len(K)), replace=False))
    # the budget term covers many pairs: float32 is accurate enough for a mean of u
    S_b, K_b = S_all[:nb, sub].float(), Kc[sub].float()

    W = torch.zeros(d, d, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([W], lr=lr)
    threads = torch.get_num_threads()
    # tensors of at most a few hundred K elements: intra-op threads cost more than they gain
    torch.set_num_threads(1)
    try:
        return _adam_fit(torch, W, opt, _terms_of(torch, W, Qt, S_pos, K_pos, S_b, K_b, nb, k, l, m), steps, reg,
                         budget_penalty, budget_ratio)
    finally:
        torch.set_num_threads(threads)


def _terms_of(torch, W, Qt, S_pos, K_pos, S_b, K_b, nb, k, l, m):
    """The closure of fit_key_transform: (S, recall of positives, budget B) for the current W."""
    def terms():
        S = (W + W.T) / 2
        A, A_inv = torch.matrix_exp(S), torch.matrix_exp(-S)
        qn = (Qt @ A_inv).norm(dim=1)  # |A^-T q|
        u_pos = _sampling_u(S_pos / (qn[:, None] * (K_pos @ A.T).norm(dim=2)), k, l, m)
        cos_b = S_b / (qn[:nb].float()[:, None] * (K_b @ A.T.float()).norm(dim=1)[None, :])
        return S, u_pos.mean(), _sampling_u(cos_b, k, l, m).mean()
    return terms


def _adam_fit(torch, W, opt, terms, steps, reg, budget_penalty, budget_ratio):
    """Minimises fit_key_transform's loss over W; returns A = expm(sym(W)) as float32 numpy."""
    with torch.no_grad():
        _, _, B_I = terms()
        target = B_I * budget_ratio
    with torch.enable_grad():  # the fit runs inside model.generate's no_grad at prefill
        for _ in range(steps):
            S, recall, B = terms()
            loss = -recall + budget_penalty * torch.relu(torch.log(B / target)) ** 2 + reg * (S ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.matrix_exp((W + W.T) / 2).float().numpy()


_BUDGET_NAMES = ("prompt_profile", "expected_sampled_fraction", "allocate_min_collisions")


def __getattr__(name):
    # the adaptive budget lives in attention_budget.py (it imports this module, so on first use)
    if name in _BUDGET_NAMES:
        from . import attention_budget
        return getattr(attention_budget, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
