"""Extreme-classification (XMC) data: the repository's text format, and synthetic sets.

Format (the Extreme Classification Repository; also libsvm multi-label)::

    N D L                        <- header: rows, features, labels (XMC format only)
    l1,l2,... f:v f:v ...        <- one row per line; labels comma-separated, 0-based
     f:v f:v                     <- a row without labels: empty label field
    l1,l2                        <- a row without features

Feature ids and label ids are 0-based; a value is any decimal float. The libsvm
multi-label variant has no header (it is recognised when the first line is not three
integers); D and L are then max id + 1 unless given.

Public functions

    load_xmc(path, n_features=None, n_labels=None, verbose=True) -> (X, Y)
    save_xmc(path, X, Y, n_labels=None)
    make_xmc(n_train, n_test, n_features, n_labels, seed=0, ...) -> (X_train, Y_train, X_test, Y_test)
    make_preset(name, scale=1.0, seed=0, **overrides) -> same 4-tuple; PRESETS lists the names
    labels_to_csr(Y, n_labels) -> (n, n_labels) float32 CSR indicator

X is a scipy.sparse.csr_matrix (n, D) float32 and Y a csr_matrix (n, L) float32 with
values 1.0; both canonical (sorted, duplicate-free column ids per row).

The parser is a numba kernel over the raw bytes (one pass, no Python object per
token), run on chunks of the file in parallel while the next chunks are read. A value
becomes float32 through float64, as ``np.float32(float(token))`` does; the float64 is
correctly rounded (so the result is identical) for decimals of up to 15 significant
digits and a decimal exponent within +-22, which covers the ``%.9g`` text save_xmc
writes; longer or more extreme decimals may be off by a float64 rounding step, which
changes the float32 only for values within ~1e-16 (relative) of a float32 rounding tie.
"""
from __future__ import annotations

import gzip
import io
import itertools
import math
import numbers
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from numba import njit

from ._validate import check_float, check_int

__all__ = ["load_xmc", "save_xmc", "make_xmc", "make_preset", "labels_to_csr", "PRESETS"]

_INT32_MAX = int(np.iinfo(np.int32).max)
_PROGRESS_BYTES = 50 * 1024 * 1024   # files above this show a tqdm bar when verbose
_CHUNK = 8 * 1024 * 1024             # bytes per read / parse step
_UMASK = os.umask(0o022)             # read once (os.umask can only be read by setting it)
os.umask(_UMASK)

# ---------------------------------------------------------------------------
# parser kernels

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


@njit(cache=True, nogil=True)
def _canonicalize(x_indptr, x_ind, x_val, y_indptr, y_ind, y_out_indptr):
    """Sort each row's features (a repeated feature id is an error: returns its row, else -1)
    and sort + deduplicate each row's labels in place (y_out_indptr gets the new offsets)."""
    n = x_indptr.shape[0] - 1
    for r in range(n):
        a = x_indptr[r]
        b = x_indptr[r + 1]
        ok = True
        for j in range(a + 1, b):
            if x_ind[j] <= x_ind[j - 1]:
                ok = False
                break
        if not ok:
            order = np.argsort(x_ind[a:b], kind="mergesort")
            xi = x_ind[a:b][order]
            xv = x_val[a:b][order]
            for j in range(b - a):
                x_ind[a + j] = xi[j]
                x_val[a + j] = xv[j]
            for j in range(a + 1, b):
                if x_ind[j] == x_ind[j - 1]:
                    return r
    w = 0
    y_out_indptr[0] = 0
    for r in range(n):
        a = y_indptr[r]
        b = y_indptr[r + 1]
        ok = True
        for j in range(a + 1, b):
            if y_ind[j] <= y_ind[j - 1]:
                ok = False
                break
        if not ok:
            y_ind[a:b] = np.sort(y_ind[a:b])
        for j in range(a, b):
            if j == a or y_ind[j] != y_ind[j - 1]:
                y_ind[w] = y_ind[j]
                w += 1
        y_out_indptr[r + 1] = w
    return -1


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


# ---------------------------------------------------------------------------
# load / save


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


def _num_threads():
    try:
        from . import _C
        return max(1, int(_C.get_num_threads()))
    except Exception:  # pragma: no cover - extension unavailable
        return max(1, os.cpu_count() or 1)


