"""numba kernels of the neighbour stage (hashlab.neighbours) for a few query rows at a time.

Online prediction scores one row per call; the batch path's numpy and scipy steps (an
argpartition over every stored row's Hamming distance, sparse matrix products for the votes,
a CSR sum for the blend) cost about 2 ms a row there (Debian Depends, 43,606 stored rows),
mostly in per-call overheads. These kernels do the same per row in one pass each:

* ``hamming_pool``: the m stored rows of smallest Hamming distance to the query code, ties to
  the lower row id, listed by (distance, id): the order ``_C.hamming_topm`` gives.
* ``nearest``: cosines of the pooled rows (float32 dot products of unit rows), the kn largest,
  ties to the earlier pool position.
* ``votes``: the neighbours' label indicators weighted by max(cos, 0) ** power, summed per
  label in float64 and normalised to sum 1 (all zero when no weight is positive).
* ``blend_topk``: prob + weight * votes over the union of the shortlist and the voted labels,
  the top k by value (float64), ties to the lower label id; labels at 0 rank as unlisted
  ones, and rows with fewer than k labels above 0 are padded with the lowest unused ids at 0.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, inline="always")
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)


@numba.njit(cache=True, nogil=True)
def hamming_pool(cq, codes, m):
    """cq (nq, w) uint64 query codes, codes (n, w) uint64 stored codes, 1 <= m <= n: (nq, m)
    int64 row ids, each row by (distance, id)."""
    nq, w = cq.shape
    n = codes.shape[0]
    bits = 64 * w
    dist = np.empty(n, np.int32)
    out = np.empty((nq, m), np.int64)
    for i in range(nq):
        hist = np.zeros(bits + 2, np.int64)
        for j in range(n):
            s = 0
            for t in range(w):
                s += _popcount(cq[i, t] ^ codes[j, t])
            dist[j] = s
            hist[s + 1] += 1
        for d in range(bits + 1):  # hist[d] = rows with distance < d
            hist[d + 1] += hist[d]
        cut = 0
        while hist[cut + 1] < m:  # cut: the distance at which the m-th row lies
            cut += 1
        pos = hist[:cut + 2].copy()
        for j in range(n):  # counting sort of the rows up to the cut, stable in id
            d = dist[j]
            if d <= cut:
                p = pos[d]
                if p < m:
                    out[i, p] = j
                pos[d] = p + 1
    return out


@numba.njit(cache=True, nogil=True, fastmath=True)  # fastmath: vectorised dot products (any order)
def nearest(Q, H, pool, kn):
    """Q (nq, d) and H (n, d) float32 unit rows, pool (nq, m) int64 stored-row ids, kn <= m:
    (ids (nq, kn) int64, cosines (nq, kn) float32), largest cosine first."""
    nq, m = pool.shape
    d = Q.shape[1]
    ids = np.empty((nq, kn), np.int64)
    cos = np.empty((nq, kn), np.float32)
    S = np.empty(m, np.float32)
    for i in range(nq):
        for c in range(m):
            r = pool[i, c]
            acc = np.float32(0.0)
            for t in range(d):
                acc += Q[i, t] * H[r, t]
            S[c] = acc
        order = np.argsort(-S, kind="mergesort")[:kn]  # stable: ties keep the pool's order
        for c in range(kn):
            ids[i, c] = pool[i, order[c]]
            cos[i, c] = S[order[c]]
    return ids, cos


@numba.njit(cache=True, nogil=True)
def _sum_by_label(lab, val):
    """(labels ascending int64, float64 sums of val per label), labels whose sum is 0 left out."""
    order = np.argsort(lab, kind="mergesort")
    n = lab.size
    ul = np.empty(n, np.int64)
    uv = np.empty(n, np.float64)
    u = q = 0
    while q < n:
        lb = lab[order[q]]
        s = 0.0
        while q < n and lab[order[q]] == lb:
            s += val[order[q]]
            q += 1
        if s != 0.0:
            ul[u], uv[u] = lb, s
            u += 1
    return ul[:u], uv[:u]


@numba.njit(cache=True, nogil=True)
def votes(ids, cos, power, y_indptr, y_indices):
    """ids, cos (nq, kn) from ``nearest``; the stored rows' labels as CSR (y_indptr (n + 1,),
    y_indices) int64: the votes as CSR (indptr (nq + 1,) int64, labels int64 ascending per
    row, values float32)."""
    nq, kn = ids.shape
    indptr = np.zeros(nq + 1, np.int64)
    counts = np.zeros(nq, np.int64)  # label entries of each row's neighbours
    for i in range(nq):
        for c in range(kn):
            counts[i] += y_indptr[ids[i, c] + 1] - y_indptr[ids[i, c]]
    labels = np.empty(counts.sum(), np.int64)
    values = np.empty(counts.sum(), np.float32)
    n_out = 0
    for i in range(nq):
        cnt = counts[i]
        lab = np.empty(cnt, np.int64)
        wt = np.empty(cnt, np.float64)
        p = 0
        for c in range(kn):
            r = ids[i, c]
            x = np.float64(cos[i, c])
            w = x ** power if x > 0 else 0.0
            for q in range(y_indptr[r], y_indptr[r + 1]):
                lab[p] = y_indices[q]
                wt[p] = w
                p += 1
        ul, uv = _sum_by_label(lab, wt)
        tot = uv.sum()
        for q in range(ul.size):
            labels[n_out + q] = ul[q]
            values[n_out + q] = np.float32(uv[q] / tot)
        n_out += ul.size
        indptr[i + 1] = n_out
    return indptr, labels[:n_out], values[:n_out]


@numba.njit(cache=True, nogil=True)
def blend_topk(p, labels, v_indptr, v_labels, v_values, weight, n_labels, k):
    """p (nq, C) float64 shortlist probabilities of labels (nq, C) int64 (distinct per row),
    the votes as CSR (v_indptr (nq + 1,) int64, v_labels int64, v_values float32; empty when
    weight is 0), weight float, 1 <= k <= n_labels: (values (nq, k) float32, labels (nq, k)
    int64)."""
    nq, C = labels.shape
    out_v = np.zeros((nq, k), np.float32)
    out_l = np.empty((nq, k), np.int64)
    wt = np.float32(weight)
    for i in range(nq):
        a, b = v_indptr[i], v_indptr[i + 1]
        nu = C + (b - a)
        lab = np.empty(nu, np.int64)
        val = np.empty(nu, np.float64)
        for c in range(C):
            lab[c] = labels[i, c]
            val[c] = p[i, c]
        for q in range(a, b):
            lab[C + q - a] = v_labels[q]
            val[C + q - a] = np.float64(np.float32(v_values[q] * wt))
        ul, uv = _sum_by_label(lab, val)  # a label at 0 ranks as an unlisted one (by id)
        u = ul.size
        top = np.argsort(-uv, kind="mergesort")  # ul ascending: ties keep the lower id
        t = min(k, u)
        for c in range(t):
            out_l[i, c] = ul[top[c]]
            out_v[i, c] = np.float32(uv[top[c]])
        nxt = 0  # pad with the lowest ids not in the union (ul is ascending)
        j = 0
        for c in range(t, k):
            while j < u and ul[j] < nxt:
                j += 1
            while j < u and ul[j] == nxt:
                nxt += 1
                j += 1
            out_l[i, c] = nxt
            nxt += 1
    return out_v, out_l
