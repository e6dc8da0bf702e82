"""Extreme-classification (XMC) data in one namespace: file format, synthetic sets, labels.

    load_xmc(path, n_features=None, n_labels=None, verbose=True) -> (X, Y)     hashlab.xmc_format
    save_xmc(path, X, Y, n_labels=None)                                      hashlab.xmc_format
    make_xmc(n_train, n_test, n_features, n_labels, seed=0, ...) -> (X_train, Y_train, X_test, Y_test)
    make_preset(name, scale=1.0, seed=0, **overrides) -> same 4-tuple       hashlab.synthetic
    labels_to_csr(Y, n_labels) -> (n, n_labels) float32 CSR indicator        hashlab.csr

X is a scipy.sparse.csr_matrix (n, D) float32 and Y a csr_matrix (n, L) float32 with
values 1.0; both canonical (sorted, duplicate-free column ids per row).

This module re-exports the pieces (including the private helpers older code imports from
here). Assigning one of its names assigns it in the modules that use it too, as when
everything lived here: ``monkeypatch.setattr(hashlab.datasets, "_CHUNK", 64)`` still
changes the chunk size load_xmc reads.
"""
from __future__ import annotations

import sys

from . import csr, synthetic, xmc_format, xmc_parser
from ._forwarding import ForwardingModule
from .csr import _INT32_MAX, _canonicalize, _csr, _num_threads, labels_to_csr  # noqa: F401
from .synthetic import (PRESETS, _alias, _build_alias, _compact, _draw, _generate_rows, _isort,  # noqa: F401
                        _isort2, _rand, _rand64, make_preset, make_xmc)
from .xmc_format import (_CHUNK, _PROGRESS_BYTES, _UMASK, _chunks, _concat, _concat_indptr,  # noqa: F401
                         _format_rows, _parse_header, _progress, load_xmc, save_xmc)
from .xmc_parser import (_E_BIG_FEATURE, _E_BIG_LABEL, _E_FEATURE, _E_LABELS, _E_NEG_FEATURE,  # noqa: F401
                         _E_NEG_LABEL, _E_NONFINITE, _E_VALUE, _POW10, _S_ERR, _S_MAXF, _S_MAXL, _S_NLAB,
                         _S_NNZ, _S_POS, _S_ROW, _S_VAL, _find_newline, _is_ws, _parse_and_sort, _parse_chunk,
                         _raise_parse_error, _rfind_newline, _slow_mantissa, _token_at)

__all__ = ["load_xmc", "save_xmc", "make_xmc", "make_preset", "labels_to_csr", "PRESETS"]

_PARTS = (csr, xmc_parser, xmc_format, synthetic)

sys.modules[__name__].__class__ = ForwardingModule
