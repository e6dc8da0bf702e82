"""Synthetic XMC data whose labels come from a hidden non-linear teacher network.

    make_teacher_xmc(n_train, n_test, n_features, n_labels, seed=0, ...)
        -> (X_train, Y_train, X_test, Y_test), scipy CSR float32, like hashlab.datasets.make_xmc

hashlab.datasets.make_xmc draws a row's labels first and its features from the labels'
signatures. Here the features come first and a fixed random network reads the labels off
them; nothing in the generator ties a label to a row except that network:

* Inputs: K hidden "concepts", each a list of ``concept_words`` random words with Zipf
  weights; concepts form domains of ``domain_size``. A row picks 1 + Poisson(
  concepts_per_row - 1) concepts (the first by Zipf(concept_power) popularity, the others
  from the same domain with probability 0.8, else by popularity) and draws its tokens
  from them (a share ``topic_share``) or from the whole vocabulary (Zipf(feature_power)
  over a random order of the words). x = TF-IDF of the counts ((1 + log tf) * smooth
  idf over all rows), L2-normalised.
* Teacher layer 1 (sparse, ReLU): h = relu(Phi^T x - threshold), Phi (D, K) the concepts'
  word weights, each column L2-normalised: a concept fires when enough of its words are in
  the row, whether or not the row was generated from it.
* Teacher layer 2 (sparse): label l listens to one concept or, with probability
  ``pair_fraction``, to two concepts of one domain (an AND: the mean of their h, which
  one concept alone rarely lifts above the threshold); z_l = w_l * mean_{k in S_l} h_k + b_l,
  w_l ~ U(0.75, 1.25), b_l = -popularity * log(1 + rank of l among its first concept's
  labels).
* Labels: the row's best label and the other labels with z_l >= tau, at most
  ``max_labels``, where tau is the one global threshold that gives ``labels_per_row`` labels
  per row on average.

So labels co-occur within concepts and domains, their popularity is skewed (Zipf concepts,
the popularity bias within a concept), and a row's label set is a non-linear function of
its features (ReLU thresholds, conjunctions, a global cut). Every row has at least one
label: its first token comes from its first concept, and a row whose concepts all stay
under the threshold keeps its strongest concept (h = its evidence).
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from numba import njit, prange

from ._validate import check_float, check_int

__all__ = ["make_teacher_xmc"]

_INT32_MAX = int(np.iinfo(np.int32).max)
_SAME_DOMAIN = 0.8      # probability that a row's further concepts come from its first one's domain
_ROW_CHUNK = 16384      # rows per evidence matmul (bounds the (rows, K) intermediate)


@njit(cache=True, inline="always")
def _rand(state):
    """splitmix64 step on state[0]; a float in [0, 1) from the top 53 bits."""
    state[0] = (state[0] + np.uint64(0x9E3779B97F4A7C15)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = state[0]
    z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & np.uint64(0xFFFFFFFFFFFFFFFF)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _alias(weight):
    """Walker/Vose alias table of weight (> 0): (prob float64, alias int64); slot
    j = floor(u * n) is kept with probability prob[j], else replaced by alias[j]."""
    n = weight.shape[0]
    prob = weight * (n / weight.sum())
    alias = np.arange(n)
    small = np.empty(n, np.int64)
    large = np.empty(n, np.int64)
    ns = nl = 0
    for j in range(n):
        if prob[j] < 1.0:
            small[ns] = j
            ns += 1
        else:
            large[nl] = j
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        lo = small[ns]
        hi = large[nl - 1]
        alias[lo] = hi
        prob[hi] -= 1.0 - prob[lo]
        if prob[hi] < 1.0:
            nl -= 1
            small[ns] = hi
            ns += 1
    for j in range(ns):   # what rounding leaves over has probability 1
        prob[small[j]] = 1.0
    for j in range(nl):
        prob[large[j]] = 1.0
    return prob, alias


@njit(cache=True, parallel=True)
def _bag_of_words(seed, off, c_ptr, c_ids, topic_share, c_words, s_cdf, g_prob, g_alias, word, count, nnz):
    """Row i draws off[i+1] - off[i] tokens from its own random stream (the result does not
    depend on the threads): the first from its first concept, then each from one of its
    concepts (uniformly) with probability topic_share, else from the whole vocabulary.
    Writes its distinct words, sorted, and their counts at word/count[off[i]:off[i]+nnz[i]]."""
    n = off.shape[0] - 1
    S = s_cdf.shape[0]
    D = g_prob.shape[0]
    for i in prange(n):
        state = np.empty(1, np.uint64)
        state[0] = np.uint64(seed) ^ (np.uint64(i) * np.uint64(0xD1B54A32D192ED03))
        a, b = off[i], off[i + 1]
        nc = c_ptr[i + 1] - c_ptr[i]
        buf = np.empty(b - a, np.int64)
        for j in range(b - a):
            if j == 0 or _rand(state) < topic_share:
                c = c_ids[c_ptr[i]] if j == 0 else c_ids[c_ptr[i] + min(int(_rand(state) * nc), nc - 1)]
                buf[j] = c_words[c, min(np.searchsorted(s_cdf, _rand(state), side="right"), S - 1)]
            else:
                w = min(int(_rand(state) * D), D - 1)
                buf[j] = w if _rand(state) < g_prob[w] else g_alias[w]
        buf.sort()
        k = 0
        for j in range(b - a):
            if k > 0 and word[a + k - 1] == buf[j]:
                count[a + k - 1] += 1.0
            else:
                word[a + k] = buf[j]
                count[a + k] = 1.0
                k += 1
        nnz[i] = k


def _draw(rng, cdf, size):
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), cdf.size - 1)


def _row_concepts(rng, n, K, domain_size, concepts_per_row, concept_power):
    """CSR (c_ptr, c_ids) of each row's distinct concepts, its first concept first."""
    cdf = np.cumsum((rng.permutation(K) + 1.0) ** -concept_power)
    cdf /= cdf[-1]
    cnt = 1 + rng.poisson(concepts_per_row - 1.0, size=n)
    row = np.repeat(np.arange(n), cnt)
    first = np.zeros(row.size, bool)
    first[np.cumsum(cnt) - cnt] = True
    cid = _draw(rng, cdf, row.size)
    head = cid[first][np.repeat(np.arange(n), cnt)]
    dom0 = head // domain_size * domain_size
    width = np.minimum(domain_size, K - dom0)
    same = rng.random(row.size) < _SAME_DOMAIN
    cid = np.where(first, cid, np.where(same, dom0 + np.minimum((rng.random(row.size) * width).astype(np.int64),
                                                                 width - 1), cid))
    # distinct per row, first concept kept first: sort by (row, not-first, concept), drop repeats
    order = np.lexsort((cid, ~first, row))
    row, cid, first = row[order], cid[order], first[order]
    dup = np.zeros(row.size, bool)
    key = row * K + cid
    srt = np.argsort(key, kind="stable")
    dup[srt[1:]] = key[srt[1:]] == key[srt[:-1]]
    keep = ~dup
    c_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(row[keep], minlength=n), out=c_ptr[1:])
    return c_ptr, cid[keep]


