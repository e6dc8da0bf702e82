"""Exact top-k of a few rows of H @ W.T + b, pre-filtered by an int8 copy of W.

Online prediction scores one row against the whole output layer: a float32 scan of W is
memory-bound (17,827 x 512 labels: 36 MB, 1.2 ms a row). ``Int8Rows`` keeps W rounded to int8
per row (w ~ scale_c * q_c, a quarter of the bytes); ``topk_int8`` scores every label from it,
takes the best C = max(4k, 64), recomputes their scores with ``topk._scores_serial`` (the same
compiled float32 code as the full scan, so bit-identical values) and merges them by the full
scan's rule (ties to the lower label id). The result is certified: every label's approximate
score is within e of its float32 score (e from the rounding to int8, |h|_1 and both float32
summations), so when the k-th recomputed score exceeds the C-th approximate one by more than e
no other label can enter the top k. A row the bound cannot certify is scanned in float32
(``fallbacks`` counts them). Either way the result is ``dense_topk``'s.
"""
from __future__ import annotations

import numba
import numpy as np

from ._C import get_num_threads
from .topk import _merge_serial, _scores_serial

MIN_CANDIDATES = 256  # labels recomputed in float32 per row, at least (128: 19% of teacher rows fell back, 256: 0.25%)
PARALLEL_FROM = 16 << 20  # int8 weights from which the approximate scores use two threads
_EPS = 2.0 ** -24     # float32 unit roundoff

fallbacks = 0         # rows scanned in float32 because the certificate failed (module-wide count)


class Int8Rows:
    """W (L, d) float32 rounded per row: q (L, d) int8 and scale (L,) float32 with
    |W[c, t] - scale[c] * q[c, t]| <= ``resid`` (float, the largest over W). Non-finite W ->
    ValueError. ``nbytes``: the copy's bytes."""

    def __init__(self, W):
        W = np.asarray(W)
        if W.dtype != np.float32 or W.ndim != 2:
            raise TypeError(f"W: expected a 2-d float32 array, got {W.dtype} with shape {W.shape}")
        if not np.isfinite(W).all():
            raise ValueError("W: expected finite values")
        amax = np.abs(W).max(axis=1) if W.shape[1] else np.zeros(W.shape[0], np.float32)
        self.scale = (amax / np.float32(127)).astype(np.float32)
        safe = np.where(self.scale > 0, self.scale, np.float32(1))
        self.q = np.ascontiguousarray(np.clip(np.rint(W / safe[:, None]), -127, 127).astype(np.int8))
        err = np.abs(W.astype(np.float64) - self.scale[:, None].astype(np.float64) * self.q)
        self.resid = float(err.max()) if err.size else 0.0
        self.wmax = float(amax.max()) if amax.size else 0.0
        self.shape = W.shape

    @property
    def nbytes(self):
        return int(self.q.nbytes + self.scale.nbytes)


@numba.njit(cache=True, nogil=True, fastmath=True, inline="always")
def _approx_rows(h, q, scale, b, out, j0, j1):
    for j in range(j0, j1):
        acc = np.float32(0.0)
        for t in range(q.shape[1]):
            acc += h[t] * np.float32(q[j, t])
        out[j] = acc * scale[j] + b[j]


@numba.njit(cache=True, nogil=True, fastmath=True)
def _approx(h, q, scale, b, out):
    """out (L,) float32 = scale * (q (L, d) int8 @ h (d,) float32) + b, on the calling thread."""
    _approx_rows(h, q, scale, b, out, 0, q.shape[0])


