"""The scan kernel of OutputRetriever: the m rows nearest in Hamming distance, in (distance, row) order."""
import numpy as np
import pytest

from hashlab import _C


def reference(q, b, m):
    """(ids, dist) by brute force: every distance, then a lexicographic sort on (distance, row)."""
    D = _C.hamming(q, b)
    order = np.stack([np.lexsort((np.arange(b.shape[0]), row))[:m] for row in D])
    return order, np.take_along_axis(D, order, 1)


def codes(rng, n, words, distinct=None):
    """Random codes; with ``distinct``, only that many different rows (many exact ties)."""
    x = rng.integers(0, 2**63, size=(n if distinct is None else distinct, words), dtype=np.uint64)
    return x if distinct is None else x[rng.integers(0, distinct, n)]


@pytest.mark.parametrize("nq", [1, 3, 40])  # 1 and 3: rows split over threads; 40: queries over threads
@pytest.mark.parametrize("words", [1, 3, 4])
@pytest.mark.parametrize("m", [1, 37, 5000, 20000])
def test_matches_brute_force_on_every_simd_level(each_simd, threads, rng, nq, words, m):
    b = codes(rng, 20000, words, distinct=3000)
    q = np.concatenate([b[:1], codes(rng, nq - 1, words)])  # one query at distance 0 from some rows
    want = reference(q, b, m)
    for n_threads in (1, 2):
        threads(n_threads)
        for lv, (ids, dist) in each_simd(lambda: _C.hamming_topm(q, b, m)).items():
            assert ids.dtype == np.int32 and dist.dtype == np.int32 and ids.shape == (nq, m)
            assert np.array_equal(ids, want[0]), (lv, n_threads)
            assert np.array_equal(dist, want[1]), (lv, n_threads)


@pytest.mark.parametrize("nq", [1, 40])
def test_a_misleading_sample_falls_back_to_the_exact_pass(rng, nq):
    # The cut-off is estimated on evenly spaced rows. Make exactly those rows equal to the
    # queries' row and all others far: the estimate then keeps too few rows for m.
    n, words, m = 40000, 2, 12000
    q = codes(rng, nq, words)
    b = np.repeat(~q[:1], n, axis=0)
    ns = 8192
    b[np.arange(ns) * n // ns] = q[0]
    b[1::5] ^= np.uint64(1)  # spread the far rows over two distances
    want = reference(q, b, m)
    ids, dist = _C.hamming_topm(q, b, m)
    assert np.array_equal(ids, want[0]) and np.array_equal(dist, want[1])


def test_bad_input_is_a_value_error(rng):
    b = codes(rng, 10, 2)
    for m in (0, -1, 11):
        with pytest.raises(ValueError, match="m"):
            _C.hamming_topm(b[:2], b, m)
    with pytest.raises(ValueError):
        _C.hamming_topm(b[:2, :1], b, 3)  # widths differ
    wide = np.zeros((2, 1024), np.uint64)
    with pytest.raises(ValueError, match="1023 words"):
        _C.hamming_topm(wide, wide, 1)
    assert _C.hamming_topm(b[:0], b, 3)[0].shape == (0, 3)


def test_retriever_rejects_more_scan_bits_than_the_kernel_takes(rng):
    from hashlab.retrieval import MAX_SCAN_BITS, OutputRetriever
    W = rng.standard_normal((50, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="at most"):
        OutputRetriever(W, search="scan", k=32, l=MAX_SCAN_BITS // 32 + 1)
    r = OutputRetriever(W, search="scan", k=32, l=MAX_SCAN_BITS // 32)  # the limit itself is accepted
    assert r.nbits == MAX_SCAN_BITS
