"""LSH tables: l hash tables of bounded buckets over the keys of a hasher.

An ``LSHTables`` pairs a hasher (anything with ``hash(X) -> (n, l) uint32``, ``l``
and ``key_bits``, e.g. ``hashlab.simhash.SimHash``) with l tables of
``2**range_bits`` buckets holding at most ``bucket_capacity`` int32 ids each. A
query returns, per query row, the ids that share a bucket with it in at least
``min_collisions`` tables, with the number of tables they collided in, as CSR
arrays (indptr, ids, counts), ordered by count (descending) then by first discovery
(table 0 first, and within a bucket its stored order: oldest first for "fifo").

Full buckets:
  - ``"fifo"`` keeps the ``bucket_capacity`` most recent arrivals (the oldest is
    evicted);
  - ``"reservoir"`` keeps a uniform sample of the arrivals (Vitter's algorithm R:
    the n-th arrival replaces a uniformly chosen slot with probability
    capacity / n), drawn from a per-table generator seeded from ``seed``, so the same
    inserts in the same order give the same tables. After removals the sample is
    no longer exactly uniform: removed ids leave their slot free for the next
    arrival.

Keys wider than ``range_bits`` are folded to a bucket with a multiplicative hash
(``(key * 0x9E3779B1 mod 2^32) >> (32 - range_bits)``); otherwise the key is the
bucket.

Memory (dynamic layout): 8 bytes per bucket header (l * 2**range_bits of them, only
touched pages become resident); per non-empty bucket a block of one policy word plus
its ids, grown by ~1.5x steps up to the capacity, in a per-table arena; per id its l
bucket indices (4*l bytes) and a map entry, so ``remove`` needs only ids. Roughly
8*l*2**range_bits + about 12*l bytes per id at a few ids per bucket (4 stored, 4 bucket
index, block slack and policy words). ``freeze()`` repacks each table into an
offsets array (4 bytes per bucket) plus the ids sorted by bucket, the fastest layout for
queries and about 4*l*2**range_bits + 8*l bytes per id; ``thaw()`` undoes it. ``nbytes``
counts all of it, including the query scratch kept for reuse.

Thread safety: one reader-writer lock per index; inserts, removals, clear, freeze and
thaw are exclusive, queries shared, and the GIL is released inside, so several
Python threads may use one index at once.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import _C
from ._validate import as_ids, as_keys, check_choice, check_int

__all__ = ["LSHTables", "MAX_RANGE_BITS", "MAX_BUCKET_CAPACITY"]

#: Largest range_bits accepted: 2^28 buckets already cost 2 GiB of headers per table.
MAX_RANGE_BITS = 28
#: Largest bucket_capacity accepted (bucket sizes are stored in 16 bits).
MAX_BUCKET_CAPACITY = 65535
#: Default upper bound of range_bits when it is not given.
DEFAULT_MAX_RANGE_BITS = 20

_FROZEN_MSG = "index is frozen; call thaw() first"


def _as_ids(ids, n=None, unique=True):
    """as_ids, but a list or tuple must hold integers (as_ids would truncate 0.5 to 0)."""
    if isinstance(ids, (list, tuple)) and len(ids):
        arr = np.asarray(ids)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"ids: expected integers, got a {type(ids).__name__} of {arr.dtype}")
        ids = arr
    return as_ids(ids, "ids", n=n, unique=unique)


class _KeysOnly:
    """Stand-in hasher for tables fed with precomputed keys (see LSHTables.for_keys)."""

    def __init__(self, l, key_bits):
        self.l = l
        self.key_bits = key_bits
        self.nbytes = 0

    def hash(self, X):
        raise TypeError("these tables were built with LSHTables.for_keys(): they have no hasher; "
                        "use insert_keys() and query_keys() with precomputed keys")

    def __repr__(self):
        return f"keys(l={self.l}, key_bits={self.key_bits})"


class LSHTables:
    """l LSH tables of bounded buckets over a hasher's keys.

    Parameters
    ----------
    hasher : object with ``hash(X) -> (n, l) uint32``, ``l`` (int) and ``key_bits`` (int)
        e.g. ``hashlab.simhash.SimHash``; its ``l`` is the number of tables.
    bucket_capacity : int in [1, 65535], default 128
        Most ids a bucket keeps.
    policy : "fifo" (default) or "reservoir"
        What a full bucket does with a new arrival (see the module docstring).
    range_bits : int in [1, min(hasher.key_bits, 28)], default min(hasher.key_bits, 20)
        log2 of the number of buckets per table. More bits than the keys have would
        only add buckets that stay empty, hence the key_bits bound; 28 bounds the
        bucket headers at 2 GiB per table.
    seed : int in [0, 2^64), default 0
        Seeds the reservoir sampling (unused by "fifo").
    """

    def __init__(self, hasher, bucket_capacity=128, policy="fifo", range_bits=None, seed=0):
        for attr in ("hash", "l", "key_bits"):
            if not hasattr(hasher, attr):
                raise TypeError(f"hasher: expected an object with hash(), l and key_bits (a hashlab "
                                f"Hasher), got {type(hasher).__name__} without {attr!r}")
        l = check_int(hasher.l, "hasher.l", 1, 65535)
        key_bits = check_int(hasher.key_bits, "hasher.key_bits", 1, 32)
        capacity = check_int(bucket_capacity, "bucket_capacity", 1, MAX_BUCKET_CAPACITY)
        policy = check_choice(policy, "policy", ("fifo", "reservoir"))
        max_range = min(key_bits, MAX_RANGE_BITS)
        if range_bits is None:
            range_bits = min(key_bits, DEFAULT_MAX_RANGE_BITS)
        range_bits = check_int(range_bits, f"range_bits (at most min(key_bits={key_bits}, {MAX_RANGE_BITS}))",
                               1, max_range)
        seed = check_int(seed, "seed", 0, 2**64 - 1)
        self.hasher = hasher
        self.l = l
        self.key_bits = key_bits
        self.bucket_capacity = capacity
        self.policy = policy
        self.range_bits = range_bits
        self.seed = seed
        self._core = _C.LSHTables(l, key_bits, range_bits, capacity, policy, seed)

    @classmethod
    def for_keys(cls, l, key_bits, bucket_capacity=128, policy="fifo", range_bits=None, seed=0):
        """Tables for precomputed keys, without a hasher.

        l: number of tables (int in [1, 65535]); key_bits: bits per key (int in [1, 32]).
        Use ``insert_keys`` and ``query_keys``; ``insert``/``query`` raise TypeError.
        Other parameters as in the constructor.
        """
        l = check_int(l, "l", 1, 65535)
        key_bits = check_int(key_bits, "key_bits", 1, 32)
        return cls(_KeysOnly(l, key_bits), bucket_capacity, policy, range_bits, seed)

    # -- building ---------------------------------------------------------------
    def insert(self, ids, X):
        """Hashes X and inserts its rows under ``ids``.

        ids: (n,) integer array, list or torch tensor of distinct ids in [0, 2^31 - 2],
        none already present. X: (n, dim) data the hasher accepts (float array, torch CPU
        tensor or scipy CSR matrix; a 1-D array is one row). Raises ValueError for
        duplicate or present ids, RuntimeError when frozen.
        """
        self._check_thawed()
        keys = self.hasher.hash(X)
        self.insert_keys(ids, keys)

    def insert_keys(self, ids, keys):
        """Inserts ids under precomputed keys.

        ids: (n,) distinct integer ids in [0, 2^31 - 2], none already present.
        keys: (n, l) unsigned integer array (uint32 preferred), each key < 2^key_bits;
        key[i, t] is the key of id i in table t.
        """
        keys = as_keys(keys, "keys", self.l)
        ids = _as_ids(ids, n=keys.shape[0])
        self._check_thawed()
        self._core.insert(ids, keys)

    def remove(self, ids):
        """Removes ids (absent ones are ignored); returns how many were removed (int).

        ids: (n,) integer ids in [0, 2^31 - 2] (array, list or torch tensor). Ids evicted
        from some buckets are removed from the others. Raises RuntimeError when frozen.
        """
        ids = _as_ids(ids, unique=False)
        self._check_thawed()
        return int(self._core.remove(ids))

    def clear(self):
        """Removes every id (the frozen state is kept; the reservoir generators restart)."""
        self._core.clear()

    def rebuild(self, ids, X):
        """clear() then insert(ids, X): tables rebuilt from scratch (e.g. after a rehash).

        Same arguments as ``insert``. Inputs are hashed and checked before anything is
        cleared; raises RuntimeError when frozen.
        """
        self._check_thawed()
        keys = self.hasher.hash(X)
        keys = as_keys(keys, "keys", self.l)
        ids = _as_ids(ids, n=keys.shape[0])
        self.clear()
        self._core.insert(ids, keys)

    # -- queries ----------------------------------------------------------------
    def query(self, Q, min_collisions=1, max_candidates=None):
        """Candidates of each query row.

        Q: (nq, dim) data the hasher accepts (a 1-D array is one query).
        min_collisions: int in [1, l]; keep ids sharing a bucket in at least that many
        tables. max_candidates: None (no limit) or int >= 1, the most ids per query.
        Returns (indptr int64 (nq + 1,), ids int32 (nnz,), counts int32 (nnz,)): the
        candidates of query i are ids[indptr[i]:indptr[i+1]], with counts the number
        of tables they collided in, ordered by count (descending) then first discovery.
        """
        min_collisions, max_candidates = self._query_args(min_collisions, max_candidates)
        keys = self.hasher.hash(Q)
        return self.query_keys(keys, min_collisions, max_candidates)

    def query_keys(self, keys, min_collisions=1, max_candidates=None):
        """Like ``query`` with precomputed keys: (nq, l) unsigned integer array
        (uint32 preferred), each key < 2^key_bits. Returns (indptr, ids, counts)."""
        min_collisions, max_candidates = self._query_args(min_collisions, max_candidates)
        keys = as_keys(keys, "keys", self.l)
        indptr, ids, counts = self._core.query(keys, min_collisions, max_candidates or 0)
        return indptr, ids, counts

    def _query_args(self, min_collisions, max_candidates):
        min_collisions = check_int(min_collisions, "min_collisions", 1, self.l)
        if max_candidates is not None:
            max_candidates = check_int(max_candidates, "max_candidates", 1, 2**62)
        return min_collisions, max_candidates

    # -- layout and state -------------------------------------------------------
    def freeze(self):
        """Repacks every table read-optimised (offsets + ids sorted by bucket).

        Queries return exactly what they returned before; insert/remove raise
        RuntimeError until ``thaw()``. No-op when already frozen.
        """
        self._core.freeze()

    def thaw(self):
        """Restores the dynamic layout so the index accepts inserts and removals again."""
        self._core.thaw()

    @property
    def frozen(self) -> bool:
        """True between freeze() and thaw()."""
        return bool(self._core.frozen)

    def _check_thawed(self):
        if self._core.frozen:
            raise RuntimeError(_FROZEN_MSG)

    def __len__(self):
        """Ids inserted and not removed (evicted ids included)."""
        return int(self._core.size())

    @property
    def nbytes(self) -> int:
        """Bytes held: tables (headers, id blocks, per-id keys, query scratch) + hasher."""
        hb = getattr(self.hasher, "nbytes", 0)
        return int(self._core.nbytes()) + (int(hb) if isinstance(hb, numbers.Integral) else 0)

    def stats(self) -> dict:
        """Bucket occupancy over all l tables.

        Returns a dict:
          occupancy_histogram: int64 array (bucket_capacity + 1,), [s] = buckets holding s ids;
          buckets: total buckets (l * 2^range_bits); nonempty_fraction, full_fraction:
          fractions of all buckets; mean_bucket_size: mean over non-empty buckets (0.0 when
          all are empty); max_bucket_size: int; stored: ids stored over all tables;
          dropped: (id, table) pairs of present ids that full buckets did not keep
          (l * len(self) - stored).
        """
        st = self._core.stats()
        hist = np.asarray(st["size_histogram"], dtype=np.int64)
        total = int(hist.sum())
        nonempty = total - int(hist[0])
        sizes = np.nonzero(hist)[0]
        return {
            "occupancy_histogram": hist,
            "buckets": total,
            "nonempty_fraction": nonempty / total,
            "full_fraction": int(st["full_buckets"]) / total,
            "mean_bucket_size": int(st["stored"]) / nonempty if nonempty else 0.0,
            "max_bucket_size": int(sizes[-1]) if sizes.size else 0,
            "stored": int(st["stored"]),
            "dropped": int(st["dropped"]),
        }

    def __repr__(self):
        return (f"LSHTables({self.hasher!r}, bucket_capacity={self.bucket_capacity}, "
                f"policy={self.policy!r}, range_bits={self.range_bits}, seed={self.seed}; "
                f"{len(self)} ids{', frozen' if self.frozen else ''})")
