"""hashlab.csr.times_dense against scipy's CSR x dense product, bit for bit (the same summation order),
and hashlab.csr.row_norms against numpy's norms in float64."""
import numpy as np
import pytest
import scipy.sparse as sp

from hashlab.csr import row_norms, times_dense


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_equals_scipy_bit_for_bit(index_dtype):
    rng = np.random.default_rng(0)
    X = sp.random(300, 500, density=0.03, format="csr", dtype=np.float32, random_state=1)
    X.indices, X.indptr = X.indices.astype(index_dtype), X.indptr.astype(index_dtype)
    W = rng.standard_normal((500, 40), dtype=np.float32)
    np.testing.assert_array_equal(times_dense(X, W), np.asarray(X @ W))


def test_empty_rows_duplicates_and_unsorted_columns():
    # row 0 empty, row 1 holds column 3 twice and its columns out of order: scipy sums them in turn
    X = sp.csr_matrix((np.array([0.5, 2.0, -1.25, 3.0], np.float32), np.array([3, 1, 3, 0]), np.array([0, 0, 3, 4])),
                      shape=(3, 4))
    W = np.arange(8, dtype=np.float32).reshape(4, 2) / 3
    got = times_dense(X, W)
    want, mag = np.zeros((3, 2), np.float64), np.zeros((3, 2), np.float64)
    w64 = W.astype(np.float64)
    want[1], mag[1] = 0.5 * w64[3] + 2.0 * w64[1] - 1.25 * w64[3], 0.5 * w64[3] + 2.0 * w64[1] + 1.25 * w64[3]
    want[2], mag[2] = 3.0 * w64[0], 3.0 * w64[0]
    # three float32 products and sums (and W's rounding): within 5 u of the sum of magnitudes
    assert (np.abs(got - want) <= 5 * 2.0 ** -24 * mag).all()
    np.testing.assert_array_equal(got, np.asarray(X @ W))
    assert times_dense(sp.csr_matrix((0, 4), dtype=np.float32), W).shape == (0, 2)


def test_row_norms_in_float64():
    X = sp.random(50, 30, density=0.2, format="csr", dtype=np.float32, random_state=2)
    X.data *= np.float32(1e20)  # float32 squares would overflow
    want = np.linalg.norm(X.toarray().astype(np.float64), axis=1)
    np.testing.assert_allclose(row_norms(X), want, rtol=1e-12)
    assert row_norms(sp.csr_matrix((2, 3), dtype=np.float32)).tolist() == [0.0, 0.0]
