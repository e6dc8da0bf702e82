"""WTA / DWTA against plain-Python references written from the spec (hashlab/wta.py,
src_cpp/include/hashlab/wta.h), across SIMD levels and thread counts; dense vs CSR;
densification (closed form and walk); collision rates; bad input."""
import math
import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings, strategies as st

from hashlab import _C
from hashlab.wta import DWTAHash, WTAHash
from conftest import AWKWARD_DIMS

# ---------------------------------------------------------------------------
# references (independent of the code under test)


def ref_layout(dim, nb, m, seed):
    """bin_coords (nb, m) and coord_slot (n_perm, dim) from the spec, with plain loops."""
    rng = np.random.default_rng(seed)
    bpp = -(-dim // m)
    n_perm = -(-nb // bpp)
    bin_coords = -np.ones((nb, m), dtype=np.int64)
    coord_slot = -np.ones((n_perm, dim), dtype=np.int64)
    for p in range(n_perm):
        perm = rng.permutation(dim)
        for i, c in enumerate(perm):
            b = p * bpp + i // m
            if b < nb:
                bin_coords[b, i % m] = c
                coord_slot[p, c] = b * m + i % m
    return n_perm, bin_coords, coord_slot


def ref_walk(b, full, A, B):
    """First non-empty bin on the walk (A[b] + t*B[b]) mod nb, t = 1..nb (literal)."""
    nb = len(full)
    for t in range(1, nb + 1):
        j = (int(A[b]) + t * int(B[b])) % nb
        if full[j]:
            return j
    raise AssertionError("walk found no non-empty bin")


def ref_densify(vals, full, A, B, if_none):
    vals = list(vals)
    if not any(full):
        return [if_none] * len(vals)
    return [vals[b] if full[b] else vals[ref_walk(b, full, A, B)] for b in range(len(vals))]


def ref_codes(X, bin_coords, densified, A=None, B=None):
    """Codes of dense rows: position of the max over each bin's coordinates (lowest on
    ties); DWTA ignores zeros and densifies empty bins; all-empty rows -> 0."""
    X = np.asarray(X, dtype=np.float32)
    nb, m = bin_coords.shape
    out = np.zeros((X.shape[0], nb), dtype=np.int64)
    for r, x in enumerate(X):
        codes, full = [], []
        for b in range(nb):
            cands = [(float(x[c]), i) for i, c in enumerate(bin_coords[b]) if c >= 0]
            if densified:
                cands = [(v, i) for v, i in cands if v != 0.0]
            if cands:
                top = max(v for v, _ in cands)
                codes.append(min(i for v, i in cands if v == top))
                full.append(True)
            else:
                codes.append(0)
                full.append(False)
        if densified:
            codes = ref_densify(codes, full, A, B, 0)
        out[r] = codes
    return out


def ref_keys(codes, k, l, m):
    cb = int(math.log2(m))
    keys = np.zeros((codes.shape[0], l), dtype=np.uint64)
    for t in range(l):
        for i in range(k):
            keys[:, t] += codes[:, t * k + i].astype(np.uint64) << np.uint64(i * cb)
    assert keys.max(initial=0) < 2**32
    return keys.astype(np.uint32)


def make_rows(rng, n, dim, zero_frac=0.5, ties=False):
    """Random rows with zeros, negatives, optional ties; row 0 all zero, row 1 all equal."""
    if ties:
        X = rng.integers(-2, 3, size=(n, dim)).astype(np.float32)
    else:
        X = rng.standard_normal((n, dim)).astype(np.float32)
    X[rng.random((n, dim)) < zero_frac] = 0.0
    X[0] = 0.0
    if n > 1:
        X[1] = 1.5
    if n > 3:
        X[3] = -X[3]  # a row with mostly negative values
    return X


def with_empty_rows(X):
    """CSR of X plus two empty rows (first and middle) and explicit stored zeros."""
    X = np.concatenate([np.zeros((1, X.shape[1]), np.float32), X], axis=0)
    S = sp.csr_matrix(X)
    # store some explicit zeros: rebuild with a zero at column 0 of every row that lacks it
    rows, cols = S.nonzero()
    vals = np.asarray(S[rows, cols]).ravel()
    extra_r = np.arange(X.shape[0])
    extra_r = extra_r[X[:, 0] == 0]
    r = np.concatenate([rows, extra_r])
    c = np.concatenate([cols, np.zeros(extra_r.size, dtype=cols.dtype)])
    v = np.concatenate([vals, np.zeros(extra_r.size, np.float32)])
    order = np.lexsort((c, r))
    S2 = sp.csr_matrix((v[order], c[order], np.searchsorted(r[order], np.arange(X.shape[0] + 1))),
                       shape=X.shape)
    assert S2.nnz > S.nnz or extra_r.size == 0
    return X, S2


CONFIGS = [(1, 1, 2), (3, 4, 8), (2, 7, 4), (4, 5, 16), (6, 3, 8)]  # (k, l, bin_size)


# ---------------------------------------------------------------------------
# parameters


@pytest.mark.parametrize("dim", AWKWARD_DIMS)
@pytest.mark.parametrize("k,l,m", [(3, 4, 8), (6, 50, 8), (1, 1, 2)])
def test_layout_matches_spec(dim, k, l, m):
    h = DWTAHash(dim, k, l, bin_size=m, seed=7)
    n_perm, bc, cs = ref_layout(dim, k * l, m, 7)
    assert h.n_perm == n_perm
    assert h.bin_coords.dtype == np.int32 and h.coord_slot.dtype == np.int32
    np.testing.assert_array_equal(h.bin_coords, bc)
    np.testing.assert_array_equal(h.coord_slot, cs)
    nb = k * l
    assert h.A.dtype == h.B.dtype == h.Binv.dtype == np.uint32
    assert (h.A < nb).all() and (h.B < nb).all() and (h.Binv < nb).all()
    for b, bi in zip(h.B.tolist(), h.Binv.tolist()):
        assert math.gcd(b, nb) == 1 or nb == 1
        assert b * bi % nb == 1 % nb
    assert h.key_bits == k * int(math.log2(m)) and h.code_bits == int(math.log2(m))
    # WTA with the same seed has the same layout
    w = WTAHash(dim, k, l, bin_size=m, seed=7)
    np.testing.assert_array_equal(w.bin_coords, h.bin_coords)


def test_seed_determinism_and_pickle(rng):
    X = make_rows(rng, 20, 33)
    for cls in (WTAHash, DWTAHash):
        a, b, c = cls(33, 3, 5, seed=1), cls(33, 3, 5, seed=1), cls(33, 3, 5, seed=2)
        np.testing.assert_array_equal(a.hash(X), b.hash(X))
        assert not np.array_equal(a.codes(X), c.codes(X))
        d = pickle.loads(pickle.dumps(a))
        assert d == a and hash(d) == hash(a)
        np.testing.assert_array_equal(d.hash(X), a.hash(X))
        assert "seed=1" in repr(a) and a.nbytes > 0


# ---------------------------------------------------------------------------
# codes and keys against the references


@pytest.mark.parametrize("dim", AWKWARD_DIMS)
@pytest.mark.parametrize("k,l,m", CONFIGS)
@pytest.mark.parametrize("cls", [WTAHash, DWTAHash])
def test_codes_and_keys_match_reference(cls, dim, k, l, m, rng, each_simd):
    h = cls(dim, k, l, bin_size=m, seed=dim + k)
    X = make_rows(rng, 9, dim, ties=(dim % 2 == 1))
    densified = cls is DWTAHash
    want = ref_codes(X, h.bin_coords, densified, getattr(h, "A", None), getattr(h, "B", None))
    want_keys = ref_keys(want, k, l, m)
    X_, S = with_empty_rows(X)
    want_s = ref_codes(X_, h.bin_coords, densified, h.A, h.B)

    def run():
        return h.codes(X), h.hash(X), h.codes(S), h.hash(S)

    for lv, (codes, keys, codes_s, keys_s) in each_simd(run).items():
        assert codes.shape == (9, k * l) and codes.dtype == np.int32
        assert keys.shape == (9, l) and keys.dtype == np.uint32
        np.testing.assert_array_equal(codes, want, err_msg=lv)
        np.testing.assert_array_equal(keys, want_keys, err_msg=lv)
        np.testing.assert_array_equal(codes_s, want_s, err_msg=lv)
        np.testing.assert_array_equal(keys_s, ref_keys(want_s, k, l, m), err_msg=lv)
    assert (codes >= 0).all() and (codes < m).all()


def test_all_zero_rows():
    X = np.zeros((3, 17), np.float32)
    d = DWTAHash(17, 3, 4, seed=0)
    assert (d.codes(X) == 0).all() and (d.hash(X) == 0).all()
    assert (d.hash(sp.csr_matrix(X)) == 0).all()
    # WTA of an all-zero row: every position ties, the lowest (0) wins
    assert (WTAHash(17, 3, 4).codes(X) == 0).all()


@pytest.mark.parametrize("dim", [8, 127, 1000])
def test_dwta_dense_equals_csr(dim, rng):
    h = DWTAHash(dim, 4, 16, bin_size=8, seed=3)
    for zero_frac in (0.0, 0.5, 0.9, 0.99):
        X = make_rows(rng, 40, dim, zero_frac=zero_frac, ties=True)
        X_, S = with_empty_rows(X)
        np.testing.assert_array_equal(h.codes(X_), h.codes(S))
        np.testing.assert_array_equal(h.hash(X_), h.hash(S))


def test_wta_equals_dwta_without_zeros(rng):
    X = rng.standard_normal((30, 33)).astype(np.float32)
    X[X == 0] = 1.0
    np.testing.assert_array_equal(WTAHash(33, 3, 7, seed=4).codes(X), DWTAHash(33, 3, 7, seed=4).codes(X))


def test_csr_duplicates_are_summed(rng):
    # a non-canonical CSR: column 2 appears twice in row 0 (0.5 + 0.7) and unsorted indices
    indptr = np.array([0, 3, 5])
    indices = np.array([2, 0, 2, 5, 1])
    data = np.array([0.5, 0.3, 0.7, 2.0, -1.0], np.float32)
    S = sp.csr_matrix((data, indices, indptr), shape=(2, 8))
    dense = S.toarray()
    for cls in (WTAHash, DWTAHash):
        h = cls(8, 2, 3, bin_size=4, seed=5)
        np.testing.assert_array_equal(h.codes(S), h.codes(dense))
        np.testing.assert_array_equal(h.hash(S), h.hash(dense))


@pytest.mark.parametrize("n_full", [1, 2, 3, 5, 9, 10, 12, 30, 100, 199, 200])
def test_densification_closed_form_and_walk(n_full, rng):
    """Rows with a chosen number of non-empty bins exercise both densification paths
    (closed form for few non-empty bins, probing walk for many)."""
    k, l, m = 4, 50, 4
    nb = k * l
    h = DWTAHash(nb * m, k, l, bin_size=m, seed=n_full)  # one permutation, every coordinate in a bin
    X = np.zeros((6, nb * m), np.float32)
    for r in range(6):
        bins = rng.choice(nb, size=n_full, replace=False)
        for b in bins:
            pos = rng.integers(0, m, size=rng.integers(1, m + 1))
            X[r, h.bin_coords[b, pos]] = rng.standard_normal(pos.size).astype(np.float32) + 5
    want = ref_codes(X, h.bin_coords, True, h.A, h.B)
    np.testing.assert_array_equal(h.codes(X), want)
    np.testing.assert_array_equal(h.codes(sp.csr_matrix(X)), want)


def test_sparse_high_dim_batch_and_single_rows(rng):
    """dim >> k*l*m: a large batch takes the covered-coordinate bitmap path, single rows do not;
    both agree with the reference."""
    dim, k, l, m = 5000, 2, 10, 8
    h = DWTAHash(dim, k, l, bin_size=m, seed=11)
    covered = h.bin_coords.ravel()
    rows = []
    for _ in range(300):
        cols = rng.choice(dim, size=30, replace=False)
        if rng.random() < 0.5:  # make sure some rows hit bins
            cols[:3] = rng.choice(covered, size=3, replace=False)
        cols = np.unique(cols)
        row = np.zeros(dim, np.float32)
        row[cols] = rng.integers(1, 4, size=cols.size)
        rows.append(row)
    X = np.array(rows)
    S = sp.csr_matrix(X)
    want = ref_codes(X, h.bin_coords, True, h.A, h.B)
    np.testing.assert_array_equal(h.codes(S), want)
    single = np.concatenate([h.codes(S[i]) for i in range(20)])
    np.testing.assert_array_equal(single, want[:20])


def test_threads_and_out(rng):
    import hashlab
    X = make_rows(rng, 500, 127)
    S = sp.csr_matrix(X)
    before = hashlab.get_num_threads()
    try:
        res = []
        for t in (1, 2, 3):
            hashlab.set_num_threads(t)
            for cls in (WTAHash, DWTAHash):
                h = cls(127, 5, 9, seed=1)
                res.append((t, cls.__name__, h.hash(X), h.hash(S)))
    finally:
        hashlab.set_num_threads(before)
    for t, name, a, b in res:
        ref = [r for r in res if r[1] == name][0]
        np.testing.assert_array_equal(a, ref[2])
        np.testing.assert_array_equal(b, ref[3])
    h = DWTAHash(127, 5, 9, seed=1)
    out = np.zeros((500, 9), np.uint32)
    assert h.hash(X, out=out) is out
    np.testing.assert_array_equal(out, h.hash(X))
    out2 = np.zeros((500, 9), np.uint32)
    h.hash(S, out=out2)
    np.testing.assert_array_equal(out2, out)


def test_one_dimensional_and_empty_inputs():
    h = DWTAHash(7, 2, 3, seed=0)
    x = np.arange(7, dtype=np.float32)
    assert h.hash(x).shape == (1, 3)
    assert h.codes(x).shape == (1, 6)
    assert h.hash(np.zeros((0, 7), np.float32)).shape == (0, 3)
    assert h.hash(sp.csr_matrix((0, 7), dtype=np.float32)).shape == (0, 3)
    assert h.codes(sp.csr_matrix((0, 7), dtype=np.float32)).shape == (0, 6)
    # float64 input is accepted (cast), as are torch-free lists
    np.testing.assert_array_equal(h.hash(x.astype(np.float64)), h.hash(x))


# ---------------------------------------------------------------------------
# statistical behaviour


def test_dwta_collisions_rise_with_similarity_on_sparse_data():
    """135,909-dim rows with ~1000 non-zeros: ~18 of 300 bins see a non-zero, the rest are
    densified. The key collision rate must rise with the overlap of the supports."""
    rng = np.random.default_rng(2024)
    dim, nnz, pairs = 135_909, 1000, 150
    h = DWTAHash(dim, 2, 100, bin_size=8, seed=1)
    fracs = [0.0, 0.25, 0.5, 0.75, 1.0]
    means, ses = [], []
    for f in fracs:
        rows_x, rows_y = [], []
        for _ in range(pairs):
            cols = rng.choice(dim, size=nnz, replace=False)
            vals = rng.random(nnz).astype(np.float32) + 0.1
            keep = int(round(f * nnz))
            cols_y = np.concatenate([cols[:keep], rng.choice(dim, size=nnz - keep, replace=False)])
            vals_y = np.concatenate([vals[:keep], rng.random(nnz - keep).astype(np.float32) + 0.1])
            rows_x.append((cols, vals))
            rows_y.append((cols_y, vals_y))

        def csr(rows):
            indptr = np.arange(len(rows) + 1) * nnz
            idx = np.concatenate([c for c, _ in rows])
            val = np.concatenate([v for _, v in rows])
            return sp.csr_matrix((val, idx, indptr), shape=(len(rows), dim))

        per_pair = (h.hash(csr(rows_x)) == h.hash(csr(rows_y))).mean(axis=1)  # independent pairs
        means.append(float(per_pair.mean()))
        ses.append(float(per_pair.std(ddof=1)) / math.sqrt(pairs))
    assert means[-1] == 1.0
    assert means[0] < 0.05  # unrelated rows: codes agree about 1/8 of the time, keys ~1/64
    for i in range(len(fracs) - 1):  # each step up is significant at 4 standard errors
        assert means[i + 1] - means[i] > 4 * math.hypot(ses[i], ses[i + 1]), (means, ses)


def test_wta_collision_probability_on_dense_data():
    """For dense rows, P[WTA codes agree] rises with cosine similarity; identical rows agree."""
    rng = np.random.default_rng(5)
    dim, n = 128, 400
    h = WTAHash(dim, 1, 300, bin_size=8, seed=2)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    rates = []
    for rho in (0.0, 0.5, 0.9, 1.0):
        y = (rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, dim))).astype(np.float32)
        rates.append(float((h.codes(x) == h.codes(y)).mean()))
    assert abs(rates[0] - 1 / 8) < 4 * math.sqrt(1 / 8 * 7 / 8 / (n * 30))  # ~independent -> 1/m
    assert rates[0] < rates[1] < rates[2] < rates[3] == 1.0


