"""One system of the XMC benchmark (hashlab.bench.xmc) in its own process.

    python xmc_worker.py CONFIG.json

Standalone on purpose: it needs only numpy, scipy and the system it runs, so that PECOS can
run it from its own environment (libpecos pins numpy < 2 and scipy < 1.14); only the
"hashlab" system imports hashlab. CONFIG (JSON) names the system, its parameters, the data
folder written by hashlab.bench.xmc (Xtr/Ytr/Xte/Yte/Xva/Yva.npz CSR parts, train.txt in
the XMC text format), the threads, a work folder for the model files and the result path.

Measured here, in this process: training wall time; the ranked top-K labels of every test
row (saved as <result>.test.npy) and validation row (<result>.val.npy), predicted in
batches of ``batch`` rows (time per row over the test set); batch-1 latency (median over
``n_single`` test rows, one call each); the model's size on disk; VmHWM (peak RSS) of the
process. The input conversion a library needs (omikuji's (feature, value) lists) is
prepared outside the prediction clocks. The metrics are computed by the parent from the
saved rankings, the same code for every system.
"""
import os
import sys

# run as a file, the script's folder (hashlab/bench) comes first on sys.path, where its
# siblings (tables.py, distributed.py, ...) would shadow top-level modules of those names
if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

K = 5


