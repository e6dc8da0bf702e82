"""Densified one-permutation MinHash against a plain-Python reference written from the
spec (hashlab/minhash.py, src_cpp/include/hashlab/wta.h); collision rates against the
true Jaccard similarity; bad input."""
import math
import pickle

import numpy as np
import pytest
import scipy.sparse as sp

import hashlab
from hashlab.minhash import MinHash

M32 = 0xFFFFFFFF


def fmix32(h):
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & M32
    h ^= h >> 16
    return h


def ref_minhash(rows, k, l, a, c, A, B):
    """(signatures, keys) of id lists, literally from the spec."""
    nb = k * l
    sigs, keys = [], []
    for row in rows:
        vals = [None] * nb
        for x in row:
            h = ((a * int(x) + c) % 2**64) >> 32
            b = (h * nb) >> 32
            vals[b] = h if vals[b] is None else min(vals[b], h)
        full = [v is not None for v in vals]
        if not any(full):
            vals = [M32] * nb
        else:
            out = []
            for b in range(nb):
                if full[b]:
                    out.append(vals[b])
                    continue
                for t in range(1, nb + 1):
                    j = (int(A[b]) + t * int(B[b])) % nb
                    if full[j]:
                        out.append(vals[j])
                        break
            vals = out
        sigs.append(vals)
        row_keys = []
        for t in range(l):
            h = 0x811C9DC5
            for v in vals[t * k:(t + 1) * k]:
                h = ((h ^ v) * 0x01000193) & M32
            row_keys.append(fmix32(h))
        keys.append(row_keys)
    return np.array(sigs, dtype=np.uint32).reshape(len(rows), nb), np.array(keys, dtype=np.uint32).reshape(len(rows), l)


def sets_to_csr(sets, ncols):
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    indices = np.concatenate([np.asarray(s, dtype=np.int64) for s in sets]) if sets else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(len(sets), ncols))


def random_sets(rng, n, universe, sizes):
    return [np.sort(rng.choice(universe, size=s, replace=False)) for s in rng.choice(sizes, size=n)]


@pytest.mark.parametrize("k,l", [(1, 1), (1, 8), (2, 5), (4, 16), (3, 100)])
@pytest.mark.parametrize("universe", [1, 3, 17, 1000, 2**31 - 1])
def test_matches_reference(k, l, universe, rng, each_simd):
    sizes = [0, 1, 2, 5, min(universe, 40)] if universe < 2**31 - 1 else [0, 1, 3, 50, 400]
    sets = random_sets(rng, 12, universe, [s for s in sizes if s <= universe])
    sets[0] = np.zeros(0, np.int64)  # an empty row
    h = MinHash(k, l, seed=universe + k)
    S = sets_to_csr(sets, universe)
    want_sig, want_keys = ref_minhash(sets, k, l, h.a, h.c, h.A, h.B)
    for lv, (sig, keys) in each_simd(lambda: (h.signatures(S), h.hash(S))).items():
        assert sig.dtype == np.uint32 and sig.shape == (12, k * l)
        assert keys.dtype == np.uint32 and keys.shape == (12, l)
        np.testing.assert_array_equal(sig, want_sig, err_msg=lv)
        np.testing.assert_array_equal(keys, want_keys, err_msg=lv)
    assert (want_sig[0] == M32).all()


def test_densification_paths(rng):
    """Sets hitting few bins (closed form) and many bins (walk), on a large k*l."""
    k, l = 1, 512
    h = MinHash(k, l, seed=3)
    sets = [rng.choice(10**6, size=s, replace=False) for s in (1, 2, 3, 5, 10, 15, 16, 40, 200, 600, 3000)]
    S = sets_to_csr(sets, 10**6)
    want_sig, want_keys = ref_minhash(sets, k, l, h.a, h.c, h.A, h.B)
    np.testing.assert_array_equal(h.signatures(S), want_sig)
    np.testing.assert_array_equal(h.hash(S), want_keys)


