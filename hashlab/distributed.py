"""Label-sharded SLIDE training and output retrieval over torch.distributed (gloo, CPU).

When an output layer outgrows one machine, its labels are split across processes: rank
r of W owns the contiguous labels ``[N * r // W, N * (r + 1) // W)`` (``label_range``):
their weights, Adam moments and its own LSH tables. The hidden layers are replicated
(identical initialisation from the seed) and their gradients summed across ranks.

One training step (``ShardedSparseMLP.train_batch``), with every rank holding its own rows
of the global batch (data parallel below the output layer, model parallel in it):

1. hidden layers on the local rows; all-gather of the last hidden activations and the
   labels, so every rank has the whole batch's H (n, d);
2. each rank picks active neurons in its shard (its labels of each sample, then LSH
   candidates from its tables, then random ones; about ``target_active * shard / N``
   per sample) and computes their logits;
3. all-gather of each sample's local (max, sum of exp, sum of label logits): the softmax
   normaliser is then that of the union of the ranks' active sets;
4. local gradient and lazy Adam on the touched rows of the shard; all-reduce of the
   gradient with respect to H (each rank's partial sum over its own neurons);
5. backward through the hidden layers on the local rows; all-reduce of the dense
   gradients and all-gather of the input layer's sparse row gradients, then identical
   Adam steps on every rank.

The result is the model a single process trains on the union of the active sets: with
all neurons active (``target_active >= output_dim``) it is ``SparseMLP``'s model, to
float rounding (tests/test_distributed.py checks losses and weights).

Data
----
Each rank passes ``fit`` its own rows of the training set (its slice of the file:
``load_xmc_shard`` reads only that byte range; with small in-memory data, pass
``X[shard_rows(n)]``). A global batch of ``batch_size`` rows takes
``batch_size * (r + 1) // W - batch_size * r // W`` rows from rank r's shuffled slice, so
no rank ever holds the whole training set; ranks with fewer rows contribute empty parts
at the end of an epoch. ``predict_topk`` and ``evaluate`` are collective too but take the
same rows on every rank (each scores its labels; the top-k are merged).

Failure handling: every collective runs under the process group's timeout (set it with
``init_process_group(..., timeout=...)``) and barriers are ``monitored_barrier`` with
``timeout`` seconds; a rank that dies or stalls makes the others raise a RuntimeError
naming the step, instead of hanging.

torch is imported only when a process group is used; with ``distributed=False`` (or no
process group initialised) everything runs in one process, e.g. to load a checkpoint
written by several ranks and predict with it.
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import json
import math
import os
import tempfile
import time

import numpy as np
import scipy.sparse as sp

from . import _C
from ._validate import check_choice, check_float, check_int
from .retrieval import OutputRetriever, dense_topk
from .slide import HASHES, SparseMLP, _Adam, _as_features, _as_labels, _uniform, atomic_savez

__all__ = ["ShardedSparseMLP", "ShardedRetriever", "label_range", "shard_rows", "load_xmc_shard"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_B1, _B2, _EPS = 0.9, 0.999, 1e-8


def label_range(n, rank, world_size):
    """The labels [lo, hi) that rank ``rank`` of ``world_size`` owns (contiguous, sizes differ by <= 1)."""
    return n * rank // world_size, n * (rank + 1) // world_size


def shard_rows(n, rank=None, world_size=None):
    """Row indices (int64) of an n-row data set that this rank trains on: a contiguous slice.

    rank/world_size default to the current process group's (0 and 1 without one).
    """
    n = check_int(n, "n", 0)
    if rank is None or world_size is None:
        rank, world_size = _group_rank_world()
    lo, hi = label_range(n, rank, world_size)
    return np.arange(lo, hi, dtype=np.int64)


def _group_rank_world():
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def load_xmc_shard(path, rank=None, world_size=None, n_features=None, n_labels=None):
    """Reads only this rank's part of an uncompressed XMC/libsvm text file.

    The body (after an optional "N D L" header) is cut into world_size equal byte ranges;
    a line belongs to the rank whose range holds its first byte, so every line is read by
    exactly one rank and no rank reads the whole file. Returns (X, Y) CSR float32 of the
    rank's rows, widths from the header or n_features/n_labels (required without header,
    so that every rank gets the same widths). gzip files need random access this cannot
    have: decompress them first (ValueError).
    """
    from .datasets import _parse_header, load_xmc

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


# ---------------------------------------------------------------------------------------
# communication
# ---------------------------------------------------------------------------------------
class _Comm:
    """Collectives on numpy arrays over the default process group (identity for one process).

    Counts calls, bytes sent and seconds per operation (``stats``). Any failure of
    a collective (a dead peer, a timeout) becomes a RuntimeError that says which operation
    of which step failed on which rank.
    """

    def __init__(self, distributed, timeout):
        self.timeout = check_float(timeout, "timeout", 0.0, 86400.0 * 7, lo_open=True)
        if distributed not in (None, True, False):
            raise TypeError(f"distributed: expected True, False or None, got {distributed!r}")
        self.rank, self.world = 0, 1
        self.dist = None
        self.stats = {}  # what -> [calls, bytes sent, seconds], for the benchmark's estimates
        self.step = 0
        if distributed is False:
            return
        try:
            import torch.distributed as dist
        except ImportError:
            dist = None
        ready = dist is not None and dist.is_available() and dist.is_initialized()
        if not ready:
            if distributed:
                raise ValueError("distributed=True: expected an initialised torch.distributed process group "
                                 "(call torch.distributed.init_process_group('gloo') first), got none")
            return
        if dist.get_backend() != "gloo":
            raise ValueError(f"distributed: expected the 'gloo' backend (CPU tensors), got {dist.get_backend()!r}")
        self.dist = dist
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def _run(self, what, fn, nbytes):
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as e:  # gloo raises RuntimeError / DistBackendError subclasses
            raise RuntimeError(f"hashlab.distributed: rank {self.rank} of {self.world}: {what} failed at step "
                               f"{self.step} (another rank died, stalled past the timeout or called a "
                               f"different collective): {e}") from e
        st = self.stats.setdefault(what, [0, 0, 0.0])
        st[0] += nbytes > 0
        st[1] += nbytes
        st[2] += time.perf_counter() - t0
        return out

    def all_gather(self, a, what):
        """(world, *a.shape) array of every rank's ``a`` (same shape and dtype on all ranks)."""
        a = np.array(a, order="C", copy=not (isinstance(a, np.ndarray) and a.flags.writeable))
        if self.dist is None:
            return a[None].copy()
        import torch

        t = torch.from_numpy(a)
        out = torch.empty((self.world,) + tuple(a.shape), dtype=t.dtype)
        self._run(what, lambda: self.dist.all_gather(list(out.unbind(0)), t), a.nbytes)
        return out.numpy()

    def all_reduce(self, a, what, op="sum"):
        """Element-wise sum (or max) over ranks, in place on the C-contiguous array ``a``."""
        return self.wait(self.all_reduce_async(a, what, op))

    def all_reduce_async(self, a, what, op="sum"):
        if self.dist is None:
            return (None, a, what)
        import torch

        t = torch.from_numpy(a)
        rop = self.dist.ReduceOp.SUM if op == "sum" else self.dist.ReduceOp.MAX
        work = self._run(what, lambda: self.dist.all_reduce(t, op=rop, async_op=True), a.nbytes)
        return (work, a, what)

    def all_gather_async(self, a, what):
        a = np.ascontiguousarray(a)
        if self.dist is None:
            return (None, a[None].copy(), what)
        import torch

        t = torch.from_numpy(a)
        out = torch.empty((self.world,) + tuple(a.shape), dtype=t.dtype)
        work = self._run(what, lambda: self.dist.all_gather(list(out.unbind(0)), t, async_op=True), a.nbytes)
        return (work, out.numpy(), what)

    def wait(self, handle):
        work, result, what = handle
        if work is not None:
            self._run(what, lambda: work.wait(datetime.timedelta(seconds=self.timeout)), 0)
        return result

    def barrier(self, what):
        """monitored_barrier: names the ranks that did not arrive within ``timeout`` seconds."""
        if self.dist is not None:
            self._run(what, lambda: self.dist.monitored_barrier(
                timeout=datetime.timedelta(seconds=self.timeout), wait_all_ranks=True), 0)

    def agree(self, ok, what):
        """Raises on every rank if ``ok`` is False on some rank (so no rank waits for a failed one)."""
        flags = self.all_gather(np.array([bool(ok)], np.uint8), what)[:, 0]
        bad = np.flatnonzero(flags == 0)
        if bad.size and ok:
            raise ValueError(f"{what}: failed on rank(s) {bad.tolist()} (see their error)")
        return bad.size == 0