def _chunks(path, chunk_bytes):
    """Yield (array, n_raw_bytes_consumed): whole lines of the (decompressed) file, each
    chunk a uint8 array ending with a newline (one is added after an unterminated last
    line); the first chunk starts with the first line."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
        raw.seek(0)
        src = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
        try:
            carry = b""
            last_tell = 0
            while True:
                buf = np.empty(len(carry) + chunk_bytes + 1, dtype=np.uint8)
                buf[:len(carry)] = np.frombuffer(carry, dtype=np.uint8)
                view = memoryview(buf)
                got = len(carry)
                while got < len(carry) + chunk_bytes:
                    k = src.readinto(view[got:len(carry) + chunk_bytes])
                    if not k:
                        break
                    got += k
                del view
                eof = got < len(carry) + chunk_bytes
                tell = raw.tell()
                used, last_tell = tell - last_tell, tell
                if eof:
                    if got == 0:
                        return
                    if buf[got - 1] != 10:
                        buf[got] = 10
                        got += 1
                    yield buf[:got], used
                    return
                nl = _rfind_newline(buf, got)
                if nl < 0:  # a line longer than the chunk: grow
                    carry = buf[:got].tobytes()
                    chunk_bytes *= 2
                    if used:
                        yield None, used
                    continue
                carry = buf[nl + 1:got].tobytes()
                yield buf[:nl + 1], used
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            if gz:
                raise ValueError(f"{path}: not a valid gzip file ({e})") from None
            raise
        finally:
            if gz:
                src.close()


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


def _parse_header(first):
    """(N, D, L) if the first line is a header of three non-negative integers, else None."""
    parts = first.split()
    if len(parts) != 3 or not all(p.isdigit() and p.isascii() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def load_xmc(path, n_features=None, n_labels=None, verbose=True):
    """Read an XMC-repository or libsvm multi-label text file (optionally gzip-compressed).

    Parameters
    ----------
    path : str or os.PathLike
        The file. gzip compression is detected from the content (any name).
    n_features, n_labels : int, optional
        The widths D and L of X and Y. They override the header's D and L (e.g. to give a
        train and a test file the same width); without them, the header's, or for a file
        without header, max id + 1. Every id in the file must be below them.
    verbose : bool
        Show a tqdm bar for files over 50 MB.

    Returns
    -------
    X : scipy.sparse.csr_matrix, shape (n, D), float32
        Features, canonical (sorted unique column ids per row; explicit zeros kept).
    Y : scipy.sparse.csr_matrix, shape (n, L), float32
        Label indicator: 1.0 for each (row, label) listed (repeated labels count once).

    Every line is a row; a blank line is a row without labels and features, except blank
    lines at the end of the file beyond the header's row count (or, without a header, all
    blank lines at the end), which are ignored. Lines may end with '\\r\\n'.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Malformed content, with the 1-based line number: a token that is not
        'index:value', a bad label list, negative ids, ids >= D or L, NaN/inf values
        (also overflowing float32), a feature repeated in a row, or a header row count that
        disagrees with the file ("header says 1000 rows, file has 999").

    Chunks of the file are parsed in parallel (hashlab.get_num_threads() threads) while
    the next chunks are read.
    """
    path = os.fspath(path)
    if n_features is not None:
        n_features = check_int(n_features, "n_features", 0, _INT32_MAX - 1)
    if n_labels is not None:
        n_labels = check_int(n_labels, "n_labels", 0, _INT32_MAX - 1)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"expected a file, got a directory: {path!r}")
    size = os.path.getsize(path)
    bar = _progress(size, f"loading {os.path.basename(path)}", verbose and size > _PROGRESS_BYTES)
    header = None
    ctx = dict(line=1, feat_src=f"{_INT32_MAX}", lab_src=f"{_INT32_MAX}")  # line: next row's line number
    results, pending = [], []

    def check(res):
        """Raise the chunk's first problem (chunks are checked in file order)."""
        st = res["st"]
        if st[_S_ERR]:
            _raise_parse_error(path, res["token"], st, ctx["line"] + int(st[_S_ROW]),
                               ctx["feat_src"], ctx["lab_src"])
        if res["dup_row"] >= 0:
            r = res["dup_row"]
            a, b = res["x_indptr"][r], res["x_indptr"][r + 1]
            row = res["x_ind"][a:b]
            dup = int(row[np.flatnonzero(row[1:] == row[:-1])[0]])
            raise ValueError(f"{path}: line {ctx['line'] + r}: expected each feature index "
                             f"once per row, got feature {dup} repeated")
        ctx["line"] += int(st[_S_ROW])
        results.append(res)

    workers = _num_threads()
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        first = True
        for buf, used in _chunks(path, _CHUNK):
            if bar is not None and used:
                bar.update(used)
            if buf is None:
                continue
            if first:
                first = False
                start = 3 if bytes(buf[:3]) == b"\xef\xbb\xbf" else 0  # UTF-8 byte order mark
                nl = start + int(_find_newline(buf[start:]))
                header = _parse_header(bytes(buf[start:nl]).decode("ascii", "replace"))
                if header is not None:
                    start = nl + 1
                    ctx["line"] = 2
                buf = buf[start:]
                feat_limit = n_features if n_features is not None else (header[1] if header else _INT32_MAX)
                lab_limit = n_labels if n_labels is not None else (header[2] if header else _INT32_MAX)
                if n_features is not None:
                    ctx["feat_src"] = f"n_features={n_features}"
                elif header:
                    ctx["feat_src"] = f"D={header[1]} from the header"
                if n_labels is not None:
                    ctx["lab_src"] = f"n_labels={n_labels}"
                elif header:
                    ctx["lab_src"] = f"L={header[2]} from the header"
                if buf.shape[0] == 0:
                    continue
            pending.append(pool.submit(_parse_and_sort, buf, feat_limit, lab_limit))
            del buf
            # check finished chunks in order (stop early on bad input); bound the chunks in flight
            while pending and (pending[0].done() or len(pending) > 2 * workers):
                check(pending.pop(0).result())
        while pending:
            check(pending.pop(0).result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()

    x_indptr = _concat_indptr([r["x_indptr"] for r in results])
    y_indptr = _concat_indptr([r["y_indptr"] for r in results])
    n = x_indptr.shape[0] - 1
    # blank lines at the end of the file are not rows (beyond the header's count)
    keep = n
    floor = header[0] if header else 0
    while keep > floor and x_indptr[keep] == x_indptr[keep - 1] and y_indptr[keep] == y_indptr[keep - 1]:
        keep -= 1
    if header is not None and keep != header[0]:
        blank = n - keep
        raise ValueError(f"{path}: header says {header[0]} rows, file has {keep}"
                         + (f" (and {blank} blank lines at the end)" if blank else ""))
    x_indptr = x_indptr[:keep + 1]
    y_indptr = y_indptr[:keep + 1]
    x_ind = _concat([r["x_ind"] for r in results], np.int32)
    x_val = _concat([r["x_val"] for r in results], np.float32)
    y_ind = _concat([r["y_ind"] for r in results], np.int32)
    maxf = max([int(r["st"][_S_MAXF]) for r in results], default=-1)
    maxl = max([int(r["st"][_S_MAXL]) for r in results], default=-1)
    del results
    D = n_features if n_features is not None else (header[1] if header else maxf + 1)
    L = n_labels if n_labels is not None else (header[2] if header else maxl + 1)
    return (_csr(x_indptr, x_ind, x_val, (keep, D)),
            _csr(y_indptr, y_ind, np.ones(y_ind.shape[0], dtype=np.float32), (keep, L)))


def _concat(parts, dtype):
    if not parts:
        return np.zeros(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _concat_indptr(parts):
    out = [np.zeros(1, dtype=np.int64)]
    base = 0
    for p in parts:
        out.append(p[1:] + base)
        base += int(p[-1])
    return np.concatenate(out)


def _csr(indptr, indices, data, shape):
    """A canonical CSR matrix with the smallest index dtype that fits."""
    idx_dtype = np.int32 if max(indptr[-1], shape[0], shape[1]) <= _INT32_MAX else np.int64
    m = sp.csr_matrix((data, indices.astype(idx_dtype, copy=False),
                       indptr.astype(idx_dtype, copy=False)), shape=shape, copy=False)
    m.has_sorted_indices = True
    m.has_canonical_format = True
    return m


def labels_to_csr(Y, n_labels):
    """Labels as a (n, n_labels) float32 CSR indicator matrix (values 1.0).

    Parameters
    ----------
    Y : list of label lists (each a list/tuple/array of ints in [0, n_labels)), or a
        scipy.sparse matrix of shape (n, n_labels) whose non-zero entries mark the labels.
    n_labels : int

    Returns
    -------
    scipy.sparse.csr_matrix, shape (n, n_labels), float32, canonical (sorted, unique
    labels per row; repeated labels in a list count once).

    Raises TypeError for non-integer labels, ValueError (naming the row) for negative
    labels or labels >= n_labels, and for a matrix with a different number of columns.
    """
    n_labels = check_int(n_labels, "n_labels", 0, _INT32_MAX - 1)
    if sp.issparse(Y):
        if Y.shape[1] != n_labels:
            raise ValueError(f"Y: expected {n_labels} columns (n_labels), got {Y.shape[1]}")
        Y = sp.csr_matrix(Y, copy=True)
        if Y.dtype.kind not in "fiub":
            raise TypeError(f"Y: expected a real dtype, got {Y.dtype}")
        if Y.nnz and not np.isfinite(Y.data).all():
            raise ValueError("Y: expected finite values, got NaN or inf")
        Y.sum_duplicates()
        Y.eliminate_zeros()
        return _csr(Y.indptr.astype(np.int64), Y.indices, np.ones(Y.nnz, dtype=np.float32), Y.shape)
    if isinstance(Y, np.ndarray) and Y.ndim == 2:
        raise TypeError("Y: expected a scipy.sparse indicator matrix or a list of label lists, "
                        "got a dense 2-D array (use scipy.sparse.csr_matrix(Y))")
    if isinstance(Y, (str, bytes)) or not hasattr(Y, "__len__") or not hasattr(Y, "__iter__"):
        raise TypeError(f"Y: expected a list of label lists or a scipy.sparse matrix, got {type(Y).__name__}")
    rows = list(Y)
    lengths = np.empty(len(rows), dtype=np.int64)
    for i, r in enumerate(rows):
        if isinstance(r, (str, bytes)) or not hasattr(r, "__len__"):
            raise TypeError(f"Y: row {i}: expected a list of integer labels, got {type(r).__name__}")
        lengths[i] = len(r)
    total = int(lengths.sum())
    flat = np.asarray(list(itertools.chain.from_iterable(rows))) if total else np.zeros(0, np.int64)
    if flat.ndim != 1 or flat.dtype.kind not in "iu":
        for i, r in enumerate(rows):
            for v in r:
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                    raise TypeError(f"Y: row {i}: expected integer labels, got {v!r} ({type(v).__name__})")
        raise TypeError(f"Y: expected integer labels, got dtype {flat.dtype}")  # pragma: no cover
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    if total:
        bad = np.flatnonzero((flat < 0) | (flat >= n_labels))
        if bad.size:
            j = int(bad[0])
            i = int(np.searchsorted(indptr, j, side="right") - 1)
            raise ValueError(f"Y: row {i}: expected labels in [0, {n_labels}), got {int(flat[j])}")
    ind = flat.astype(np.int32, copy=True)
    new = np.empty(len(rows) + 1, dtype=np.int64)
    empty_x = np.zeros(len(rows) + 1, dtype=np.int64)
    _canonicalize(empty_x, np.zeros(0, np.int32), np.zeros(0, np.float32), indptr, ind, new)
    ind = ind[:int(new[-1])]
    return _csr(new, ind, np.ones(ind.shape[0], dtype=np.float32), (len(rows), n_labels))


def _format_rows(x_indptr, x_ind, x_val, y_indptr, y_ind, r0, r1):
    """Text of rows r0..r1-1: 'l1,l2 f:v f:v\\n' with '%.9g' (float32-exact) values."""
    xa, xb = int(x_indptr[r0]), int(x_indptr[r1])
    ya, yb = int(y_indptr[r0]), int(y_indptr[r1])
    nx = np.diff(x_indptr[r0:r1 + 1])
    ny = np.diff(y_indptr[r0:r1 + 1])
    # per-row format strings, then one '%' over the interleaved arguments
    fmts = []
    for a, b in zip(ny.tolist(), nx.tolist()):
        fmts.append(",".join(["%d"] * a) + " %d:%.9g" * b if a else (" %d:%.9g" * b))
    fmt = "\n".join(fmts) + "\n"
    nargs = (yb - ya) + 2 * (xb - xa)
    args = np.empty(nargs, dtype=object)
    # argument offset of each row: its labels, then (index, value) pairs
    row_off = np.zeros(r1 - r0, dtype=np.int64)
    np.cumsum((ny + 2 * nx)[:-1], out=row_off[1:])
    rl = np.repeat(np.arange(r1 - r0), ny)
    lab_pos = row_off[rl] + (np.arange(yb - ya) - (y_indptr[r0:r1][rl] - ya))
    rx = np.repeat(np.arange(r1 - r0), nx)
    feat_pos = row_off[rx] + ny[rx] + 2 * (np.arange(xb - xa) - (x_indptr[r0:r1][rx] - xa))
    args[lab_pos] = y_ind[ya:yb].tolist()
    args[feat_pos] = x_ind[xa:xb].tolist()
    args[feat_pos + 1] = x_val[xa:xb].astype(np.float64).tolist()
    return fmt % tuple(args.tolist())


def save_xmc(path, X, Y, n_labels=None, compresslevel=6):
    """Write X and Y in the XMC repository format (header 'N D L', then one row per line).

    Parameters
    ----------
    path : str or os.PathLike
        Destination; gzip-compressed when it ends with '.gz'. Written to a temporary file in
        the same directory and renamed into place (atomic: readers never see half a file).
    X : scipy.sparse matrix, shape (n, D), real dtype (stored as float32)
        Duplicate entries are summed; explicit zeros are written (and read back).
    Y : scipy.sparse indicator matrix, shape (n, L), or a list of n label lists
    n_labels : int, optional
        L for a list Y (default max label + 1); must equal Y.shape[1] for a matrix.
    compresslevel : int in [0, 9]
        gzip level for a '.gz' path (1 is several times faster, files ~20% larger).

    Values are written with '%.9g', which round-trips float32 exactly, so
    ``load_xmc(path)`` returns X (as canonical float32 CSR) and Y as an indicator.
    """
    path = os.fspath(path)
    compresslevel = check_int(compresslevel, "compresslevel", 0, 9)
    if not sp.issparse(X):
        raise TypeError(f"X: expected a scipy.sparse matrix, got {type(X).__name__}")
    if X.dtype.kind not in "fiub":
        raise TypeError(f"X: expected a real dtype, got {X.dtype}")
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    X.sum_duplicates()
    if X.nnz and not np.isfinite(X.data).all():
        bad = int(np.flatnonzero(~np.isfinite(X.data))[0])
        raise ValueError(f"X: expected finite float32 values, got NaN or inf in row "
                         f"{int(np.searchsorted(X.indptr, bad, side='right') - 1)}")
    if not sp.issparse(Y):
        if n_labels is None:
            try:
                n_labels = 1 + max((max(r) for r in Y if len(r)), default=-1)
            except TypeError:
                raise TypeError(f"Y: expected a list of label lists or a scipy.sparse matrix, "
                                f"got {type(Y).__name__}") from None
            n_labels = int(n_labels)
    elif n_labels is None:
        n_labels = Y.shape[1]
    Y = labels_to_csr(Y, n_labels)
    if Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y: expected {X.shape[0]} rows (one per row of X), got {Y.shape[0]}")
    n, D = X.shape
    L = Y.shape[1]
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as raw:
            out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) \
                if path.endswith(".gz") else raw
            text = io.TextIOWrapper(out, encoding="ascii", newline="\n", write_through=False)
            text.write(f"{n} {D} {L}\n")
            xp, yp = X.indptr.astype(np.int64), Y.indptr.astype(np.int64)
            step = 20000
            for r0 in range(0, n, step):
                text.write(_format_rows(xp, X.indices, X.data, yp, Y.indices, r0, min(n, r0 + step)))
            text.flush()
            text.detach()
            if out is not raw:
                out.close()
            raw.flush()
            os.fsync(raw.fileno())
        try:  # a replaced file keeps its permissions; a new one gets the usual ones
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            mode = 0o666 & ~_UMASK
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# ---------------------------------------------------------------------------
# synthetic data


@njit(cache=True, inline="always")
def _rand64(state):
    """splitmix64 step on state[0]: 64 random bits."""
    state[0] += np.uint64(0x9E3779B97F4A7C15)
    z = state[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _rand(state):
    """A float in [0, 1) (53 random bits)."""
    return np.float64(_rand64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True)
def _build_alias(weight, ids, seg_start, table):
    """Walker/Vose alias tables, one per segment [seg_start[i], seg_start[i+1]) of weight.

    table[j] = (threshold, ids[j], ids[alias of j], 0) as uint32: a draw (see _draw) picks
    slot j uniformly in the segment, then ids[j] if 32 random bits < threshold, else the
    alias. One 16-byte row per slot, so a draw touches one cache line.
    """
    n = weight.shape[0]
    prob = np.empty(n, dtype=np.float64)
    alias = np.empty(n, dtype=np.int64)
    small = np.empty(n, dtype=np.int64)
    large = np.empty(n, dtype=np.int64)
    for sgi in range(seg_start.shape[0] - 1):
        lo = seg_start[sgi]
        hi = seg_start[sgi + 1]
        size = hi - lo
        if size == 0:
            continue
        total = 0.0
        for j in range(lo, hi):
            total += weight[j]
        ns = 0
        nl = 0
        for j in range(lo, hi):
            prob[j] = weight[j] * size / total if total > 0 else 1.0
            alias[j] = j
            if prob[j] < 1.0:
                small[ns] = j
                ns += 1
            else:
                large[nl] = j
                nl += 1
        while ns > 0 and nl > 0:
            ns -= 1
            sj = small[ns]
            lj = large[nl - 1]
            alias[sj] = lj
            prob[lj] -= 1.0 - prob[sj]
            if prob[lj] < 1.0:
                nl -= 1
                small[ns] = lj
                ns += 1
        for j in range(nl):
            prob[large[j]] = 1.0
        for j in range(ns):
            prob[small[j]] = 1.0  # only rounding leftovers
    for j in range(n):
        table[j, 0] = np.uint32(min(prob[j] * 4294967296.0, 4294967295.0))
        table[j, 1] = np.uint32(ids[j])
        table[j, 2] = np.uint32(ids[alias[j]])
        table[j, 3] = 0


@njit(cache=True, inline="always")
def _draw(table, lo, size, state):
    """An id from the alias table of the segment [lo, lo + size) (see _build_alias)."""
    r = _rand64(state)
    j = lo + np.int64(((r >> np.uint64(32)) * np.uint64(size)) >> np.uint64(32))
    if (r & np.uint64(0xFFFFFFFF)) < np.uint64(table[j, 0]):
        return np.int64(table[j, 1])
    return np.int64(table[j, 2])


@njit(cache=True, nogil=True)
def _generate_rows(seed, r0, r1, k_target, m_target, t_table, topic_start, lg_table, lt_table,
                   label_noise, sig, s_table, tsig, ts_table, f_table, idf, noise, topic_share,
                   y_off, y_cnt, y_ind, x_off, x_cnt, x_ind, x_val):
    """Rows r0..r1-1 of the topic model (see make_xmc). Row r writes its labels at
    y_ind[y_off[r]:] and its features at x_ind/x_val[x_off[r]:] (room for k_target[r] and
    m_target[r]) and its counts to y_cnt[r], x_cnt[r]. Each row has its own random stream
    (from seed and r), so the result does not depend on how rows are split into calls."""
    n_labels = lg_table.shape[0]
    n_features = f_table.shape[0]
    T = t_table.shape[0]
    S = s_table.shape[0]
    TS = ts_table.shape[0]
    state = np.zeros(1, dtype=np.uint64)
    mark_l = np.full(n_labels, -1, dtype=np.int64)
    mark_f = np.full(n_features, -1, dtype=np.int64)   # (row << 32) | slot of the row's features
    mmax = max(1, m_target[r0:r1].max()) if r1 > r0 else 1
    cnt = np.zeros(mmax, dtype=np.int32)
    fbuf = np.zeros(mmax, dtype=np.int32)
    vbuf = np.zeros(mmax, dtype=np.float64)
    p_topic = noise + (1.0 - noise) * topic_share
    for r in range(r0, r1):
        state[0] = np.uint64(seed) + np.uint64(r) * np.uint64(0xD1B54A32D192ED03)
        t = _draw(t_table, 0, T, state)
        t0 = topic_start[t]
        tn = topic_start[t + 1] - t0
        # labels: mostly from the row's topic, by popularity; some from anywhere
        k = k_target[r]
        a = y_off[r]
        nl = 0
        att = 0
        while nl < k and att < 20 * k + 100:
            att += 1
            if _rand(state) < label_noise:
                lab = _draw(lg_table, 0, n_labels, state)
            else:
                lab = _draw(lt_table, t0, tn, state)
            if mark_l[lab] != r:
                mark_l[lab] = r
                y_ind[a + nl] = lab
                nl += 1
        if nl <= 64:
            _isort(y_ind, a, a + nl)
        else:
            y_ind[a:a + nl].sort()
        y_cnt[r] = nl
        # features: background words, topic words, signature words of the row's labels
        m = m_target[r]
        b = x_off[r]
        nf = 0
        att = 0
        rkey = np.int64(r) << 32
        while nf < m and att < 8 * m + 100:
            att += 1
            u = _rand(state)
            if u < noise:
                f = _draw(f_table, 0, n_features, state)
            elif u < p_topic:
                f = tsig[t, _draw(ts_table, 0, TS, state)]
            else:
                lab = y_ind[a + min(int(_rand(state) * nl), nl - 1)]
                f = sig[lab, _draw(s_table, 0, S, state)]
            key = mark_f[f]
            if (key >> 32) != r:
                mark_f[f] = rkey | nf
                cnt[nf] = 1
                fbuf[nf] = f
                nf += 1
            else:
                cnt[key & 0xFFFFFFFF] += 1
        if nf <= 96:
            _isort2(fbuf, cnt, nf)
        else:
            order = np.argsort(fbuf[:nf])
            fbuf[:nf] = fbuf[:nf][order]
            cnt[:nf] = cnt[:nf][order]
        # tf-idf like values, L2-normalised
        norm = 0.0
        for j in range(nf):
            f = fbuf[j]
            c = cnt[j]
            v = idf[f] if c == 1 else (1.0 + np.log(c)) * idf[f]
            vbuf[j] = v
            norm += v * v
        scale = 1.0 / np.sqrt(norm) if norm > 0 else 1.0
        for j in range(nf):
            x_ind[b + j] = fbuf[j]
            x_val[b + j] = np.float32(vbuf[j] * scale)
        x_cnt[r] = nf


@njit(cache=True, inline="always")
def _isort2(keys, vals, n):
    """Insertion sort of keys[:n], moving vals along (fast for the short rows here)."""
    for i in range(1, n):
        x = keys[i]
        y = vals[i]
        j = i - 1
        while j >= 0 and keys[j] > x:
            keys[j + 1] = keys[j]
            vals[j + 1] = vals[j]
            j -= 1
        keys[j + 1] = x
        vals[j + 1] = y


@njit(cache=True, inline="always")
def _isort(keys, lo, hi):
    """Insertion sort of keys[lo:hi]."""
    for i in range(lo + 1, hi):
        x = keys[i]
        j = i - 1
        while j >= lo and keys[j] > x:
            keys[j + 1] = keys[j]
            j -= 1
        keys[j + 1] = x


@njit(cache=True, nogil=True)
def _compact(off, cnt, ind, val, has_val):
    """Close the gaps between rows (row r holds cnt[r] entries at off[r]); returns indptr."""
    n = cnt.shape[0]
    indptr = np.empty(n + 1, dtype=np.int64)
    indptr[0] = 0
    w = 0
    for r in range(n):
        o = off[r]
        c = cnt[r]
        if o != w:
            for j in range(c):
                ind[w + j] = ind[o + j]
                if has_val:
                    val[w + j] = val[o + j]
        w += c
        indptr[r + 1] = w
    return indptr


def _alias(weight, ids=None, seg_start=None):
    """Packed alias table(s) (n, 4) uint32 for weight (ids: what slot j stands for)."""
    n = weight.shape[0]
    if ids is None:
        ids = np.arange(n, dtype=np.int64)
    if seg_start is None:
        seg_start = np.array([0, n], dtype=np.int64)
    table = np.empty((n, 4), dtype=np.uint32)
    _build_alias(np.ascontiguousarray(weight, dtype=np.float64), ids, seg_start, table)
    return table


def make_xmc(n_train, n_test, n_features, n_labels, seed=0, labels_per_row=5.0,
             nnz_per_row=75.0, power=0.6, noise=0.3, label_noise=0.1, topic_share=0.2,
             topic_size=None, signature_size=None, feature_power=1.0, nnz_shape=4.0):
    """Learnable synthetic multi-label data with XMC statistics (power-law labels, sparse rows).

    Model (a small topic model; nothing of size (n, L) or (L, D) is ever materialised):

    * Label popularity is Zipf-like: the label of popularity rank r has weight
      (r + 1) ** -power; ranks are a random permutation of label ids.
    * Labels are split into ~n_labels / topic_size topics (random, balanced). A topic's
      probability is the sum of its labels' weights, so the marginal label frequency stays
      Zipf while a row's labels co-occur within a topic.
    * Each label has ``signature_size`` signature features and each topic 4x as many
      ((L, s) and (T, 4s) int32 arrays); slot j of a signature has weight (j + 1) ** -0.7.
    * A row picks a topic; k = 1 + Poisson(labels_per_row - 1) distinct labels, each
      from the topic by popularity (with probability label_noise from all labels);
      m ~ Gamma(nnz_shape, nnz_per_row / nnz_shape) (at least 1) distinct features,
      drawn repeatedly until m are distinct: with probability ``noise`` a background
      word (Zipf(feature_power) over a random order of the features), else a word of the
      topic's signature (fraction topic_share of the rest) or of a random label's
      signature. Values are (1 + log count) * idf, with an idf-like weight in [1, 3] that is
      lowest for the common background words; rows are L2-normalised.
    * Test rows come from the same distribution (drawn after the training rows).

    Parameters
    ----------
    n_train, n_test : int
        Rows in the training and test sets (n_test may be 0).
    n_features, n_labels : int
        D and L.
    seed : int
        Everything is determined by it: the same seed gives identical arrays whatever the
        thread count (each row has its own random stream); the numpy Generator draws the
        global structure, so a numpy release that changed its streams would change them.
    labels_per_row, nnz_per_row : float
        Means of the per-row label and non-zero counts (the realised means are slightly
        lower when a row runs out of distinct candidates, e.g. tiny D or L).
    power : float >= 0
        Zipf exponent of label popularity (0 = uniform).
    noise, label_noise, topic_share : float in [0, 1]
        Fractions of background features, of labels drawn outside the row's topic, and of
        non-background features drawn from the topic's (not a label's) signature.
    topic_size : int, optional
        Labels per topic (default max(100, 10 * labels_per_row), at most n_labels).
    signature_size : int, optional
        Signature features per label (default max(8, round(2 * nnz_per_row / labels_per_row))).
    feature_power : float >= 0
        Zipf exponent of the background features.
    nnz_shape : float > 0
        Gamma shape of the per-row non-zero count (4 gives a coefficient of variation of 0.5).

    Returns
    -------
    X_train : csr_matrix (n_train, n_features) float32
    Y_train : csr_matrix (n_train, n_labels) float32, values 1.0
    X_test : csr_matrix (n_test, n_features) float32
    Y_test : csr_matrix (n_test, n_labels) float32, values 1.0

    All canonical (sorted column ids). Train and test matrices are views into shared
    buffers (no copies); the 490K + 153K-row amazon-670k-like preset takes ~0.7 GB peak.
    """
    n_train = check_int(n_train, "n_train", 0, _INT32_MAX - 1)
    n_test = check_int(n_test, "n_test", 0, _INT32_MAX - 1)
    D = check_int(n_features, "n_features", 1, _INT32_MAX - 1)
    L = check_int(n_labels, "n_labels", 1, _INT32_MAX - 1)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    labels_per_row = check_float(labels_per_row, "labels_per_row", 1.0, float(L))
    nnz_per_row = check_float(nnz_per_row, "nnz_per_row", 1.0, float(D))
    power = check_float(power, "power", 0.0, 10.0)
    noise = check_float(noise, "noise", 0.0, 1.0)
    label_noise = check_float(label_noise, "label_noise", 0.0, 1.0)
    topic_share = check_float(topic_share, "topic_share", 0.0, 1.0)
    feature_power = check_float(feature_power, "feature_power", 0.0, 10.0)
    nnz_shape = check_float(nnz_shape, "nnz_shape", 0.0, 1e6, lo_open=True)
    if topic_size is None:
        topic_size = min(L, max(100, int(round(10 * labels_per_row))))
    topic_size = check_int(topic_size, "topic_size", 1, L)
    if signature_size is None:
        signature_size = max(8, int(round(2 * nnz_per_row / labels_per_row)))
    s = check_int(signature_size, "signature_size", 1, 1 << 16)
    n = n_train + n_test

    rng = np.random.default_rng(seed)
    # label popularity and topics
    rank = rng.permutation(L)
    weight = (rank + 1.0) ** -power
    T = max(1, L // topic_size)
    topic_of = rng.permutation(L) % T
    lab_of = np.argsort(topic_of, kind="stable")                    # labels grouped by topic
    w_sorted = weight[lab_of]
    topic_start = np.zeros(T + 1, dtype=np.int64)
    np.cumsum(np.bincount(topic_of, minlength=T), out=topic_start[1:])
    t_table = _alias(np.add.reduceat(w_sorted, topic_start[:-1]))
    lg_table = _alias(weight)
    lt_table = _alias(w_sorted, lab_of, topic_start)
    del rank, weight, topic_of, w_sorted, lab_of
    # signatures: slot j of a signature has weight (j + 1) ** -0.7
    sig = rng.integers(0, D, size=(L, s), dtype=np.int32)
    s_table = _alias((np.arange(s) + 1.0) ** -0.7)
    ts = 4 * s
    tsig = rng.integers(0, D, size=(T, ts), dtype=np.int32)
    ts_table = _alias((np.arange(ts) + 1.0) ** -0.7)
    # background words: Zipf over a random order of the features; idf-like weights
    feat_rank = rng.permutation(D)
    f_table = _alias((feat_rank + 1.0) ** -feature_power)
    idf = 1.0 + 2.0 * np.log1p(feat_rank) / math.log1p(D)
    del feat_rank
    # per-row counts
    k_target = (1 + rng.poisson(labels_per_row - 1.0, size=n)).clip(1, L).astype(np.int64)
    m_target = np.maximum(1, np.rint(rng.gamma(nnz_shape, nnz_per_row / nnz_shape, size=n)))
    m_target = m_target.clip(1, D).astype(np.int64)
    gen_seed = int(rng.integers(0, 2**63 - 1))

    y_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(k_target, out=y_off[1:])
    x_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(m_target, out=x_off[1:])
    y_ind = np.empty(int(y_off[-1]), dtype=np.int32)
    x_ind = np.empty(int(x_off[-1]), dtype=np.int32)
    x_val = np.empty(x_ind.shape[0], dtype=np.float32)
    y_cnt = np.empty(n, dtype=np.int64)
    x_cnt = np.empty(n, dtype=np.int64)
    args = (k_target, m_target, t_table, topic_start, lg_table, lt_table, label_noise,
            sig, s_table, tsig, ts_table, f_table, idf, noise, topic_share,
            y_off, y_cnt, y_ind, x_off, x_cnt, x_ind, x_val)
    block = 16384
    starts = range(0, n, block)
    workers = min(_num_threads(), len(starts))
    if workers <= 1:
        for r0 in starts:
            _generate_rows(gen_seed, r0, min(n, r0 + block), *args)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for f in [pool.submit(_generate_rows, gen_seed, r0, min(n, r0 + block), *args)
                      for r0 in starts]:
                f.result()
    del sig, tsig, args
    y_indptr = _compact(y_off, y_cnt, y_ind, x_val, False)
    x_indptr = _compact(x_off, x_cnt, x_ind, x_val, True)

    def split(indptr, ind, val, lo, hi, width):
        # views, no copies: train and test share the generated buffers
        a, b = indptr[lo], indptr[hi]
        return _csr(indptr[lo:hi + 1] - a, ind[a:b], val[a:b], (hi - lo, width))

    ones = np.ones(int(y_indptr[-1]), dtype=np.float32)
    return (split(x_indptr, x_ind, x_val, 0, n_train, D),
            split(y_indptr, y_ind, ones, 0, n_train, L),
            split(x_indptr, x_ind, x_val, n_train, n, D),
            split(y_indptr, y_ind, ones, n_train, n, L))


# Sizes of the real sets (Extreme Classification Repository; approximate) and the
# per-row statistics make_xmc should imitate.
PRESETS = {
    # Amazon-670K: 490,449 train / 153,025 test rows, 135,909 features, 670,091 labels,
    # ~5.45 labels and ~3.99 rows per label, ~75 non-zeros per row.
    "amazon-670k-like": dict(n_train=490_449, n_test=153_025, n_features=135_909,
                             n_labels=670_091, labels_per_row=5.45, nnz_per_row=75.0, power=0.6),
    # Delicious-200K: 196,606 train / 100,095 test rows, 782,585 features, 205,443 labels,
    # ~75.5 labels per row, ~72 rows per label, ~300 non-zeros per row.
    "delicious-200k-like": dict(n_train=196_606, n_test=100_095, n_features=782_585,
                                n_labels=205_443, labels_per_row=75.5, nnz_per_row=300.0, power=0.6),
    # small, for tests and examples
    "tiny": dict(n_train=20_000, n_test=2_000, n_features=5_000, n_labels=2_000,
                 labels_per_row=5.0, nnz_per_row=75.0, power=0.6),
}


def make_preset(name, scale=1.0, seed=0, **overrides):
    """make_xmc with the sizes and statistics of a named preset (see PRESETS).

    Parameters
    ----------
    name : str
        One of PRESETS: 'amazon-670k-like', 'delicious-200k-like', 'tiny'.
    scale : float > 0
        Multiplies n_train, n_test, n_features and n_labels (per-row statistics unchanged);
        sizes are kept at least 100 train / 20 test rows, 4 * nnz_per_row features and
        4 * labels_per_row labels.
    seed : int
    **overrides
        Any other make_xmc keyword (e.g. noise=0.5), or explicit sizes (applied after scaling).

    Returns
    -------
    (X_train, Y_train, X_test, Y_test) as make_xmc.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: expected a string, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(sorted(PRESETS))}")
    scale = check_float(scale, "scale", 0.0, 1e3, lo_open=True)
    p = dict(PRESETS[name])
    p["n_train"] = max(100, int(round(p["n_train"] * scale)))
    p["n_test"] = max(20, int(round(p["n_test"] * scale)))
    p["n_features"] = max(int(math.ceil(4 * p["nnz_per_row"])), int(round(p["n_features"] * scale)))
    p["n_labels"] = max(int(math.ceil(4 * p["labels_per_row"])), int(round(p["n_labels"] * scale)))
    p.update(overrides)
    return make_xmc(seed=seed, **p)