def test_values_ignored_and_duplicates_harmless(rng):
    h = MinHash(2, 8, seed=1)
    S = sets_to_csr(random_sets(rng, 10, 500, [5, 30]), 500)
    S2 = S.copy()
    S2.data = rng.standard_normal(S2.nnz).astype(np.float32)
    S2.data[::3] = 0.0  # stored zeros still count as members
    np.testing.assert_array_equal(h.hash(S), h.hash(S2))
    # duplicated and unsorted ids in a (non-canonical) CSR
    indptr = np.array([0, 4, 6])
    indices = np.array([7, 3, 7, 3, 9, 9])
    dup = sp.csr_matrix((np.ones(6, np.float32), indices, indptr), shape=(2, 10))
    ref = sets_to_csr([[3, 7], [9]], 10)
    np.testing.assert_array_equal(h.signatures(dup), h.signatures(ref))
    # any sparse format and integer/bool dtype
    np.testing.assert_array_equal(h.hash(ref.tocoo()), h.hash(ref))
    np.testing.assert_array_equal(h.hash(ref.astype(bool)), h.hash(ref))


def test_threads_out_pickle(rng):
    S = sets_to_csr(random_sets(rng, 3000, 10**5, [0, 10, 100]), 10**5)
    h = MinHash(3, 20, seed=9)
    before = hashlab.get_num_threads()
    try:
        hashlab.set_num_threads(1)
        one = h.hash(S)
        hashlab.set_num_threads(3)
        three = h.hash(S)
    finally:
        hashlab.set_num_threads(before)
    np.testing.assert_array_equal(one, three)
    out = np.empty((3000, 20), np.uint32)
    assert h.hash(S, out=out) is out
    np.testing.assert_array_equal(out, one)
    h2 = pickle.loads(pickle.dumps(h))
    assert h2 == h and h2.a == h.a and h2.c == h.c
    np.testing.assert_array_equal(h2.hash(S), one)
    assert h.key_bits == 32 and h.a % 2 == 1
    assert not np.array_equal(MinHash(3, 20, seed=10).hash(S), one)


def jaccard_pair(rng, universe, size, J):
    """Two sets of `size` ids with Jaccard similarity as close to J as integers allow."""
    inter = int(round(2 * size * J / (1 + J)))
    ids = rng.choice(universe, size=2 * size - inter, replace=False)
    a = ids[:size]
    b = np.concatenate([ids[:inter], ids[size:]])
    return np.sort(a), np.sort(b), inter / (2 * size - inter)


@pytest.mark.parametrize("J", [0.05, 0.3, 0.5, 0.8, 1.0])
def test_bin_collision_rate_is_jaccard(J):
    """Large sets (few empty bins): P[bin values agree] = Jaccard. 200 independent pairs x
    256 bins; tolerance 4 binomial standard errors."""
    rng = np.random.default_rng(int(J * 100))
    pairs, nb = 200, 256
    agree, total, Js = 0, 0, []
    for p in range(pairs):
        a, b, j = jaccard_pair(rng, 10**7, 1000, J)
        Js.append(j)
        h = MinHash(1, nb, seed=p)
        sig = h.signatures(sets_to_csr([a, b], 10**7))
        agree += int((sig[0] == sig[1]).sum())
        total += nb
    Jt = float(np.mean(Js))
    rate = agree / total
    se = math.sqrt(max(Jt * (1 - Jt), 1e-12) / total)
    assert abs(rate - Jt) <= 4 * se + 1e-12, (rate, Jt, se)


@pytest.mark.parametrize("J", [0.2, 0.6])
def test_collision_rate_with_mostly_empty_bins(J):
    """Small sets (10 ids, 128 bins: > 90% of bins densified) keep P[agree] = Jaccard.
    Pairs are independent (own seed each); tolerance 4 empirical standard errors."""
    rng = np.random.default_rng(7 + int(J * 10))
    pairs, nb = 600, 128
    per_pair, Js = [], []
    for p in range(pairs):
        a, b, j = jaccard_pair(rng, 10**6, 10, J)
        Js.append(j)
        sig = MinHash(1, nb, seed=1000 + p).signatures(sets_to_csr([a, b], 10**6))
        per_pair.append(float((sig[0] == sig[1]).mean()))
    per_pair = np.array(per_pair)
    se = per_pair.std(ddof=1) / math.sqrt(pairs)
    assert abs(per_pair.mean() - np.mean(Js)) <= 4 * se, (per_pair.mean(), np.mean(Js), se)


