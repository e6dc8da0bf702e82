#!/usr/bin/env python
"""Hashing benchmarks: hashlab against its peers, side by side in one process.

1. SimHash keys (d=128, k=10, l=150: MagicPIG's shape): hashlab gaussian and hadamard
   vs numpy and torch (X @ W > 0, then packing), hadamard's collision rate vs 1 - theta/pi,
   numpy's sgemm alone for scale.
2. 1024 sign bits per row: hashlab SimHash.bits vs faiss IndexLSH (rotation + signs).
3. DWTA on very sparse rows (135,909 features, ~75 non-zeros; no peer), and densified
   MinHash vs datasketch.
4. LSH table queries vs faiss IndexBinaryMultiHash on the same binary codes (candidate
   sets checked equal).

Every library runs on the same number of threads (default 2). Results go to
benchmarks/results/hashing.{json,md}; ``--update-readme`` also rewrites the section
between ``<!-- hashing:begin -->`` and ``<!-- hashing:end -->`` of benchmarks/README.md.

Usage:  python benchmarks/bench_hashing.py [--quick] [--threads N] [--out DIR] [--update-readme]
From Python:  run(quick=False, threads=2, out_dir=None) -> results dict.

A peer that cannot be imported is reported as "not available: <error>"; a mismatch
between hashlab's output and a peer's (keys, candidate sets) is reported as FAILED and
makes main() exit with status 1.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import traceback

if __package__:
    from . import _common as C
else:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _common as C

DEFAULT_THREADS = 2


def _argv_threads(argv):
    for i, a in enumerate(argv):
        if a == "--threads" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--threads="):
            return a.split("=", 1)[1]
    return str(DEFAULT_THREADS)


# OpenMP/OpenBLAS/MKL read these once, when loaded: set them before numpy is imported.
C.limit_threads_env(_argv_threads(sys.argv) if __name__ == "__main__" else DEFAULT_THREADS)

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

hashlab = C.import_hashlab()

MAGICPIG_NOTE = "MagicPIG's CPU path takes 16 s per layer to hash 96K keys on this machine"

CONFIGS = {
    "full": dict(n_simhash=100_000, n_pairs=5_000, n_dwta=200_000, n_minhash=100_000, n_ds_pairs=100,
                 n_table=100_000, n_query=10_000, repeat=3),
    "quick": dict(n_simhash=50_000, n_pairs=2_000, n_dwta=100_000, n_minhash=50_000, n_ds_pairs=25,
                  n_table=100_000, n_query=10_000, repeat=2),
}
KEY_MATCH_MIN = 0.999  # fraction of keys that must equal hashlab's (bits within rounding of 0 may flip)
ANGLES = (0.3, math.pi / 3, math.pi / 2, 2.5)


class Report:
    """Collects table rows, checks and failures of one run."""

    def __init__(self):
        self.rows = []      # (task, hashlab, peer, speed-up, target)
        self.checks = []    # (name, value, ok)
        self.failures = []  # FAILED: mismatches
        self.errors = []    # unexpected exceptions
        self.notes = []

    def row(self, task, ours, peer, speedup=None, target=None, met=None, failed=False):
        """One table row; failed=True marks a row whose outputs did not match (FAILED)."""
        if failed:
            sp_txt = "**FAILED** (outputs differ)"
        elif speedup is None:
            sp_txt = "-"
        elif isinstance(speedup, str):
            sp_txt = speedup
        else:
            sp_txt = f"{speedup:.0f}x" if speedup >= 100 else f"{speedup:.2f}x"
        if target is None:
            tg = "-"
        elif failed:
            tg = f"{target}: n/a"
        else:
            tg = f"{target}: " + ("met" if met else "**missed**")
        self.rows.append([task, ours, peer, sp_txt, tg])

    def check(self, name, value, ok):
        self.checks.append([name, value, "ok" if ok else "**FAILED**"])
        if not ok:
            self.failures.append(f"{name}: {value}")
            C.progress(f"FAILED: {name}: {value}")


def _missing(e):
    return f"not available: {type(e).__name__}: {e}"


def _ratio(peer_t, ours_t):
    return peer_t / ours_t if ours_t and peer_t else None


# ---------------------------------------------------------------------------
# 1. SimHash keys
# ---------------------------------------------------------------------------

def numpy_keys_fmatvec(X, W, k, l, chunk=16384):
    """(X @ W > 0), each table's k bits packed by a float32 mat-vec with powers of two
    (exact below 2^24), chunked so that the projections stay small."""
    n = X.shape[0]
    out = np.empty((n, l), dtype=np.uint32)
    pw = (2.0 ** np.arange(k)).astype(np.float32)
    for s in range(0, n, chunk):
        B = np.matmul(X[s:s + chunk], W) > 0
        out[s:s + chunk] = (B.reshape(-1, k).astype(np.float32) @ pw).reshape(-1, l)
    return out


def numpy_sgemm_only(X, W, chunk=16384):
    """The product X @ W alone, in the peers' chunks, into one reused buffer (so that it
    measures the multiply, not page faults on a fresh (n, k*l) result)."""
    buf = np.empty((min(chunk, X.shape[0]), W.shape[1]), dtype=np.float32)
    for s in range(0, X.shape[0], chunk):
        c = min(chunk, X.shape[0] - s)
        np.matmul(X[s:s + c], W, out=buf[:c])
    return None


def numpy_keys_packbits(X, W, k, l, chunk=16384):
    """(X @ W > 0) packed little-endian with np.packbits, then each k-bit field read
    from the bytes that hold it (gather + shifts)."""
    n = X.shape[0]
    out = np.empty((n, l), dtype=np.uint32)
    off = k * np.arange(l)
    byte, shift = off // 8, (off % 8).astype(np.uint32)
    nb = (7 + k + 7) // 8  # bytes spanned by a field at any shift
    mask = np.uint32((1 << k) - 1) if k < 32 else np.uint32(0xFFFFFFFF)
    for s in range(0, n, chunk):
        P = np.packbits(np.matmul(X[s:s + chunk], W) > 0, axis=1, bitorder="little")
        P = np.concatenate([P, np.zeros((P.shape[0], nb), np.uint8)], axis=1)
        v = P[:, byte].astype(np.uint32)
        for j in range(1, nb):
            v |= P[:, byte + j].astype(np.uint32) << np.uint32(8 * j)
        out[s:s + chunk] = (v >> shift) & mask
    return out


def torch_keys(Xt, Wt, k, l, chunk=16384):
    import torch
    n = Xt.shape[0]
    out = torch.empty((n, l), dtype=torch.int64)
    pw = torch.tensor([float(1 << i) for i in range(k)], dtype=torch.float32)
    for s in range(0, n, chunk):
        B = torch.matmul(Xt[s:s + chunk], Wt) > 0
        out[s:s + chunk] = (B.view(-1, k).to(torch.float32) @ pw).view(-1, l).to(torch.int64)
    return out


def unit_pairs(rng, m, d, theta):
    """m pairs of unit vectors (x, y) in R^d at angle exactly theta."""
    x = rng.standard_normal((m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    u = rng.standard_normal((m, d))
    u -= (u * x).sum(1, keepdims=True) * x
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    y = math.cos(theta) * x + math.sin(theta) * u
    return x.astype(np.float32), y.astype(np.float32)


def bit_collision_rate(h, x, y):
    """Fraction of the h.nbits sign bits on which x and y agree (over all pairs)."""
    nb = h.nbits
    bx = np.unpackbits(h.bits(x).view(np.uint8), axis=1, bitorder="little")[:, :nb]
    by = np.unpackbits(h.bits(y).view(np.uint8), axis=1, bitorder="little")[:, :nb]
    return float((bx == by).mean())


def bench_simhash(cfg, rep, res):
    from hashlab import SimHash
    d, k, l, n, r = 128, 10, 150, cfg["n_simhash"], cfg["repeat"]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d), dtype=np.float32)
    task = f"SimHash keys d={d} k={k} l={l}, n={n:,}"
    flops = 2.0 * n * d * k * l

    hg = SimHash(d, k, l, kind="gaussian", seed=0)
    hh = SimHash(d, k, l, kind="hadamard", seed=0)
    W = np.ascontiguousarray(hg.W[:, :k * l])
    # everything timed round-robin, so that all see the same background load
    fns = {"gaussian": lambda: hg.hash(X), "hadamard": lambda: hh.hash(X),
           "sgemm": lambda: numpy_sgemm_only(X, W),
           "numpy fmatvec": lambda: numpy_keys_fmatvec(X, W, k, l),
           "numpy packbits": lambda: numpy_keys_packbits(X, W, k, l)}
    try:
        import torch
        Xt, Wt = torch.from_numpy(X), torch.from_numpy(W)
        fns["torch"] = lambda: torch_keys(Xt, Wt, k, l).numpy().astype(np.uint32)
    except ImportError as e:
        res["torch"] = _missing(e)
    T = C.compare_times(fns, r)
    (t_g, ts, keys), (t_h, ts_h, _), t_sgemm = T["gaussian"], T["hadamard"], T["sgemm"][0]
    res.update(n=n, d=d, k=k, l=l, hashlab_gaussian_s=t_g, hashlab_gaussian_all_s=ts,
               hashlab_hadamard_s=t_h, hashlab_hadamard_all_s=ts_h,
               hashlab_gaussian_gflops=flops / t_g / 1e9,
               numpy_sgemm_s=t_sgemm, numpy_sgemm_gflops=flops / t_sgemm / 1e9)
    ours = f"gaussian: {C.fmt_time(t_g)} ({C.fmt_rate(n / t_g)})"

    # numpy peer: the faster of two packing schemes, both checked against hashlab
    res["numpy"] = {}
    for name in ("fmatvec", "packbits"):
        t, times, kn = T[f"numpy {name}"]
        eq = float((kn == keys).mean())
        res["numpy"][name] = dict(seconds=t, all_seconds=times, keys_equal_fraction=eq)
        rep.check(f"numpy ({name}) keys == hashlab gaussian keys", f"{eq:.6f} equal (need > {KEY_MATCH_MIN})",
                  eq > KEY_MATCH_MIN)
    # the fastest variant whose keys match (all variants when none does: reported FAILED)
    good = [v for v in res["numpy"] if res["numpy"][v]["keys_equal_fraction"] > KEY_MATCH_MIN] or list(res["numpy"])
    best = min(good, key=lambda v: res["numpy"][v]["seconds"])
    t_np = res["numpy"][best]["seconds"]
    bad = res["numpy"][best]["keys_equal_fraction"] <= KEY_MATCH_MIN
    res["numpy_best"] = best
    sp_np = _ratio(t_np, t_g)
    res["speedup_vs_numpy"] = sp_np
    rep.row(task, ours, f"numpy X@W>0 + pack ({best}): {C.fmt_time(t_np)}", sp_np, ">= 1.0x", sp_np >= 1.0,
            failed=bad)

    if "torch" in T:
        t_t, times, kt = T["torch"]
        eq = float((kt == keys).mean())
        res["torch"] = dict(seconds=t_t, all_seconds=times, keys_equal_fraction=eq)
        rep.check("torch keys == hashlab gaussian keys", f"{eq:.6f} equal (need > {KEY_MATCH_MIN})",
                  eq > KEY_MATCH_MIN)
        sp_t = _ratio(t_t, t_g)
        res["speedup_vs_torch"] = sp_t
        rep.row(task, ours, f"torch matmul>0 + pack: {C.fmt_time(t_t)}", sp_t, failed=eq <= KEY_MATCH_MIN)
    else:
        rep.row(task, ours, "torch: " + res["torch"])

    sp_sg = _ratio(t_sgemm, t_g)
    rep.row(f"same product X@W alone ({C.fmt_rate(flops, 'FLOP')})",
            f"gaussian (keys): {res['hashlab_gaussian_gflops']:.1f} GFLOP/s effective",
            f"numpy sgemm only (X@W into a buffer): {C.fmt_time(t_sgemm)}, "
            f"{res['numpy_sgemm_gflops']:.1f} GFLOP/s", sp_sg)

    sp_h = _ratio(t_g, t_h)
    res["hadamard_speedup_vs_gaussian"] = sp_h

    # collision rates vs 1 - theta/pi
    m = cfg["n_pairs"]
    prng = np.random.default_rng(1)
    coll = {}
    for theta in ANGLES:
        x, y = unit_pairs(prng, m, d, theta)
        coll[f"{theta:.4f}"] = dict(theory=1 - theta / math.pi, hadamard=bit_collision_rate(hh, x, y),
                                    gaussian=bit_collision_rate(hg, x, y))
    dev_h = max(abs(v["hadamard"] - v["theory"]) for v in coll.values())
    dev_g = max(abs(v["gaussian"] - v["theory"]) for v in coll.values())
    res.update(collision=coll, collision_pairs=m, hadamard_max_dev=dev_h, gaussian_max_dev=dev_g)
    rep.row(task, f"hadamard: {C.fmt_time(t_h)} ({C.fmt_rate(n / t_h)})",
            f"hashlab gaussian: {C.fmt_time(t_g)}", sp_h, ">= 5x", sp_h >= 5)
    angles = ", ".join(f"{float(a):.2f}" for a in coll)
    rep.row(f"per-bit collision vs 1 - theta/pi, theta in {{{angles}}}, {m:,} pairs each",
            f"hadamard max abs dev {dev_h:.4f}", f"gaussian max abs dev {dev_g:.4f}", None, "<= 0.02",
            dev_h <= 0.02)
    per96k = 96_000 / n
    rep.notes.append(f"{MAGICPIG_NOTE} (same shape: d=128, K=10, L=150); hashlab hashes {n:,} such rows in "
                     f"{C.fmt_time(t_g)} (gaussian) / {C.fmt_time(t_h)} (hadamard), i.e. ~{C.fmt_time(t_g * per96k)}"
                     f" / ~{C.fmt_time(t_h * per96k)} per 96K keys.")


# ---------------------------------------------------------------------------
# 2. 1024 bits vs faiss IndexLSH
# ---------------------------------------------------------------------------

def bench_indexlsh(cfg, rep, res):
    from hashlab import SimHash
    d, nbits, n, r = 128, 1024, cfg["n_simhash"], cfg["repeat"]
    X = np.random.default_rng(2).standard_normal((n, d), dtype=np.float32)
    task = f"{nbits} sign bits per row, d={d}, n={n:,}"
    fns, setups = {}, {}
    for kind in ("gaussian", "hadamard"):
        h = SimHash(d, 32, 32, kind=kind, seed=0)
        fns[kind] = lambda h=h: h.bits(X).shape
    try:
        import faiss
        try:
            index = faiss.IndexLSH(d, nbits, rotate_data=True, train_thresholds=False)
        except TypeError:  # the SWIG constructor takes them positionally
            index = faiss.IndexLSH(d, nbits, True, False)
        index.train(X)
        fns["faiss"], setups["faiss"] = (lambda: index.add(X)), index.reset
    except ImportError as e:
        res["faiss"] = _missing(e)
    T = C.compare_times(fns, r, setups=setups)
    times = {kind: T[kind][0] for kind in ("gaussian", "hadamard")}
    res.update(n=n, nbits=nbits, hashlab_gaussian_s=times["gaussian"], hashlab_hadamard_s=times["hadamard"])
    if "faiss" not in T:
        for kind in times:
            rep.row(task, f"{kind}: {C.fmt_time(times[kind])}", "faiss IndexLSH: " + res["faiss"])
        return
    t_f = T["faiss"][0]
    res["faiss_add_s"] = t_f
    for kind in ("gaussian", "hadamard"):
        s = _ratio(t_f, times[kind])
        res[f"speedup_{kind}_vs_faiss"] = s
        rep.row(task, f"SimHash(k=32, l=32, {kind}).bits: {C.fmt_time(times[kind])} "
                f"({C.fmt_rate(n / times[kind])})",
                f"faiss IndexLSH(rotate_data).add: {C.fmt_time(t_f)}", s, ">= 1.5x", s >= 1.5)


# ---------------------------------------------------------------------------
# 3. DWTA and MinHash
# ---------------------------------------------------------------------------

def random_sparse_rows(rng, n, dim, nnz, values=True):
    """CSR (n, dim) float32 with ~nnz distinct random columns per row (canonical format)."""
    cols = np.sort(rng.integers(0, dim, size=(n, nnz), dtype=np.int64), axis=1)
    keep = np.ones((n, nnz), dtype=bool)
    keep[:, 1:] = cols[:, 1:] != cols[:, :-1]  # drop the rare duplicate ids
    counts = keep.sum(1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = cols[keep].astype(np.int32)
    data = (rng.random(indices.size, dtype=np.float32) + np.float32(1e-3)) if values \
        else np.ones(indices.size, dtype=np.float32)
    X = sp.csr_matrix((data, indices, indptr), shape=(n, dim))
    X.has_canonical_format = True  # sorted, unique by construction
    return X


def bench_dwta(cfg, rep, res):
    from hashlab.wta import DWTAHash
    dim, k, l, m, n, r = 135_909, 6, 50, 8, cfg["n_dwta"], cfg["repeat"]
    X = random_sparse_rows(np.random.default_rng(3), n, dim, 75)
    h = DWTAHash(dim, k, l, bin_size=m, seed=0)
    t, _, keys = C.best_time(lambda: h.hash(X), r)
    rate = n / t
    res.update(n=n, dim=dim, k=k, l=l, bin_size=m, mean_nnz=X.nnz / n, seconds=t, rows_per_s=rate,
               distinct_keys_table0=int(np.unique(keys[:, 0]).size))
    rep.row(f"DWTA keys, dim={dim:,}, ~{X.nnz / n:.0f} nnz/row, k={k} l={l} bin {m}, n={n:,}",
            f"{C.fmt_time(t)} ({C.fmt_rate(rate)})", "no peer exists (rows/s only)", None, ">= 1M rows/s",
            rate >= 1e6)


def bench_minhash(cfg, rep, res):
    from hashlab.minhash import MinHash
    k, l, universe, size, r = 4, 32, 1 << 20, 100, cfg["repeat"]
    num_perm = k * l
    rng = np.random.default_rng(4)
    h = MinHash(k, l, seed=0)
    n = cfg["n_minhash"]
    S = random_sparse_rows(rng, n, universe, size, values=False)
    t, _, _ = C.best_time(lambda: h.signatures(S), r)
    rate = n / t
    res.update(k=k, l=l, num_perm=num_perm, set_size=size, n_sets=n, hashlab_s=t, hashlab_sets_per_s=rate)
    task = f"MinHash signatures, {num_perm} values, sets of ~{size}"
    ours = f"MinHash(k={k}, l={l}).signatures: {C.fmt_rate(rate, 'sets/s')} ({n:,} sets)"

    # pairs with a known Jaccard similarity: shared s of `size` elements, J = s / (2*size - s)
    n_pairs, shared = cfg["n_ds_pairs"], 67
    j_true = shared / (2 * size - shared)
    sets = []
    for _ in range(n_pairs):
        elems = rng.choice(universe, size=2 * size - shared, replace=False)
        sets.append(np.sort(elems[:size]))
        sets.append(np.sort(elems[size - shared:]))
    indptr = np.arange(0, size * len(sets) + 1, size, dtype=np.int64)
    P = sp.csr_matrix((np.ones(indptr[-1], np.float32), np.concatenate(sets).astype(np.int32), indptr),
                      shape=(len(sets), universe))
    sig = h.signatures(P)
    est_h = (sig[0::2] == sig[1::2]).mean(1)
    res.update(jaccard_true=j_true, hashlab_jaccard_mean=float(est_h.mean()),
               hashlab_jaccard_mae=float(np.abs(est_h - j_true).mean()))
    ok = abs(est_h.mean() - j_true) < 0.05
    rep.check(f"hashlab MinHash Jaccard estimate ({n_pairs} pairs, J={j_true:.3f})",
              f"mean {est_h.mean():.3f}, mean abs err {res['hashlab_jaccard_mae']:.3f}", ok)
    try:
        import datasketch
    except ImportError as e:
        res["datasketch"] = _missing(e)
        rep.row(task, ours, "datasketch: " + _missing(e))
        return
    byte_sets = [[int(e).to_bytes(8, "little") for e in s] for s in sets]  # encoding not timed

    def per_element():
        out = []
        for s in byte_sets:
            mh = datasketch.MinHash(num_perm=num_perm, seed=1)
            for b in s:
                mh.update(b)
            out.append(mh)
        return out

    def batch():
        out = []
        for s in byte_sets:
            mh = datasketch.MinHash(num_perm=num_perm, seed=1)
            mh.update_batch(s)
            out.append(mh)
        return out

    t_e, _, mhs = C.best_time(per_element, r)
    est_d = np.array([mhs[2 * i].jaccard(mhs[2 * i + 1]) for i in range(n_pairs)])
    res["datasketch"] = dict(n_sets=len(sets), per_element_s=t_e, per_element_sets_per_s=len(sets) / t_e,
                             jaccard_mean=float(est_d.mean()), jaccard_mae=float(np.abs(est_d - j_true).mean()))
    s_e = rate / (len(sets) / t_e)
    res["speedup_vs_datasketch_update"] = s_e
    rep.row(task, ours, f"datasketch MinHash.update per element: {C.fmt_rate(len(sets) / t_e, 'sets/s')} "
            f"({len(sets)} sets)", s_e)
    if hasattr(datasketch.MinHash, "update_batch"):
        t_b, _, _ = C.best_time(batch, r)
        res["datasketch"].update(update_batch_s=t_b, update_batch_sets_per_s=len(sets) / t_b)
        s_b = rate / (len(sets) / t_b)
        res["speedup_vs_datasketch_update_batch"] = s_b
        rep.row(task, ours, f"datasketch MinHash.update_batch: {C.fmt_rate(len(sets) / t_b, 'sets/s')}", s_b)
    rep.checks.append([f"Jaccard estimate, datasketch ({n_pairs} pairs, J={j_true:.3f})",
                       f"mean {est_d.mean():.3f}, mean abs err {res['datasketch']['jaccard_mae']:.3f}", "info"])


# ---------------------------------------------------------------------------
# 4. LSH tables vs faiss IndexBinaryMultiHash
# ---------------------------------------------------------------------------

def _csr_pairs(indptr, ids):
    """(query, id) pairs of a CSR result, sorted: equal arrays <=> equal candidate sets."""
    indptr = np.asarray(indptr, dtype=np.int64)
    q = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    ids = np.asarray(ids, dtype=np.int64)
    o = np.lexsort((ids, q))
    return q[o], ids[o]


def bench_tables(cfg, rep, res):
    from hashlab import SimHash
    from hashlab.tables import LSHTables
    d, k, l, n, nq, r = 128, 16, 8, cfg["n_table"], cfg["n_query"], cfg["repeat"]
    rng = np.random.default_rng(5)
    X = rng.standard_normal((n, d), dtype=np.float32)
    Q = rng.standard_normal((nq, d), dtype=np.float32)
    h = SimHash(d, k, l, seed=0)
    keys, qkeys = h.hash(X), h.hash(Q)
    ids = np.arange(n, dtype=np.int32)
    task = f"table queries, {l} tables x {k} bits, n={n:,}, {nq:,} queries"
    res.update(n=n, n_query=nq, k=k, l=l)

    nb = k * l
    try:
        import faiss
    except ImportError as e:
        faiss = None
        res["faiss"] = _missing(e)

    # builds, then queries, each timed round-robin with the peer
    holder = {}

    def fresh():
        holder["T"] = LSHTables(h, bucket_capacity=65535, range_bits=16)

    def ffresh():
        holder["I"] = faiss.IndexBinaryMultiHash(nb, l, k)

    fns, setups = {"hashlab": lambda: holder["T"].insert_keys(ids, keys)}, {"hashlab": fresh}
    if faiss is not None:
        codes = np.ascontiguousarray(np.ascontiguousarray(h.bits(X)).view(np.uint8)[:, :nb // 8])
        qcodes = np.ascontiguousarray(np.ascontiguousarray(h.bits(Q)).view(np.uint8)[:, :nb // 8])
        fns["faiss"], setups["faiss"] = (lambda: holder["I"].add(codes)), ffresh
    B = C.compare_times(fns, r, setups=setups)
    T, t_ins = holder["T"], B["hashlab"][0]
    st = T.stats()
    rep.check("hashlab tables dropped nothing (bucket_capacity 65535)", f"{st['dropped']} dropped",
              st["dropped"] == 0)
    nbytes = T.nbytes
    Tf = LSHTables(h, bucket_capacity=65535, range_bits=16)  # a second copy, frozen
    Tf.insert_keys(ids, keys)
    t_fr, _, _ = C.best_time(Tf.freeze, r, setup=Tf.thaw)
    nbytes_f = Tf.nbytes

    fns = {"hashlab": lambda: T.query_keys(qkeys, min_collisions=1),
           "hashlab frozen": lambda: Tf.query_keys(qkeys, min_collisions=1)}
    if faiss is not None:
        index = holder["I"]
        fns["faiss"] = lambda: index.range_search(qcodes, nb)  # radius nb: every candidate
    Q_ = C.compare_times(fns, r)
    t_q, _, (ip, hid, cnt) = Q_["hashlab"]
    t_qf, _, (ipf, hidf, cntf) = Q_["hashlab frozen"]
    same = (np.array_equal(ip, ipf) and np.array_equal(hid, hidf) and np.array_equal(cnt, cntf))
    rep.check("hashlab frozen query == thawed query (ids, counts, order)", "identical" if same else "differ",
              same)
    res.update(hashlab_insert_s=t_ins, hashlab_query_s=t_q, hashlab_freeze_s=t_fr, hashlab_frozen_query_s=t_qf,
               hashlab_nbytes=nbytes, hashlab_frozen_nbytes=nbytes_f, mean_candidates=float(ip[-1]) / nq,
               code_bytes=n * nb // 8)
    if faiss is None:
        rep.row(task, f"{C.fmt_rate(nq / t_q, 'q/s')}; frozen {C.fmt_rate(nq / t_qf, 'q/s')}",
                "faiss: " + res["faiss"], failed=not same)
        return
    t_fadd = B["faiss"][0]
    t_fq, _, (lims, _, fI) = Q_["faiss"]
    a, b = _csr_pairs(ip, hid), _csr_pairs(lims, fI)
    equal = all(np.array_equal(x, y) for x, y in zip(a, b))
    if not equal:
        nbad = sum(1 for i in range(nq) if not np.array_equal(
            np.sort(hid[ip[i]:ip[i + 1]]), np.sort(fI[lims[i]:lims[i + 1]])))
        detail = f"{nbad} of {nq:,} queries differ ({a[1].size:,} hashlab vs {b[1].size:,} faiss candidates)"
    else:
        detail = f"all {nq:,} queries equal ({a[1].size:,} candidates)"
    rep.check("candidate sets hashlab == faiss IndexBinaryMultiHash (same codes)", detail, equal)
    res.update(faiss_add_s=t_fadd, faiss_query_s=t_fq, candidate_sets_equal=bool(equal),
               speedup_query_vs_faiss=_ratio(t_fq, t_q), speedup_frozen_query_vs_faiss=_ratio(t_fq, t_qf),
               speedup_insert_vs_faiss=_ratio(t_fadd, t_ins))
    peer = f"faiss IndexBinaryMultiHash range_search: {C.fmt_rate(nq / t_fq, 'q/s')}"
    rep.row(task, f"query_keys: {C.fmt_rate(nq / t_q, 'q/s')} ({ip[-1] / nq:.1f} candidates/query)", peer,
            res["speedup_query_vs_faiss"], ">= 2x", res["speedup_query_vs_faiss"] >= 2, failed=not equal)
    rep.row(task, f"frozen query_keys: {C.fmt_rate(nq / t_qf, 'q/s')} (freeze {C.fmt_time(t_fr)})", peer,
            res["speedup_frozen_query_vs_faiss"], ">= 2x", res["speedup_frozen_query_vs_faiss"] >= 2,
            failed=not (equal and same))
    rep.row(f"table build, {n:,} ids x {l} tables", f"insert_keys: {C.fmt_time(t_ins)}; "
            f"nbytes {C.fmt_bytes(nbytes)} (frozen {C.fmt_bytes(nbytes_f)}) for {C.fmt_bytes(codes.nbytes)} "
            f"of codes", f"faiss add: {C.fmt_time(t_fadd)}", res["speedup_insert_vs_faiss"])


# ---------------------------------------------------------------------------

SECTIONS = (
    ("simhash", "1. SimHash keys vs numpy/torch", bench_simhash),
    ("indexlsh", "2. 1024 bits vs faiss IndexLSH", bench_indexlsh),
    ("dwta", "3a. DWTA on sparse rows", bench_dwta),
    ("minhash", "3b. MinHash vs datasketch", bench_minhash),
    ("tables", "4. LSH tables vs faiss IndexBinaryMultiHash", bench_tables),
)


def render_markdown(results) -> str:
    rep = results["_report"]
    lines = [f"Machine: {C.machine_line(results['machine'])}. Mode: {results['mode']}; times are best of "
             f"{results['config']['repeat']} after a warm-up; speed-up = peer time / hashlab time "
             f"(> 1: hashlab faster).", ""]
    lines.append(C.markdown_table(["Benchmark", "hashlab", "Peer", "Speed-up", "Target"], rep.rows))
    if rep.checks:
        lines.append(C.markdown_table(["Check", "Result", "Status"], rep.checks))
    for key, title, _ in SECTIONS:
        st = results["sections"][key]["status"]
        if st != "ok":
            lines.append(f"- {title}: **{st}**")
    for note in rep.notes:
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def run(quick=False, threads=DEFAULT_THREADS, out_dir=None, update_readme=False):
    """Runs every section; returns the results dict (also written to out_dir as
    hashing.json and hashing.md). Never raises for a missing peer or a failing section:
    see results["failures"] (mismatches) and results["errors"]."""
    cfg = dict(CONFIGS["quick" if quick else "full"])
    threads_set = C.set_threads(int(threads))
    rep = Report()
    results = {"benchmark": "hashing", "mode": "quick" if quick else "full", "config": cfg,
               "machine": C.machine_info(int(threads)), "threads_set": threads_set, "sections": {}}
    for key, title, fn in SECTIONS:
        C.progress(title)
        sec = {}
        n_fail = len(rep.failures)
        try:
            fn(cfg, rep, sec)
            sec["status"] = "ok" if len(rep.failures) == n_fail else "FAILED"
        except ImportError as e:
            sec["status"] = _missing(e)
            C.progress(f"{title}: {sec['status']}")
        except Exception as e:  # noqa: BLE001  (report and go on with the other sections)
            sec["status"] = f"ERROR: {type(e).__name__}: {e}"
            sec["traceback"] = traceback.format_exc()
            rep.errors.append(f"{title}: {sec['status']}")
            C.progress(f"{title}: {sec['status']}\n{sec['traceback']}")
        results["sections"][key] = sec
    results["failures"], results["errors"] = rep.failures, rep.errors
    results["table"] = {"headers": ["Benchmark", "hashlab", "Peer", "Speed-up", "Target"], "rows": rep.rows}
    results["checks"] = rep.checks
    results["notes"] = rep.notes
    results["_report"] = rep
    md = render_markdown(results)
    del results["_report"]
    results["markdown"] = md
    results["paths"] = [C.write_json("hashing", results, out_dir), C.write_text("hashing.md", md, out_dir)]
    if update_readme:
        results["paths"].append(C.update_readme_section("hashing", md))
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (< 2 minutes)")
    ap.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="threads for every library (default 2)")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--update-readme", action="store_true",
                    help="rewrite the hashing section of benchmarks/README.md")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, threads=args.threads, out_dir=args.out, update_readme=args.update_readme)
    print(res["markdown"])
    for p in res["paths"]:
        C.progress(f"wrote {p}")
    if res["failures"] or res["errors"]:
        for f in res["failures"]:
            print(f"FAILED: {f}", file=sys.stderr)
        for e in res["errors"]:
            print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
