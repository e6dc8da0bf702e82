"""Collectives on numpy arrays over torch.distributed (gloo), with failures named by step and rank."""
from __future__ import annotations

import datetime
import time

import numpy as np

from .._validate import check_float


def _group_rank_world():
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
