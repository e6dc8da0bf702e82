"""Synthetic XMC data: make_xmc's topic model with power-law labels, and named presets.

    make_xmc(n_train, n_test, n_features, n_labels, seed=0, ...) -> (X_train, Y_train, X_test, Y_test)
    make_preset(name, scale=1.0, seed=0, **overrides) -> same 4-tuple; PRESETS lists the names

X is a scipy.sparse.csr_matrix (n, D) float32 and Y a csr_matrix (n, L) float32 with
values 1.0; both canonical (sorted column ids). Rows are generated in parallel by a numba
kernel, each with its own random stream.
"""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

from ._validate import check_float, check_int
from .csr import _INT32_MAX, _csr, _num_threads

__all__ = ["make_xmc", "make_preset", "PRESETS"]


@njit(cache=True, inline="always")
def _rand64(state):
    """splitmix64 step on state[0]: 64 random bits."""
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _rand(state):
    """A float in [0, 1) (53 random bits)."""
    return np.float64(_rand64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _build_alias(weight, ids, seg_start, table):
    """Walker/Vose alias tables, one per segment [seg_start[i], seg_start[i+1]) of weight.

    table[j] = (threshold, ids[j], ids[alias of j], 0) as uint32: a draw (see _draw) picks
    slot j uniformly in the segment, then ids[j] if 32 random bits < threshold, else the
    alias. One 16-byte row per slot, so a draw touches one cache line.
    """
    n = weight.shape[0]
    prob = np.empty(n, dtype=np.float64)
    alias = np.empty(n, dtype=np.int64)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    for sgi in range(seg_start.shape[0] - 1):
        lo = seg_start[sgi]
        hi = seg_start[sgi + 1]
        size = hi - lo
        if size == 0:
            continue
        total = 0.0
        for j in range(lo, hi):
            total += weight[j]
        ns = 0
        nl = 0
        for j in range(lo, hi):
            prob[j] = weight[j] * size / total if total > 0 else 1.0
            alias[j] = j
            if prob[j] < 1.0:
                small[ns] = j
                ns += 1
            else:
                large[nl] = j
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            sj = small[ns]
            lj = large[nl - 1]
            alias[sj] = lj
            prob[lj] -= 1.0 - prob[sj]
            if prob[lj] < 1.0:
                nl -= 1
                small[ns] = lj
                ns += 1
        for j in range(nl):
            prob[large[j]] = 1.0
        for j in range(ns):
            prob[small[j]] = 1.0  # only rounding leftovers
    for j in range(n):
        table[j, 0] = np.uint32(min(prob[j] * 4294967296.0, 4294967295.0))
        table[j, 1] = np.uint32(ids[j])
        table[j, 2] = np.uint32(ids[alias[j]])
        table[j, 3] = 0


@njit(cache=True, inline="always")
def _draw(table, lo, size, state):
    """An id from the alias table of the segment [lo, lo + size) (see _build_alias)."""
    r = _rand64(state)
    j = lo + np.int64(((r >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))
    if (r & np.uint64(0xFFFFFFFF)) < np.uint64(table[j, 0]):
        return np.int64(table[j, 1])
    return np.int64(table[j, 2])


@njit(cache=True, nogil=True)
def _generate_rows(seed, r0, r1, k_target, m_target, t_table, topic_start, lg_table, lt_table,
                   label_noise, sig, s_table, tsig, ts_table, f_table, idf, noise, topic_share,
                   y_off, y_cnt, y_ind, x_off, x_cnt, x_ind, x_val):
    """Rows r0..r1-1 of the topic model (see make_xmc). Row r writes its labels at
    y_ind[y_off[r]:] and its features at x_ind/x_val[x_off[r]:] (room for k_target[r] and
    m_target[r]) and its counts to y_cnt[r], x_cnt[r]. Each row has its own random stream
    (from seed and r), so the result does not depend on how rows are split into calls."""
    n_labels = lg_table.shape[0]
    n_features = f_table.shape[0]
    T = t_table.shape[0]
    S = s_table.shape[0]
    TS = ts_table.shape[0]
    state = np.zeros(1, dtype=np.uint64)
    mark_l = np.full(n_labels, -1, dtype=np.int64)
    mark_f = np.full(n_features, -1, dtype=np.int64)   # (row << 32) | slot of the row's features
    mmax = max(1, m_target[r0:r1].max()) if r1 > r0 else 1
    cnt = np.zeros(mmax, dtype=np.int32)
    fbuf = np.zeros(mmax, dtype=np.int32)
    vbuf = np.zeros(mmax, dtype=np.float64)
    p_topic = noise + (1.0 - noise) * topic_share
    for r in range(r0, r1):
        state[0] = np.uint64(seed) + np.uint64(r) * np.uint64(0xD1B54A32D192ED03)
        t = _draw(t_table, 0, T, state)
        t0 = topic_start[t]
        tn = topic_start[t + 1] - t0
        # labels: mostly from the row's topic, by popularity; some from anywhere
        k = k_target[r]
        a = y_off[r]
        nl = 0
        att = 0
        while nl < k and att < 20 * k + 100:
            att += 1
            if _rand(state) < label_noise:
                lab = _draw(lg_table, 0, n_labels, state)
            else:
                lab = _draw(lt_table, t0, tn, state)
            if mark_l[lab] != r:
                mark_l[lab] = r
                y_ind[a + nl] = lab
                nl += 1
        if nl <= 64:
            _isort(y_ind, a, a + nl)
        else:
            y_ind[a:a + nl].sort()
        y_cnt[r] = nl
        # features: background words, topic words, signature words of the row's labels
        m = m_target[r]
        b = x_off[r]
        nf = 0
        att = 0
        rkey = np.int64(r) << 32
        while nf < m and att < 8 * m + 100:
            att += 1
            u = _rand(state)
            if u < noise:
                f = _draw(f_table, 0, n_features, state)
            elif u < p_topic:
                f = tsig[t, _draw(ts_table, 0, TS, state)]
            else:
                lab = y_ind[a + min(int(_rand(state) * nl), nl - 1)]
                f = sig[lab, _draw(s_table, 0, S, state)]
            key = mark_f[f]
            if (key >> 32) != r:
                mark_f[f] = rkey | nf
                cnt[nf] = 1
                fbuf[nf] = f
                nf += 1
            else:
                cnt[key & 0xFFFFFFFF] += 1
        if nf <= 96:
            _isort2(fbuf, cnt, nf)
        else:
            order = np.argsort(fbuf[:nf])
            fbuf[:nf] = fbuf[:nf][order]
            cnt[:nf] = cnt[:nf][order]
        # tf-idf like values, L2-normalised
        norm = 0.0
        for j in range(nf):
            f = fbuf[j]
            c = cnt[j]
            v = idf[f] if c == 1 else (1.0 + np.log(c)) * idf[f]
            vbuf[j] = v
            norm += v * v
        scale = 1.0 / np.sqrt(norm) if norm > 0 else 1.0
        for j in range(nf):
            x_ind[b + j] = fbuf[j]
            x_val[b + j] = np.float32(vbuf[j] * scale)
        x_cnt[r] = nf


@njit(cache=True, inline="always")
def _isort2(keys, vals, n):
    """Insertion sort of keys[:n], moving vals along (fast for the short rows here)."""
    for i in range(1, n):
        x = keys[i]
        y = vals[i]
        j = i - 1
        while j >= 0 and keys[j] > x:
            keys[j + 1] = keys[j]
            vals[j + 1] = vals[j]
            j -= 1
        keys[j + 1] = x
        vals[j + 1] = y


@njit(cache=True, inline="always")
def _isort(keys, lo, hi):
    """Insertion sort of keys[lo:hi]."""
    for i in range(lo + 1, hi):
        x = keys[i]
        j = i - 1
        while j >= lo and keys[j] > x:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = x


@njit(cache=True, nogil=True)
def _compact(off, cnt, ind, val, has_val):
    """Close the gaps between rows (row r holds cnt[r] entries at off[r]); returns indptr."""
    n = cnt.shape[0]
    indptr = np.empty(n + 1, dtype=np.int64)
    indptr[0] = 0
    w = 0
    for r in range(n):
        o = off[r]
        c = cnt[r]
        if o != w:
            for j in range(c):
                ind[w + j] = ind[o + j]
                if has_val:
                    val[w + j] = val[o + j]
        w += c
        indptr[r + 1] = w
    return indptr


def _alias(weight, ids=None, seg_start=None):
    """Packed alias table(s) (n, 4) uint32 for weight (ids: what slot j stands for)."""
    n = weight.shape[0]
    if ids is None:
        ids = np.arange(n, dtype=np.int64)
    if seg_start is None:
        seg_start = np.array([0, n], dtype=np.int64)
    table = np.empty((n, 4), dtype=np.uint32)
    _build_alias(np.ascontiguousarray(weight, dtype=np.float64), ids, seg_start, table)
    return table


def make_xmc(n_train, n_test, n_features, n_labels, seed=0, labels_per_row=5.0,
             nnz_per_row=75.0, power=0.6, noise=0.3, label_noise=0.1, topic_share=0.2,
             topic_size=None, signature_size=None, feature_power=1.0, nnz_shape=4.0):
    """Learnable synthetic multi-label data with XMC statistics (power-law labels, sparse rows).

    Model (a small topic model; nothing of size (n, L) or (L, D) is ever materialised):

    * Label popularity is Zipf-like: the label of popularity rank r has weight
      (r + 1) ** -power; ranks are a random permutation of label ids.
    * Labels are split into ~n_labels / topic_size topics (random, balanced). A topic's
      probability is the sum of its labels' weights, so the marginal label frequency stays
      Zipf while a row's labels co-occur within a topic.
    * Each label has ``signature_size`` signature features and each topic 4x as many
      ((L, s) and (T, 4s) int32 arrays); slot j of a signature has weight (j + 1) ** -0.7.
    * A row picks a topic; k = 1 + Poisson(labels_per_row - 1) distinct labels, each
      from the topic by popularity (with probability label_noise from all labels);
      m ~ Gamma(nnz_shape, nnz_per_row / nnz_shape) (at least 1) distinct features,
      drawn repeatedly until m are distinct: with probability ``noise`` a background
      word (Zipf(feature_power) over a random order of the features), else a word of the
      topic's signature (fraction topic_share of the rest) or of a random label's
      signature. Values are (1 + log count) * idf, with an idf-like weight in [1, 3] that is
      lowest for the common background words; rows are L2-normalised.
    * Test rows come from the same distribution (drawn after the training rows).

    Parameters
    ----------
    n_train, n_test : int
        Rows in the training and test sets (n_test may be 0).
    n_features, n_labels : int
        D and L.
    seed : int
        Everything is determined by it: the same seed gives identical arrays whatever the
        thread count (each row has its own random stream); the numpy Generator draws the
        global structure, so a numpy release that changed its streams would change them.
    labels_per_row, nnz_per_row : float
        Means of the per-row label and non-zero counts (the realised means are slightly
        lower when a row runs out of distinct candidates, e.g. tiny D or L).
    power : float >= 0
        Zipf exponent of label popularity (0 = uniform).
    noise, label_noise, topic_share : float in [0, 1]
        Fractions of background features, of labels drawn outside the row's topic, and of
        non-background features drawn from the topic's (not a label's) signature.
    topic_size : int, optional
        Labels per topic (default max(100, 10 * labels_per_row), at most n_labels).
    signature_size : int, optional
        Signature features per label (default max(8, round(2 * nnz_per_row / labels_per_row))).
    feature_power : float >= 0
        Zipf exponent of the background features.
    nnz_shape : float > 0
        Gamma shape of the per-row non-zero count (4 gives a coefficient of variation of 0.5).

    Returns
    -------
    X_train : csr_matrix (n_train, n_features) float32
    Y_train : csr_matrix (n_train, n_labels) float32, values 1.0
    X_test : csr_matrix (n_test, n_features) float32
    Y_test : csr_matrix (n_test, n_labels) float32, values 1.0

    All canonical (sorted column ids). Train and test matrices are views into shared
    buffers (no copies); the 490K + 153K-row amazon-670k-like preset takes ~0.7 GB peak.
    """
    n_train = check_int(n_train, "n_train", 0, _INT32_MAX - 1)
    n_test = check_int(n_test, "n_test", 0, _INT32_MAX - 1)
    D = check_int(n_features, "n_features", 1, _INT32_MAX - 1)
    L = check_int(n_labels, "n_labels", 1, _INT32_MAX - 1)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    labels_per_row = check_float(labels_per_row, "labels_per_row", 1.0, float(L))
    nnz_per_row = check_float(nnz_per_row, "nnz_per_row", 1.0, float(D))
    power = check_float(power, "power", 0.0, 10.0)
    noise = check_float(noise, "noise", 0.0, 1.0)
    label_noise = check_float(label_noise, "label_noise", 0.0, 1.0)
    topic_share = check_float(topic_share, "topic_share", 0.0, 1.0)
    feature_power = check_float(feature_power, "feature_power", 0.0, 10.0)
    nnz_shape = check_float(nnz_shape, "nnz_shape", 0.0, 1e6, lo_open=True)
    if topic_size is None:
        topic_size = min(L, max(100, int(round(10 * labels_per_row))))
    topic_size = check_int(topic_size, "topic_size", 1, L)
    if signature_size is None:
        signature_size = max(8, int(round(2 * nnz_per_row / labels_per_row)))
    s = check_int(signature_size, "signature_size", 1, 1 << 16)
    n = n_train + n_test

    rng = np.random.default_rng(seed)
    # label popularity and topics
    rank = rng.permutation(L)
    weight = (rank + 1.0) ** -power
    T = max(1, L // topic_size)
    topic_of = rng.permutation(L) % T
    lab_of = np.argsort(topic_of, kind="stable")                    # labels grouped by topic
    w_sorted = weight[lab_of]
    topic_start = np.zeros(T + 1, dtype=np.int64)
    np.cumsum(np.bincount(topic_of, minlength=T), out=topic_start[1:])
    t_table = _alias(np.add.reduceat(w_sorted, topic_start[:-1]))
    lg_table = _alias(weight)
    lt_table = _alias(w_sorted, lab_of, topic_start)
    del rank, weight, topic_of, w_sorted, lab_of
    # signatures: slot j of a signature has weight (j + 1) ** -0.7
    sig = rng.integers(0, D, size=(L, s), dtype=np.int32)
    s_table = _alias((np.arange(s) + 1.0) ** -0.7)
    ts = 4 * s
    tsig = rng.integers(0, D, size=(T, ts), dtype=np.int32)
    ts_table = _alias((np.arange(ts) + 1.0) ** -0.7)
    # background words: Zipf over a random order of the features; idf-like weights
    feat_rank = rng.permutation(D)
    f_table = _alias((feat_rank + 1.0) ** -feature_power)
    idf = 1.0 + 2.0 * np.log1p(feat_rank) / math.log1p(D)
    del feat_rank
    # per-row counts
    k_target = (1 + rng.poisson(labels_per_row - 1.0, size=n)).clip(1, L).astype(np.int64)
    m_target = np.maximum(1, np.rint(rng.gamma(nnz_shape, nnz_per_row / nnz_shape, size=n)))
    m_target = m_target.clip(1, D).astype(np.int64)
    gen_seed = int(rng.integers(0, 2**63 - 1))

    y_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(k_target, out=y_off[1:])
    x_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(m_target, out=x_off[1:])
    y_ind = np.empty(int(y_off[-1]), dtype=np.int32)
    x_ind = np.empty(int(x_off[-1]), dtype=np.int32)
    x_val = np.empty(x_ind.shape[0], dtype=np.float32)
    y_cnt = np.empty(n, dtype=np.int64)
    x_cnt = np.empty(n, dtype=np.int64)
    args = (k_target, m_target, t_table, topic_start, lg_table, lt_table, label_noise,
            sig, s_table, tsig, ts_table, f_table, idf, noise, topic_share,
            y_off, y_cnt, y_ind, x_off, x_cnt, x_ind, x_val)
    block = 16384
    starts = range(0, n, block)
    workers = min(_num_threads(), len(starts))
    if workers <= 1:
        for r0 in starts:
            _generate_rows(gen_seed, r0, min(n, r0 + block), *args)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(_generate_rows, gen_seed, r0, min(n, r0 + block), *args)
                      for r0 in starts]:
                f.result()
    del sig, tsig, args
    y_indptr = _compact(y_off, y_cnt, y_ind, x_val, False)
    x_indptr = _compact(x_off, x_cnt, x_ind, x_val, True)

    def split(indptr, ind, val, lo, hi, width):
        # views, no copies: train and test share the generated buffers
        a, b = indptr[lo], indptr[hi]
        return _csr(indptr[lo:hi + 1] - a, ind[a:b], val[a:b], (hi - lo, width))

    ones = np.ones(int(y_indptr[-1]), dtype=np.float32)
    return (split(x_indptr, x_ind, x_val, 0, n_train, D),
            split(y_indptr, y_ind, ones, 0, n_train, L),
            split(x_indptr, x_ind, x_val, n_train, n, D),
            split(y_indptr, y_ind, ones, n_train, n, L))


# Sizes of the real sets (Extreme Classification Repository; approximate) and the
# per-row statistics make_xmc should imitate.
PRESETS = {
    # Amazon-670K: 490,449 train / 153,025 test rows, 135,909 features, 670,091 labels,
    # ~5.45 labels and ~3.99 rows per label, ~75 non-zeros per row.
    "amazon-670k-like": dict(n_train=490_449, n_test=153_025, n_features=135_909,
                             n_labels=670_091, labels_per_row=5.45, nnz_per_row=75.0, power=0.6),
    # Delicious-200K: 196,606 train / 100,095 test rows, 782,585 features, 205,443 labels,
    # ~75.5 labels per row, ~72 rows per label, ~300 non-zeros per row.
    "delicious-200k-like": dict(n_train=196_606, n_test=100_095, n_features=782_585,
                                n_labels=205_443, labels_per_row=75.5, nnz_per_row=300.0, power=0.6),
    # small, for tests and examples
    "tiny": dict(n_train=20_000, n_test=2_000, n_features=5_000, n_labels=2_000,
                 labels_per_row=5.0, nnz_per_row=75.0, power=0.6),
}


def make_preset(name, scale=1.0, seed=0, **overrides):
    """make_xmc with the sizes and statistics of a named preset (see PRESETS).

    Parameters
    ----------
    name : str
        One of PRESETS: 'amazon-670k-like', 'delicious-200k-like', 'tiny'.
    scale : float > 0
        Multiplies n_train, n_test, n_features and n_labels (per-row statistics unchanged);
        sizes are kept at least 100 train / 20 test rows, 4 * nnz_per_row features and
        4 * labels_per_row labels.
    seed : int
    **overrides
        Any other make_xmc keyword (e.g. noise=0.5), or explicit sizes (applied after scaling).

    Returns
    -------
    (X_train, Y_train, X_test, Y_test) as make_xmc: float32 CSR matrices of shapes
    (n_train, n_features), (n_train, n_labels), (n_test, n_features), (n_test, n_labels).
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(sorted(PRESETS))}")
    scale = check_float(scale, "scale", 0.0, 1e3, lo_open=True)
    p = dict(PRESETS[name])
    p["n_train"] = max(100, int(round(p["n_train"] * scale)))
    p["n_test"] = max(20, int(round(p["n_test"] * scale)))
    p["n_features"] = max(int(math.ceil(4 * p["nnz_per_row"])), int(round(p["n_features"] * scale)))
    p["n_labels"] = max(int(math.ceil(4 * p["labels_per_row"])), int(round(p["n_labels"] * scale)))
    p.update(overrides)
    return make_xmc(seed=seed, **p)
