"""Output retrieval over a layer split by rows across ranks: an OutputRetriever per shard, top-k merged."""
from __future__ import annotations

import numpy as np

from .._validate import check_int
from ..retrieval import OutputRetriever
from .comm import _Comm
from .sharding import label_range


def _merge_topk(comm, scores, labels, k, n_out):
    """Merges per-rank top-k (scores (n, kk) float32, global labels (n, kk) int64) into the global top-k.

    Ties go to the lower label id, as in single-process dense_topk.
    """
    n = scores.shape[0]
    pack = np.empty((n, 2 * k), np.float64)  # labels < 2^31 are exact in float64
    pack[:, :k], pack[:, k:] = -np.inf, n_out
    kk = scores.shape[1]
    pack[:, :kk], pack[:, k:k + kk] = scores, labels
    allp = comm.all_gather(pack, "top-k merge")            # (world, n, 2k)
    S = np.concatenate(list(allp[:, :, :k]), axis=1)
    L = np.concatenate(list(allp[:, :, k:]), axis=1)
    order = np.lexsort((L, -S), axis=1)[:, :k]
    return (np.take_along_axis(S, order, 1).astype(np.float32),
            np.take_along_axis(L, order, 1).astype(np.int64))



class ShardedRetriever:
    """An ``OutputRetriever`` per rank over its contiguous slice of an output layer; top-k merged.

    Parameters
    ----------
    weight : (rows, dim) float32, this rank's rows ``[offset, offset + rows)`` of the layer.
    bias : (rows,) float32 or None (None on every rank, or on none).
    offset : int, global id of this rank's first row.
    n_classes : int, rows of the whole layer; the ranks' slices must tile [0, n_classes)
        in rank order (checked: ValueError).
    distributed : None (use the process group if there is one), True (require one), False.
    timeout : seconds before a stalled rank is reported.
    **kwargs : OutputRetriever parameters (k, l, target_fraction, seed, search, ...); its
        defaults apply per shard, so each rank scores target_fraction of its own rows.
    """

    def __init__(self, weight, bias=None, offset=0, n_classes=None, distributed=None, timeout=300.0, **kwargs):
        self._comm = _Comm(distributed, timeout)
        offset = check_int(offset, "offset", 0)
        self._local = OutputRetriever(weight, bias, **kwargs)
        rows = self._local.n_classes
        n_classes = offset + rows if n_classes is None and self._comm.world == 1 else n_classes
        if n_classes is None:
            raise ValueError("n_classes: expected the size of the whole layer with several ranks, got None")
        self.n_classes = check_int(n_classes, "n_classes", 1)
        self.offset, self.rows = offset, rows
        info = self._comm.all_gather(np.array([offset, rows, self.n_classes, bias is not None], np.int64),
                                     "retriever layout")
        ends = np.cumsum(info[:, 1])
        if (info[:, 2] != self.n_classes).any() or (info[:, 0] != ends - info[:, 1]).any() \
                or ends[-1] != self.n_classes or (info[:, 3] != info[0, 3]).any():
            raise ValueError(f"weight: expected the ranks' slices (offset, rows) to tile [0, n_classes) in rank "
                             f"order, all with or all without bias, got {info[:, :2].tolist()} for "
                             f"n_classes={info[:, 2].tolist()}")

    @classmethod
    def from_full(cls, weight, bias=None, distributed=None, timeout=300.0, **kwargs):
        """Keeps this rank's ``label_range`` of a full (n_classes, dim) layer (and bias)."""
        comm = _Comm(distributed, timeout)
        n = np.shape(weight)[0]
        lo, hi = label_range(n, comm.rank, comm.world)
        if hi <= lo:
            raise ValueError(f"weight: expected at least one row per rank ({comm.world} ranks), got {n} rows")
        return cls(weight[lo:hi], None if bias is None else bias[lo:hi], lo, n, distributed, timeout, **kwargs)

    def topk(self, H, k=5, max_candidates=None):
        """Top-k classes of H (n, dim) float32 (the same rows on every rank; collective).

        Returns (scores float32 (n, k), global labels int64 (n, k)), best first.
        """
        k = min(check_int(k, "k", 1), self.n_classes)
        s, l = self._local.topk(H, min(k, self.rows), max_candidates)
        return _merge_topk(self._comm, s, l + self.offset, k, self.n_classes)

    @property
    def nbytes(self):
        """Bytes of this rank's index."""
        return self._local.nbytes
