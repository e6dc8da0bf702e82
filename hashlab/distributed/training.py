"""Label-sharded SLIDE training: ShardedSparseMLP (the algorithm is in hashlab.distributed's docstring)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import numpy as np
import scipy.sparse as sp

from .. import _C
from .._validate import check_choice, check_float, check_int
from ..retrieval import dense_topk
from ..slide import HASHES, SparseMLP, _Adam, _as_features, _as_labels, _uniform
from ..train_control import SCHEDULES, lr_factor
from .checkpoint import read_checkpoint, write_checkpoint
from .comm import _Comm
from .retriever import ShardedRetriever, _merge_topk
from .sharding import label_range

_B1, _B2, _EPS = 0.9, 0.999, 1e-8


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
    See the module docstring for the algorithm and the data split. Unlike SparseMLP,
    target_active=None never switches to the full softmax (each rank's share is fixed here).
    """

    _AUTO_FULL = False

    def __init__(self, input_dim, output_dim, hidden=None, activation="relu", hash="simhash", k=None, l=None,
                 target_active=None, lr=5e-3, seed=0, bucket_capacity=None, rebuild_first=50,
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
        _C.adam_rows(W.w, W.m, W.v, touched, G, self.lr * self._lr_scale, _B1, _B2, _EPS, t)
        _C.adam_rows(b.w, b.m, b.v, touched, np.ascontiguousarray(gb, np.float32).reshape(-1, 1),
                     self.lr * self._lr_scale, _B1, _B2, _EPS, t)
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
            self.biases[i].dense_step(gbias, self.lr * self._lr_scale, _B1, _B2, _EPS, t)
            if i > 0:
                shp = self.layers[i].w.shape
                gW = flat[pos:pos + shp[0] * shp[1]].reshape(shp)
                pos += gW.size
                self.layers[i].dense_step(gW, self.lr * self._lr_scale, _B1, _B2, _EPS, t)
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
            _C.adam_rows(L0.w, L0.m, L0.v, frows[starts], Gin, self.lr * self._lr_scale, _B1, _B2, _EPS, t)
        tm["replicated"] = tm.get("replicated", 0.0) + t_rep + time.perf_counter() - th
        self.step = t
        if self.step >= self._next_rebuild:
            self._rehash()
        return loss, n

    # -- public API ------------------------------------------------------------------------------
    def fit(self, X, Y, epochs=1, batch_size=256, validation=None, checkpoint=None, eval_every=None,
            eval_size=2000, verbose=True, lr_schedule="linear", warmup=0.05):
        """Trains on this rank's rows X (m, input_dim) CSR float32 with labels Y (collective).

        Each global batch of ``batch_size`` rows takes about batch_size / world_size rows from
        every rank's slice, shuffled per epoch (see the module docstring). validation: optional
        (X_val, Y_val), the same rows on every rank; P@1 on up to ``eval_size`` of them every
        ``eval_every`` batches and at the end of each epoch goes to ``self.history`` (time,
        step, samples, loss moving average, P@1). checkpoint: a directory ``save``d after
        every epoch. lr_schedule / warmup: as SparseMLP.fit, over the planned epochs (the same
        factor on every rank). Returns self.
        """
        comm = self._comm
        X = _as_features(X, self.input_dim)
        m = X.shape[0]
        Y = _as_labels(Y, m, self.output_dim) if m else sp.csr_matrix((0, self.output_dim), dtype=np.float32)
        epochs = check_int(epochs, "epochs", 0)
        batch_size = check_int(batch_size, "batch_size", comm.world)
        eval_size = check_int(eval_size, "eval_size", 1)
        lr_schedule = check_choice(lr_schedule, "lr_schedule", SCHEDULES)
        warmup = check_float(warmup, "warmup", 0.0, 1.0, hi_open=True)
        counts = comm.all_gather(np.array([m], np.int64), "data set sizes")[:, 0]
        if counts.sum() == 0:
            raise ValueError("X: expected at least one row over all ranks, got an empty data set")
        lbs = np.array([batch_size * (q + 1) // comm.world - batch_size * q // comm.world
                        for q in range(comm.world)])
        n_batches = int((-(-counts // lbs)).max())
        eval_every = max(1, n_batches // 10) if eval_every is None else check_int(eval_every, "eval_every", 1)
        if validation is not None and not isinstance(validation, (tuple, list)):
            raise TypeError("validation: expected a tuple (X_val, Y_val), the same rows on every rank")
        val = self._split_validation(X, Y, validation, eval_size)[2]
        from tqdm.auto import tqdm

        my_bs = int(lbs[comm.rank])
        bar = tqdm(total=epochs * int(counts.sum()), unit="samples", disable=not verbose or comm.rank != 0,
                   dynamic_ncols=True)
        comm.barrier("start of fit")
        t0 = time.perf_counter()
        seen, ema, eval_s, done = 0, None, 0.0, 0
        train_time, prior = (self.history[-1]["time"], self.history[-1]["samples"]) if self.history else (0.0, 0)
        try:
            for _ in range(epochs):
                order = np.random.default_rng([self.seed + 1, self.rank, self.epochs]).permutation(m)
                self.epochs += 1
                for bi in range(n_batches):
                    self._lr_scale = lr_factor(lr_schedule, done / max(1, epochs * n_batches), warmup)
                    done += 1
                    idx = np.sort(order[bi * my_bs:(bi + 1) * my_bs])
                    loss, nb = self._train_batch(X[idx], Y[idx])
                    seen += nb
                    ema = loss / nb if ema is None else 0.95 * ema + 0.05 * loss / nb
                    bar.update(nb)
                    elapsed = time.perf_counter() - t0 - eval_s
                    due = val is not None and ((bi + 1) % eval_every == 0 or bi == n_batches - 1)
                    eval_s += self._report_progress(bar, val if due else None, ema, seen, elapsed, train_time, prior)[0]
                if checkpoint is not None:
                    self.save(checkpoint)
        finally:
            bar.close()
            self._lr_scale = 1.0
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
        write_checkpoint(self, path)

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
            read_checkpoint(model, path)
            ok = True
        finally:
            model._comm.agree(ok, f"load {path!r}")
        model._check_same(f"load {path!r}")
        return model

    def __repr__(self):
        return (f"ShardedSparseMLP(input_dim={self.input_dim}, output_dim={self.output_dim}, hidden={self.hidden}, "
                f"rank={self.rank}/{self.world_size}, labels=[{self.label_lo}, {self.label_hi}), "
                f"target_active={self.target_active}, step={self.step})")