def _tfidf(counts):
    """(1 + log tf) * idf (sklearn's smooth idf over these rows), rows L2-normalised, float32."""
    n = counts.shape[0]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    val = (1.0 + np.log(counts.data)) * idf[counts.indices]
    rown = np.sqrt(np.add.reduceat(val * val, counts.indptr[:-1]))
    val /= np.repeat(rown, np.diff(counts.indptr))
    X = sp.csr_matrix((val.astype(np.float32), counts.indices.astype(np.int32), counts.indptr.astype(np.int64)),
                      shape=counts.shape)
    X.has_sorted_indices = True
    return X


def _hidden(X, Phi, threshold):
    """Teacher layer 1: relu(X @ Phi - threshold) as CSR (n, K) float64; a row with no
    concept above the threshold keeps its strongest one (the first of equals) at its
    evidence. Column ids need not be sorted."""
    parts = []
    for s in range(0, X.shape[0], _ROW_CHUNK):
        E = (X[s:s + _ROW_CHUNK] @ Phi).tocsr()   # a matmul result has no duplicates
        cnt = np.diff(E.indptr)
        row = np.repeat(np.arange(E.shape[0]), cnt)
        rowmax = np.full(E.shape[0], -np.inf)
        np.maximum.at(rowmax, row, E.data)
        dead = rowmax <= threshold
        h = np.maximum(E.data - threshold, 0.0)
        if dead.any():
            at_max = np.flatnonzero(dead[row] & (E.data == rowmax[row]))
            _, first = np.unique(row[at_max], return_index=True)
            h[at_max[first]] = E.data[at_max[first]]
        E.data = h
        E.eliminate_zeros()
        parts.append(E)
    return sp.vstack(parts, format="csr")


