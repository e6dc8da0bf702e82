"""What the benchmark suites share: threads, timing, machine info, reports, output files.

Every suite (hashlab.bench.<name>) exposes ``run(quick, threads, out) -> dict`` and is
driven by ``hashlab bench`` (hashlab.cli), which owns the command line, the README
update and the exit code; the suites only measure and write ``<out>/<name>.json``,
``<out>/<name>.md`` and their PNG plots. A suite builds its report with ``Report``, runs
its sections with ``run_sections`` (a missing peer or model becomes a note, an
exception an error, never a crash) and ends with ``finish``.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import os
import pathlib
import platform
import sys
import time
import traceback

import numpy as np

import hashlab

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# versions recorded with every result (None: not installed)
PACKAGES = ("hashlab", "numpy", "scipy", "torch", "faiss", "numba", "datasketch", "matplotlib", "transformers")


def source_checkout() -> pathlib.Path | None:
    """The repository root when hashlab runs from a source checkout (editable install or
    in-place build): the folder holding pyproject.toml and benchmarks/README.md; else None."""
    root = pathlib.Path(hashlab.__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "benchmarks" / "README.md").is_file():
        return root
    return None


def results_dir() -> pathlib.Path | None:
    """benchmarks/results of the source checkout, or None for an installed package."""
    root = source_checkout()
    return root / "benchmarks" / "results" if root else None


def readme_path() -> pathlib.Path | None:
    """benchmarks/README.md of the source checkout, or None for an installed package."""
    root = source_checkout()
    return root / "benchmarks" / "README.md" if root else None


def resolve_threads(threads: int | None) -> int:
    """threads, or when None what hashlab uses by default (OMP_NUM_THREADS, else the cores)."""
    if threads is None:
        return hashlab.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads: expected an int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads: expected >= 1, got {threads}")
    return threads


def _openblas_libs():
    seen = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "openblas" in os.path.basename(path).lower() and path not in seen:
                    seen.append(path)
    except OSError:
        pass
    return seen


def _openblas_call(suffix, *args):
    """Calls <prefix>openblas_<suffix> in every loaded OpenBLAS; returns the last result or None."""
    result = None
    for path in _openblas_libs():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in (f"scipy_openblas_{suffix}64_", f"scipy_openblas_{suffix}", f"openblas_{suffix}64_",
                     f"openblas_{suffix}"):
            fn = getattr(lib, name, None)
            if fn is not None:
                result = fn(*args)
                break
    return result


def set_threads(n: int) -> dict:
    """Sets n threads in hashlab, numpy's OpenBLAS, torch and faiss (those importable).

    Returns what each library reports afterwards ({"hashlab": 2, "openblas": 2, ...}).
    """
    hashlab.set_num_threads(n)
    got = {"hashlab": hashlab.get_num_threads()}
    _openblas_call("set_num_threads", ctypes.c_int(n))
    blas = _openblas_call("get_num_threads")
    got["openblas"] = blas if blas is not None else "unknown"
    try:
        import torch
        torch.set_num_threads(n)
        got["torch"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import faiss
        faiss.omp_set_num_threads(n)
        got["faiss"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    return got


def best_time(fn, repeat=3, warmup=1, setup=None):
    """Best-of-``repeat`` wall time of ``fn()`` (seconds) after ``warmup`` untimed calls.

    ``setup()``, if given, runs untimed before every call (e.g. to reset an index).
    Returns (best seconds, list of all timed seconds, result of the last call).
    """
    out = None
    for _ in range(warmup):
        if setup is not None:
            setup()
        out = fn()
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), times, out


def compare_times(fns: dict, repeat=3, warmup=1, setups=None, pause=0.2) -> dict:
    """Best-of-``repeat`` wall times of several callables, run round-robin (one call of each
    per round) so that they see the same background load on a busy machine.

    fns: {name: fn}; setups: optional {name: setup()} run untimed before each call.
    pause: seconds slept before each timed call, so that the previous library's worker
    threads (OpenBLAS, OpenMP spin-waiting after a parallel region) are idle again.
    Returns {name: (best seconds, list of timed seconds, result of the last call)}.
    """
    setups = setups or {}
    times = {name: [] for name in fns}
    outs = {}
    for rnd in range(warmup + repeat):
        for name, fn in fns.items():
            if name in setups:
                setups[name]()
            if pause and len(fns) > 1:
                time.sleep(pause)
            t0 = time.perf_counter()
            outs[name] = fn()
            if rnd >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {name: (min(times[name]), times[name], outs[name]) for name in fns}


def _cpu_model_and_flags():
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name" and model is None:
                    model = val.strip()
                elif key == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    return model or platform.processor() or "unknown", flags


def _version(mod):
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "unknown")
    except Exception:  # noqa: BLE001  (missing or broken optional peer)
        return None


def machine_info(threads: int) -> dict:
    """CPU model, cores, SIMD flags, hashlab SIMD level, threads, library versions, date."""
    model, flags = _cpu_model_and_flags()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl")},
        "hashlab_simd": hashlab.simd_level(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in PACKAGES},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def machine_line(info: dict) -> str:
    """One markdown line describing the machine."""
    flags = ", ".join(f for f, on in info["cpu_flags"].items() if on) or "none"
    vers = ", ".join(f"{m} {v}" for m, v in info["versions"].items() if v)
    return (f"{info['cpu']}, {info['cores']} cores ({flags}); hashlab SIMD level **{info['hashlab_simd']}**, "
            f"**{info['threads']} threads** everywhere; {vers}; {info['date']}")


def _json_default(o):
    for attr in ("item", "tolist"):  # numpy scalars and arrays
        if hasattr(o, attr):
            return getattr(o, attr)()
    return str(o)


def write_json(out: pathlib.Path, name: str, data) -> str:
    """Writes data to <out>/<name>.json; returns the path."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.write("\n")
    return str(path)


