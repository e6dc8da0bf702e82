"""SparseMLP's inputs: features X as canonical float32 CSR, labels Y as a CSR indicator (checked)."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def _as_features(X, input_dim):
    if not sp.issparse(X):
        raise TypeError(f"X: expected a scipy.sparse CSR matrix (n, {input_dim}), got {type(X).__name__}")
    X = X.tocsr()
    if X.shape[1] != input_dim:
        raise ValueError(f"X: expected {input_dim} columns (input_dim), got {X.shape[1]}")
    if X.dtype.kind not in "fiub":
        raise TypeError(f"X: expected a real dtype, got {X.dtype}")
    if X.dtype != np.float32:
        X = X.astype(np.float32)
    if X.nnz and not np.isfinite(X.data).all():
        pos = int(np.argmax(~np.isfinite(X.data)))
        row = int(np.searchsorted(X.indptr, pos, side="right") - 1)
        raise ValueError(f"X: expected finite values, got NaN or inf in row {row}")
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


def _as_labels(Y, n, output_dim):
    """Labels as a CSR indicator (n, output_dim) with sorted unique ids per row."""
    if sp.issparse(Y):
        Y = Y.tocsr()
        if Y.shape != (n, output_dim):
            raise ValueError(f"Y: expected shape ({n}, {output_dim}), got {Y.shape}")
        Y = Y.copy()
        Y.sum_duplicates()
        Y.eliminate_zeros()
    elif isinstance(Y, (list, tuple)):
        if len(Y) != n:
            raise ValueError(f"Y: expected {n} label lists (one per row of X), got {len(Y)}")
        lens = np.fromiter((len(r) for r in Y), dtype=np.int64, count=n)
        flat = np.fromiter((int(v) for r in Y for v in r), dtype=np.int64, count=int(lens.sum()))
        if flat.size and (flat.min() < 0 or flat.max() >= output_dim):
            bad = int(np.flatnonzero((flat < 0) | (flat >= output_dim))[0])
            row = int(np.searchsorted(np.cumsum(lens), bad, side="right"))
            raise ValueError(f"Y: expected labels in [0, {output_dim}), got {flat[bad]} in row {row}")
        indptr = np.concatenate([[0], np.cumsum(lens)])
        Y = sp.csr_matrix((np.ones(flat.size, np.float32), flat, indptr), shape=(n, output_dim))
        Y.sum_duplicates()
    else:
        raise TypeError(f"Y: expected a scipy.sparse indicator matrix or a list of label lists, got {type(Y).__name__}")
    empty = np.flatnonzero(np.diff(Y.indptr) == 0)
    if empty.size:
        raise ValueError(f"Y: expected at least one label per row, row {int(empty[0])} has none")
    return Y
