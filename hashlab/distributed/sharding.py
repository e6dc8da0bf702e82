"""Which labels and rows a rank owns, and reading only its rows of an XMC text file."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .._validate import check_int
from .comm import _group_rank_world


def label_range(n, rank, world_size):
    """The labels [lo, hi) that rank ``rank`` of ``world_size`` owns (contiguous, sizes differ by <= 1)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def shard_rows(n, rank=None, world_size=None):
    """Row indices, int64 of shape (hi - lo,), of an n-row data set that this rank trains on:
    the contiguous slice [lo, hi) = label_range(n, rank, world_size).

    rank/world_size default to the current process group's (0 and 1 without one).
    """
    n = check_int(n, "n", 0)
    if rank is None or world_size is None:
        rank, world_size = _group_rank_world()
    lo, hi = label_range(n, rank, world_size)
    return np.arange(lo, hi, dtype=np.int64)



def load_xmc_shard(path, rank=None, world_size=None, n_features=None, n_labels=None):
    """Reads only this rank's part of an uncompressed XMC/libsvm text file.

    The body (after an optional "N D L" header) is cut into world_size equal byte ranges;
    a line belongs to the rank whose range holds its first byte, so every line is read by
    exactly one rank and no rank reads the whole file. Returns (X, Y) CSR float32 of the
    rank's rows, widths from the header or n_features/n_labels (required without header,
    so that every rank gets the same widths). gzip files need random access this cannot
    have: decompress them first (ValueError).
    """
    from ..xmc_format import _parse_header, load_xmc

    path = os.fspath(path)
    if rank is None or world_size is None:
        rank, world_size = _group_rank_world()
    world_size = check_int(world_size, "world_size", 1)
    rank = check_int(rank, "rank", 0, world_size - 1)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            raise ValueError(f"{path}: expected an uncompressed file (byte ranges need random access), "
                             "got gzip; decompress it first")
        f.seek(0)
        first = f.readline()
        header = _parse_header(first.decode("ascii", "replace"))
        body = len(first) if header else 0
        if header:
            n_features = header[1] if n_features is None else n_features
            n_labels = header[2] if n_labels is None else n_labels
        if n_features is None or n_labels is None:
            raise ValueError(f"{path}: expected n_features and n_labels for a file without header "
                             "(every rank must agree on the widths), got None")

        def line_start(pos):
            if pos <= body:
                return body
            f.seek(pos - 1)
            f.readline()
            return min(f.tell(), size)

        a = line_start(body + (size - body) * rank // world_size)
        b = line_start(body + (size - body) * (rank + 1) // world_size)
        f.seek(a)
        chunk = f.read(b - a)
    fd, tmp = tempfile.mkstemp(prefix=".hashlab-shard-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(chunk)
        return load_xmc(tmp, n_features=n_features, n_labels=n_labels, verbose=False)
    finally:
        os.unlink(tmp)
