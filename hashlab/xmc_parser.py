"""The XMC text parser: a numba kernel over the raw bytes of whole lines.

One pass, no Python object per token; hashlab.xmc_format.load_xmc runs it on chunks of
the file in parallel while the next chunks are read. A value becomes float32 through
float64, as ``np.float32(float(token))`` does; the float64 is correctly rounded (so the
result is identical) for decimals of up to 15 significant digits and a decimal exponent
within +-22, which covers the ``%.9g`` text save_xmc writes; longer or more extreme
decimals may be off by a float64 rounding step, which changes the float32 only for
values within ~1e-16 (relative) of a float32 rounding tie.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .csr import _canonicalize

# error codes returned by the kernels (formatted in _raise_parse_error)
_E_FEATURE, _E_NEG_FEATURE, _E_BIG_FEATURE = 1, 2, 3
_E_LABELS, _E_NEG_LABEL, _E_BIG_LABEL = 4, 5, 6
_E_NONFINITE, _E_VALUE = 7, 8

# a chunk's state vector: rows, nnz, labels, max feature, max label, error code,
# error byte position, error value (-1: too many digits to say)
_S_ROW, _S_NNZ, _S_NLAB, _S_MAXF, _S_MAXL, _S_ERR, _S_POS, _S_VAL = range(8)

_POW10 = np.array([10.0 ** i for i in range(23)], dtype=np.float64)  # exact in float64


@njit(cache=True, inline="always")
def _is_ws(c):
    return c == 32 or c == 9 or c == 13 or c == 11 or c == 12


@njit(cache=True)
def _slow_mantissa(buf, a, b):
    """(m, e10) of the digits in buf[a:b] (an optional '.' among them), keeping the first
    18 significant digits: value = m * 10**e10 up to a relative 1e-18."""
    m = 0
    e10 = 0
    frac = False
    for p in range(a, b):
        c = buf[p]
        if c == 46:
            frac = True
            continue
        if m < 100_000_000_000_000_000:
            m = m * 10 + (np.int64(c) - 48)
            if frac:
                e10 -= 1
        elif not frac:
            e10 += 1
    return m, e10


@njit(cache=True, nogil=True)
def _parse_chunk(buf, feat_limit, lab_limit, pow10):
    """Parse whole lines: buf must end with a newline (every line does).

    Returns (st, x_rowend, x_ind, x_val, y_rowend, y_ind): x_rowend[r] / y_rowend[r] are
    the running feature / label counts after row r. On bad input, st[_S_ERR] holds the
    error code, st[_S_ROW] the chunk-local row, st[_S_POS] the token's byte offset.
    Rows are left as written (see _canonicalize).
    """
    n = buf.shape[0]
    rows = 0
    colons = 0
    commas = 0
    for i in range(n):
        c = buf[i]
        rows += c == 10
        colons += c == 58
        commas += c == 44
    st = np.zeros(8, dtype=np.int64)
    x_rowend = np.empty(rows, dtype=np.int64)
    y_rowend = np.empty(rows, dtype=np.int64)
    x_ind = np.empty(colons, dtype=np.int32)   # every feature holds one ':'
    x_val = np.empty(colons, dtype=np.float32)
    y_ind = np.empty(commas + rows, dtype=np.int32)
    row = 0
    nnz = 0
    nlab = 0
    maxf = -1
    maxl = -1
    pos = 0
    while pos < n:
        tok = pos
        # ---- label field: the first token, unless it holds a ':' (then it is a feature)
        c = buf[pos]
        if c != 10 and not _is_ws(c):
            k = pos
            colon = False
            while True:
                c = buf[k]
                if c == 10 or _is_ws(c):
                    break
                colon |= c == 58
                k += 1
            if not colon:
                p = pos
                while True:
                    if buf[p] == 45:
                        st[_S_ERR] = _E_NEG_LABEL
                        break
                    v = 0
                    p0 = p
                    while p < k:
                        d = np.int64(buf[p]) - 48
                        if d < 0 or d > 9:
                            break
                        v = v * 10 + d
                        p += 1
                    if p == p0 or (p < k and buf[p] != 44):
                        st[_S_ERR] = _E_LABELS
                        break
                    if p - p0 > 10 or v >= lab_limit:
                        st[_S_ERR] = _E_BIG_LABEL
                        st[_S_VAL] = v if p - p0 <= 10 else -1
                        break
                    y_ind[nlab] = v
                    nlab += 1
                    if v > maxl:
                        maxl = v
                    if p == k:
                        break
                    p += 1  # the comma; a trailing comma fails on the next pass
                if st[_S_ERR] != 0:
                    st[_S_POS] = pos
                    break
                pos = k
        # ---- features "index:value", separated by blanks
        while True:
            c = buf[pos]
            while _is_ws(c):
                pos += 1
                c = buf[pos]
            if c == 10:
                break
            tok = pos
            if c == 45:
                st[_S_ERR] = _E_NEG_FEATURE
                break
            f = 0
            while True:
                d = np.int64(buf[pos]) - 48
                if d < 0 or d > 9:
                    break
                f = f * 10 + d
                pos += 1
            nd = pos - tok
            if nd == 0 or buf[pos] != 58:
                st[_S_ERR] = _E_FEATURE
                break
            if nd > 10 or f >= feat_limit:
                st[_S_ERR] = _E_BIG_FEATURE
                st[_S_VAL] = f if nd <= 10 else -1
                break
            pos += 1
            # value: [+-] digits [. digits] [(e|E) [+-] digits]
            c = buf[pos]
            neg = c == 45
            if neg or c == 43:
                pos += 1
            p0 = pos
            m = 0
            while True:
                d = np.int64(buf[pos]) - 48
                if d < 0 or d > 9:
                    break
                m = m * 10 + d
                pos += 1
            nd = pos - p0
            e10 = 0
            if buf[pos] == 46:
                pos += 1
                p1 = pos
                while True:
                    d = np.int64(buf[pos]) - 48
                    if d < 0 or d > 9:
                        break
                    m = m * 10 + d
                    pos += 1
                nd += pos - p1
                e10 = p1 - pos
            if nd == 0:
                c = buf[pos]  # nan, inf, infinity in any case
                st[_S_ERR] = _E_NONFINITE if (c == 110 or c == 78 or c == 105 or c == 73) else _E_VALUE
                break
            if nd > 18:  # m overflowed: redo keeping 18 significant digits
                m, e10 = _slow_mantissa(buf, p0, pos)
            c = buf[pos]
            if c == 101 or c == 69:
                pos += 1
                c = buf[pos]
                eneg = c == 45
                if eneg or c == 43:
                    pos += 1
                ev = 0
                p1 = pos
                while True:
                    d = np.int64(buf[pos]) - 48
                    if d < 0 or d > 9:
                        break
                    if ev < 100_000:
                        ev = ev * 10 + d
                    pos += 1
                if pos == p1:
                    st[_S_ERR] = _E_VALUE
                    break
                e10 += -ev if eneg else ev
            c = buf[pos]
            if c != 10 and not _is_ws(c):
                st[_S_ERR] = _E_VALUE
                break
            if m == 0:
                val = 0.0
            elif e10 >= 0:
                if e10 <= 22:
                    val = m * pow10[e10]
                elif e10 > 400:
                    val = np.inf
                else:
                    val = (m * pow10[22]) * 10.0 ** (e10 - 22)
            else:
                if e10 >= -22:
                    val = m / pow10[-e10]
                elif e10 < -400:
                    val = 0.0
                else:
                    val = (m / pow10[22]) / 10.0 ** (-e10 - 22)
            v32 = np.float32(-val if neg else val)
            if not np.isfinite(v32):
                st[_S_ERR] = _E_NONFINITE
                break
            x_ind[nnz] = f
            x_val[nnz] = v32
            nnz += 1
            if f > maxf:
                maxf = f
        if st[_S_ERR] != 0:
            st[_S_POS] = tok
            break
        x_rowend[row] = nnz
        y_rowend[row] = nlab
        row += 1
        pos += 1  # the newline
    st[_S_ROW] = row
    st[_S_NNZ] = nnz
    st[_S_NLAB] = nlab
    st[_S_MAXF] = maxf
    st[_S_MAXL] = maxl
    return st, x_rowend, x_ind, x_val, y_rowend, y_ind


def _parse_and_sort(buf, feat_limit, lab_limit):
    """Worker: parse one chunk and canonicalise its rows. Returns a dict of its arrays.

    The first problem in file order wins: a feature repeated in a row before a
    malformed line is reported rather than the malformed line.
    """
    st, x_rowend, x_ind, x_val, y_rowend, y_ind = _parse_chunk(buf, feat_limit, lab_limit, _POW10)
    out = dict(st=st, dup_row=-1)
    rows = int(st[_S_ROW])
    x_indptr = np.zeros(rows + 1, dtype=np.int64)
    x_indptr[1:] = x_rowend[:rows]
    y_indptr = np.zeros(rows + 1, dtype=np.int64)
    y_indptr[1:] = y_rowend[:rows]
    x_ind = x_ind[:int(x_indptr[-1])]
    x_val = x_val[:int(x_indptr[-1])]
    y_new = np.empty(rows + 1, dtype=np.int64)
    out["dup_row"] = _canonicalize(x_indptr, x_ind, x_val, y_indptr, y_ind, y_new)
    if out["dup_row"] >= 0:
        st[_S_ERR] = 0
    elif st[_S_ERR]:
        out["token"] = _token_at(buf, int(st[_S_POS]))
        return out
    out.update(x_indptr=x_indptr, x_ind=x_ind, x_val=x_val, y_indptr=y_new,
               y_ind=y_ind[:int(y_new[-1])])
    return out


@njit(cache=True)
def _find_newline(buf):
    for i in range(buf.shape[0]):
        if buf[i] == 10:
            return i
    return buf.shape[0]


@njit(cache=True)
def _rfind_newline(buf, end):
    for i in range(end - 1, -1, -1):
        if buf[i] == 10:
            return i
    return -1


def _token_at(buf, pos):
    end = pos
    n = len(buf)
    while end < n and end - pos < 80 and buf[end] not in (32, 9, 10, 11, 12, 13):
        end += 1
    tok = bytes(buf[pos:end]).decode("utf-8", "replace")
    return tok + ("..." if end - pos >= 80 else "")


def _raise_parse_error(path, tok, st, line, feat_src, lab_src):
    code = int(st[_S_ERR])
    val = int(st[_S_VAL])
    if code == _E_FEATURE:
        msg = f"expected feature 'index:value', got '{tok}'"
    elif code == _E_NEG_FEATURE:
        msg = f"expected a non-negative feature index, got '{tok}'"
    elif code == _E_BIG_FEATURE:
        what = f"feature index {val}" if val >= 0 else "feature index"
        msg = f"{what} out of range: expected < {feat_src}, got '{tok}'"
    elif code == _E_LABELS:
        msg = f"expected labels 'l1,l2,...' (non-negative integers) or a feature 'index:value', got '{tok}'"
    elif code == _E_NEG_LABEL:
        msg = f"expected non-negative label indices, got '{tok}'"
    elif code == _E_BIG_LABEL:
        what = f"label index {val}" if val >= 0 else "label index"
        msg = f"{what} out of range: expected < {lab_src}, got '{tok}'"
    elif code == _E_NONFINITE:
        msg = f"expected a finite float32 value, got '{tok}'"
    elif code == _E_VALUE:
        msg = f"expected a number after ':', got '{tok}'"
    else:  # pragma: no cover - kernel and formatter out of sync
        msg = f"parse error {code} at '{tok}'"
    raise ValueError(f"{path}: line {line}: {msg}")
