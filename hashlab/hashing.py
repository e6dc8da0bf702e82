"""Hash families: the common interface, and where each family lives.

Every hasher hashes a whole batch per call and returns table keys as an (n, l)
uint32 array: the k codes of table t packed into key[:, t]. Random parameters are
drawn once from ``seed`` with numpy's PCG64, so a hasher is fully described by its
constructor arguments (it pickles as them) and the numba twins in hashlab.jit
reproduce its keys from the same arrays.

- SimHash (gaussian, sparse, hadamard): hashlab/simhash.py
- WTAHash, DWTAHash: hashlab/wta.py
- MinHash (densified one-permutation): hashlab/minhash.py
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import as_csr, as_matrix, check_int


class Hasher:
    """Base class: validation and batching shared by the hash families.

    Subclasses set ``dim`` (None when any column count is accepted), ``k``, ``l``,
    ``seed``, ``key_bits`` (bits used in each key) and implement ``_keys_dense`` and
    ``_keys_csr``, which fill a preallocated (n, l) uint32 array.
    """

    dim: int | None
    k: int
    l: int
    seed: int
    key_bits: int
    accepts_dense = True

    def hash(self, X, out=None):
        """Table keys of a batch.

        X: (n, dim) float array (float32 preferred; torch CPU tensors accepted
        zero-copy) or a scipy.sparse CSR matrix with dim columns. A 1-D array is
        one row. Returns keys, (n, l) uint32 (written into ``out`` if given).
        """
        if sp.issparse(X):
            indptr, indices, data, n, _ = as_csr(X, "X", self.dim)
            keys = self._out(out, n)
            if n:
                self._keys_csr(indptr, indices, data, n, keys)
            return keys
        if not self.accepts_dense:
            raise TypeError(f"X: expected a scipy.sparse CSR matrix (sets as column ids), got {type(X).__name__}")
        X, _ = as_matrix(X, "X", self.dim)
        keys = self._out(out, X.shape[0])
        if X.shape[0]:
            self._keys_dense(X, keys)
        return keys

    __call__ = hash

    def _out(self, out, n):
        if out is None:
            return np.empty((n, self.l), dtype=np.uint32)
        if not isinstance(out, np.ndarray) or out.dtype != np.uint32:
            raise TypeError("out: expected a numpy uint32 array")
        if out.shape != (n, self.l) or not out.flags.c_contiguous:
            raise ValueError(f"out: expected a C-contiguous array of shape ({n}, {self.l}), got {out.shape}")
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the hash function's parameters."""
        return int(sum(a.nbytes for a in vars(self).values() if isinstance(a, np.ndarray)))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._ctor_args().items())
        return f"{type(self).__name__}({args})"

    def __reduce__(self):
        return (_rebuild, (type(self), self._ctor_args()))

    def __eq__(self, other):
        return type(self) is type(other) and self._ctor_args() == other._ctor_args()

    def __hash__(self):
        return hash((type(self).__name__, tuple(sorted(self._ctor_args().items()))))

    def _ctor_args(self) -> dict:
        raise NotImplementedError


def _rebuild(cls, kwargs):
    return cls(**kwargs)


def check_k_l(k, l, max_key_bits_per_code=1, max_total=None):
    """Validates k (codes per key) and l (tables); a key must fit in 32 bits."""
    k = check_int(k, "k", 1, 32 // max_key_bits_per_code)
    l = check_int(l, "l", 1, 65535)
    if max_total is not None and k * l > max_total:
        raise ValueError(f"k*l: expected at most {max_total} hashes in all, got {k * l}")
    return k, l


def hamming(a, b):
    """Pairwise Hamming distances between packed bit rows.

    a: (na, w) uint64, b: (nb, w) uint64, e.g. from ``SimHash.bits``; 1-D inputs are
    single rows. Returns (na, nb) int32 with out[i, j] = popcount(a[i] ^ b[j]).
    """
    arrs = []
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name}: expected a numpy uint64 array, got {type(x).__name__}")
        if x.dtype != np.uint64:
            raise TypeError(f"{name}: expected dtype uint64, got {x.dtype}")
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2:
            raise ValueError(f"{name}: expected shape (n, words), got {x.shape}")
        arrs.append(np.ascontiguousarray(x))
    a, b = arrs
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"b: expected {a.shape[1]} words per row (as a), got {b.shape[1]}")
    return _C.hamming(a, b)
