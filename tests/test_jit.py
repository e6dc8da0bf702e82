"""numba twins (hashlab.jit) bit-identical to the C++ kernels, and the C ABI called
through ctypes from inside @njit code."""
import numba
import numpy as np
import pytest
import scipy.sparse as sp

from hashlab import jit
from hashlab.minhash import MinHash
from hashlab.wta import DWTAHash, WTAHash
from conftest import AWKWARD_DIMS


def rows(rng, n, dim, zero_frac=0.6):
    X = rng.integers(-3, 4, size=(n, dim)).astype(np.float32)  # small integers: many ties
    X[rng.random((n, dim)) < zero_frac] = 0.0
    X[0] = 0.0
    return X


def csr_parts(S):
    return S.indptr.astype(np.int64), S.indices.astype(np.int32), S.data.astype(np.float32)


def with_empty_rows(X):
    X = np.concatenate([np.zeros((1, X.shape[1]), np.float32), X, np.zeros((1, X.shape[1]), np.float32)])
    return X, sp.csr_matrix(X)


# ---------------------------------------------------------------------------
# WTA / DWTA


@pytest.mark.parametrize("dim", AWKWARD_DIMS)
@pytest.mark.parametrize("k,l,m", [(1, 1, 2), (3, 4, 8), (4, 9, 4), (2, 60, 16)])
def test_wta_twins_match_cpp(dim, k, l, m, rng, each_simd):
    w = WTAHash(dim, k, l, bin_size=m, seed=dim)
    d = DWTAHash(dim, k, l, bin_size=m, seed=dim)
    X, S = with_empty_rows(rows(rng, 10, dim, zero_frac=0.9 if dim > 100 else 0.5))
    ip, ix, dv = csr_parts(S)
    cpp = each_simd(lambda: (w.codes(X), w.hash(X), w.hash(S), d.codes(X), d.hash(X), d.codes(S), d.hash(S)))
    twins = (
        jit.wta_codes_dense(X, k, l, m, w.bin_coords),
        jit.wta_keys_dense(X, k, l, m, w.bin_coords),
        jit.wta_keys_csr(ip, ix, dv, dim, k, l, m, w.bin_coords),
        jit.dwta_codes_dense(X, k, l, m, d.bin_coords, d.A, d.B, d.Binv),
        jit.dwta_keys_dense(X, k, l, m, d.bin_coords, d.A, d.B, d.Binv),
        jit.dwta_codes_csr(ip, ix, dv, k, l, m, d.coord_slot, d.A, d.B, d.Binv),
        jit.dwta_keys_csr(ip, ix, dv, k, l, m, d.coord_slot, d.A, d.B, d.Binv),
    )
    np.testing.assert_array_equal(jit.wta_codes_csr(ip, ix, dv, dim, k, l, m, w.bin_coords), twins[0])
    for lv, outs in cpp.items():
        for i, (a, b) in enumerate(zip(outs, twins)):
            assert a.dtype == b.dtype, (lv, i)
            np.testing.assert_array_equal(a, b, err_msg=f"{lv} output {i}")


@pytest.mark.parametrize("n_full", [1, 2, 4, 7, 8, 20, 60, 119])
def test_dwta_twin_densification_paths(n_full, rng):
    k, l, m = 4, 30, 8
    nb = k * l
    h = DWTAHash(nb * m, k, l, bin_size=m, seed=n_full)
    X = np.zeros((5, nb * m), np.float32)
    for r in range(5):
        for b in rng.choice(nb, size=n_full, replace=False):
            X[r, h.bin_coords[b, rng.integers(0, m)]] = 1.0 + rng.random()
    S = sp.csr_matrix(X)
    ip, ix, dv = csr_parts(S)
    want = h.codes(S)
    np.testing.assert_array_equal(jit.dwta_codes_csr(ip, ix, dv, k, l, m, h.coord_slot, h.A, h.B, h.Binv), want)
    np.testing.assert_array_equal(jit.dwta_codes_dense(X, k, l, m, h.bin_coords, h.A, h.B, h.Binv), want)


def test_twins_callable_from_user_njit(rng):
    h = DWTAHash(50, 3, 5, seed=2)

    @numba.njit
    def user(X, bc, A, B, Binv):
        keys = jit.dwta_keys_dense(X, 3, 5, 8, bc, A, B, Binv)
        return keys.sum()

    X = rows(rng, 7, 50)
    assert user(X, h.bin_coords, h.A, h.B, h.Binv) == h.hash(X).astype(np.uint64).sum()


# ---------------------------------------------------------------------------
# MinHash


