"""Winner-take-all hashing (WTA, Yagnik et al. 2011) and densified WTA (DWTA, Chen &
Shrivastava 2018).

A hash is the position of the largest value in a bin of ``bin_size`` = m permuted
coordinates: log2(m) bits. Table t's key packs the k codes of bins t*k .. t*k+k-1,
code i shifted by i*log2(m) bits (so k*log2(m) <= 32).

Layout (``n_bins`` = k*l bins): n_perm random permutations of range(dim); in
permutation p, the coordinate at permuted position i goes to bin
p*ceil(dim/m) + i // m, position i % m; bins >= k*l are dropped, and
n_perm = ceil(k*l / ceil(dim/m)). The last bin of a permutation is partial when
m does not divide dim. The layout is stored twice: ``bin_coords`` (k*l, m) int32
(the coordinate at each position, -1 where a bin is partial) for dense rows, and
``coord_slot`` (n_perm, dim) int32 (bin*m + position of each coordinate, -1 when
it is in no bin) for sparse rows.

- WTAHash: absent (sparse) entries are zeros; the code of a bin is the position of
  its maximum, lowest position on ties. Suits dense data.
- DWTAHash: zeros are absent; a bin with no non-zero value is empty and borrows the
  code of the first non-empty bin on its probe walk (A[b] + t*B[b]) mod k*l,
  t = 1, 2, ... (optimal densification); an all-zero row hashes to code 0 everywhere.
  Sparse rows cost O(nnz * n_perm + k*l).

On very high-dimensional sparse data (e.g. 135,909 features with ~75 non-zeros)
almost every bin is empty and densification copies the same few codes: DWTA is
fast there but coarse; it discriminates best where most bins see a non-zero.

``hashlab.jit`` has numba twins (``wta_keys_dense`` ...) that take this class's
parameter arrays and return identical codes and keys.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import as_csr, as_matrix, check_int
from .hashing import Hasher, check_k_l

MAX_BINS = 65535
MAX_LAYOUT_ENTRIES = 1 << 28  # bin_coords + coord_slot entries (int32): 1 GiB


def check_bin_size(bin_size, k):
    """bin_size: a power of two in [2, 65536] with k*log2(bin_size) <= 32; returns (m, bits per code)."""
    m = check_int(bin_size, "bin_size", 2, 1 << 16)
    if m & (m - 1):
        raise ValueError(f"bin_size: expected a power of two, got {m}")
    cb = m.bit_length() - 1
    if k * cb > 32:
        raise ValueError(f"k: expected k*log2(bin_size) <= 32 (a key packs k codes of log2(bin_size) bits), "
                         f"got k={k} with bin_size={m} ({k * cb} bits)")
    return m, cb


def wta_layout(dim, n_bins, m, rng):
    """The permutation layout: (n_perm, bin_coords (n_bins, m), coord_slot (n_perm, dim)).

    Draws n_perm = ceil(n_bins / ceil(dim/m)) permutations with ``rng.permutation(dim)``.
    """
    bins_per_perm = -(-dim // m)
    n_perm = -(-n_bins // bins_per_perm)
    bin_coords = np.full((n_perm * bins_per_perm * m,), -1, dtype=np.int32)
    coord_slot = np.empty((n_perm, dim), dtype=np.int32)
    for p in range(n_perm):
        perm = rng.permutation(dim).astype(np.int32)
        base = p * bins_per_perm * m  # slot of permuted position 0 of this permutation
        bin_coords[base:base + dim] = perm
        slots = base + np.arange(dim, dtype=np.int64)
        coord_slot[p, perm] = np.where(slots < n_bins * m, slots, -1).astype(np.int32)
    bin_coords = np.ascontiguousarray(bin_coords[:n_bins * m].reshape(n_bins, m))
    return n_perm, bin_coords, coord_slot


def probe_params(n_bins, rng):
    """Densification walks: A uniform in [0, n_bins), B uniform among the units mod
    n_bins, Binv = B^-1 mod n_bins; three (n_bins,) uint32 arrays."""
    if n_bins == 1:
        z = np.zeros(1, dtype=np.uint32)
        return z, z.copy(), z.copy()
    units = np.array([u for u in range(1, n_bins) if math.gcd(u, n_bins) == 1], dtype=np.int64)
    A = rng.integers(0, n_bins, size=n_bins, dtype=np.int64)
    B = units[rng.integers(0, units.size, size=n_bins)]
    Binv = np.array([pow(int(b), -1, n_bins) for b in B], dtype=np.int64)
    return A.astype(np.uint32), B.astype(np.uint32), Binv.astype(np.uint32)


def canonical_csr(X):
    """X as CSR with sorted, unique column ids per row (duplicates summed, as in
    ``toarray``), copying only when needed; anything else unchanged."""
    if not sp.issparse(X):
        return X
    if X.format != "csr":
        X = X.tocsr()
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


class _WTABase(Hasher):
    densified: bool

    def __init__(self, dim, k, l, bin_size=8, seed=0):
        self.dim = check_int(dim, "dim", 1, np.iinfo(np.int32).max)
        self.k, self.l = check_k_l(k, l, max_total=MAX_BINS)
        self.bin_size, self.code_bits = check_bin_size(bin_size, self.k)
        self.seed = check_int(seed, "seed", 0, 2**64 - 1)
        self.n_bins = self.k * self.l
        self.key_bits = self.k * self.code_bits
        bins_per_perm = -(-self.dim // self.bin_size)
        n_perm = -(-self.n_bins // bins_per_perm)
        entries = n_perm * self.dim + self.n_bins * self.bin_size
        if entries > MAX_LAYOUT_ENTRIES:
            raise ValueError(f"dim, k*l*bin_size: expected a layout of at most {MAX_LAYOUT_ENTRIES} int32 entries "
                             f"(n_perm*dim + k*l*bin_size), got {entries}")
        rng = np.random.default_rng(self.seed)
        self.n_perm, self.bin_coords, self.coord_slot = wta_layout(self.dim, self.n_bins, self.bin_size, rng)
        if self.densified:
            self.A, self.B, self.Binv = probe_params(self.n_bins, rng)
        else:
            self.A = self.B = self.Binv = np.zeros(0, dtype=np.uint32)

    def _ctor_args(self):
        return dict(dim=self.dim, k=self.k, l=self.l, bin_size=self.bin_size, seed=self.seed)

    def _args(self):
        return (self.dim, self.k, self.l, self.bin_size, self.n_perm, self.bin_coords, self.coord_slot,
                self.A, self.B, self.Binv, self.densified)

    def hash(self, X, out=None):
        """Table keys, (n, l) uint32 (see Hasher.hash). CSR rows with duplicate
        column ids are summed first, so sparse and dense input give the same keys."""
        return super().hash(canonical_csr(X), out=out)

    __call__ = hash

    def codes(self, X):
        """Raw codes, (n, k*l) int32 in [0, bin_size): the position of each bin's
        winner after densification (DWTA). X as for ``hash``; a 1-D array is one row."""
        X = canonical_csr(X)
        if sp.issparse(X):
            indptr, indices, data, n, _ = as_csr(X, "X", self.dim)
            return _C.wta_csr(indptr, indices, data, *self._args(), True)[1]
        X, _ = as_matrix(X, "X", self.dim)
        return _C.wta_dense(X, *self._args(), True)[1]

    def _keys_dense(self, X, keys):
        _C.wta_dense(X, *self._args(), False, keys)

    def _keys_csr(self, indptr, indices, data, n, keys):
        _C.wta_csr(indptr, indices, data, *self._args(), False, keys)


class WTAHash(_WTABase):
    """Winner-take-all hashing: k codes of log2(bin_size) bits per key, l tables.

    Parameters
    ----------
    dim : int, input dimension (1 .. 2^31 - 1).
    k : int, codes per table key, with k*log2(bin_size) <= 32.
    l : int, number of tables; k*l <= 65535.
    bin_size : int, power of two in [2, 65536] (default 8: 3-bit codes).
    seed : int >= 0.

    Attributes: ``bin_coords`` (k*l, bin_size) int32, ``coord_slot`` (n_perm, dim)
    int32, ``n_perm``, ``n_bins`` = k*l, ``code_bits`` = log2(bin_size),
    ``key_bits`` = k*code_bits. Absent sparse entries count as zeros.
    """

    densified = False


class DWTAHash(_WTABase):
    """Densified winner-take-all hashing (zeros are absent; empty bins borrow).

    Same parameters and attributes as WTAHash, plus the densification walks ``A``,
    ``B``, ``Binv`` ((k*l,) uint32). With the same seed, the layout equals
    WTAHash's, so both agree on rows without zeros.
    """

    densified = True
