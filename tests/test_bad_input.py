"""Random bad input thrown at every public entry point: only TypeError/ValueError, never a crash.

A crash (segfault, abort) would kill the test process; any other exception type fails here.
"""
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hashlab
from hashlab import DWTAHash, LSHTables, MinHash, SimHash, WTAHash, default_params, hamming

OK = (TypeError, ValueError)
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.just([1, "a"]), st.just(()), st.just(object()),
)


@st.composite
def arrays(draw, max_dim=4):
    """Arrays of awkward dtypes, shapes and values (sometimes valid)."""
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.bool_,
                                  np.complex64, np.uint32, object]))
    ndim = draw(st.integers(0, 3))
    shape = tuple(draw(st.lists(st.integers(0, max_dim), min_size=ndim, max_size=ndim)))
    n = int(np.prod(shape)) if shape else 1
    if dtype is object:
        return np.empty(shape, dtype=object)
    vals = draw(st.lists(st.one_of(st.floats(-1e30, 1e30), st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -1.0])),
                         min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        return np.array(vals, dtype=np.float64).reshape(shape).astype(dtype) if n else np.zeros(shape, dtype)


@st.composite
def csrs(draw, max_dim=4):
    n = draw(st.integers(0, 3))
    m = draw(st.integers(1, max_dim + 2))
    density = draw(st.floats(0, 1))
    X = sp.random(n, m, density=density, format="csr", random_state=draw(st.integers(0, 9))).astype(np.float32)
    if X.nnz and draw(st.booleans()):
        X.data[draw(st.integers(0, X.nnz - 1))] = draw(st.sampled_from([np.nan, np.inf, 1.0]))
    if X.nnz and draw(st.booleans()):  # out-of-bounds column index, built without scipy's checks
        X.indices[draw(st.integers(0, X.nnz - 1))] = draw(st.sampled_from([-1, m, 10**6]))
    return X


inputs = st.one_of(arrays(), csrs(), scalars)


def call(f, *a, **kw):
    try:
        f(*a, **kw)
    except OK:
        pass


@SETTINGS
@given(dim=scalars | st.integers(-3, 40), k=scalars | st.integers(-3, 40), l=scalars | st.integers(-3, 70000),
       kind=st.sampled_from(["gaussian", "sparse", "hadamard", "nope", 3]))
def test_simhash_constructor(dim, k, l, kind):
    call(SimHash, dim, k, l, kind=kind)


@SETTINGS
@given(X=inputs, kind=st.sampled_from(["gaussian", "sparse", "hadamard"]))
def test_simhash_hash_and_bits(X, kind):
    h = SimHash(4, 5, 3, kind=kind, seed=1)
    call(h.hash, X)
    call(h.bits, X)


@SETTINGS
@given(dim=scalars | st.integers(-3, 40), k=scalars | st.integers(-3, 12), l=scalars | st.integers(-3, 100),
       bin_size=scalars | st.integers(-3, 300), cls=st.sampled_from([WTAHash, DWTAHash]))
def test_wta_constructor(dim, k, l, bin_size, cls):
    call(cls, dim, k, l, bin_size=bin_size)


@SETTINGS
@given(X=inputs, cls=st.sampled_from([WTAHash, DWTAHash]))
def test_wta_hash(X, cls):
    h = cls(4, 3, 4, bin_size=4, seed=0)
    call(h.hash, X)
    call(h.codes, X)


@SETTINGS
@given(k=scalars | st.integers(-3, 40), l=scalars | st.integers(-3, 100), S=inputs)
def test_minhash(k, l, S):
    call(MinHash, k, l)
    h = MinHash(2, 3)
    call(h.hash, S)
    call(h.signatures, S)


@SETTINGS
@given(ids=inputs, X=inputs, keys=inputs, mc=scalars | st.integers(-2, 10), maxc=scalars | st.integers(-2, 10),
       cap=scalars | st.integers(-2, 70000), policy=st.sampled_from(["fifo", "reservoir", "lifo", None]),
       rb=scalars | st.integers(-2, 40))
def test_tables(ids, X, keys, mc, maxc, cap, policy, rb):
    call(LSHTables, SimHash(4, 6, 3), bucket_capacity=cap, policy=policy, range_bits=rb)
    T = LSHTables(SimHash(4, 6, 3, seed=2), bucket_capacity=4)
    T.insert(np.arange(3), np.eye(3, 4, dtype=np.float32))
    for f, args in ((T.insert, (ids, X)), (T.insert_keys, (ids, keys)),
                    (T.query, (X, mc, maxc)), (T.query_keys, (keys, mc, maxc))):
        call(f, *args)
    # the index is still consistent: every original id is findable by its own vector
    for i in range(3):
        indptr, found, _ = T.query(np.eye(3, 4, dtype=np.float32)[i])
        assert i in found
    call(T.remove, ids)


@SETTINGS
@given(n=scalars | st.integers(-5, 10**6), dim=scalars | st.integers(-5, 1000),
       f=scalars | st.floats(-1, 2), family=st.sampled_from(["simhash", "dwta", "wta", "x"]))
def test_default_params(n, dim, f, family):
    call(default_params, n, dim, f, family=family)


@SETTINGS
@given(a=inputs, b=inputs)
def test_hamming(a, b):
    call(hamming, a, b)


@SETTINGS
@given(n=scalars)
def test_set_num_threads(n):
    before = hashlab.get_num_threads()
    try:
        call(hashlab.set_num_threads, n)
    finally:
        hashlab.set_num_threads(before)


@SETTINGS
@given(X=inputs, Y=st.one_of(inputs, st.just([[0]] * 3), st.just([[5]] * 3), st.just([[]] * 3)))
def test_sparse_mlp_fit_and_predict(X, Y):
    m = SparseMLP_small()
    call(m.fit, X, Y, verbose=False)
    call(m.predict_topk, X)


def SparseMLP_small():
    return hashlab.SparseMLP(6, 5, hidden=(4,), target_active=3, seed=0)


def test_kernels_reject_inconsistent_raw_arrays():
    """The C++ core checks what the Python layer normally guarantees."""
    from hashlab import _C
    with pytest.raises(OK):
        _C.bits_to_keys(np.zeros((2, 1), np.uint64), 40, 3)
    with pytest.raises(OK):
        _C.simhash_dense_bits(np.zeros((2, 3), np.float32), np.zeros((3, 10), np.float32), 64)
    with pytest.raises(OK):
        _C.gather_scores(np.zeros((1, 4), np.float32), np.zeros((3, 4), np.float32), None,
                         np.array([0, 1], np.int64), np.array([7], np.int32))
