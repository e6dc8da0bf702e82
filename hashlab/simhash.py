"""SimHash: signed random projections (Charikar 2002).

Bit b of a row x is 1 iff <x, r_b> > 0; two vectors at angle theta agree on a bit
with probability 1 - theta/pi. Table t's key packs bits k*t .. k*t+k-1 (bit k*t
lowest). Three kinds of projections:

- "gaussian": r_b ~ N(0, I), a dense (dim, k*l) matrix.
- "sparse": r_b has +-1 on a random ``density`` fraction of coordinates (SLIDE),
  at least one per bit.
- "hadamard": structured rotations y_r = H D3_r H D2 H D1 x (random sign
  diagonals, unnormalised Walsh-Hadamard H, the input zero-padded to D = next
  power of two >= dim); each rotation gives D bits. D1 and D2 are shared by all
  rotations, so r rotations cost r + 2 transforms of O(D log D) instead of
  O(dim * D) multiply-adds per D bits.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import as_csr, as_matrix, check_choice, check_float, check_int
from .hashing import Hasher, check_k_l

KINDS = ("gaussian", "sparse", "hadamard")
MAX_PROJECTION_BYTES = 4 << 30  # a dense projection beyond this is a usage error: use "hadamard"


_SGEMM = []  # [registered?] once tried


def _register_sgemm():
    """Hands scipy's BLAS sgemm to the C++ core (once), for the dense projections."""
    if not _SGEMM:
        from scipy.linalg import cython_blas
        _SGEMM.append(_C.register_sgemm(cython_blas.__pyx_capi__["sgemm"]))
    return _SGEMM[0]


def _next_pow2(n: int) -> int:
    return 1 << (int(n) - 1).bit_length()


class SimHash(Hasher):
    """Signed-random-projection hasher.

    Parameters
    ----------
    dim : int, input dimension (1 .. 2^24).
    k : int, bits per table key (1 .. 32).
    l : int, number of tables (1 .. 65535).
    kind : "gaussian" | "sparse" | "hadamard".
    density : float in (0, 1], fraction of non-zeros per projection for "sparse".
    seed : int >= 0.

    Attributes: ``W`` (dim, wstride) float32 projections (wstride = k*l rounded up to
    64, padding columns zero) for gaussian/sparse; ``signs`` (n_rot + 2, D) float32 (D1, D2, then one D3 per rotation)
    for hadamard; ``nbits`` = k*l; ``key_bits`` = k.
    """

    def __init__(self, dim, k, l, kind="gaussian", density=1.0 / 3.0, seed=0):
        self.dim = check_int(dim, "dim", 1, 1 << 24)
        self.k, self.l = check_k_l(k, l)
        self.kind = check_choice(kind, "kind", KINDS)
        self.density = check_float(density, "density", 0.0, 1.0, lo_open=True)
        self.seed = check_int(seed, "seed", 0, 2**63 - 1)
        self.nbits = self.k * self.l
        self.key_bits = self.k
        rng = np.random.default_rng(self.seed)
        if self.kind == "hadamard":
            D = _next_pow2(self.dim)
            n_rot = -(-self.nbits // D)
            self.signs = (rng.integers(0, 2, size=(n_rot + 2, D), dtype=np.int8) * 2 - 1).astype(np.float32)
            self.W = None
            return
        wstride = -(-self.nbits // 64) * 64
        if self.dim * wstride * 4 > MAX_PROJECTION_BYTES:
            raise ValueError(f"dim*k*l: expected a projection of at most {MAX_PROJECTION_BYTES >> 30} GiB, "
                             f"got {self.dim * wstride * 4 / 2**30:.1f} GiB; use kind='hadamard' for large dim")
        W = np.zeros((self.dim, wstride), dtype=np.float32)
        if self.kind == "gaussian":
            W[:, :self.nbits] = rng.standard_normal((self.dim, self.nbits), dtype=np.float32)
        else:
            nz = rng.random((self.dim, self.nbits), dtype=np.float32) < self.density
            empty = np.flatnonzero(~nz.any(axis=0))
            nz[rng.integers(0, self.dim, size=empty.size), empty] = True
            sign = rng.integers(0, 2, size=(self.dim, self.nbits), dtype=np.int8) * 2 - 1
            W[:, :self.nbits] = np.where(nz, sign, 0).astype(np.float32)
        self.W = W
        self.signs = None

    def _ctor_args(self):
        return dict(dim=self.dim, k=self.k, l=self.l, kind=self.kind, density=self.density, seed=self.seed)

    def bits(self, X):
        """Raw sign bits. X: (n, dim) float array or CSR matrix; 1-D = one row.

        Returns (n, ceil(k*l/64)) uint64; bit b of row i is (out[i, b // 64] >> (b % 64)) & 1.
        """
        if sp.issparse(X):
            indptr, indices, data, n, _ = as_csr(X, "X", self.dim)
            return self._bits_csr(indptr, indices, data, n)
        X, _ = as_matrix(X, "X", self.dim)
        return self._bits_dense(X)

    def _bits_dense(self, X):
        if self.kind == "hadamard":
            return _C.hadamard_bits(X, self.signs, self.nbits)
        if X.shape[0] >= 64:  # scipy.linalg's import is not worth it below simhash_blas_default's minimum
            _register_sgemm()
        return _C.simhash_dense_bits(X, self.W, self.nbits)

    def _bits_csr(self, indptr, indices, data, n):
        if self.kind != "hadamard":
            return _C.simhash_csr_bits(indptr, indices, data, self.W, self.nbits)
        # structured rotations need the whole padded row: densify a chunk at a time
        out = np.empty((n, -(-self.nbits // 64)), dtype=np.uint64)
        chunk = max(1, (64 << 20) // (4 * self.dim))
        X = sp.csr_matrix((data, indices, indptr), shape=(n, self.dim))
        for s in range(0, n, chunk):
            dense = np.ascontiguousarray(X[s:s + chunk].toarray(), dtype=np.float32)
            out[s:s + chunk] = _C.hadamard_bits(dense, self.signs, self.nbits)
        return out

    def _keys_dense(self, X, keys):
        keys[:] = _C.bits_to_keys(self._bits_dense(X), self.k, self.l)

    def _keys_csr(self, indptr, indices, data, n, keys):
        keys[:] = _C.bits_to_keys(self._bits_csr(indptr, indices, data, n), self.k, self.l)
