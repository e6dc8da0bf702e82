"""Tables suite: hashlab LSHTables against faiss, side by side in one process.

1. The same 128-bit codes (8 tables x 16 bits) in hashlab ``LSHTables`` and faiss
   ``IndexBinaryMultiHash(128, 8, 16)`` (``range_search`` with radius 128: the union of
   the buckets hit): insert and query throughput, the frozen layout, ``nbytes``; the
   candidate sets are checked equal for every query.
2. Recall vs queries/s for cosine top-10 search on clustered data (queries near items):
   hashlab ``SimHash`` + ``LSHTables`` (32 tables; hash, query, exact re-ranking of the
   candidates) at several bits per key k (fewer bits: more candidates, more recall),
   faiss ``IndexLSH`` (Hamming top-10 over n-bit codes, no re-ranking) at several code
   lengths, and faiss ``IndexFlatIP`` (exact). Plot ``tables_recall_qps.png``.

Every library runs on the same number of threads. ``run(quick, threads, out)`` writes
<out>/tables.json, tables.md and the plot.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

from . import _common as C

CONFIGS = {
    "full": dict(n_table=100_000, n_query=10_000, n_items=100_000, n_recall_q=1_000, repeat=3,
                 ks=(16, 14, 12, 11, 10, 9)),
    "quick": dict(n_table=50_000, n_query=5_000, n_items=20_000, n_recall_q=300, repeat=2, ks=(16, 14, 12, 10, 9)),
    # for the CLI's tests: seconds
    "tiny": dict(n_table=2_000, n_query=200, n_items=2_000, n_recall_q=100, repeat=1, ks=(12, 10)),
}
TOPK = 10
RECALL_L = 32                                   # hashlab's tables for the recall curve: l tables of
                                                # cfg["ks"] bits per key (fewer bits: more candidates)
LSH_NBITS = (64, 128, 256, 512, 1024)           # faiss IndexLSH code lengths


def _ratio(peer_t, ours_t):
    return peer_t / ours_t if ours_t and peer_t else None


def _csr_pairs(indptr, ids):
    """(query, id) pairs of a CSR result, sorted: equal arrays <=> equal candidate sets."""
    indptr = np.asarray(indptr, dtype=np.int64)
    q = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
    ids = np.asarray(ids, dtype=np.int64)
    o = np.lexsort((ids, q))
    return q[o], ids[o]


def bench_multihash(cfg, rep, res):
    """hashlab LSHTables vs faiss IndexBinaryMultiHash on the same 128-bit codes."""
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
        res["faiss"] = C.missing(e)

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


def clustered(rng, n, nq, d=128, n_clusters=1000, spread=0.5, noise=0.35):
    """Unit-norm items around n_clusters centres (X (n, d)) and queries about ``noise`` rad
    from random items (Q (nq, d)), float32."""
    centres = rng.standard_normal((n_clusters, d))
    X = centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = X[rng.integers(0, n, nq)] + noise / np.sqrt(d) * rng.standard_normal((nq, d))  # ~noise rad away
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    return X.astype(np.float32), Q.astype(np.float32)


def exact_topk(Q, X, k=TOPK, chunk=512):
    """Exact top-k inner products, (nq, k) int64 (order within the k unspecified)."""
    out = np.empty((Q.shape[0], k), dtype=np.int64)
    for s in range(0, Q.shape[0], chunk):
        S = Q[s:s + chunk] @ X.T
        out[s:s + chunk] = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return out




def recall_at(found, truth):
    """Mean fraction of each query's true top-k found."""
    return float(np.mean([np.isin(truth[i], found[i]).mean() for i in range(truth.shape[0])]))


