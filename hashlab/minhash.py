"""Densified one-permutation MinHash (Li et al. 2012; Shrivastava, ICML 2017).

Each row of a CSR matrix is the set of its stored column ids (values are ignored,
stored zeros included: call ``S.eliminate_zeros()`` first if they should not count).
One hash h(x) = ((a*x + c) mod 2^64) >> 32 (multiply-add-shift, a odd) plays the
permutation; its range is cut into k*l equal bins, bin = (h * k*l) >> 32, and a bin's
value is the smallest h that falls in it. Empty bins borrow the value of the first
non-empty bin on their probe walk (A[b] + t*B[b]) mod k*l, t = 1, 2, ... ("optimal
densification"), so P[two rows agree on a bin] equals their Jaccard similarity.
Cost O(nnz + k*l) per row (the walks are short unless almost every bin is empty,
where a closed form takes over). An empty row gets 0xFFFFFFFF everywhere.

Table t's key mixes the k values of bins t*k .. t*k+k-1: h = 0x811C9DC5, then
h = (h ^ v) * 0x01000193 (mod 2^32) for each value v (FNV-1a over 32-bit words),
key = fmix32(h) (MurmurHash3's finaliser). Keys use all 32 bits.

``hashlab.jit.minhash_signatures_csr`` / ``minhash_keys_csr`` are numba twins.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import INT32_MAX, check_int
from .hashing import Hasher, check_k_l
from .wta import MAX_BINS, probe_params


def _as_sets(S, name="S"):
    """CSR structure (indptr int64, indices int32, n) of a scipy sparse matrix."""
    if not sp.issparse(S):
        raise TypeError(f"{name}: expected a scipy.sparse CSR matrix (sets as column ids), got {type(S).__name__}")
    if S.format != "csr":
        S = S.tocsr()
    n, ncols = S.shape
    if ncols > INT32_MAX:
        raise ValueError(f"{name}: expected at most {INT32_MAX} columns, got {ncols}")
    indptr = np.ascontiguousarray(S.indptr, dtype=np.int64)
    indices = S.indices
    if indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != indices.shape[0]:
        raise ValueError(f"{name}: malformed CSR structure (indptr must be non-decreasing from 0 to nnz)")
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= ncols:
            raise ValueError(f"{name}: expected column indices in [0, {ncols}), got {lo if lo < 0 else hi}")
    return indptr, np.ascontiguousarray(indices, dtype=np.int32), n


class MinHash(Hasher):
    """Densified one-permutation MinHash of sets (the column ids of CSR rows).

    Parameters
    ----------
    k : int, bin values mixed into each table key (1 .. 32).
    l : int, number of tables; k*l <= 65535.
    seed : int >= 0.

    Attributes: ``a`` (odd) and ``c``, the hash's uint64 constants (Python ints);
    ``A``, ``B``, ``Binv`` ((k*l,) uint32) the densification walks; ``n_bins`` = k*l;
    ``key_bits`` = 32. Input: scipy.sparse matrices only (dense input: TypeError).
    """

    dim = None
    accepts_dense = False

    def __init__(self, k, l, seed=0):
        self.k, self.l = check_k_l(k, l, max_total=MAX_BINS)
        self.seed = check_int(seed, "seed", 0, 2**64 - 1)
        self.n_bins = self.k * self.l
        self.key_bits = 32
        rng = np.random.default_rng(self.seed)
        ac = rng.integers(0, 2**64, size=2, dtype=np.uint64, endpoint=False)
        self.a = int(ac[0]) | 1
        self.c = int(ac[1])
        self.A, self.B, self.Binv = probe_params(self.n_bins, rng)

    def _ctor_args(self):
        return dict(k=self.k, l=self.l, seed=self.seed)

    def _run(self, S, out=None):
        indptr, indices, n = _as_sets(S)
        keys = self._out(out, n)
        sig, keys = _C.minhash_csr(indptr, indices, self.k, self.l, self.a, self.c, self.A, self.B, self.Binv, keys)
        return sig, keys

    def signatures(self, S):
        """Bin values, (n, k*l) uint32. S: scipy.sparse matrix whose rows are sets of column ids."""
        return self._run(S)[0]

    def hash(self, S, out=None):
        """Table keys, (n, l) uint32 (written into ``out`` if given)."""
        return self._run(S, out)[1]

    __call__ = hash

    def _keys_csr(self, indptr, indices, data, n, keys):
        _C.minhash_csr(indptr, indices, self.k, self.l, self.a, self.c, self.A, self.B, self.Binv, keys)

    def _keys_dense(self, X, keys):  # pragma: no cover - accepts_dense is False
        raise TypeError("X: expected a scipy.sparse CSR matrix (sets as column ids)")
