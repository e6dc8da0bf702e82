"""The Extreme Classification Repository's text format (also libsvm multi-label): load_xmc, save_xmc.

Format::

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

X is a scipy.sparse.csr_matrix (n, D) float32 and Y a csr_matrix (n, L) float32 with
values 1.0; both canonical (sorted, duplicate-free column ids per row). The parser is
in hashlab.xmc_parser.
"""
from __future__ import annotations

import gzip
import io
import os
import stat
import tempfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp

from ._validate import check_int
from .csr import _INT32_MAX, _csr, _num_threads, labels_to_csr
from .xmc_parser import (_S_ERR, _S_MAXF, _S_MAXL, _S_ROW, _find_newline, _parse_and_sort, _raise_parse_error,
                         _rfind_newline)

__all__ = ["load_xmc", "save_xmc"]

_PROGRESS_BYTES = 50 * 1024 * 1024   # files above this show a tqdm bar when verbose
_CHUNK = 8 * 1024 * 1024             # bytes per read / parse step
_UMASK = os.umask(0o022)             # read once (os.umask can only be read by setting it)
os.umask(_UMASK)


def _progress(total, desc, enabled):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=False)


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
    results.clear()  # the chunks are copied out: free them before the CSR is built
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