def _merge_topk(comm, scores, labels, k, n_out):
    """Merges per-rank top-k (scores (n, kk) float32, global labels (n, kk) int64) into the global top-k.

    Ties go to the lower label id, as in single-process dense_topk.
    """
    n = scores.shape[0]
    pack = np.empty((n, 2 * k), np.float64)  # labels < 2^31 are exact in float64
    pack[:, :k], pack[:, k:] = -np.inf, n_out
    kk = scores.shape[1]
    pack[:, :kk], pack[:, k:k + kk] = scores, labels
    allp = comm.all_gather(pack, "top-k merge")            # (world, n, 2k)
    S = np.concatenate(list(allp[:, :, :k]), axis=1)
    L = np.concatenate(list(allp[:, :, k:]), axis=1)
    order = np.lexsort((L, -S), axis=1)[:, :k]
    return (np.take_along_axis(S, order, 1).astype(np.float32),
            np.take_along_axis(L, order, 1).astype(np.int64))


# ---------------------------------------------------------------------------------------
# sharded retrieval
# ---------------------------------------------------------------------------------------
class ShardedRetriever:
    """An ``OutputRetriever`` per rank over its contiguous slice of an output layer; top-k merged.

    Parameters
    ----------
    weight : (rows, dim) float32, this rank's rows ``[offset, offset + rows)`` of the layer.
    bias : (rows,) float32 or None (None on every rank, or on none).
    offset : int, global id of this rank's first row.
    n_classes : int, rows of the whole layer; the ranks' slices must tile [0, n_classes)
        in rank order (checked: ValueError).
    distributed : None (use the process group if there is one), True (require one), False.
    timeout : seconds before a stalled rank is reported.
    **kwargs : OutputRetriever parameters (k, l, target_fraction, seed, search, ...); its
        defaults apply per shard, so each rank scores target_fraction of its own rows.
    """

    def __init__(self, weight, bias=None, offset=0, n_classes=None, distributed=None, timeout=300.0, **kwargs):
        self._comm = _Comm(distributed, timeout)
        offset = check_int(offset, "offset", 0)
        self._local = OutputRetriever(weight, bias, **kwargs)
        rows = self._local.n_classes
        n_classes = offset + rows if n_classes is None and self._comm.world == 1 else n_classes
        if n_classes is None:
            raise ValueError("n_classes: expected the size of the whole layer with several ranks, got None")
        self.n_classes = check_int(n_classes, "n_classes", 1)
        self.offset, self.rows = offset, rows
        info = self._comm.all_gather(np.array([offset, rows, self.n_classes, bias is not None], np.int64),
                                     "retriever layout")
        ends = np.cumsum(info[:, 1])
        if (info[:, 2] != self.n_classes).any() or (info[:, 0] != ends - info[:, 1]).any() \
                or ends[-1] != self.n_classes or (info[:, 3] != info[0, 3]).any():
            raise ValueError(f"weight: expected the ranks' slices (offset, rows) to tile [0, n_classes) in rank "
                             f"order, all with or all without bias, got {info[:, :2].tolist()} for "
                             f"n_classes={info[:, 2].tolist()}")

    @classmethod
    def from_full(cls, weight, bias=None, distributed=None, timeout=300.0, **kwargs):
        """Keeps this rank's ``label_range`` of a full (n_classes, dim) layer (and bias)."""
        comm = _Comm(distributed, timeout)
        n = np.shape(weight)[0]
        lo, hi = label_range(n, comm.rank, comm.world)
        if hi <= lo:
            raise ValueError(f"weight: expected at least one row per rank ({comm.world} ranks), got {n} rows")
        return cls(weight[lo:hi], None if bias is None else bias[lo:hi], lo, n, distributed, timeout, **kwargs)

    def topk(self, H, k=5, max_candidates=None):
        """Top-k classes of H (n, dim) float32 (the same rows on every rank; collective).

        Returns (scores float32 (n, k), global labels int64 (n, k)), best first.
        """
        k = min(check_int(k, "k", 1), self.n_classes)
        s, l = self._local.topk(H, min(k, self.rows), max_candidates)
        return _merge_topk(self._comm, s, l + self.offset, k, self.n_classes)

    @property
    def nbytes(self):
        """Bytes of this rank's index."""
        return self._local.nbytes