def make_teacher_xmc(n_train, n_test, n_features, n_labels, seed=0, labels_per_row=5.0, tokens_per_row=80.0,
                     n_concepts=None, concept_words=30, concepts_per_row=2.5, domain_size=8, topic_share=0.6,
                     pair_fraction=0.5, threshold=0.1, feature_power=1.0, concept_power=0.8, popularity=0.2,
                     max_labels=None):
    """Multi-label data labelled by a hidden sparse ReLU network (see the module docstring).

    Parameters
    ----------
    n_train, n_test : int
        Rows of the training and test sets (n_train >= 1; n_test may be 0), drawn from the
        same distribution (the test rows after the training rows).
    n_features, n_labels : int >= 1
        D and L.
    seed : int >= 0
        Everything is determined by it (one numpy Generator draws the structure; each row's
        tokens come from its own stream, whatever the thread count).
    labels_per_row : float in [1, max_labels]
        Mean labels per row: the global cut adds n * (labels_per_row - 1) labels to the rows'
        best ones (fewer only when max_labels cuts rows or there are not enough candidates).
    tokens_per_row : float >= 1
        Mean tokens per row (Gamma with shape 4); repeated words merge, so the non-zeros per
        row are fewer.
    n_concepts : int, optional
        K, the teacher's hidden width, at most n_labels (default max(1, n_labels // 10)).
    concept_words : int >= 1
        Words per concept (at most n_features).
    concepts_per_row : float >= 1
        Mean concepts a row is generated from.
    domain_size : int >= 1
        Concepts per domain (rows and pair labels combine concepts of one domain); all K
        concepts form one domain when it is larger.
    topic_share : float in [0, 1]
        Fraction of a row's tokens drawn from its concepts.
    pair_fraction : float in [0, 1]
        Fraction of labels that listen to two concepts (when the domain has two).
    threshold : float >= 0
        Layer 1 bias: evidence x . Phi_k below it does not fire concept k.
    feature_power, concept_power : float >= 0
        Zipf exponents of the background vocabulary and of concept popularity.
    popularity : float >= 0
        Weight of the within-concept label popularity bias.
    max_labels : int, optional
        Cap on labels per row (default ceil(4 * labels_per_row), at most n_labels).

    Returns
    -------
    X_train : csr_matrix (n_train, n_features) float32, rows L2-normalised
    Y_train : csr_matrix (n_train, n_labels) float32, values 1.0, every row >= 1 label
    X_test : csr_matrix (n_test, n_features) float32
    Y_test : csr_matrix (n_test, n_labels) float32

    All canonical (sorted column ids). 100K rows x 100K labels x 100K features take a few
    seconds on 2 cores.
    """
    n_train = check_int(n_train, "n_train", 1, _INT32_MAX - 1)
    n_test = check_int(n_test, "n_test", 0, _INT32_MAX - 1)
    D = check_int(n_features, "n_features", 1, _INT32_MAX - 1)
    L = check_int(n_labels, "n_labels", 1, _INT32_MAX - 1)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    tokens_per_row = check_float(tokens_per_row, "tokens_per_row", 1.0, 1e6)
    K = check_int(max(1, L // 10) if n_concepts is None else n_concepts, "n_concepts", 1, L)
    S = check_int(concept_words, "concept_words", 1, D)
    concepts_per_row = check_float(concepts_per_row, "concepts_per_row", 1.0, 1e3)
    domain_size = min(K, check_int(domain_size, "domain_size", 1))
    topic_share = check_float(topic_share, "topic_share", 0.0, 1.0)
    pair_fraction = check_float(pair_fraction, "pair_fraction", 0.0, 1.0)
    threshold = check_float(threshold, "threshold", 0.0, 1.0)
    feature_power = check_float(feature_power, "feature_power", 0.0, 10.0)
    concept_power = check_float(concept_power, "concept_power", 0.0, 10.0)
    popularity = check_float(popularity, "popularity", 0.0, 100.0)
    labels_per_row = check_float(labels_per_row, "labels_per_row", 1.0, float(L))
    if max_labels is None:
        max_labels = min(L, int(math.ceil(4 * labels_per_row)))
    max_labels = check_int(max_labels, "max_labels", 1, L)
    if labels_per_row > max_labels:
        raise ValueError(f"labels_per_row: expected at most max_labels ({max_labels}), got {labels_per_row}")
    n = n_train + n_test

    rng = np.random.default_rng(seed)
    # inputs
    c_ptr, c_ids = _row_concepts(rng, n, K, domain_size, concepts_per_row, concept_power)
    c_words = rng.integers(0, D, size=(K, S), dtype=np.int64)
    slot_w = (np.arange(S) + 1.0) ** -0.8
    s_cdf = np.cumsum(slot_w) / slot_w.sum()
    g_prob, g_alias = _alias((rng.permutation(D) + 1.0) ** -feature_power)
    m = np.maximum(1, np.rint(rng.gamma(4.0, tokens_per_row / 4.0, size=n))).astype(np.int64)
    off = np.zeros(n + 1, np.int64)
    np.cumsum(m, out=off[1:])
    word = np.empty(int(off[-1]), np.int64)
    count = np.empty(word.size, np.float64)
    nnz = np.empty(n, np.int64)
    _bag_of_words(int(rng.integers(0, 2**63 - 1)), off, c_ptr, c_ids, topic_share, c_words, s_cdf, g_prob, g_alias,
                  word, count, nnz)
    keep = (np.arange(word.size) - np.repeat(off[:-1], m)) < np.repeat(nnz, m)
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(nnz, out=indptr[1:])
    X = _tfidf(sp.csr_matrix((count[keep], word[keep], indptr), shape=(n, D)))
    del word, count, keep

    # teacher layer 1: concept detectors
    Phi = sp.csr_matrix((np.tile(slot_w / np.linalg.norm(slot_w), K), (c_words.ravel(), np.repeat(np.arange(K), S))),
                        shape=(D, K))
    Phi.sum_duplicates()
    Hid = _hidden(X, Phi, threshold)
    # teacher layer 2: each label listens to one concept or two of one domain
    # every concept gets a label (K <= L), so every row has a candidate
    first = rng.permutation(np.concatenate([np.arange(K), rng.integers(0, K, size=L - K)]))
    dom0 = first // domain_size * domain_size
    width = np.minimum(domain_size, K - dom0)
    other = dom0 + (first - dom0 + 1 + (rng.random(L) * (width - 1)).astype(np.int64)) % width
    pair = (rng.random(L) < pair_fraction) & (width > 1)
    w = rng.uniform(0.75, 1.25, size=L)
    order = np.lexsort((rng.random(L), first))      # random rank among the labels of a concept
    rank = np.empty(L, np.int64)
    starts = np.searchsorted(first[order], first[order], side="left")
    rank[order] = np.arange(L) - starts
    bias = -popularity * np.log1p(rank)
    rows = np.concatenate([first, other[pair]])
    cols = np.concatenate([np.arange(L), np.flatnonzero(pair)])
    vals = np.concatenate([np.where(pair, w / 2, w), w[pair] / 2])
    A = sp.csr_matrix((vals, (rows, cols)), shape=(K, L))
    Z = (Hid @ A).tocsr()
    del Hid, A
    zr = np.repeat(np.arange(n), np.diff(Z.indptr))
    z = Z.data + bias[Z.indices]

    # labels: each row's best (ties to the lower label), and the other candidates above the
    # global cut tau chosen so that they add n * (labels_per_row - 1) labels; at most max_labels
    rowmax = np.full(n, -np.inf)
    np.maximum.at(rowmax, zr, z)
    at_max = np.flatnonzero(z == rowmax[zr])
    at_max = at_max[np.lexsort((Z.indices[at_max], zr[at_max]))]
    best = at_max[np.r_[True, zr[at_max][1:] != zr[at_max][:-1]]]
    rest = np.ones(z.size, bool)
    rest[best] = False
    zo = z[rest]
    want = min(zo.size, int(round(n * (labels_per_row - 1.0))))
    tau = np.partition(zo, zo.size - want)[zo.size - want] if want > 0 else np.inf
    cand = np.concatenate([best, np.flatnonzero(rest & (z >= tau))])
    zr, zl, z = zr[cand], Z.indices[cand], z[cand]
    del Z
    o = np.lexsort((zl, -z, zr))                     # by row, best first, ties to the lower label
    zr, zl = zr[o], zl[o]
    starts = np.flatnonzero(np.r_[True, zr[1:] != zr[:-1]])
    rank_in_row = np.arange(zr.size) - np.repeat(starts, np.diff(np.r_[starts, zr.size]))
    sel = rank_in_row < max_labels
    y_row, y_lab = zr[sel], zl[sel]
    Y = sp.csr_matrix((np.ones(y_row.size, np.float32), (y_row, y_lab)), shape=(n, L))
    Y.sum_duplicates()
    Y.sort_indices()
    Y.indices = Y.indices.astype(np.int32)
    return X[:n_train], Y[:n_train], X[n_train:], Y[n_train:]