# ---------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("cls", [WTAHash, DWTAHash])
def test_bad_constructor_arguments(cls):
    with pytest.raises(TypeError):
        cls(10.0, 2, 3)
    with pytest.raises(TypeError):
        cls(10, "2", 3)
    with pytest.raises(TypeError):
        cls(10, 2, 3, bin_size=8.0)
    with pytest.raises(TypeError):
        cls(10, 2, 3, seed=None)
    with pytest.raises(ValueError):
        cls(0, 2, 3)
    with pytest.raises(ValueError):
        cls(10, 0, 3)
    with pytest.raises(ValueError):
        cls(10, 2, 0)
    with pytest.raises(ValueError, match="power of two"):
        cls(10, 2, 3, bin_size=6)
    with pytest.raises(ValueError):
        cls(10, 2, 3, bin_size=1)
    with pytest.raises(ValueError, match=r"k\*log2\(bin_size\) <= 32"):
        cls(10, 11, 3, bin_size=8)
    with pytest.raises(ValueError, match=r"k\*l"):
        cls(10, 2, 40000, bin_size=2)
    with pytest.raises(ValueError):
        cls(10, 2, 3, seed=-1)
    with pytest.raises(ValueError, match="layout"):
        cls(2**30, 4, 16000, bin_size=256)
    cls(10, 32, 3, bin_size=2)  # 32 bits exactly is fine