def bench_recall(cfg, rep, res, out, plots):
    """Recall@10 vs queries/s: hashlab tables + re-ranking, faiss IndexLSH, faiss IndexFlatIP."""
    from hashlab import SimHash
    from hashlab.tables import LSHTables
    n, nq, r, d = cfg["n_items"], cfg["n_recall_q"], cfg["repeat"], 128
    X, Q = clustered(np.random.default_rng(7), n, nq, d)
    truth = exact_topk(Q, X)
    ids = np.arange(n, dtype=np.int32)
    curves = {"hashlab LSHTables + re-rank": [], "faiss IndexLSH (Hamming top-10)": [], "faiss IndexFlatIP (exact)": []}
    res.update(n=n, d=d, n_query=nq, l=RECALL_L, hashlab={})
    for k in cfg["ks"]:
        h = SimHash(d, k, RECALL_L, seed=0)
        t0 = time.perf_counter()
        T = LSHTables(h, bucket_capacity=4096)
        T.insert(ids, X)
        build = time.perf_counter() - t0
        T.freeze()

        def search():
            ip, cand, _ = T.query(Q)
            return C.rerank(ip, cand, Q, X, TOPK), ip[-1] / nq

        t, _, (top, mc) = C.best_time(search, r)
        curves["hashlab LSHTables + re-rank"].append(dict(param=f"k={k}", recall=recall_at(top, truth), qps=nq / t,
                                                          candidates=mc, build_s=build, nbytes=T.nbytes))
    try:
        import faiss
    except ImportError as e:
        res["faiss"] = C.missing(e)
        faiss = None
    if faiss is not None:
        flat = faiss.IndexFlatIP(d)
        flat.add(X)
        t, _, (_, I) = C.best_time(lambda: flat.search(Q, TOPK), r)
        curves["faiss IndexFlatIP (exact)"].append(dict(param="exact", recall=recall_at(I, truth), qps=nq / t))
        res["faiss_lsh_build_s"] = {}
        for nbits in LSH_NBITS:
            t0 = time.perf_counter()
            index = faiss.IndexLSH(d, nbits, True, False)  # rotate_data, no trained thresholds
            index.train(X)
            index.add(X)
            res["faiss_lsh_build_s"][nbits] = time.perf_counter() - t0
            t, _, (_, I) = C.best_time(lambda: index.search(Q, TOPK), r)
            curves["faiss IndexLSH (Hamming top-10)"].append(dict(param=f"{nbits} bits", recall=recall_at(I, truth),
                                                                  qps=nq / t))
    res["curves"] = curves
    ours = curves["hashlab LSHTables + re-rank"]
    task = f"cosine top-{TOPK}, {n:,} clustered items (d={d}), {nq:,} queries near items"
    # hashlab's fastest point with recall >= 0.9 against each peer's fastest point with at least its recall
    good = [p for p in ours if p["recall"] >= 0.9] or [max(ours, key=lambda p: p["recall"])]
    best = max(good, key=lambda p: p["qps"])
    ours_txt = (f"{best['param']}, l={RECALL_L}: recall {best['recall']:.3f}, "
                f"{C.fmt_rate(best['qps'], 'q/s')} ({best['candidates']:.0f} candidates)")
    if faiss is None:
        rep.row(task, ours_txt, "faiss: " + res["faiss"])
    else:
        lsh = curves["faiss IndexLSH (Hamming top-10)"]
        ok = [p for p in lsh if p["recall"] >= best["recall"]]
        peer = max(ok, key=lambda p: p["qps"]) if ok else max(lsh, key=lambda p: p["recall"])
        rep.row(task, ours_txt, f"faiss IndexLSH {peer['param']}{'' if ok else ' (its best recall)'}: recall "
                f"{peer['recall']:.3f}, {C.fmt_rate(peer['qps'], 'q/s')}", best["qps"] / peer["qps"])
        fl = curves["faiss IndexFlatIP (exact)"][0]
        rep.row(task, ours_txt, f"faiss IndexFlatIP (exact): {C.fmt_rate(fl['qps'], 'q/s')}", best["qps"] / fl["qps"])
    rep.notes.append(f"Recall curve: hashlab build (hash + insert) {C.fmt_time(best['build_s'])}, nbytes "
                     f"{C.fmt_bytes(best['nbytes'])} for {C.fmt_bytes(X.nbytes)} of vectors at {best['param']}; "
                     f"points: " +
                     "; ".join(f"{k}: " + ", ".join(f"{p['param']} -> {p['recall']:.3f} @ {p['qps']:.0f} q/s"
                                                    for p in v) for k, v in curves.items() if v))
    plt = C.pyplot_or_note(rep, "plot")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for (name, pts), mk in zip(curves.items(), ("o-", "s-", "*")):
        if pts:
            ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], mk, label=name, markersize=7)
    ax.set_xlabel(f"recall@{TOPK} (exact cosine top-{TOPK})")
    ax.set_ylabel("queries / s (log)")
    ax.set_yscale("log")
    ax.set_title(f"{n:,} clustered unit vectors, d={d}, {nq:,} queries near items", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    plots.append(C.save_figure(fig, out, "tables_recall_qps.png"))


TITLES = {"multihash": "1. LSH tables vs faiss IndexBinaryMultiHash", "recall": "2. recall vs queries/s"}


def render_markdown(results, rep) -> str:
    return C.render_report(results, rep, TITLES, C.speedup_intro(results), C.SPEEDUP_HEADERS,
                           plots=(("tables_recall_qps.png", "recall vs queries/s"),))


def run(quick: bool, threads: int | None, out: pathlib.Path, tiny: bool = False) -> dict:
    """Runs both sections; writes <out>/tables.json, tables.md and tables_recall_qps.png.
    Returns the results dict (mismatches in results["failures"], exceptions in
    results["errors"]). tiny: seconds-long sizes (for tests; figures meaningless)."""
    mode = "tiny" if tiny else "quick" if quick else "full"
    cfg = dict(CONFIGS[mode])
    rep, plots = C.Report(), []
    results = C.start("tables", mode, threads, cfg)
    C.run_sections([
        ("multihash", TITLES["multihash"], lambda sec: bench_multihash(cfg, rep, sec)),
        ("recall", TITLES["recall"], lambda sec: bench_recall(cfg, rep, sec, out, plots)),
    ], rep, results, "tables")
    results["plots"] = plots
    return C.finish(results, rep, render_markdown(results, rep), out, plots)