@pytest.mark.parametrize("k,l", [(1, 1), (2, 7), (1, 256), (5, 20)])
def test_minhash_twins_match_cpp(k, l, rng):
    sets = [rng.choice(10**6, size=s, replace=False) for s in (0, 1, 2, 3, 10, 50, 300, 0, 2000)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in sets])]).astype(np.int64)
    indices = np.concatenate(sets).astype(np.int32)
    S = sp.csr_matrix((np.ones(indices.size, np.float32), indices, indptr), shape=(len(sets), 10**6))
    for seed in (0, 1, 2):
        h = MinHash(k, l, seed=seed)
        sig = jit.minhash_signatures_csr(indptr, indices, k, l, np.uint64(h.a), np.uint64(h.c), h.A, h.B, h.Binv)
        keys = jit.minhash_keys_csr(indptr, indices, k, l, np.uint64(h.a), np.uint64(h.c), h.A, h.B, h.Binv)
        np.testing.assert_array_equal(sig, h.signatures(S))
        np.testing.assert_array_equal(keys, h.hash(S))
        np.testing.assert_array_equal(jit.minhash_signatures_to_keys(sig, k, l), keys)


# ---------------------------------------------------------------------------
# SimHash


def _simhash():
    simhash = pytest.importorskip("hashlab.simhash")
    return simhash.SimHash


@pytest.mark.parametrize("dim", AWKWARD_DIMS)
@pytest.mark.parametrize("kind", ["gaussian", "sparse"])
def test_simhash_twins_match_cpp(dim, kind, rng, each_simd):
    SimHash = _simhash()
    k, l = 7, 11
    h = SimHash(dim, k, l, kind=kind, seed=dim)
    X = rng.standard_normal((9, dim)).astype(np.float32)
    X[rng.random(X.shape) < 0.5] = 0.0
    X, S = with_empty_rows(X)
    ip, ix, dv = csr_parts(S)
    bits_d = jit.simhash_bits_dense(X, h.W, h.nbits)
    bits_s = jit.simhash_bits_csr(ip, ix, dv, h.W, h.nbits)
    keys = jit.bits_to_keys(bits_d, k, l)
    np.testing.assert_array_equal(bits_d, bits_s)
    for lv, (bd, bs, kd) in each_simd(lambda: (h.bits(X), h.bits(S), h.hash(X))).items():
        np.testing.assert_array_equal(bd, bits_d, err_msg=lv)
        np.testing.assert_array_equal(bs, bits_s, err_msg=lv)
        np.testing.assert_array_equal(kd, keys, err_msg=lv)