@numba.njit(cache=True, nogil=True, fastmath=True, parallel=True)
def _approx_parallel(h, q, scale, b, out, parts):
    """_approx split into ``parts`` label ranges run on numba's threads."""
    L = q.shape[0]
    for p in numba.prange(parts):
        _approx_rows(h, q, scale, b, out, p * L // parts, (p + 1) * L // parts)


@numba.njit(cache=True, nogil=True)
def _cth_best(a, C):
    """The C-th largest value of a (L,) float32, 1 <= C <= L, by a min-heap of the best C
    (one comparison per value once the heap is full; np.partition copies and selects: 0.33 ms
    at L = 50,000 against about 0.05 ms here)."""
    heap = a[:C].copy()
    for i in range(C // 2 - 1, -1, -1):
        _sift(heap, i)
    for j in range(C, a.shape[0]):
        v = a[j]
        if v > heap[0]:
            heap[0] = v
            _sift(heap, 0)
    return heap[0]


@numba.njit(cache=True, nogil=True, inline="always")
def _sift(heap, i):
    n = heap.shape[0]
    while True:
        c = 2 * i + 1
        if c >= n:
            return
        if c + 1 < n and heap[c + 1] < heap[c]:
            c += 1
        if heap[c] < heap[i]:
            heap[c], heap[i] = heap[i], heap[c]
            i = c
        else:
            return


def topk_int8(H, W, b, k, rows):
    """dense_topk(H, W, b, k) for a few rows: (scores float32 (n, k), labels int64 (n, k)).

    H (n, d) float32, W (L, d) float32, b (L,) float32 or None, 1 <= k, rows an Int8Rows of W.
    """
    global fallbacks
    H = np.ascontiguousarray(H, np.float32)
    W = np.ascontiguousarray(W, np.float32)
    if H.ndim != 2 or W.ndim != 2 or H.shape[1] != W.shape[1]:
        raise ValueError(f"H, W: expected (n, d) and (L, d), got {H.shape} and {W.shape}")
    if b is not None and np.shape(b) != (W.shape[0],):
        raise ValueError(f"b: expected shape ({W.shape[0]},), got {np.shape(b)}")
    if rows.shape != W.shape:
        raise ValueError(f"rows: expected an Int8Rows of shape {W.shape}, got {rows.shape}")
    n, d = H.shape
    L = W.shape[0]
    k = min(int(k), L)
    b = np.zeros(L, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    C = max(4 * k, MIN_CANDIDATES)
    best_s = np.full((n, k), -np.inf, np.float32)
    best_l = np.full((n, k), -1, np.int64)
    bmax = float(np.abs(b).max()) if L else 0.0
    approx = np.empty(L, np.float32)
    # two threads pay off from about 25 MB of int8 (50,000 x 512: 1.35 ms on one); below, the
    # wake-up costs what they save (17,827 x 512: 0.34 ms either way)
    parts = min(get_num_threads(), numba.config.NUMBA_NUM_THREADS) if L * d >= PARALLEL_FROM else 1
    for i in range(n):
        h = H[i]
        h1 = float(np.abs(h).sum(dtype=np.float64))
        full = C >= L or not np.isfinite(h1) or not np.isfinite(bmax)
        if not full:
            if parts > 1:
                _approx_parallel(h, rows.q, rows.scale, b, approx, parts)
            else:
                _approx(h, rows.q, rows.scale, b, approx)
            cut = _cth_best(approx, C)                        # the C-th best approximate score
            cand = np.flatnonzero(approx >= cut)              # ascending ids: the merge's tie rule
            S = np.empty((1, cand.size), np.float32)
            _scores_serial(H[i:i + 1], W[cand], b[cand], S)
            _merge_serial(S, 0, best_s[i:i + 1], best_l[i:i + 1])
            best_l[i] = np.where(best_l[i] >= 0, cand[np.maximum(best_l[i], 0)], -1)
            # approximate vs float32 score of any label: the int8 rounding, plus both float32
            # sums (d products each) and the scale and bias roundings, over |h|_1 * max|w| + |b|
            e = h1 * rows.resid + 2.0 * (d + 4) * _EPS * (h1 * (rows.wmax + rows.resid) + bmax)
            kth = float(best_s[i, k - 1])
            full = not (kth > float(cut) + e * (1.0 + 1e-6))
            if full:
                fallbacks += 1
        if full:
            S = np.empty((1, L), np.float32)
            _scores_serial(H[i:i + 1], W, b, S)
            best_s[i], best_l[i] = -np.inf, -1
            _merge_serial(S, 0, best_s[i:i + 1], best_l[i:i + 1])
    return best_s, best_l