def write_text(out: pathlib.Path, filename: str, text: str) -> str:
    """Writes text to <out>/<filename>; returns the path."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / filename
    path.write_text(text)
    return str(path)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def pyplot_or_note(rep, what: str):
    """pyplot(), or None after noting in rep that matplotlib is missing (the plot is skipped)."""
    try:
        return pyplot()
    except ImportError as e:
        rep.notes.append(f"{what}: matplotlib {missing(e)}")
        return None


def save_figure(fig, out: pathlib.Path, filename: str) -> str:
    """Saves fig as <out>/<filename> (PNG) and closes it; returns the path."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out / filename, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return str(out / filename)


def markdown_table(headers, rows) -> str:
    """A GitHub markdown table; cells are str()-ed, '|' escaped."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def update_readme_section(name: str, text: str, readme) -> str:
    """Replaces what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in the
    README file ``readme`` with text; appends the markers if absent. Returns the path."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = open(readme).read() if os.path.exists(readme) else ""
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in old and end in old and old.index(begin) < old.index(end):
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip() + ("\n\n" if old else "") + block + "\n"
    with open(readme, "w") as f:
        f.write(new)
    return readme


def fmt_time(s) -> str:
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_rate(x, unit="rows/s") -> str:
    if x is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix} {unit}"
    return f"{x:.3g} {unit}"


def fmt_bytes(n) -> str:
    for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return f"{n / scale:.1f} {suffix}"
    return f"{n} B"


def progress(msg: str) -> None:
    """One progress line on stderr (printed above any progress bar)."""
    from tqdm import tqdm
    tqdm.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr)


def missing(e: BaseException) -> str:
    """The note for a peer or model that cannot be imported or found."""
    return f"not available: {type(e).__name__}: {e}"


def ratio_text(r) -> str:
    """A speed-up / ratio cell: '2.35x', '211x', a string as is, '-' for None."""
    if r is None:
        return "-"
    if isinstance(r, str):
        return r
    return f"{r:.0f}x" if r >= 100 else f"{r:.2f}x"


class Report:
    """Table rows, checks, failures (output mismatches), errors and notes of one suite run."""

    def __init__(self):
        self.rows = []      # [task, hashlab, peer, ratio, target]
        self.checks = []    # [name, value, "ok" | "**FAILED**" | "info"]
        self.failures = []  # mismatches between hashlab and a peer or a reference
        self.errors = []    # unexpected exceptions
        self.notes = []

    def row(self, task, ours, peer, ratio=None, target=None, met=None, failed=False):
        """One table row. ratio: a number (formatted 'x'), a string, or None; target and met:
        the target text and whether it was met; failed=True: the outputs did not match."""
        r = "**FAILED** (outputs differ)" if failed else ratio_text(ratio)
        if target is None:
            tg = "-"
        elif failed:
            tg = f"{target}: n/a"
        else:
            tg = f"{target}: " + ("met" if met else "**missed**")
        self.rows.append([task, ours, peer, r, tg])

    def check(self, name, value, ok):
        """A pass/fail check; a failed one is also a failure of the run."""
        self.checks.append([name, value, "ok" if ok else "**FAILED**"])
        if not ok:
            self.failures.append(f"{name}: {value}")
            progress(f"FAILED: {name}: {value}")

    def info(self, name, value):
        """A figure in the checks table that is neither pass nor fail."""
        self.checks.append([name, value, "info"])


