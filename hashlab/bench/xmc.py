#!/usr/bin/env python
"""XMC benchmark: hashlab's SparseMLP against the libraries XMC users pick (issue 15, item 1).

Systems, each in its own process (hashlab/bench/xmc_worker.py, a standalone script) with
the same thread count (OMP/OpenBLAS/MKL/Rayon/Numba variables and the library's own
argument), one after the other:

- PECOS XR-Linear (libpecos): its quick start with defaults, PIFA label embeddings ->
  ``Indexer.gen`` -> ``XLinearModel.train``, predicting with the saved model loaded by
  ``XLinearModel.load(path, is_predict_only=True)`` (its real-time inference); run by the Python of a separate environment
  (libpecos pins numpy < 2 and scipy < 1.14, which cannot share hashlab's):
  ``pecos_python=``, else $HASHLAB_PECOS_PYTHON, else /opt/pecos-venv/bin/python;
  "not available" when there is none.
- omikuji with ``n_trees=1`` and with its defaults (3 trees), ``train_on_data`` on the
  XMC text file of the training rows.
- napkinXC PLT with its defaults.
- hashlab: ``SparseMLP(n_features, n_labels).fit(X, Y, time_budget=B, validation=(X_val,
  Y_val))`` with B = 2 x the training time of the best peer (highest test P@1) on that set;
  the validation rows are extra rows in neither the training nor the test set.

Per system: training wall time; P@1, P@3, P@5, nDCG@5, PSP@5 (hashlab.metrics, the same
code for every system, from each worker's ranked top-5; propensities from the training
labels, A = 0.55, B = 1.5); predict ms/row at batch 5,000 (the whole test set, 5,000 rows
a call) and at batch 1 (median of 200 one-row calls); peak RSS (VmHWM of the worker);
model size on disk (hashlab: the training checkpoint and the inference-only export).
P@1 against training time per data set as a PNG: hashlab's validation curve, one point
per peer setting (its validation P@1 at its training time).

Data sets (each generated once into a temporary folder, as .npz CSR parts and an XMC text
file): make_xmc's amazon-670k-like and delicious-200k-like presets at a reduced scale,
hashlab.teacher_data.make_teacher_xmc (labels from a hidden sparse ReLU network), and
hashlab.debian_text.make_debian_xmc (real text: Debian package descriptions -> the
packages they depend on; "depends" rather than "tags" because it is the larger and harder
set: ~18K labels with a long tail against ~580 tags).

``run(quick, threads, out, tiny=False, pecos_python=None, sets=None)`` writes
<out>/xmc.json, xmc.md and xmc_<set>_p1_vs_time.png. ``python -m hashlab.bench.xmc
[--quick] [--pecos-python PATH] [--sets a,b] [--out DIR]`` runs it from the shell (``hashlab
bench xmc`` too, without the PECOS path flag).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import hashlab

from . import _common as C

NAME = "xmc"
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "xmc_worker.py")
DEFAULT_PECOS_PYTHON = "/opt/pecos-venv/bin/python"
THREAD_ENV = C.THREAD_ENV + ("RAYON_NUM_THREADS", "NUMBA_NUM_THREADS")
BATCH = 5000
N_SINGLE = 200
BUDGET_FACTOR = 2.0
# (name, system, parameters): the peer settings, run in this order
PEERS = (("PECOS XR-Linear", "pecos", {}),
         ("omikuji, 1 tree", "omikuji", {"n_trees": 1}),
         ("omikuji, defaults (3 trees)", "omikuji", {}),
         ("napkinXC PLT", "napkinxc", {}))
HASHLAB = "hashlab SparseMLP"

# per mode: the data sets, test and validation rows, hashlab's budget when no peer ran,
# and a time limit per worker
CONFIGS = {
    "full": dict(n_test=5000, n_val=2000, fallback_budget=60.0, timeout=1800, sets=(
        dict(name="amazon-670k-like", kind="preset", preset="amazon-670k-like", scale=0.15),
        # 75 labels and 300 non-zeros per row make this the slowest set for the trees and PECOS
        # (omikuji's 3 trees: ~35 s at scale 0.01 on 2 quiet cores); 0.05 keeps it to ~10 minutes
        dict(name="delicious-200k-like", kind="preset", preset="delicious-200k-like", scale=0.05),
        dict(name="teacher", kind="teacher", n_train=80_000, n_features=50_000, n_labels=50_000),
        dict(name="debian-depends", kind="debian", labels="depends", ngram_max=2),
    )),
    "quick": dict(n_test=1000, n_val=500, fallback_budget=5.0, timeout=300, n_single=50, sets=(
        dict(name="amazon-670k-like", kind="preset", preset="amazon-670k-like", scale=0.005),
        dict(name="delicious-200k-like", kind="preset", preset="delicious-200k-like", scale=0.003),
        dict(name="teacher", kind="teacher", n_train=4000, n_features=4000, n_labels=4000),
        dict(name="debian-depends", kind="debian", labels="depends", ngram_max=2, max_rows=5000,
             test_fraction=0.3),
    )),
    # tests: one small set, fewer one-row calls
    "tiny": dict(n_test=200, n_val=100, fallback_budget=1.0, timeout=120, n_single=20, sets=(
        dict(name="teacher", kind="teacher", n_train=1000, n_features=1000, n_labels=500),
    )),
}
SYSTEM_FIELDS = ("status", "train_s", "P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "val_P@1", "predict_ms_b5000",
                 "predict_ms_b1", "peak_rss", "model_bytes")


# ---------------------------------------------------------------------------
# data

def _generate(spec, n_test, n_val, seed=0):
    """(X_train, Y_train, X_test, Y_test, X_val, Y_val, call string) of one data set."""
    n_hold = n_test + n_val
    if spec["kind"] == "preset":
        from hashlab.datasets import make_preset
        Xtr, Ytr, Xh, Yh = make_preset(spec["preset"], scale=spec["scale"], seed=seed, n_test=n_hold)
        call = f"make_preset({spec['preset']!r}, scale={spec['scale']}, seed={seed}, n_test={n_hold})"
    elif spec["kind"] == "teacher":
        from hashlab.teacher_data import make_teacher_xmc
        Xtr, Ytr, Xh, Yh = make_teacher_xmc(spec["n_train"], n_hold, spec["n_features"], spec["n_labels"], seed=seed)
        call = (f"make_teacher_xmc({spec['n_train']}, {n_hold}, {spec['n_features']}, {spec['n_labels']}, "
                f"seed={seed})")
    elif spec["kind"] == "debian":
        from hashlab.debian_text import make_debian_xmc
        kw = {k: spec[k] for k in ("labels", "ngram_max", "max_rows", "test_fraction") if k in spec}
        Xtr, Ytr, Xh, Yh = make_debian_xmc(seed=seed, **kw)
        call = "make_debian_xmc(" + ", ".join(f"{k}={v!r}" for k, v in kw.items()) + f", seed={seed})"
        if Xh.shape[0] < 2:
            raise ValueError(f"{spec['name']}: expected >= 2 held-out rows, got {Xh.shape[0]}")
        n_val = min(n_val, Xh.shape[0] // 2)
        n_test = min(n_test, Xh.shape[0] - n_val)
    else:
        raise ValueError(f"unknown data set kind {spec['kind']!r}")
    # first n_test held-out rows: the test set; the next n_val: hashlab's validation rows
    return Xtr, Ytr, Xh[:n_test], Yh[:n_test], Xh[n_test:n_test + n_val], Yh[n_test:n_test + n_val], call


def _save_csr(path, M):
    M = M.tocsr()
    np.savez(path, indptr=M.indptr, indices=M.indices.astype(np.int32), data=M.data.astype(np.float32),
             shape=np.array(M.shape, np.int64))


def make_data(spec, n_test, n_val, data_dir, seed=0):
    """Generates one data set into data_dir (the six CSR matrices as .npz, the training
    rows as XMC text for omikuji); returns (its statistics, (Y_train, Y_test, Y_val))."""
    from hashlab.datasets import save_xmc
    t0 = time.perf_counter()
    Xtr, Ytr, Xte, Yte, Xva, Yva, call = _generate(spec, n_test, n_val, seed)
    gen_s = time.perf_counter() - t0
    os.makedirs(data_dir, exist_ok=True)
    for name, M in (("Xtr", Xtr), ("Ytr", Ytr), ("Xte", Xte), ("Yte", Yte), ("Xva", Xva), ("Yva", Yva)):
        _save_csr(os.path.join(data_dir, name + ".npz"), M)
    save_xmc(os.path.join(data_dir, "train.txt"), Xtr, Ytr, compresslevel=1)
    counts = np.bincount(Ytr.indices, minlength=Ytr.shape[1])
    top = np.sort(counts)[::-1]
    stats = dict(call=call, n_train=Xtr.shape[0], n_test=Xte.shape[0], n_val=Xva.shape[0], n_features=Xtr.shape[1],
                 n_labels=Ytr.shape[1], nnz_per_row=Xtr.nnz / Xtr.shape[0], labels_per_row=Ytr.nnz / Ytr.shape[0],
                 labels_seen_in_train=int((counts > 0).sum()),
                 top1pct_label_share=float(top[:max(1, top.size // 100)].sum() / max(1, top.sum())),
                 generate_s=gen_s)
    return stats, (Ytr, Yte, Yva)


# ---------------------------------------------------------------------------
# workers

def find_pecos_python(explicit=None):
    """The Python of the PECOS environment: explicit, else $HASHLAB_PECOS_PYTHON, else
    /opt/pecos-venv/bin/python; (path, None) or (None, reason it cannot be used)."""
    path = explicit or os.environ.get("HASHLAB_PECOS_PYTHON") or DEFAULT_PECOS_PYTHON
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        return None, (f"no PECOS Python at {path} (libpecos needs its own environment: numpy < 2, scipy < 1.14; "
                      "pass pecos_python= / --pecos-python or set HASHLAB_PECOS_PYTHON)")
    return path, None


def _log_tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def spawn(name, system, params, data_dir, threads, python, budget=None, timeout=None, n_single=N_SINGLE):
    """Runs one system in its own process; its stdout and stderr go to a log file beside the
    data (omikuji prints a progress bar per example). Returns the worker's result dict
    with "log" (the log's path), "worker_wall_s" and "_result" (where its rankings are)."""
    fd, base = tempfile.mkstemp(prefix=f"{system}-", dir=data_dir)
    os.close(fd)
    cfg = dict(name=name, system=system, params=params, data_dir=data_dir, threads=threads, budget=budget,
               work=base + "-work", result=base + ".result.json", batch=BATCH, n_single=n_single)
    with open(base + ".json", "w") as f:
        json.dump(cfg, f)
    env = dict(os.environ)
    for var in THREAD_ENV:
        env[var] = str(threads)
    if python == sys.executable:   # the worker's hashlab is this one, installed or not
        root = os.path.dirname(os.path.dirname(os.path.abspath(hashlab.__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    log = base + ".log"
    t0 = time.perf_counter()
    try:
        with open(log, "wb") as lf:
            proc = subprocess.run([python, WORKER, base + ".json"], env=env, stdout=lf, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    except OSError as e:   # the interpreter cannot be started
        return dict(system=name, kind=system, params=params, status=f"ERROR: cannot run {python}: {e}",
                    worker_wall_s=time.perf_counter() - t0)
    wall = time.perf_counter() - t0
    if rc != 0 or not os.path.exists(cfg["result"]):
        why = f"timed out after {timeout} s" if rc == "timeout" else f"exited with status {rc}"
        return dict(system=name, kind=system, params=params, status=f"ERROR: worker {why}", log=log,
                    log_tail=_log_tail(log), worker_wall_s=wall)
    res = json.load(open(cfg["result"]))
    res.update(log=log, worker_wall_s=wall, _result=cfg["result"])
    if res.get("status") != "ok":
        res["log_tail"] = _log_tail(log)
    shutil.rmtree(cfg["work"], ignore_errors=True)   # the model files (sizes already taken)
    return res


def score(res, Ys, propensity):
    """Adds the metrics of a worker's saved rankings to res (in place)."""
    from hashlab.metrics import precision_at_k, ranking_metrics
    Ytr, Yte, Yva = Ys
    base = res.pop("_result")
    top = np.load(base + ".test.npy")
    res.update(ranking_metrics(top, Yte, ks=(1, 3, 5), propensity=propensity))
    res["val_P@1"] = precision_at_k(np.load(base + ".val.npy"), Yva, 1) if Yva.shape[0] else None
    if os.path.exists(base + ".test_lsh.npy"):
        lsh = ranking_metrics(np.load(base + ".test_lsh.npy"), Yte, ks=(1, 5))
        res["lsh"] = {k: lsh[k] for k in ("P@1", "P@5")}
    res["predict_ms_b5000"] = res["predict_s_per_row"] * 1e3
    res["predict_ms_b1"] = None if res["predict_s_batch1"] is None else res["predict_s_batch1"] * 1e3


def _run_system(name, system, params, data_dir, threads, python, Ys, propensity, cfg, budget=None):
    C.progress(f"{name}" + (f" (budget {budget:.1f} s)" if budget is not None else ""))
    res = spawn(name, system, params, data_dir, threads, python, budget, cfg["timeout"] + (budget or 0.0),
                cfg.get("n_single", N_SINGLE))
    if res.get("status") == "ok":
        score(res, Ys, propensity)
        C.progress(f"{name}: train {res['train_s']:.1f} s, P@1 {res['P@1']:.4f}, P@5 {res['P@5']:.4f}, "
                   f"b1 {res['predict_ms_b1']:.2f} ms, peak RSS {C.fmt_bytes(res['peak_rss'])}")
    else:
        res.pop("_result", None)
        C.progress(f"{name}: {res.get('status')}")
    return res


def best_peer(peers):
    """The peer result with the highest test P@1 (then P@5), or None."""
    ok = [p for p in peers if p.get("status") == "ok"]
    return max(ok, key=lambda p: (p["P@1"], p["P@5"])) if ok else None


def target(hl, peers):
    """Issue 15 item 2: hashlab at budget 2T reaches the best peer P@1 and the best peer P@5
    (each the maximum over the peers)."""
    ok = [p for p in peers if p.get("status") == "ok"]
    if hl.get("status") != "ok" or not ok:
        return None
    out = dict(met=True)
    for m in ("P@1", "P@5"):
        best = max(p[m] for p in ok)
        out[m] = dict(hashlab=hl[m], best_peer=best, ratio=hl[m] / best if best > 0 else None,
                      shortfall=max(0.0, best - hl[m]))
        out["met"] &= hl[m] >= best
    return out


def run_set(spec, cfg, threads, tmp, pecos_py, seed=0):
    """Generates one data set and runs every system on it; returns its result dict."""
    data_dir = os.path.join(tmp, spec["name"])
    C.progress(f"{spec['name']}: generating")
    stats, Ys = make_data(spec, cfg["n_test"], cfg["n_val"], data_dir, seed)
    C.progress(f"{spec['name']}: {stats}")
    from hashlab.metrics import propensities
    prop = propensities(Ys[0])
    peers = []
    for name, system, params in PEERS:
        if system == "pecos" and pecos_py[0] is None:
            peers.append(dict(system=name, kind=system, params=params, status=f"not available: {pecos_py[1]}"))
            C.progress(f"{name}: {peers[-1]['status']}")
            continue
        python = pecos_py[0] if system == "pecos" else sys.executable
        peers.append(_run_system(name, system, params, data_dir, threads, python, Ys, prop, cfg))
    bp = best_peer(peers)
    budget = BUDGET_FACTOR * bp["train_s"] if bp else cfg["fallback_budget"]
    hl = _run_system(HASHLAB, "hashlab", {}, data_dir, threads, sys.executable, Ys, prop, cfg, budget=budget)
    shutil.rmtree(data_dir, ignore_errors=True)
    return dict(data=stats, peers=peers, hashlab=hl, best_peer=bp["system"] if bp else None,
                budget=budget, budget_rule=(f"{BUDGET_FACTOR:g} x {bp['system']}'s {bp['train_s']:.1f} s" if bp
                                            else f"no peer ran: {cfg['fallback_budget']:g} s"),
                target=target(hl, peers))


# ---------------------------------------------------------------------------
# report

def plot(name, s, machine, out):
    """P@1 on the validation rows against training time: hashlab's curve, a point per peer."""
    plt = C.pyplot()
    fig, ax = plt.subplots(figsize=(11, 5))
    hl = s["hashlab"]
    if hl.get("status") == "ok":
        h = [x for x in hl.get("history", []) if x.get("P1") is not None]
        if h:
            ax.plot([x["time"] for x in h], [x["P1"] for x in h], marker="o", ms=3, color="tab:red",
                    label=f"hashlab SparseMLP defaults, budget {hl['budget']:.1f} s (validation curve)")
        ax.scatter([hl["train_s"]], [hl["val_P@1"]], marker="*", s=140, color="tab:red", zorder=3,
                   label="hashlab after fit (wall time, evaluations included)")
    styles = iter(zip("sD^vP", ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")))
    for p in s["peers"]:
        marker, color = next(styles)
        if p.get("status") == "ok":
            ax.scatter([p["train_s"]], [p["val_P@1"]], marker=marker, color=color, s=60, zorder=3, label=p["system"])
    d = s["data"]
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel(f"P@1 on {d['n_val']:,} validation rows")
    ax.set_title(f"{name}: {d['n_train']:,} train rows, {d['n_features']:,} features, {d['n_labels']:,} labels\n"
                 f"{machine['cpu']}, {machine['threads']} threads", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return C.save_figure(fig, out, f"{NAME}_{name}_p1_vs_time.png")


def _f(x, fmt="{:.4f}"):
    return "-" if x is None else fmt.format(x)


def _mb(b):
    return "-" if b is None else f"{b / 1e6:.1f}"


def _row(r):
    if r.get("status") != "ok":
        return [r["system"], r.get("status", "?")] + ["-"] * 9
    model = _mb(r["model_bytes"])
    if r.get("export_bytes") is not None:
        model = f"{model} (export {_mb(r['export_bytes'])})"
    return [r["system"], f"{r['train_s']:.1f}", _f(r["P@1"]), _f(r["P@3"]), _f(r["P@5"]), _f(r["nDCG@5"]),
            _f(r["PSP@5"]), _f(r["predict_ms_b5000"], "{:.3f}"), _f(r["predict_ms_b1"], "{:.2f}"),
            f"{r['peak_rss'] / 1e6:.0f}", model]


HEADERS = ["system", "train s", "P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "predict ms/row b5000", "b1 ms",
           "peak RSS MB", "model MB"]


def render_set(name, s):
    d = s["data"]
    L = [f"### {name}", "",
         f"`{d['call']}`: {d['n_train']:,} training, {d['n_test']:,} test and {d['n_val']:,} validation rows, "
         f"{d['n_features']:,} features ({d['nnz_per_row']:.1f} non-zeros per row), {d['n_labels']:,} labels "
         f"({d['labels_per_row']:.2f} per row, {d['labels_seen_in_train']:,} seen in training, the top 1% of "
         f"labels hold {100 * d['top1pct_label_share']:.0f}% of the occurrences); generated in "
         f"{d['generate_s']:.1f} s. hashlab budget: {s['budget']:.1f} s ({s['budget_rule']}).", ""]
    rows = [_row(p) for p in s["peers"]] + [_row(s["hashlab"])]
    tg = s["target"]
    if tg is not None:
        rows.append(["hashlab vs best peer", "-", _f(tg["P@1"]["ratio"], "{:.3f}x"), "-",
                     _f(tg["P@5"]["ratio"], "{:.3f}x")] + ["-"] * 6)
    L.append(C.markdown_table(HEADERS, rows))
    if tg is not None:
        if tg["met"]:
            verdict = "met"
        else:
            miss = [f"{m} by {tg[m]['shortfall']:.4f}" for m in ("P@1", "P@5") if tg[m]["shortfall"] > 0]
            verdict = "**missed**: " + ", ".join(miss)
        L.append(f"- Target (issue 15 item 2: P@1 and P@5 >= the best peer's, at budget 2T): {verdict} "
                 f"(best peer P@1 {tg['P@1']['best_peer']:.4f}, P@5 {tg['P@5']['best_peer']:.4f}).")
    hl = s["hashlab"]
    if hl.get("status") == "ok":
        extra = f"- hashlab: `{hl['settings']}`; {hl['steps']:,} batches"
        if hl.get("lsh"):
            extra += (f"; with `mode=\"lsh\"`: P@1 {hl['lsh']['P@1']:.4f}, P@5 {hl['lsh']['P@5']:.4f}, "
                      f"{hl['lsh_predict_s_per_row'] * 1e3:.3f} ms/row at b5000, "
                      f"{hl['lsh_predict_s_batch1'] * 1e3:.2f} ms at b1")
        L.append(extra + ".")
    L.append(f"\n![P@1 vs training time, {name}](results/{NAME}_{name}_p1_vs_time.png)\n")
    return "\n".join(L)


DESCRIPTION = """\
## Extreme classification against PECOS, omikuji and napkinXC (`hashlab bench xmc`)

`hashlab bench xmc [--quick]` (suite `hashlab/bench/xmc.py`; `python -m hashlab.bench.xmc --pecos-python PATH`
to point at the PECOS environment). Every system runs in its own process (`hashlab/bench/xmc_worker.py`) with
the same thread count, one after the other, on the same rows: PECOS XR-Linear (its quick start, defaults:
PIFA -> `Indexer.gen` -> `XLinearModel.train`, predicting with `XLinearModel.load(path, is_predict_only=True)`;
from a separate environment since libpecos pins numpy < 2 and scipy < 1.14), omikuji (1 tree, and its default 3 trees; `train_on_data` reads the XMC text file, which its
training time includes), napkinXC PLT (defaults), and hashlab `SparseMLP(n_features, n_labels).fit(X, Y,
time_budget=2T, validation=(X_val, Y_val))` with T the training time of the best peer (highest test P@1) on
that set. Metrics from `hashlab.metrics` over the ranked top 5 of every test row, the same code for every system
(PSP@5: propensities of the training labels, A = 0.55, B = 1.5). Prediction: ms per row over the test set in
calls of 5,000 rows, and the median of 200 one-row calls (omikuji's Python API predicts a row per call; its
input lists are built outside the clock). Peak RSS: VmHWM of the worker (data included). Model: bytes on disk
(hashlab: the training checkpoint, and the inference-only `save(path, optimizer=False)` export). Plots: P@1
on the validation rows against training time (hashlab's curve; the peers are one point per setting).
"""


def render_markdown(r) -> str:
    L = [DESCRIPTION, "### Results", "", f"Machine: {C.machine_line(r['machine'])}. Mode: {r['mode']}. "
         f"Peers: {r['peer_versions']}.", ""]
    for name, s in r["sets"].items():
        if "status" in s:
            L.append(f"### {name}\n\n- **{s['status']}**\n")
        else:
            L.append(render_set(name, s))
    for note in r["notes"]:
        L.append(f"- {note}")
    for e in r["errors"]:
        L.append(f"- **{e}**")
    return "\n".join(L).rstrip() + "\n"


def run(quick: bool, threads: int | None, out: pathlib.Path, tiny: bool = False, pecos_python: str | None = None,
        sets=None, seed: int = 0) -> dict:
    """Runs every system on every data set of the mode; writes <out>/xmc.json, xmc.md and
    the PNGs; returns the results dict.

    tiny: seconds-long sizes (tests); pecos_python: the PECOS environment's Python (see
    find_pecos_python()); sets: names of the mode's data sets to run (default all)."""
    mode = "tiny" if tiny else "quick" if quick else "full"
    cfg = CONFIGS[mode]
    specs = list(cfg["sets"])
    if sets is not None:
        names = [s["name"] for s in specs]
        unknown = [x for x in sets if x not in names]
        if unknown:
            raise ValueError(f"sets: expected names among {names}, got {unknown}")
        specs = [s for s in specs if s["name"] in sets]
    rep = C.Report()
    conf = dict(cfg, sets=specs, batch=BATCH, n_single=cfg.get("n_single", N_SINGLE), budget_factor=BUDGET_FACTOR)
    results = C.start(NAME, mode, threads, conf)
    threads = results["machine"]["threads"]
    pecos_py = find_pecos_python(pecos_python)
    results["pecos_python"] = pecos_py[0]
    results["sets"] = {}
    plots = []
    with tempfile.TemporaryDirectory(prefix="bench-xmc-") as tmp:
        for spec in specs:
            try:
                s = run_set(spec, cfg, threads, tmp, pecos_py, seed)
            except Exception as e:  # noqa: BLE001  (one broken set must not stop the others)
                import traceback
                s = dict(status=f"ERROR: {type(e).__name__}: {e}", traceback=traceback.format_exc())
                C.progress(f"{spec['name']}: {s['status']}\n{s['traceback']}")
                rep.errors.append(f"{spec['name']}: {s['status']}")
            results["sets"][spec["name"]] = s
            if "status" in s:
                continue
            for res in s["peers"] + [s["hashlab"]]:
                st = str(res.get("status"))
                if st.startswith("not available"):
                    note = f"{res['system']}: {st}"
                    if note not in rep.notes:
                        rep.notes.append(note)
                elif st != "ok":
                    rep.errors.append(f"{spec['name']}, {res['system']}: {st}")
            if any(res.get("status") == "ok" for res in s["peers"] + [s["hashlab"]]):
                try:
                    plots.append(plot(spec["name"], s, results["machine"], out))
                except ImportError as e:
                    rep.notes.append(f"plot: matplotlib {C.missing(e)}")
    vers = {}
    for s in results["sets"].values():
        for res in s.get("peers", []):
            if res.get("status") == "ok":
                vers[res["kind"]] = res.get("version")
    results["peer_versions"] = ", ".join(f"{k} {v}" for k, v in vers.items()) or "none ran"
    results["plots"] = plots
    results["errors"], results["notes"] = rep.errors, rep.notes
    return C.finish(results, rep, render_markdown(results), out, plots)


def main(argv=None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m hashlab.bench.xmc", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sets (< 3 minutes on 2 cores)")
    ap.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help="threads for every system (default: hashlab's)")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="results folder (default: hashlab bench's)")
    ap.add_argument("--pecos-python", default=None, help="Python of the PECOS environment")
    ap.add_argument("--sets", default=None, help="comma-separated data set names (default: all of the mode)")
    a = ap.parse_args(argv)
    res_dir, out = C.results_dir(), a.out
    if out is None:   # as `hashlab bench`: full runs into benchmarks/results (and its README), others to quick/
        out = pathlib.Path("hashlab-bench-results") if res_dir is None else \
            res_dir / "quick" if (a.quick or a.tiny) else res_dir
    r = run(a.quick, a.threads, out, tiny=a.tiny, pecos_python=a.pecos_python,
            sets=a.sets.split(",") if a.sets else None)
    if res_dir is not None and out.resolve() == res_dir.resolve() and C.readme_path() is not None:
        C.update_readme_section(NAME, r["markdown"], C.readme_path())
    print(r["markdown"])
    return 1 if r["errors"] or r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