@pytest.mark.parametrize("cls", [WTAHash, DWTAHash])
def test_bad_batches(cls):
    h = cls(10, 2, 3)
    with pytest.raises(ValueError, match="10 columns"):
        h.hash(np.zeros((2, 9), np.float32))
    with pytest.raises(ValueError, match="10 columns"):
        h.codes(np.zeros((2, 11), np.float32))
    with pytest.raises(TypeError):
        h.hash(np.zeros((2, 10), np.int32))
    with pytest.raises(TypeError):
        h.hash("abc")
    with pytest.raises(ValueError, match="finite"):
        h.hash(np.full((2, 10), np.nan, np.float32))
    with pytest.raises(ValueError, match="finite"):
        h.hash(sp.csr_matrix(np.full((2, 10), np.inf, np.float32)))
    with pytest.raises(ValueError):
        h.hash(sp.csr_matrix(np.ones((2, 9), np.float32)))
    with pytest.raises(ValueError):
        h.hash(np.zeros((2, 2, 10), np.float32))
    with pytest.raises(TypeError):
        h.hash(np.zeros((2, 10), np.float32), out=np.zeros((2, 3), np.int64))
    with pytest.raises(ValueError):
        h.hash(np.zeros((2, 10), np.float32), out=np.zeros((3, 3), np.uint32))