def start(name: str, mode: str, threads: int | None, config: dict, **extra) -> dict:
    """Sets the threads in every library and returns the results dict a suite fills in."""
    threads = resolve_threads(threads)
    threads_set = set_threads(threads)
    return dict(benchmark=name, mode=mode, config=config, machine=machine_info(threads), threads_set=threads_set,
                started=time.time(), **extra)


def run_sections(sections, rep: Report, results: dict, desc: str) -> None:
    """Runs [(key, title, fn(section_dict))] in order under a progress bar; each section's
    dict goes to results["sections"][key] with a "status": "ok", "FAILED" (a check
    failed), "not available: ..." (a missing peer or model: a note, not an error) or
    "ERROR: ..." (an exception, with its traceback; the other sections still run)."""
    from tqdm import tqdm
    results.setdefault("sections", {})
    bar = tqdm(sections, desc=desc, unit="section", file=sys.stderr, leave=False)
    for key, title, fn in bar:
        bar.set_postfix_str(title[:40])
        progress(title)
        sec, n_fail = {}, len(rep.failures)
        try:
            fn(sec)
            sec["status"] = "ok" if len(rep.failures) == n_fail else "FAILED"
        except (ImportError, FileNotFoundError) as e:
            sec["status"] = missing(e)
            progress(f"{title}: {sec['status']}")
        except Exception as e:  # noqa: BLE001  (reported; the other sections go on)
            sec["status"] = f"ERROR: {type(e).__name__}: {e}"
            sec["traceback"] = traceback.format_exc()
            rep.errors.append(f"{title}: {sec['status']}")
            progress(f"{title}: {sec['status']}\n{sec['traceback']}")
        results["sections"][key] = sec
    bar.close()


def section_notes(results: dict, titles: dict) -> list:
    """'- title: **status**' lines for the sections that did not end "ok"."""
    return [f"- {titles.get(k, k)}: **{sec['status']}**" for k, sec in results.get("sections", {}).items()
            if sec.get("status") != "ok"]


def finish(results: dict, rep: Report, markdown: str, out: pathlib.Path, plots=()) -> dict:
    """Stores the report in results, writes <out>/<name>.json and <out>/<name>.md, and
    returns results with "markdown", "paths" (plots first) and "seconds" (wall time)."""
    name = results["benchmark"]
    results.update(failures=rep.failures, errors=rep.errors, checks=rep.checks, notes=rep.notes,
                   table=dict(rows=rep.rows), markdown=markdown,
                   seconds=time.time() - results.pop("started", time.time()))
    results["paths"] = [str(p) for p in plots]
    results["paths"] += [write_json(out, name, results), write_text(out, f"{name}.md", markdown)]
    return results


def render_report(results: dict, rep: Report, titles: dict, intro: str, headers, plots=(), extra=()) -> str:
    """A suite's markdown: intro line, rows table (headers), checks table, plots (filename,
    caption) that were written, extra lines, then the sections that did not end ok and notes."""
    lines = [intro, "", markdown_table(headers, rep.rows)]
    if rep.checks:
        lines.append(markdown_table(["Check", "Result", "Status"], rep.checks))
    for name, cap in plots:
        if any(str(p).endswith(name) for p in results.get("plots", ())):
            lines.append(f"![{cap}](results/{name})\n")
    lines += list(extra)
    lines += section_notes(results, titles)
    lines += [f"- {note}" for note in rep.notes]
    return "\n".join(lines).rstrip() + "\n"


SPEEDUP_INTRO = ("Machine: {machine}. Mode: {mode}; times are best of {repeat} after a warm-up; speed-up = peer "
                 "time / hashlab time (> 1: hashlab faster).")
SPEEDUP_HEADERS = ["Benchmark", "hashlab", "Peer", "Speed-up", "Target"]


def speedup_intro(results: dict) -> str:
    return SPEEDUP_INTRO.format(machine=machine_line(results["machine"]), mode=results["mode"],
                                repeat=results["config"]["repeat"])


def rerank(indptr, ids, Q, X, k, chunk=256):
    """Exact top-k among each query's candidates (CSR indptr/ids): (nq, k) int64, -1 pads."""
    nq = Q.shape[0]
    out = np.full((nq, k), -1, dtype=np.int64)
    for s in range(0, nq, chunk):
        e = min(s + chunk, nq)
        a, b = indptr[s], indptr[e]
        counts = np.diff(indptr[s:e + 1])
        qof = np.repeat(np.arange(s, e), counts)
        c = ids[a:b]
        score = np.einsum("ij,ij->i", X[c], Q[qof])
        order = np.lexsort((-score, qof))  # by query, best first
        rank = np.arange(order.size) - np.repeat(indptr[s:e] - a, counts)
        keep = rank < k
        out[qof[keep], rank[keep]] = c[order[keep]]
    return out