def _proc_status():
    """VmRSS and VmHWM of this process, bytes (also used by hashlab.bench.slide and .decode)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(val.split()[0]) * 1024
    return out


def _reset_peak():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _load(data_dir, name):
    z = np.load(os.path.join(data_dir, name + ".npz"))
    return sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))


def _size_on_disk(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def _pad(rows, k=K):
    """A list of ranked label lists -> (n, k) int64, -1 pads."""
    out = np.full((len(rows), k), -1, np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:k]
        out[i, :len(r)] = r
    return out


def _topk_of_csr(P, k=K):
    """Rows of a sparse score matrix -> (n, k) label ids by score, best first (ties to the lower id)."""
    P = P.tocsr()
    out = np.full((P.shape[0], k), -1, np.int64)
    for i in range(P.shape[0]):
        a, b = P.indptr[i], P.indptr[i + 1]
        ids, sc = P.indices[a:b], P.data[a:b]
        o = np.lexsort((ids, -sc))[:k]
        out[i, :o.size] = ids[o]
    return out


def _measure(predict, prepare, X, batch, n_single):
    """Top-K of every row of X in batches of ``batch`` rows: (top (n, K), seconds per row over
    the prediction calls); and the median seconds of ``n_single`` one-row calls."""
    tops, secs = [], 0.0
    for s in range(0, X.shape[0], batch):
        inp = prepare(X[s:s + batch])
        t0 = time.perf_counter()
        out = predict(inp)
        secs += time.perf_counter() - t0
        tops.append(out)
    single = []
    for i in range(min(n_single, X.shape[0])):
        inp = prepare(X[i:i + 1])
        t0 = time.perf_counter()
        predict(inp)
        single.append(time.perf_counter() - t0)
    return np.concatenate(tops), secs / max(1, X.shape[0]), (statistics.median(single) if single else None)


# ---------------------------------------------------------------------------
# systems: each returns (result dict, predict(prepared input) -> (n, K), prepare(csr) -> input)

def _pecos(cfg, Xtr, Ytr, work):
    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel
    import pecos
    t = cfg["threads"]
    t0 = time.perf_counter()
    # PECOS's quick start: PIFA label embeddings -> hierarchical k-means tree -> XR-Linear, all defaults
    feat = LabelEmbeddingFactory.create(Ytr, Xtr, method="pifa", threads=t)
    chain = Indexer.gen(feat, threads=t)
    model = XLinearModel.train(Xtr, Ytr, C=chain, threads=t)
    train_s = time.perf_counter() - t0
    path = os.path.join(work, "pecos-model")
    model.save(path)
    # predictions from the saved model loaded for inference (PECOS's deployment path: its C++
    # predictor, the same rankings; a one-row call on the freshly trained model took 20-100x longer)
    del model
    model = XLinearModel.load(path, is_predict_only=True)
    res = dict(train_s=train_s, model_bytes=_size_on_disk(path), version=getattr(pecos, "__version__", "unknown"),
               settings="PIFA + Indexer.gen + XLinearModel.train, defaults; predicts with "
                        "XLinearModel.load(path, is_predict_only=True)")

    def predict(X):
        return _topk_of_csr(model.predict(X, only_topk=K, threads=t))
    return res, predict, lambda X: X


def _omikuji(cfg, Xtr, Ytr, work):
    import omikuji
    t = cfg["threads"]
    hp = omikuji.Model.default_hyper_param()
    n_trees = cfg["params"].get("n_trees")
    if n_trees is not None:
        hp.n_trees = int(n_trees)
    t0 = time.perf_counter()
    model = omikuji.Model.train_on_data(os.path.join(cfg["data_dir"], "train.txt"), hp, n_threads=t)
    train_s = time.perf_counter() - t0
    path = os.path.join(work, "omikuji-model")
    model.save(path)
    try:
        from importlib.metadata import version
        ver = version("omikuji")
    except Exception:  # noqa: BLE001
        ver = "unknown"
    res = dict(train_s=train_s, model_bytes=_size_on_disk(path), version=ver, n_trees=int(hp.n_trees),
               settings=f"default_hyper_param(){'' if n_trees is None else f', n_trees={n_trees}'}; "
                        "train_on_data (reads train.txt)")

    def prepare(X):
        return [list(zip(X.indices[X.indptr[i]:X.indptr[i + 1]].tolist(), X.data[X.indptr[i]:X.indptr[i + 1]].tolist()))
                for i in range(X.shape[0])]

    def predict(rows):   # omikuji's Python API predicts one row per call
        return _pad([[lab for lab, _ in model.predict(r, top_k=K)] for r in rows])
    return res, predict, prepare


def _napkinxc(cfg, Xtr, Ytr, work):
    from napkinxc.models import PLT
    t = cfg["threads"]
    path = os.path.join(work, "napkinxc-model")
    model = PLT(path, threads=t, **cfg["params"])
    t0 = time.perf_counter()
    model.fit(Xtr, Ytr)
    train_s = time.perf_counter() - t0
    try:
        from importlib.metadata import version
        ver = version("napkinxc")
    except Exception:  # noqa: BLE001
        ver = "unknown"
    res = dict(train_s=train_s, model_bytes=_size_on_disk(path), version=ver, settings="PLT, defaults")

    def predict(X):
        return _pad(model.predict(X, top_k=K))
    return res, predict, lambda X: X


def _hashlab(cfg, Xtr, Ytr, work, Xva, Yva):
    import inspect

    import hashlab
    from hashlab.slide import SparseMLP
    hashlab.set_num_threads(cfg["threads"])
    if "time_budget" not in inspect.signature(SparseMLP.fit).parameters:
        raise ImportError("SparseMLP.fit has no time_budget in this hashlab")
    model = SparseMLP(Xtr.shape[1], Ytr.shape[1])
    t0 = time.perf_counter()
    # the defaults plus a time budget; the validation rows (in neither train nor test) give the
    # P@1 curve, and restore_best (fit's default with validation) keeps the best evaluation
    model.fit(Xtr, Ytr, time_budget=cfg["budget"], validation=(Xva, Yva), verbose=False)
    train_s = time.perf_counter() - t0
    ckpt = os.path.join(work, "hashlab-model.npz")
    model.save(ckpt)
    res = dict(train_s=train_s, model_bytes=os.path.getsize(ckpt), version=getattr(hashlab, "__version__", "unknown"),
               settings=f"SparseMLP({Xtr.shape[1]}, {Ytr.shape[1]}).fit(X, Y, time_budget={cfg['budget']:.1f}, "
                        "validation=(X_val, Y_val))",
               repr=repr(model), budget=cfg["budget"], steps=int(model.step),
               history=[dict(time=h["time"], P1=h.get("P@1"), samples=h.get("samples")) for h in model.history],
               simd=hashlab.simd_level())
    if "optimizer" in inspect.signature(model.save).parameters:
        export = os.path.join(work, "hashlab-export.npz")
        model.save(export, optimizer=False)
        res["export_bytes"] = os.path.getsize(export)

    def predict(X):
        return model.predict_topk(X, K)[1]

    def predict_lsh(X):
        return model.predict_topk(X, K, mode="lsh")[1]
    res["_lsh"] = predict_lsh
    return res, predict, lambda X: X


SYSTEMS = {"pecos": _pecos, "omikuji": _omikuji, "napkinxc": _napkinxc, "hashlab": _hashlab}


def main(cfg_path):
    cfg = json.load(open(cfg_path))
    out = dict(system=cfg["name"], kind=cfg["system"], params=cfg["params"], threads=cfg["threads"])
    try:
        d = cfg["data_dir"]
        Xtr, Ytr = _load(d, "Xtr"), _load(d, "Ytr")
        Xte, Xva = _load(d, "Xte"), _load(d, "Xva")
        Yva = _load(d, "Yva") if cfg["system"] == "hashlab" else None
        out["rss_after_data"] = _proc_status()["VmRSS"]
        os.makedirs(cfg["work"], exist_ok=True)
        fn = SYSTEMS[cfg["system"]]
        if cfg["system"] == "hashlab":
            res, predict, prepare = fn(cfg, Xtr, Ytr, cfg["work"], Xva, Yva)
        else:
            res, predict, prepare = fn(cfg, Xtr, Ytr, cfg["work"])
        lsh = res.pop("_lsh", None)
        del Xtr, Ytr
        top, per_row, single = _measure(predict, prepare, Xte, cfg["batch"], cfg["n_single"])
        res.update(predict_s_per_row=per_row, predict_s_batch1=single, batch=cfg["batch"])
        np.save(cfg["result"] + ".test.npy", top)
        np.save(cfg["result"] + ".val.npy", _measure(predict, prepare, Xva, cfg["batch"], 0)[0])
        if lsh is not None:   # hashlab's LSH inference, next to the default (dense) scoring
            top_l, per_row_l, single_l = _measure(lsh, prepare, Xte, cfg["batch"], cfg["n_single"])
            np.save(cfg["result"] + ".test_lsh.npy", top_l)
            res.update(lsh_predict_s_per_row=per_row_l, lsh_predict_s_batch1=single_l)
        res["peak_rss"] = _proc_status()["VmHWM"]
        out.update(res)
        out["status"] = "ok"
    except ImportError as e:
        out["status"] = f"not available: {type(e).__name__}: {e}"
    except Exception as e:  # noqa: BLE001  (reported by the parent)
        out["status"] = f"ERROR: {type(e).__name__}: {e}"
        out["traceback"] = traceback.format_exc()
        print(out["traceback"], file=sys.stderr)
    with open(cfg["result"], "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