def test_core_rejects_malformed_parameters():
    """The compiled functions check everything themselves (no crash on any input)."""
    h = DWTAHash(10, 2, 3, seed=0)
    X = np.ones((2, 10), np.float32)
    args = dict(dim=10, k=2, l=3, bin_size=8, n_perm=h.n_perm, bin_coords=h.bin_coords,
                coord_slot=h.coord_slot, A=h.A, B=h.B, Binv=h.Binv, densified=True)
    _C.wta_dense(X, **args)  # fine as is

    def bad(**kw):
        a = dict(args, **kw)
        with pytest.raises(ValueError):
            _C.wta_dense(X, **a)

    bad(bin_coords=h.bin_coords[:-1])
    bad(coord_slot=h.coord_slot[:, :-1])
    bad(A=h.A[:-1])
    bad(A=h.A + 6)                         # out of [0, nb)
    bad(Binv=(h.Binv + 1) % 6)             # not the inverse
    bad(bin_size=6)
    bad(k=11)                              # k*log2(m) > 32
    bad(n_perm=0)
    with pytest.raises(ValueError):
        _C.wta_dense(np.ones((2, 9), np.float32), **args)
    # garbage layouts cannot crash: out-of-range entries count as absent
    junk = dict(args, bin_coords=np.full_like(h.bin_coords, 10**6), coord_slot=np.full_like(h.coord_slot, 10**6))
    assert (_C.wta_dense(X, **junk, want_codes=True)[1] == 0).all()
    indptr = np.array([0, 2], np.int64)
    for ind, ip in (([0, 10], indptr), ([0, -1], indptr), ([0, 1], np.array([0, 3], np.int64)),
                    ([0, 1], np.array([1, 0, 2], np.int64))):
        with pytest.raises(ValueError):
            _C.wta_csr(ip, np.array(ind, np.int32), np.ones(2, np.float32), **args)
        with pytest.raises(ValueError):
            _C.wta_csr(ip, np.array(ind, np.int32), np.ones(2, np.float32), **dict(args, densified=False))
    with pytest.raises(ValueError):
        _C.wta_csr(indptr, np.array([0, 1], np.int32), np.ones(3, np.float32), **args)
    with pytest.raises(TypeError):
        _C.wta_dense(X, **args, out=np.zeros((2, 3), np.int32))
    with pytest.raises(ValueError):
        _C.wta_dense(X, **args, out=np.zeros((2, 6), np.uint32)[:, ::2])


