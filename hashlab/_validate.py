"""Argument checks shared by the public API.

Public Python validates, the core computes. Wrong type or dtype -> TypeError;
wrong shape, size, non-finite values, out-of-range parameters -> ValueError
phrased "expected X, got Y". Torch CPU tensors are accepted zero-copy.
"""
from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp

INT32_MAX = np.iinfo(np.int32).max


def _from_torch(x):
    """A torch CPU tensor as a numpy array without copying; anything else unchanged."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        if getattr(x, "is_sparse", False) or x.layout.__repr__() != "torch.strided":
            raise TypeError(f"expected a dense (strided) torch tensor, got layout {x.layout}")
        if x.device.type != "cpu":
            raise TypeError(f"expected a CPU tensor, got one on {x.device}")
        return x.detach().numpy()
    return x


def check_int(value, name, lo=None, hi=None):
    """An integer parameter within [lo, hi]; returns it as int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ValueError(f"{name}: expected an integer in [{lo_s}, {hi_s}], got {value}")
    return value


def check_float(value, name, lo=None, hi=None, lo_open=False, hi_open=False):
    """A finite real parameter within [lo, hi] (lo_open / hi_open: that end excluded)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    bad = not np.isfinite(value)
    if lo is not None:
        bad |= value <= lo if lo_open else value < lo
    if hi is not None:
        bad |= value >= hi if hi_open else value > hi
    if bad:
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ValueError(f"{name}: expected a finite number in {left}{lo}, {hi}{right}, got {value}")
    return value


def check_choice(value, name, choices):
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a string, got {type(value).__name__}")
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _float_array(x, name):
    x = _from_torch(x)
    if sp.issparse(x):
        raise TypeError(f"{name}: expected a dense array, got a scipy.sparse matrix")
    if not isinstance(x, np.ndarray):
        if isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a floating dtype (float32), got {x.dtype}")
    return x


def as_matrix(x, name, dim=None, allow_1d=True, finite=True):
    """A dense (n, dim) C-contiguous float32 array.

    Accepts numpy arrays and torch CPU tensors of any real floating dtype (cast to
    float32; a float32 C-contiguous input is used without copying). A 1-D input is
    one row when allow_1d. Returns (array, was_1d).
    """
    x = _float_array(x, name)
    was_1d = x.ndim == 1
    if was_1d and allow_1d:
        x = x[None, :]
    if x.ndim != 2:
        want = "(n, dim)" if dim is None else f"(n, {dim})"
        raise ValueError(f"{name}: expected a 2-D array of shape {want}, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name}: expected {dim} columns (the hasher's dim), got {x.shape[1]}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if finite and x.size and not np.isfinite(x).all():
        bad = int(np.argwhere(~np.isfinite(x))[0][0])
        raise ValueError(f"{name}: expected finite values, got NaN or inf in row {bad}")
    return x, was_1d


def as_csr(x, name, dim=None, finite=True):
    """A scipy CSR matrix as (indptr int64, indices int32, data float32, n_rows, n_cols).

    Column indices must lie in [0, dim) when dim is given (else in [0, n_cols)).
    """
    if not sp.issparse(x):
        raise TypeError(f"{name}: expected a scipy.sparse matrix, got {type(x).__name__}")
    if x.format != "csr":
        x = x.tocsr()
    if x.dtype.kind not in "fiub":
        raise TypeError(f"{name}: expected a real dtype, got {x.dtype}")
    n, ncols = x.shape
    if dim is not None and ncols != dim:
        raise ValueError(f"{name}: expected {dim} columns (the hasher's dim), got {ncols}")
    indptr = np.ascontiguousarray(x.indptr, dtype=np.int64)
    indices = x.indices
    if indptr.shape != (n + 1,) or indptr[0] != 0 or np.any(np.diff(indptr) < 0) \
            or indptr[-1] != indices.shape[0] or x.data.shape != indices.shape:
        raise ValueError(f"{name}: malformed CSR structure (indptr must be non-decreasing from 0 to nnz)")
    if indices.size:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= ncols:
            raise ValueError(f"{name}: expected column indices in [0, {ncols}), got {lo if lo < 0 else hi}")
    if not x.has_canonical_format:
        # sorted, duplicate-free columns: kernels then see each row in one canonical order
        x = x.copy()
        x.sum_duplicates()
        indptr = np.ascontiguousarray(x.indptr, dtype=np.int64)
        indices = x.indices
    indices = np.ascontiguousarray(indices, dtype=np.int32)
    data = np.ascontiguousarray(x.data, dtype=np.float32)
    if finite and data.size and not np.isfinite(data).all():
        pos = int(np.argwhere(~np.isfinite(data))[0][0])
        row = int(np.searchsorted(indptr, pos, side="right") - 1)
        raise ValueError(f"{name}: expected finite values, got NaN or inf in row {row}")
    return indptr, indices, data, n, ncols


def as_ids(ids, name="ids", n=None, unique=True):
    """Item ids as a C-contiguous int32 array in [0, 2^31 - 1)."""
    ids = _from_torch(ids)
    if isinstance(ids, (list, tuple, range)):
        ids = np.asarray(ids) if len(ids) else np.zeros(0, dtype=np.int64)
    if not isinstance(ids, np.ndarray):
        raise TypeError(f"{name}: expected an integer array, got {type(ids).__name__}")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype, got {ids.dtype}")
    if ids.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {ids.shape}")
    if n is not None and ids.shape[0] != n:
        raise ValueError(f"{name}: expected {n} ids (one per row), got {ids.shape[0]}")
    if ids.size:
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= INT32_MAX:
            raise ValueError(f"{name}: expected ids in [0, {INT32_MAX - 1}], got {lo if lo < 0 else hi}")
        if unique and np.unique(ids).size != ids.size:
            raise ValueError(f"{name}: expected unique ids, got duplicates")
    return np.ascontiguousarray(ids, dtype=np.int32)


def as_keys(keys, name, l):
    """Precomputed table keys: a (n, l) C-contiguous uint32 array."""
    keys = _from_torch(keys)
    if not isinstance(keys, np.ndarray):
        raise TypeError(f"{name}: expected a numpy uint32 array, got {type(keys).__name__}")
    if keys.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an unsigned integer dtype (uint32), got {keys.dtype}")
    if keys.ndim != 2 or keys.shape[1] != l:
        raise ValueError(f"{name}: expected shape (n, {l}), got {keys.shape}")
    if keys.dtype != np.uint32 and keys.size and (keys.min() < 0 or keys.max() > 0xFFFFFFFF):
        raise ValueError(f"{name}: expected values in [0, 2^32), got out-of-range keys")
    return np.ascontiguousarray(keys, dtype=np.uint32)