@pytest.mark.parametrize("k,l", [(1, 1), (32, 2), (5, 13), (3, 100), (31, 7)])
def test_bits_to_keys_twin(k, l, rng):
    from hashlab import _C
    nwords = -(-k * l // 64)
    bits = rng.integers(0, 2**64, size=(6, nwords), dtype=np.uint64)
    np.testing.assert_array_equal(jit.bits_to_keys(bits, k, l), _C.bits_to_keys(bits, k, l))
    # against plain Python
    for r in range(6):
        big = sum(int(w) << (64 * i) for i, w in enumerate(bits[r]))
        want = [(big >> (k * t)) & ((1 << k) - 1) for t in range(l)]
        assert jit.bits_to_keys(bits, k, l)[r].tolist() == want


# ---------------------------------------------------------------------------
# the C ABI from inside @njit


@numba.njit
def _c_dwta_csr(indptr, indices, data, dim, k, l, m, n_perm, bc, cs, A, B, Binv):
    n = indptr.size - 1
    codes = np.empty((n, k * l), np.int32)
    keys = np.empty((n, l), np.uint32)
    rc = jit.hashlab_wta_csr(indptr.ctypes, indices.ctypes, data.ctypes, n, indices.size, dim, k, l, m, n_perm,
                             bc.ctypes, cs.ctypes, A.ctypes, B.ctypes, Binv.ctypes, 1, codes.ctypes, keys.ctypes)
    return rc, codes, keys


@numba.njit
def _c_wta_dense(X, k, l, m, n_perm, bc, cs, A):
    n, dim = X.shape
    keys = np.empty((n, l), np.uint32)
    # codes not wanted: a null pointer is allowed
    rc = jit.hashlab_wta_dense(X.ctypes, n, dim, k, l, m, n_perm, bc.ctypes, cs.ctypes, A.ctypes, A.ctypes,
                               A.ctypes, 0, jit.null_i32(), keys.ctypes)
    return rc, keys


@numba.njit
def _c_minhash(indptr, indices, k, l, a, c, A, B, Binv):
    n = indptr.size - 1
    sig = np.empty((n, k * l), np.uint32)
    keys = np.empty((n, l), np.uint32)
    rc = jit.hashlab_minhash_csr(indptr.ctypes, indices.ctypes, n, indices.size, k, l, a, c,
                                 A.ctypes, B.ctypes, Binv.ctypes, sig.ctypes, keys.ctypes)
    return rc, sig, keys


@numba.njit
def _c_simhash(X, indptr, indices, data, W, nbits, k, l):
    n, dim = X.shape
    nwords = (nbits + 63) // 64
    bd = np.empty((n, nwords), np.uint64)
    bs = np.empty((n, nwords), np.uint64)
    keys = np.empty((n, l), np.uint32)
    rc = jit.hashlab_simhash_dense_bits(X.ctypes, n, dim, W.ctypes, W.shape[1], nbits, bd.ctypes)
    rc |= jit.hashlab_simhash_csr_bits(indptr.ctypes, indices.ctypes, data.ctypes, n, indices.size, dim,
                                       W.ctypes, W.shape[1], nbits, bs.ctypes)
    rc |= jit.hashlab_bits_to_keys(bd.ctypes, n, nwords, k, l, keys.ctypes)
    return rc, bd, bs, keys


def test_c_abi_from_njit_wta_and_minhash(rng):
    X, S = with_empty_rows(rows(rng, 30, 127))
    ip, ix, dv = csr_parts(S)
    d = DWTAHash(127, 4, 6, seed=3)
    rc, codes, keys = _c_dwta_csr(ip, ix, dv, 127, 4, 6, 8, d.n_perm, d.bin_coords, d.coord_slot, d.A, d.B, d.Binv)
    assert rc == 0
    np.testing.assert_array_equal(codes, d.codes(S))
    np.testing.assert_array_equal(keys, d.hash(X))
    w = WTAHash(127, 4, 6, seed=3)
    rc, keys = _c_wta_dense(X, 4, 6, 8, w.n_perm, w.bin_coords, w.coord_slot, np.zeros(1, np.uint32))
    assert rc == 0
    np.testing.assert_array_equal(keys, w.hash(X))
    h = MinHash(2, 9, seed=5)
    rc, sig, keys = _c_minhash(ip, ix, 2, 9, np.uint64(h.a), np.uint64(h.c), h.A, h.B, h.Binv)
    assert rc == 0
    np.testing.assert_array_equal(sig, h.signatures(S))
    np.testing.assert_array_equal(keys, h.hash(S))


def test_c_abi_from_njit_simhash(rng):
    SimHash = _simhash()
    h = SimHash(33, 6, 20, seed=1)
    X, S = with_empty_rows(rng.standard_normal((12, 33)).astype(np.float32))
    ip, ix, dv = csr_parts(S)
    rc, bd, bs, keys = _c_simhash(X, ip, ix, dv, h.W, h.nbits, 6, 20)
    assert rc == 0
    np.testing.assert_array_equal(bd, h.bits(X))
    np.testing.assert_array_equal(bs, h.bits(S))
    np.testing.assert_array_equal(keys, h.hash(X))


def test_c_abi_reports_bad_arguments(rng):
    d = DWTAHash(20, 2, 3, seed=0)
    X, S = with_empty_rows(rows(rng, 4, 20))
    ip, ix, dv = csr_parts(S)
    bad_ix = ix.copy()
    bad_ix[0] = 20  # column out of range
    rc, _, _ = _c_dwta_csr(ip, bad_ix, dv, 20, 2, 3, 8, d.n_perm, d.bin_coords, d.coord_slot, d.A, d.B, d.Binv)
    assert rc == 1 and "indices" in jit.last_error()
    bad_ip = ip.copy()
    bad_ip[-1] = ix.size + 1  # beyond nnz
    rc, _, _ = _c_dwta_csr(bad_ip, ix, dv, 20, 2, 3, 8, d.n_perm, d.bin_coords, d.coord_slot, d.A, d.B, d.Binv)
    assert rc == 1 and "indptr" in jit.last_error()
    rc, _, _ = _c_dwta_csr(ip, ix, dv, 20, 2, 3, 6, d.n_perm, d.bin_coords, d.coord_slot, d.A, d.B, d.Binv)
    assert rc == 1 and "bin_size" in jit.last_error()
    rc, _, _ = _c_dwta_csr(ip, ix, dv, 20, 2, 3, 8, d.n_perm, d.bin_coords, d.coord_slot, d.A, d.B, d.A)
    assert rc == 1 and "inverse" in jit.last_error()
    rc, _, _ = _c_dwta_csr(ip, ix, dv, 20, 2, 3, 8, d.n_perm, d.bin_coords, d.coord_slot, d.A, d.B, d.Binv)
    assert rc == 0 and jit.last_error() == ""


def test_twins_reject_bad_input(rng):
    d = DWTAHash(20, 2, 3, seed=0)
    X, S = with_empty_rows(rows(rng, 4, 20))
    ip, ix, dv = csr_parts(S)
    bad = ix.copy()
    bad[0] = 25
    with pytest.raises(ValueError):
        jit.dwta_keys_csr(ip, bad, dv, 2, 3, 8, d.coord_slot, d.A, d.B, d.Binv)
    with pytest.raises(ValueError):
        jit.wta_keys_csr(ip, bad, dv, 20, 2, 3, 8, d.bin_coords)
    with pytest.raises(ValueError):
        jit.dwta_keys_dense(X, 2, 3, 8, d.bin_coords, d.A, d.B, d.A)  # Binv is not B's inverse
    with pytest.raises(ValueError):
        jit.dwta_keys_dense(X, 2, 4, 8, d.bin_coords, d.A, d.B, d.Binv)  # k*l does not match
    with pytest.raises(ValueError):
        jit.wta_keys_dense(X, 11, 3, 8, d.bin_coords)  # k*log2(m) > 32
    with pytest.raises(ValueError):
        jit.minhash_keys_csr(ip, -np.ones_like(ix), 2, 3, np.uint64(1), np.uint64(0), d.A, d.B, d.Binv)
    with pytest.raises(ValueError):
        jit.bits_to_keys(np.zeros((2, 1), np.uint64), 33, 1)
    with pytest.raises(ValueError):
        jit.simhash_bits_dense(X, np.zeros((19, 64), np.float32), 10)


def test_twins_match_cpp_on_special_values(rng):
    """NaN, +-inf and -0.0 (possible through the C ABI and the twins, which do not check
    finiteness) give the same codes in C++ and numba, dense and CSR."""
    from hashlab import _C
    dim, k, l, m = 40, 3, 10, 4
    X = rng.choice(np.array([0.0, -0.0, 1.0, 2.0, -np.inf, np.inf, np.nan], np.float32), size=(30, dim))
    S = sp.csr_matrix(X)
    ip, ix, dv = csr_parts(S)
    w = WTAHash(dim, k, l, bin_size=m, seed=2)
    d = DWTAHash(dim, k, l, bin_size=m, seed=2)
    for h, dens in ((w, False), (d, True)):
        args = (dim, k, l, m, h.n_perm, h.bin_coords, h.coord_slot, h.A, h.B, h.Binv, dens, True)
        cpp = _C.wta_dense(X, *args)[1]
        np.testing.assert_array_equal(_C.wta_csr(ip, ix, dv, *args)[1], cpp)
        if dens:
            np.testing.assert_array_equal(jit.dwta_codes_dense(X, k, l, m, d.bin_coords, d.A, d.B, d.Binv), cpp)
            np.testing.assert_array_equal(jit.dwta_codes_csr(ip, ix, dv, k, l, m, d.coord_slot, d.A, d.B, d.Binv), cpp)
        else:
            np.testing.assert_array_equal(jit.wta_codes_dense(X, k, l, m, w.bin_coords), cpp)
            np.testing.assert_array_equal(jit.wta_codes_csr(ip, ix, dv, dim, k, l, m, w.bin_coords), cpp)


def test_twins_match_cpp_on_large_batches(rng):
    """Large batches take the C++ step-table densification; the twins have none."""
    k, l, m, dim = 3, 20, 8, 2000
    d = DWTAHash(dim, k, l, bin_size=m, seed=8)
    X = rows(rng, 8 * k * l + 11, dim, zero_frac=0.995)
    S = sp.csr_matrix(X)
    ip, ix, dv = csr_parts(S)
    np.testing.assert_array_equal(jit.dwta_keys_csr(ip, ix, dv, k, l, m, d.coord_slot, d.A, d.B, d.Binv), d.hash(S))
    np.testing.assert_array_equal(jit.dwta_keys_dense(X, k, l, m, d.bin_coords, d.A, d.B, d.Binv), d.hash(X))
    h = MinHash(2, 30, seed=1)
    sig = jit.minhash_signatures_csr(ip, ix, 2, 30, np.uint64(h.a), np.uint64(h.c), h.A, h.B, h.Binv)
    np.testing.assert_array_equal(sig, h.signatures(S))
