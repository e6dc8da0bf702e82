"""Drift-triggered rehashing (MONGOOSE, Chen et al. ICLR 2021): ``DriftScheduler``.

A few-bit SimHash fingerprint per item; after a training step it tells which items
moved enough to change bucket (rehash only those) and how many fingerprint bits
flipped (refit the hash function, e.g. a ``LearnedSimHash``, when that passes a
threshold), instead of rebuilding the tables on a fixed schedule.

Known defect avoided: MONGOOSE's released scheduler measures drift by subtracting
integer hash codes; ``DriftScheduler`` counts flipped bits (popcount of XOR).
"""
from __future__ import annotations

import numpy as np

from ._validate import as_ids, as_matrix, check_float, check_int
from .simhash import SimHash

__all__ = ["DriftScheduler", "popcount32"]

_POP8 = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def popcount32(x):
    """Set bits of each element of a uint32 array (int64 array of the same shape)."""
    x = np.ascontiguousarray(x, dtype=np.uint32)
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    return _POP8[x.view(np.uint8)].reshape(x.shape + (4,)).sum(axis=-1, dtype=np.int64)


class DriftScheduler:
    """Decides what to rehash and when to refit, from few-bit SimHash fingerprints of the items.

    Each item (id in [0, 2^31 - 2]) keeps the ``bits``-bit fingerprint of its
    vector under a fixed Gaussian ``SimHash(dim, bits, 1, seed=seed)`` (``hasher``).
    ``update(ids, vectors)`` refingerprints the given items and returns the ids whose
    fingerprint changed (first-seen ids are registered and reported as changed) and
    the fraction of fingerprint bits that flipped among the already-known items,
    counted bit by bit (popcount of old XOR new; MONGOOSE's released code subtracted
    the integer codes instead, which turns one flipped high bit into a huge change
    and 0b0111 -> 0b1000 into a change of 1).

    ``threshold`` in (0, 1]: ``needs_refit(f)`` is ``f > threshold``;
    ``should_refit`` is ``drift > threshold``, where ``drift`` is the fraction of
    fingerprint bits of all registered items that differ from their value at the
    last ``reset()`` (or at registration), i.e. how far the items moved since the
    hash function was last fitted, summed over every update in between.

    Typical use, with tables over the columns of a weight matrix W (one item per
    neuron) hashed by ``hasher`` (e.g. a LearnedSimHash)::

        sched = DriftScheduler(dim, bits=8, threshold=0.1)
        sched.update(ids, W[ids])                  # register every neuron once
        ...
        train_step()                               # W[ids] moved
        changed, frac = sched.update(ids, W[ids])
        tables.remove(changed)                     # rehash only what changed bucket
        tables.insert(changed, W[changed])
        if sched.should_refit:                     # or sched.needs_refit(frac)
            hasher.partial_fit(queries, W)         # refit the hash function
            tables.rebuild(all_ids, W)
            sched.reset()

    Storage: ids and fingerprints in sorted arrays (12 bytes per item, any id range);
    ``clear()`` forgets every item.
    """

    def __init__(self, dim, bits=8, threshold=0.1, seed=0):
        self.dim = check_int(dim, "dim", 1, 1 << 24)
        self.bits = check_int(bits, "bits", 1, 32)
        self.threshold = check_float(threshold, "threshold", 0.0, 1.0, lo_open=True)
        self.seed = check_int(seed, "seed", 0, 2**63 - 1)
        self.hasher = SimHash(self.dim, self.bits, 1, kind="gaussian", seed=self.seed)
        self.clear()

    def clear(self):
        """Forgets every item (they count as new at their next update)."""
        self._ids = np.zeros(0, dtype=np.int64)
        self._codes = np.zeros(0, dtype=np.uint32)
        self._base = np.zeros(0, dtype=np.uint32)
        self._drift_bits = 0
        self.last_fraction = 0.0

    def fingerprints(self, vectors):
        """Fingerprints of vectors (n, dim): (n,) uint32, bit b = sign of projection b."""
        return self.hasher.hash(vectors)[:, 0]

    def update(self, ids, vectors):
        """Refingerprints items; returns (changed_ids int64, flipped_fraction float).

        ids: (n,) distinct integer ids in [0, 2^31 - 2]; vectors: (n, dim) float
        array, row i the current vector of ids[i]. changed_ids: the ids (in input
        order) whose fingerprint differs from the stored one, plus the first-seen ids.
        flipped_fraction: flipped bits / (bits * number of previously known ids in
        this update); 0.0 when there are none.
        """
        ids = as_ids(ids, "ids").astype(np.int64)
        V, _ = as_matrix(vectors, "vectors", self.dim, allow_1d=False)
        if V.shape[0] != ids.shape[0]:
            raise ValueError(f"vectors: expected {ids.shape[0]} rows (one per id), got {V.shape[0]}")
        new = self.fingerprints(V) if ids.size else np.zeros(0, dtype=np.uint32)
        pos = np.searchsorted(self._ids, ids)
        known = pos < self._ids.size
        known[known] = self._ids[pos[known]] == ids[known]
        kpos = pos[known]
        old = self._codes[kpos]
        flips = popcount32(old ^ new[known])
        base = self._base[kpos]
        self._drift_bits += int(popcount32(base ^ new[known]).sum() - popcount32(base ^ old).sum())
        self._codes[kpos] = new[known]
        changed_mask = ~known
        changed_mask[known] = flips > 0
        if (~known).any():
            nid, ncode = ids[~known], new[~known]
            all_ids = np.concatenate([self._ids, nid])
            order = np.argsort(all_ids, kind="stable")
            self._ids = all_ids[order]
            self._codes = np.concatenate([self._codes, ncode])[order]
            self._base = np.concatenate([self._base, ncode])[order]
        n_known = int(known.sum())
        frac = float(flips.sum()) / (self.bits * n_known) if n_known else 0.0
        self.last_fraction = frac
        return ids[changed_mask], frac

    def needs_refit(self, flipped_fraction):
        """True when flipped_fraction (e.g. from update()) exceeds threshold."""
        return check_float(flipped_fraction, "flipped_fraction", 0.0, 1.0) > self.threshold

    @property
    def drift(self) -> float:
        """Fraction of all registered fingerprint bits that differ from their value at the last reset()."""
        return self._drift_bits / (self.bits * self._ids.size) if self._ids.size else 0.0

    @property
    def should_refit(self) -> bool:
        """True when drift exceeds threshold: refit the hash function, rebuild, then reset()."""
        return self.drift > self.threshold

    def reset(self):
        """Takes the current fingerprints as the new reference (call after a refit/rebuild); drift -> 0."""
        self._base = self._codes.copy()
        self._drift_bits = 0
        self.last_fraction = 0.0

    def __len__(self):
        """Registered items."""
        return int(self._ids.size)

    @property
    def ids(self):
        """Registered ids, sorted (int64 copy)."""
        return self._ids.copy()

    @property
    def nbytes(self) -> int:
        return int(self._ids.nbytes + self._codes.nbytes + self._base.nbytes + self.hasher.nbytes)

    def __repr__(self):
        return (f"DriftScheduler(dim={self.dim}, bits={self.bits}, threshold={self.threshold}, seed={self.seed}; "
                f"{len(self)} items, drift {self.drift:.3f})")
