"""Helpers shared by the benchmarks: thread limits, timing, machine info, output.

Import this before numpy when you can: ``limit_threads_env(n)`` only works if it
runs before numpy/torch/faiss are imported (OpenMP and OpenBLAS read the
environment once); ``set_threads(n)`` then sets every library it can reach at run
time, including numpy's OpenBLAS through its C API when numpy was imported first.
"""
from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import sys
import time

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def limit_threads_env(n: int) -> None:
    """Sets OMP/OpenBLAS/MKL thread counts in the environment (unless already set)."""
    for var in THREAD_ENV:
        os.environ.setdefault(var, str(n))


def import_hashlab():
    """Imports hashlab, from the source tree (built in place) if it is not installed."""
    try:
        import hashlab
    except ImportError:
        sys.path.insert(0, REPO_ROOT)
        import hashlab
    return hashlab


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
    hashlab = import_hashlab()
    hashlab.set_num_threads(n)
    got = {"hashlab": hashlab.get_num_threads()}
    import numpy  # noqa: F401  (loads OpenBLAS)
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
    hashlab = import_hashlab()
    model, flags = _cpu_model_and_flags()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_flags": {f: f in flags for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl")},
        "hashlab_simd": hashlab.simd_level(),
        "threads": threads,
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("hashlab", "numpy", "scipy", "torch", "faiss", "numba",
                                              "datasketch")},
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def machine_line(info: dict) -> str:
    """One markdown line describing the machine."""
    flags = ", ".join(f for f, on in info["cpu_flags"].items() if on) or "none"
    vers = ", ".join(f"{m} {v}" for m, v in info["versions"].items() if v)
    return (f"{info['cpu']}, {info['cores']} cores ({flags}); hashlab SIMD level **{info['hashlab_simd']}**, "
            f"**{info['threads']} threads** everywhere; {vers}; {info['date']}")


def write_json(name: str, data, out_dir=None) -> str:
    """Writes data to <out_dir>/<name>.json (default benchmarks/results); returns the path."""
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=_json_default)
        f.write("\n")
    return path


def _json_default(o):
    for attr in ("item", "tolist"):  # numpy scalars and arrays
        if hasattr(o, attr):
            return getattr(o, attr)()
    return str(o)


def write_text(name: str, text: str, out_dir=None) -> str:
    out_dir = out_dir or RESULTS_DIR
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def markdown_table(headers, rows) -> str:
    """A GitHub markdown table; cells are str()-ed, '|' escaped."""
    def cell(x):
        return str(x).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def update_readme_section(name: str, text: str, readme=None) -> str:
    """Replaces what lies between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in the
    README (default benchmarks/README.md) with text; appends the markers if absent."""
    readme = readme or README
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
    """One progress line on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