@settings(max_examples=60, deadline=None)
@given(dim=st.integers(-3, 300), k=st.integers(-1, 40), l=st.integers(-1, 70),
       bin_size=st.integers(-2, 70), seed=st.integers(-2, 2**64))
def test_constructor_sweep(dim, k, l, bin_size, seed):
    """Any integers: a hasher whose keys fit, or ValueError; never anything else."""
    try:
        h = DWTAHash(dim, k, l, bin_size=bin_size, seed=seed)
    except ValueError:
        return
    assert h.key_bits <= 32 and h.k * h.l <= 65535
    keys = h.hash(np.ones((2, dim), np.float32))
    assert keys.shape == (2, l) and (keys < 2**h.key_bits).all()


def test_signed_zeros_tie_and_special_values_agree_everywhere():
    """-0.0 ties with +0.0 (lowest position wins; DWTA treats both as absent). Through the
    core directly (the Python API rejects them): NaN never wins and -inf is an ordinary
    value, identically for dense and CSR input."""
    rng = np.random.default_rng(3)
    dim = 64
    X = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, 2.0], np.float32), size=(40, dim))
    for cls in (WTAHash, DWTAHash):
        h = cls(dim, 4, 8, bin_size=8, seed=1)
        want = ref_codes(X, h.bin_coords, cls is DWTAHash, h.A, h.B)
        np.testing.assert_array_equal(h.codes(X), want)
        np.testing.assert_array_equal(h.codes(sp.csr_matrix(X)), want)
    special = rng.choice(np.array([0.0, -0.0, 1.0, -np.inf, np.nan, np.inf], np.float32), size=(40, dim))
    for densified in (False, True):
        h = (DWTAHash if densified else WTAHash)(dim, 4, 8, bin_size=8, seed=1)
        args = (dim, 4, 8, 8, h.n_perm, h.bin_coords, h.coord_slot, h.A, h.B, h.Binv, densified, True)
        dense = _C.wta_dense(special, *args)[1]
        S = sp.csr_matrix(special)  # stores NaN, +-inf and the non-zeros
        csr = _C.wta_csr(S.indptr.astype(np.int64), S.indices, S.data, *args)[1]
        np.testing.assert_array_equal(dense, csr)
        # reference: NaN entries are skipped; a bin of NaNs only is empty (DWTA) or code 0 (WTA)
        want = []
        for r, x in enumerate(special):
            codes, full = [], []
            for b in range(32):
                cands = [(float(x[c]), i) for i, c in enumerate(h.bin_coords[b])
                         if c >= 0 and not np.isnan(x[c]) and not (densified and x[c] == 0)]
                if cands:
                    top = max(v for v, _ in cands)
                    codes.append(min(i for v, i in cands if v == top))
                    full.append(True)
                else:
                    codes.append(0)
                    full.append(False)
            want.append(ref_densify(codes, full, h.A, h.B, 0) if densified else codes)
        np.testing.assert_array_equal(dense, np.array(want))