# ---------------------------------------------------------------------------------------
# sharded SLIDE
# ---------------------------------------------------------------------------------------
def _first_occurrences(key):
    """Mask of the first occurrence of each value of ``key`` (int64), by a stable sort."""
    order = np.argsort(key, kind="stable")
    ks = key[order]
    first = np.zeros(key.size, bool)
    if key.size:
        first[order[np.concatenate([[True], ks[1:] != ks[:-1]])]] = True
    return first


def _active_sets(n, lab_samp, lab_ids, cind, cids, target, n_out, rng):
    """Per sample: its labels, then candidates in order, then random ids, ``max(labels, target)`` in all.

    lab_samp/lab_ids (int64): local labels with their sample, grouped by sample;
    cind/cids: CSR candidates. Returns (indptr int64 (n + 1,), ids int32, samp int64):
    each sample's labels come first. Numpy twin of the selection in sparse_output_train.
    """
    nl = np.bincount(lab_samp, minlength=n)
    size = np.maximum(nl, target)
    samp = np.concatenate([lab_samp, np.repeat(np.arange(n), np.diff(cind))])
    ids = np.concatenate([lab_ids, cids.astype(np.int64)])
    order = np.argsort(samp, kind="stable")  # labels before candidates, candidates in rank order
    samp, ids = samp[order], ids[order]
    first = _first_occurrences(samp * n_out + ids)
    samp, ids = samp[first], ids[first]
    starts = np.concatenate([[0], np.cumsum(np.bincount(samp, minlength=n))])
    keep = np.arange(samp.size) - starts[samp] < size[samp]
    samp, ids = samp[keep], ids[keep]
    need = size - np.bincount(samp, minlength=n)
    fs, fi = [], []
    todo = np.flatnonzero(need > 0)
    dense = todo[2 * size[todo] > n_out]
    if dense.size:  # nearly full: random order of the ids not taken yet
        R = rng.random((dense.size, n_out))
        pos = np.full(n, -1)
        pos[dense] = np.arange(dense.size)
        m = pos[samp] >= 0
        R[pos[samp[m]], ids[m]] = 2.0
        pick = np.argsort(R, axis=1)
        take = np.arange(n_out)[None, :] < need[dense][:, None]
        fs.append(np.repeat(dense, need[dense]))
        fi.append(pick[take])
    todo = todo[2 * size[todo] <= n_out]
    taken = np.sort(samp * n_out + ids)
    while todo.size:  # rejection sampling: at most half the ids are taken, so few rounds
        s = np.repeat(todo, 2 * need[todo])
        key = s * n_out + rng.integers(0, n_out, s.size)
        pos = np.minimum(np.searchsorted(taken, key), max(taken.size - 1, 0))
        fresh = taken[pos] != key if taken.size else np.ones(key.size, bool)
        s, key = s[fresh], key[fresh]
        first = _first_occurrences(key)
        s, key = s[first], key[first]
        st = np.concatenate([[0], np.cumsum(np.bincount(s, minlength=n))])
        ok = np.arange(s.size) - st[s] < need[s]
        fs.append(s[ok])
        fi.append(key[ok] - s[ok] * n_out)
        taken = np.sort(np.concatenate([taken, key[ok]]))
        need -= np.bincount(s[ok], minlength=n)
        todo = todo[need[todo] > 0]
    if fs:
        samp = np.concatenate([samp] + fs)
        ids = np.concatenate([ids] + fi)
        order = np.argsort(samp, kind="stable")
        samp, ids = samp[order], ids[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(samp, minlength=n))]).astype(np.int64)
    return indptr, ids.astype(np.int32), samp