def test_key_collisions_follow_bins(rng):
    """A key agrees exactly when its k bin values agree, so P[key] ~ J^k."""
    k, l = 2, 200
    h = MinHash(k, l, seed=4)
    a, b, J = jaccard_pair(rng, 10**7, 2000, 0.6)
    S = sets_to_csr([a, b], 10**7)
    sig, keys = h.signatures(S), h.hash(S)
    bins_eq = (sig[0] == sig[1]).reshape(l, k).all(axis=1)
    np.testing.assert_array_equal(keys[0] == keys[1], bins_eq)
    rate = bins_eq.mean()
    assert abs(rate - J**k) <= 4 * math.sqrt(J**k * (1 - J**k) / l)


def test_bad_input():
    with pytest.raises(TypeError):
        MinHash(2.0, 3)
    with pytest.raises(TypeError):
        MinHash(2, 3, seed="x")
    with pytest.raises(ValueError):
        MinHash(0, 3)
    with pytest.raises(ValueError):
        MinHash(2, 0)
    with pytest.raises(ValueError):
        MinHash(33, 3)
    with pytest.raises(ValueError, match=r"k\*l"):
        MinHash(2, 40000)
    with pytest.raises(ValueError):
        MinHash(2, 3, seed=-5)
    h = MinHash(2, 3)
    with pytest.raises(TypeError, match="scipy.sparse"):
        h.hash(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError, match="scipy.sparse"):
        h.signatures(np.ones((2, 5), np.float32))
    with pytest.raises(TypeError):
        h.hash([[1, 2]])
    with pytest.raises(TypeError):
        h.hash(sp.csr_matrix((2, 5)), out=np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError):
        h.hash(sp.csr_matrix((2, 5)), out=np.zeros((2, 4), np.uint32))
    assert h.hash(sp.csr_matrix((0, 5))).shape == (0, 3)
    # the compiled function checks on its own
    from hashlab import _C
    ip = np.array([0, 2], np.int64)
    with pytest.raises(ValueError):
        _C.minhash_csr(ip, np.array([1, -4], np.int32), 2, 3, h.a, h.c, h.A, h.B, h.Binv)
    with pytest.raises(ValueError):
        _C.minhash_csr(np.array([0, 3], np.int64), np.array([1, 4], np.int32), 2, 3, h.a, h.c, h.A, h.B, h.Binv)
    with pytest.raises(ValueError):
        _C.minhash_csr(ip, np.array([1, 4], np.int32), 2, 3, h.a, h.c, h.A[:-1], h.B, h.Binv)
    with pytest.raises(ValueError):
        _C.minhash_csr(ip, np.array([1, 4], np.int32), 2, 3, h.a, h.c, h.A, h.B, (h.Binv + 1) % 6)


@pytest.mark.parametrize("k,l", [(1, 32), (2, 9)])
def test_large_batch_step_table(k, l, rng):
    """Batches of >= 8*k*l rows densify through a precomputed step table: same values as
    the reference and as small batches."""
    nb = k * l
    sets = [rng.choice(10**5, size=s, replace=False) for s in rng.choice([0, 1, 2, 3, 6, 20, 80], size=8 * nb + 3)]
    h = MinHash(k, l, seed=nb)
    S = sets_to_csr(sets, 10**5)
    big = h.signatures(S)
    small = np.concatenate([h.signatures(S[i:i + 5]) for i in range(0, S.shape[0], 5)])
    np.testing.assert_array_equal(big, small)
    want_sig, want_keys = ref_minhash(sets, k, l, h.a, h.c, h.A, h.B)
    np.testing.assert_array_equal(big, want_sig)
    np.testing.assert_array_equal(h.hash(S), want_keys)