@pytest.mark.parametrize("k,l,m", [(2, 16, 4), (1, 7, 8), (3, 40, 2)])
def test_densification_large_batch_step_table(k, l, m, rng):
    """Batches of >= 8*k*l rows densify through a precomputed step table; the codes must
    equal the reference and the small-batch (closed form / walk) results, row by row."""
    nb = k * l
    dim = nb * m
    h = DWTAHash(dim, k, l, bin_size=m, seed=nb)
    n = 8 * nb + 5
    X = np.zeros((n, dim), np.float32)
    for r in range(n):
        n_full = [0, 1, 2, 3, 5, nb // 3, nb // 2, nb - 1, nb][r % 9]
        for b in rng.choice(nb, size=n_full, replace=False):
            X[r, h.bin_coords[b, rng.integers(0, m)]] = 1.0 + rng.integers(0, 3)
    S = sp.csr_matrix(X)
    big_dense, big_csr = h.codes(X), h.codes(S)
    np.testing.assert_array_equal(big_dense, big_csr)
    small = np.concatenate([h.codes(X[i:i + 7]) for i in range(0, n, 7)])
    np.testing.assert_array_equal(big_dense, small)
    np.testing.assert_array_equal(big_dense, ref_codes(X, h.bin_coords, True, h.A, h.B))