class ShardedSparseMLP(SparseMLP):
    """SparseMLP with its output layer split by label across torch.distributed ranks.

    Parameters are SparseMLP's (same meaning and defaults; ``target_active`` counts the
    union over ranks, each rank activating ``ceil(target_active * shard / output_dim)`` per
    sample; k, bucket_capacity default per shard), plus:

    distributed : None (default: use the process group if one is initialised, else run as
        one process), True (require one: ValueError without), False (one process).
    timeout : float seconds, for monitored barriers and waits (default 300); collectives
        also obey the process group's own timeout.

    hash="learned" is not supported (one process fits its hash on its own rows' activations).
    Every rank must construct the model with the same arguments (checked: ValueError).
    See the module docstring for the algorithm and the data split.
    """

    def __init__(self, input_dim, output_dim, hidden=(128,), activation="relu", hash="simhash", k=None, l=None,
                 target_active=None, lr=1e-3, seed=0, bucket_capacity=None, rebuild_first=50,
                 rebuild_growth=1.2, bin_size=8, refit_threshold=0.1, distributed=None, timeout=300.0):
        self._comm = _Comm(distributed, timeout)
        ok = False
        try:
            self._configure(input_dim, output_dim, hidden, activation, hash, k, l, target_active, lr, seed,
                            bucket_capacity, rebuild_first, rebuild_growth, bin_size, refit_threshold)
            ok = True
        finally:
            self._comm.agree(ok, "ShardedSparseMLP configuration")
        self._check_same("ShardedSparseMLP configuration")
        self._init_params()
        self._build_tables()

    # -- configuration -----------------------------------------------------------------------
    def _configure(self, input_dim, output_dim, hidden, activation, hash, k, l, target_active, lr, seed,
                   bucket_capacity, rebuild_first, rebuild_growth, bin_size, refit_threshold=0.1, learn_after=800):
        rank, world = self._comm.rank, self._comm.world
        if check_choice(hash, "hash", HASHES) == "learned":
            raise ValueError("hash: 'learned' is not supported by ShardedSparseMLP; use 'dwta' or 'simhash'")
        if check_int(output_dim, "output_dim", 2, 2**31 - 2) < world:
            raise ValueError(f"output_dim: expected at least one label per rank ({world} ranks), got {output_dim}")
        super()._configure(input_dim, output_dim, hidden, activation, hash, k, l, target_active, lr, seed,
                           bucket_capacity, rebuild_first, rebuild_growth, bin_size, refit_threshold, learn_after)
        self.rank, self.world_size = rank, world
        self.label_lo, self.label_hi = label_range(self.output_dim, rank, world)
        self.n_local = self.label_hi - self.label_lo
        self.local_active = min(self.n_local, -(-self.target_active * self.n_local // self.output_dim))
        self.epochs = 0
        # seconds in the output layer (selection, logits, gradients, Adam; no communication),
        # in the hidden layers on the rank's rows (forward, backward), of work every rank
        # repeats for the whole batch (hashing H, the replicated layers' Adam steps), active
        # (sample, neuron) pairs and rows trained: for the benchmark's scaling estimate
        self.timings = {}

    def _lsh_items(self):
        # LSH parameters from the largest shard, so that every rank hashes alike
        return -(-self.output_dim // self._comm.world)

    def _check_same(self, what):
        blob = json.dumps([self._config(), self.step], sort_keys=True).encode()
        digest = np.frombuffer(hashlib.sha256(blob).digest(), np.uint8)
        all_d = self._comm.all_gather(digest, what)
        bad = np.flatnonzero((all_d != all_d[0]).any(axis=1))
        if bad.size:
            raise ValueError(f"{what}: expected the same model arguments (and step) on every rank, rank(s) "
                             f"{bad.tolist()} differ from rank 0")

    def _init_output(self, rng):
        """SparseMLP's output initialisation for the same seed, keeping only this rank's rows."""
        d = self.hidden[-1]
        # skip the rows of the lower ranks in the generator's stream without drawing them:
        # float32 draws take one 32-bit half of a 64-bit PCG64 output each
        skip = self.label_lo * d
        if skip and rng.bit_generator.state["has_uint32"]:
            rng.random(1, dtype=np.float32)
            skip -= 1
        if skip >= 2:  # advance() also drops a buffered half, so only call it when skipping
            rng.bit_generator.advance(skip // 2)
        if skip % 2:
            rng.random(1, dtype=np.float32)
        self.out_w = _Adam(_uniform(rng, (self.n_local, d), 1 / math.sqrt(d)))
        self.out_b = _Adam(np.zeros(self.n_local, np.float32))

    def train_batch(self, X, Y):
        """One collective training step on the global batch made of every rank's (X, Y).

        X: this rank's rows of the batch, CSR (m, input_dim) (m may be 0 on some ranks);
        Y: their labels (CSR indicator (m, output_dim) or m label lists). Returns
        (loss summed over the global batch, rows in the global batch), equal on all ranks.
        """
        X = _as_features(X, self.input_dim)
        Y = _as_labels(Y, X.shape[0], self.output_dim) if X.shape[0] else \
            sp.csr_matrix((0, self.output_dim), dtype=np.float32)
        return self._train_batch(X, Y)

    def _train_batch(self, X, Y):
        comm = self._comm
        comm.step = self.step + 1
        d = self.hidden[-1]
        t_loc = time.perf_counter()
        hs = self._hidden(X)
        m = X.shape[0]
        Xt = X.T.tocsr()
        feat = np.flatnonzero(np.diff(Xt.indptr))
        t_loc = time.perf_counter() - t_loc
        nl_loc = np.diff(Y.indptr)
        # 1. the whole batch's H and labels on every rank
        heads = comm.all_gather(np.array([m, feat.size, nl_loc.max(initial=0)], np.int64), "batch sizes")
        sizes = heads[:, 0]
        n, mmax, lmax, fmax = int(sizes.sum()), int(sizes.max()), int(heads[:, 2].max()), int(heads[:, 1].max())
        if n == 0:
            raise ValueError("X: expected at least one row in the batch over all ranks, got none")
        buf = np.full((mmax, d + lmax), -1, np.int32)  # raw bits: H as float32, then labels (-1 = none)
        buf[:m, :d] = hs[-1].view(np.int32)
        rows = np.repeat(np.arange(m), nl_loc)
        buf[rows, d + np.arange(Y.indices.size) - np.repeat(Y.indptr[:-1], nl_loc)] = Y.indices
        allb = comm.all_gather(buf, "hidden activations")
        allb = np.concatenate([allb[q, :sizes[q]] for q in range(comm.world)])
        H = np.ascontiguousarray(allb[:, :d]).view(np.float32)
        labs = allb[:, d:]
        valid = labs >= 0
        nl = valid.sum(1)
        lab_samp = np.repeat(np.arange(n), nl)
        lab_ids = labs[valid].astype(np.int64)
        mine = (lab_ids >= self.label_lo) & (lab_ids < self.label_hi)
        lsamp, lids = lab_samp[mine], lab_ids[mine] - self.label_lo
        # 2. local active sets and logits
        t_out, t_rep = time.perf_counter(), 0.0
        W, b = self.out_w, self.out_b
        full = self.local_active >= self.n_local
        if full:
            Z = H @ W.w.T
            Z += b.w
            mloc = Z.max(1)
            sloc = np.exp(Z - mloc[:, None], dtype=np.float64).sum(1)
            lsum = np.bincount(lsamp, weights=Z[lsamp, lids], minlength=n)
        else:
            th = time.perf_counter()
            keys = self.hasher.hash(H)
            t_rep = time.perf_counter() - th
            cind, cids, _ = self.tables.query_keys(keys, 1, self.local_active)
            rng = np.random.default_rng([self.seed, self.step, self.rank])
            indptr, ids, samp = _active_sets(n, lsamp, lids, cind, cids, self.local_active, self.n_local, rng)
            z = _C.gather_scores(H, W.w, b.w, indptr, ids)
            mloc = np.maximum.reduceat(z, indptr[:-1])  # every sample has >= local_active >= 1 entries
            sloc = np.bincount(samp, weights=np.exp(z - mloc[samp], dtype=np.float64), minlength=n)
            nl_mine = np.bincount(lsamp, minlength=n)
            is_lab = np.arange(ids.size) - indptr[samp] < nl_mine[samp]
            lsum = np.bincount(samp[is_lab], weights=z[is_lab], minlength=n)
        t_out = time.perf_counter() - t_out - t_rep
        # 3. the softmax normaliser over the union of the ranks' active sets
        st = comm.all_gather(np.stack([mloc.astype(np.float64), sloc, lsum]), "softmax statistics")
        M = st[:, 0].max(0)
        S = (st[:, 1] * np.exp(st[:, 0] - M)).sum(0)
        loss = float((M + np.log(S) - st[:, 2].sum(0) / nl).sum())
        # 4. dz = softmax - target; gradients of the shard, dH (old weights), lazy Adam
        t0 = time.perf_counter()
        t = self.step + 1
        if full:
            P = np.exp(Z - M[:, None].astype(np.float32))
            P /= S[:, None].astype(np.float32)
            P[lsamp, lids] -= (1.0 / nl[lsamp]).astype(np.float32)
            dH = P @ W.w
            G, gb = np.ascontiguousarray(P.T @ H), P.sum(0)
            touched = np.arange(self.n_local, dtype=np.int64)
        else:
            dz = (np.exp(z - M[samp]) / S[samp]).astype(np.float32)
            dz[is_lab] -= (1.0 / nl[samp[is_lab]]).astype(np.float32)
            D = sp.csr_matrix((dz, (ids, samp)), shape=(self.n_local, n))
            touched = np.flatnonzero(np.diff(D.indptr)).astype(np.int64)
            Dt = D[touched]
            dH = np.asarray(Dt.T @ W.w[touched], dtype=np.float32)
            G, gb = np.ascontiguousarray(Dt @ H, dtype=np.float32), np.asarray(Dt.sum(1)).ravel()
        _C.adam_rows(W.w, W.m, W.v, touched, G, self.lr, _B1, _B2, _EPS, t)
        _C.adam_rows(b.w, b.m, b.v, touched, np.ascontiguousarray(gb, np.float32).reshape(-1, 1),
                     self.lr, _B1, _B2, _EPS, t)
        self._dirty[touched] = 1
        tm = self.timings
        tm["output"] = tm.get("output", 0.0) + t_out + time.perf_counter() - t0
        tm["pairs"] = tm.get("pairs", 0) + (n * self.n_local if full else ids.size)
        tm["rows"] = tm.get("rows", 0) + n
        dH = comm.all_reduce(np.ascontiguousarray(dH, dtype=np.float32), "gradient of H")
        # 5. hidden layers on the local rows; gradients summed over ranks
        th = time.perf_counter()
        r0 = int(sizes[:comm.rank].sum())
        g = dH[r0:r0 + m]
        dense = []
        for i in range(len(self.hidden) - 1, -1, -1):
            g = self._act_grad(hs[i], g)
            dense.append(g.sum(0))
            if i > 0:
                dense.append((hs[i - 1].T @ g).ravel())
                g = g @ self.layers[i].w.T
        h0 = self.hidden[0]
        sparse = np.zeros((fmax, 1 + h0), np.int32)
        sparse[:feat.size, 0] = feat
        sparse[:feat.size, 1:] = np.ascontiguousarray(Xt[feat] @ g, dtype=np.float32).view(np.int32)
        flat = np.concatenate(dense).astype(np.float32)
        tm["local"] = tm.get("local", 0.0) + t_loc + time.perf_counter() - th
        h_dense = comm.all_reduce_async(flat, "hidden-layer gradients")
        h_sparse = comm.all_gather_async(sparse, "input-layer gradients")
        flat = comm.wait(h_dense)
        allg = comm.wait(h_sparse)
        th = time.perf_counter()
        pos = 0
        for i in range(len(self.hidden) - 1, -1, -1):
            gbias = flat[pos:pos + self.hidden[i]]
            pos += self.hidden[i]
            self.biases[i].dense_step(gbias, self.lr, _B1, _B2, _EPS, t)
            if i > 0:
                shp = self.layers[i].w.shape
                gW = flat[pos:pos + shp[0] * shp[1]].reshape(shp)
                pos += gW.size
                self.layers[i].dense_step(gW, self.lr, _B1, _B2, _EPS, t)
        allg = np.concatenate([allg[q, :heads[q, 1]] for q in range(comm.world)])
        frows = allg[:, 0].astype(np.int64)
        fg = np.ascontiguousarray(allg[:, 1:]).view(np.float32)
        order = np.argsort(frows, kind="stable")
        frows, fg = frows[order], fg[order]
        starts = np.flatnonzero(np.concatenate([[True], frows[1:] != frows[:-1]])) if frows.size else frows
        if frows.size:
            L0 = self.layers[0]
            # rows seen by several ranks are summed (none with one rank)
            Gin = fg if starts.size == frows.size else np.add.reduceat(fg, starts, axis=0)
            Gin = np.ascontiguousarray(Gin, dtype=np.float32)
            _C.adam_rows(L0.w, L0.m, L0.v, frows[starts], Gin, self.lr, _B1, _B2, _EPS, t)
        tm["replicated"] = tm.get("replicated", 0.0) + t_rep + time.perf_counter() - th
        self.step = t
        if self.step >= self._next_rebuild:
            self._rehash()
        return loss, n

    # -- public API ------------------------------------------------------------------------------
    def fit(self, X, Y, epochs=1, batch_size=256, validation=None, checkpoint=None, eval_every=None,
            eval_size=2000, verbose=True):
        """Trains on this rank's rows X (m, input_dim) CSR float32 with labels Y (collective).

        Each global batch of ``batch_size`` rows takes about batch_size / world_size rows from
        every rank's slice, shuffled per epoch (see the module docstring). validation: optional
        (X_val, Y_val), the same rows on every rank; P@1 on up to ``eval_size`` of them every
        ``eval_every`` batches and at the end of each epoch goes to ``self.history`` (time,
        step, samples, loss moving average, P@1). checkpoint: a directory ``save``d after
        every epoch. Returns self.
        """
        comm = self._comm
        X = _as_features(X, self.input_dim)
        m = X.shape[0]
        Y = _as_labels(Y, m, self.output_dim) if m else sp.csr_matrix((0, self.output_dim), dtype=np.float32)
        epochs = check_int(epochs, "epochs", 0)
        batch_size = check_int(batch_size, "batch_size", comm.world)
        eval_size = check_int(eval_size, "eval_size", 1)
        counts = comm.all_gather(np.array([m], np.int64), "data set sizes")[:, 0]
        if counts.sum() == 0:
            raise ValueError("X: expected at least one row over all ranks, got an empty data set")
        lbs = np.array([batch_size * (q + 1) // comm.world - batch_size * q // comm.world
                        for q in range(comm.world)])
        n_batches = int((-(-counts // lbs)).max())
        eval_every = max(1, n_batches // 10) if eval_every is None else check_int(eval_every, "eval_every", 1)
        val = self._validation_subset(validation, eval_size)
        from tqdm.auto import tqdm

        my_bs = int(lbs[comm.rank])
        bar = tqdm(total=epochs * int(counts.sum()), unit="samples", disable=not verbose or comm.rank != 0,
                   dynamic_ncols=True)
        comm.barrier("start of fit")
        t0 = time.perf_counter()
        seen, ema, eval_s = 0, None, 0.0
        train_time, prior = (self.history[-1]["time"], self.history[-1]["samples"]) if self.history else (0.0, 0)
        try:
            for _ in range(epochs):
                order = np.random.default_rng([self.seed + 1, self.rank, self.epochs]).permutation(m)
                self.epochs += 1
                for bi in range(n_batches):
                    idx = np.sort(order[bi * my_bs:(bi + 1) * my_bs])
                    loss, nb = self._train_batch(X[idx], Y[idx])
                    seen += nb
                    ema = loss / nb if ema is None else 0.95 * ema + 0.05 * loss / nb
                    bar.update(nb)
                    elapsed = time.perf_counter() - t0 - eval_s
                    due = val is not None and ((bi + 1) % eval_every == 0 or bi == n_batches - 1)
                    eval_s += self._report_progress(bar, val if due else None, ema, seen, elapsed, train_time, prior)
                if checkpoint is not None:
                    self.save(checkpoint)
        finally:
            bar.close()
        comm.barrier("end of fit")
        return self

    def predict_topk(self, X, k=5, mode="dense", batch_size=256):
        """Top-k labels of CSR rows X (n, input_dim), the same rows on every rank (collective).

        Each rank scores its labels ("dense": all of them; "lsh": the candidates of a
        ShardedRetriever over its shard, rebuilt after training steps) and the per-rank top-k
        are merged. Returns (scores float32 (n, k), labels int64 (n, k)), best first; ties
        go to the lower label id.
        """
        X = _as_features(X, self.input_dim)
        k = min(check_int(k, "k", 1), self.output_dim)
        mode = check_choice(mode, "mode", ("dense", "lsh"))
        batch_size = check_int(batch_size, "batch_size", 1)
        n = X.shape[0]
        n_all = self._comm.all_gather(np.array([n, k, mode == "lsh"], np.int64), "predict_topk arguments")
        if (n_all != n_all[0]).any():
            raise ValueError(f"X, k, mode: expected the same on every rank, got (rows, k, lsh) = {n_all.tolist()}")
        scores = np.empty((n, k), np.float32)
        labels = np.empty((n, k), np.int64)
        for s in range(0, n, batch_size):
            H = self._hidden(X[s:s + batch_size])[-1]
            if mode == "dense":
                sc, lb = self._retriever_or_dense(H, k, None)
            else:
                sc, lb = self._retriever_or_dense(H, k, self._sharded_retriever())
            scores[s:s + batch_size], labels[s:s + batch_size] = sc, lb
        return scores, labels

    def _retriever_or_dense(self, H, k, retriever):
        if retriever is not None:
            return retriever.topk(H, k)
        s, l = dense_topk(H, self.out_w.w, self.out_b.w, min(k, self.n_local))
        return _merge_topk(self._comm, s, l + self.label_lo, k, self.output_dim)

    def _sharded_retriever(self):
        cached = getattr(self, "_retriever", None)
        if cached is None or cached[0] != self.step:
            r = ShardedRetriever(self.out_w.w, self.out_b.w, self.label_lo, self.output_dim,
                                 distributed=self._comm.dist is not None, timeout=self._comm.timeout,
                                 seed=self.seed + 5)
            self._retriever = (self.step, r)
        return self._retriever[1]

    @property
    def nbytes(self):
        """Bytes held by this rank: replicated layers, its output shard (weights + Adam), tables, keys."""
        return int(sum(p.nbytes for p in self.layers + self.biases) + self.output_nbytes)

    @property
    def output_nbytes(self):
        """Bytes of this rank's share of the output layer: weights, Adam moments, LSH tables, keys."""
        return int(self.out_w.nbytes + self.out_b.nbytes + self.tables.nbytes + self._keys.nbytes
                   + self._dirty.nbytes)

    # -- persistence ---------------------------------------------------------------------------------
    def save(self, path):
        """Writes a checkpoint directory (collective): one shard file per rank, the replicated
        layers and a JSON manifest with the label ranges and SHA-256 of every file.

        Files carry the step in their names and the manifest is replaced last (atomically),
        so an interrupted save leaves the previous checkpoint loadable; files no manifest
        names are then removed. ``load`` reads it on any number of ranks.
        """
        comm = self._comm
        path = os.fspath(path)
        if comm.rank == 0:
            os.makedirs(path, exist_ok=True)
        comm.barrier("save: create directory")
        tag = f"step{self.step:09d}"
        shard = {"out_w.w": self.out_w.w, "out_w.m": self.out_w.m, "out_w.v": self.out_w.v,
                 "out_b.w": self.out_b.w, "out_b.m": self.out_b.m, "out_b.v": self.out_b.v,
                 "keys": self._keys, "dirty": self._dirty}
        name = f"shard-{comm.rank:05d}-of-{comm.world:05d}-{tag}.npz"
        digest = _write_npz(os.path.join(path, name), shard)
        if comm.rank == 0:
            dense = {}
            for i, p in enumerate(self.layers):
                dense.update({f"layer{i}.w": p.w, f"layer{i}.m": p.m, f"layer{i}.v": p.v})
            for i, p in enumerate(self.biases):
                dense.update({f"bias{i}.w": p.w, f"bias{i}.m": p.m, f"bias{i}.v": p.v})
            dense_name = f"dense-{tag}.npz"
            dense_digest = _write_npz(os.path.join(path, dense_name), dense)
        digests = comm.all_gather(np.frombuffer(bytes.fromhex(digest), np.uint8), "save: checksums")
        if comm.rank == 0:
            manifest = dict(format=FORMAT_VERSION, config=self._config(), world_size=comm.world, step=self.step,
                            epochs=self.epochs, rebuilds=self.rebuilds, next_rebuild=self._next_rebuild,
                            period=self._period, history=self.history,
                            dense={"file": dense_name, "sha256": dense_digest},
                            shards=[{"file": f"shard-{q:05d}-of-{comm.world:05d}-{tag}.npz",
                                     "labels": list(label_range(self.output_dim, q, comm.world)),
                                     "sha256": digests[q].tobytes().hex()} for q in range(comm.world)])
            tmp = os.path.join(path, MANIFEST + ".tmp")
            with open(tmp, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, os.path.join(path, MANIFEST))
            keep = {manifest["dense"]["file"]} | {s["file"] for s in manifest["shards"]}
            for old in glob.glob(os.path.join(path, "shard-*.npz")) + glob.glob(os.path.join(path, "dense-*.npz")):
                if os.path.basename(old) not in keep:
                    os.unlink(old)
        comm.barrier("save: manifest written")

    @classmethod
    def load(cls, path, distributed=None, timeout=300.0):
        """Loads a checkpoint directory written by ``save`` on any number of ranks (collective).

        The label ranges are re-sliced for the current world size (one process without a
        process group, or with distributed=False); each rank reads only the shard files
        overlapping its range, checking their SHA-256. ``fit`` then continues (data order
        differs from an uninterrupted run when the world size changes). Raises
        FileNotFoundError for a missing file and ValueError for a manifest that does not
        match its files or a corrupt file.
        """
        model = cls.__new__(cls)
        model._comm = _Comm(distributed, timeout)
        path = os.fspath(path)
        ok = False
        try:
            model._load_local(path)
            ok = True
        finally:
            model._comm.agree(ok, f"load {path!r}")
        model._check_same(f"load {path!r}")
        return model

    def _load_local(self, path):
        mpath = os.path.join(path, MANIFEST)
        if not os.path.isfile(mpath):
            raise FileNotFoundError(f"{path}: expected a checkpoint directory with {MANIFEST}, found none")
        try:
            with open(mpath) as f:
                man = json.load(f)
            if man.get("format") != FORMAT_VERSION:
                raise ValueError(f"expected format {FORMAT_VERSION}, got {man.get('format')}")
            cfg, shards = man["config"], man["shards"]
            self._configure(**cfg)
            self.step, self.epochs, self.rebuilds = int(man["step"]), int(man["epochs"]), int(man["rebuilds"])
            self._next_rebuild, self._period = int(man["next_rebuild"]), float(man["period"])
            self.history = list(man["history"])
            ranges = np.array([s["labels"] for s in shards], np.int64).reshape(-1, 2)
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{mpath}: not a valid hashlab.distributed manifest: {e}") from e
        if len(shards) != man["world_size"] or ranges[0, 0] != 0 or ranges[-1, 1] != self.output_dim \
                or (ranges[1:, 0] != ranges[:-1, 1]).any() or (ranges[:, 1] <= ranges[:, 0]).any():
            raise ValueError(f"{mpath}: expected {man['world_size']} shards tiling [0, {self.output_dim}), "
                             f"got label ranges {ranges.tolist()}")
        d = self.hidden[-1]
        with _open_npz(path, man["dense"]) as z:
            self.layers, self.biases = [], []
            sizes = (self.input_dim,) + self.hidden
            for i in range(len(self.hidden)):
                self.layers.append(_adam_from(z, f"layer{i}", (sizes[i], sizes[i + 1]), path))
                self.biases.append(_adam_from(z, f"bias{i}", (self.hidden[i],), path))
        parts = {k: [] for k in ("out_w.w", "out_w.m", "out_w.v", "out_b.w", "out_b.m", "out_b.v", "keys", "dirty")}
        for s, (lo, hi) in zip(shards, ranges):
            a, b = max(lo, self.label_lo), min(hi, self.label_hi)
            if a >= b:
                continue
            with _open_npz(path, s) as z:
                for key in parts:
                    arr = z[key]
                    want = (hi - lo,) + ((d,) if key.startswith("out_w") else (self.l,) if key == "keys" else ())
                    if arr.shape != want:
                        raise ValueError(f"{os.path.join(path, s['file'])}: {key} has shape {arr.shape}, "
                                         f"expected {want} from the manifest")
                    parts[key].append(arr[a - lo:b - lo])
        cat = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}
        self.out_w, self.out_b = _Adam.__new__(_Adam), _Adam.__new__(_Adam)
        for part in "wmv":
            setattr(self.out_w, part, cat[f"out_w.{part}"].astype(np.float32, copy=False))
            setattr(self.out_b, part, cat[f"out_b.{part}"].astype(np.float32, copy=False))
        self._build_tables(cat["keys"].astype(np.uint32, copy=False))
        self._dirty = cat["dirty"].astype(np.uint8, copy=False)

    def __repr__(self):
        return (f"ShardedSparseMLP(input_dim={self.input_dim}, output_dim={self.output_dim}, hidden={self.hidden}, "
                f"rank={self.rank}/{self.world_size}, labels=[{self.label_lo}, {self.label_hi}), "
                f"target_active={self.target_active}, step={self.step})")


def _write_npz(path, arrays):
    """Atomic np.savez (temporary file + rename); returns the file's SHA-256 (hex)."""
    atomic_savez(path, arrays)
    return _sha256(path)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _open_npz:
    """np.load of a manifest entry after checking its SHA-256; ValueError if corrupt."""

    def __init__(self, folder, entry):
        self.path = os.path.join(folder, os.path.basename(str(entry["file"])))
        self.want = str(entry["sha256"])

    def __enter__(self):
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: listed in the manifest but missing")
        if _sha256(self.path) != self.want:
            raise ValueError(f"{self.path}: SHA-256 differs from the manifest's (corrupt, or from another save)")
        try:
            self.z = np.load(self.path, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{self.path}: not a readable .npz shard: {e}") from e
        return self.z

    def __exit__(self, *exc):
        self.z.close()


def _adam_from(z, name, shape, path):
    p = _Adam.__new__(_Adam)
    for part in "wmv":
        key = f"{name}.{part}"
        if key not in z.files or z[key].shape != shape:
            raise ValueError(f"{path}: {key} missing or not of shape {shape}")
        setattr(p, part, np.ascontiguousarray(z[key], dtype=np.float32))
    return p
