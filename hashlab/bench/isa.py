"""Instruction-set benchmark: every kernel family at every SIMD level this CPU has.

Each level runs in its own process (``HASHLAB_SIMD=<level> python -m hashlab.bench.isa --worker``),
the levels alternating for ``rounds`` rounds so that a load change hits all of them alike; a
worker times each family best of ``repeat`` after a warm-up:

- simhash_dense: gaussian SimHash keys of (n, 128) rows, k=10, l=150 (the BLAS path for >= 64
  rows: its sgemm does not follow HASHLAB_SIMD, only the near-zero recomputation does), and the
  same with ``method="kernel"`` (hashlab's own projection);
- simhash_csr: sparse SimHash keys of CSR rows (20,000 features, ~75 non-zeros);
- hadamard: structured SimHash keys of the same dense rows;
- hamming: 1,024-bit Hamming distances of 256 queries against ``n`` rows;
- attention: ``dense_attention`` of 32 query heads over 8 KV heads of ``ctx`` keys, d=128, float32
  keys; the same with bfloat16 keys and values and float32 queries (three bfloat16 parts each at
  avx512bf16) or bfloat16-exact ones (one part: a bf16 model's queries); and an LSH decode step
  (``LSHKVIndex.attend``) over the bfloat16 keys;
- vector_ops: SparseMLP training batches (hidden 128, 20,000 labels).

avx512bf16 is AVX-512 plus the bfloat16 dot product (vdpbf16ps), which only attention uses: its
worker runs the attention rows only. Attention's level is read at every call, so its rows are also
timed interleaved in one process, the levels taking turns call by call (``interleaved`` rows:
median and best per level): a load change on a shared machine then hits every level alike,
where the separate processes may each catch another load. The table gives each family's best
time per level (the minimum over rounds), the fastest level and the level this build picks by
default (``hashlab.simd_levels()``; the figures behind those
defaults are in src_cpp/dispatch.cpp). Someone with other hardware runs ``hashlab bench isa``
and reports isa.md. ``run(quick, threads, out)`` writes <out>/isa.json and <out>/isa.md.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

from . import _common as C

NAME = "isa"
LEVELS = ("scalar", "avx2", "avx512", "avx512bf16")
BF16_LEVEL = "avx512bf16"  # attention's level only: the other families run their avx512 kernels there
CONFIGS = {
    "full": dict(n=100_000, ctx=32_768, rounds=3, repeat=5),
    "quick": dict(n=10_000, ctx=4_096, rounds=2, repeat=3),
    "tiny": dict(n=2_000, ctx=512, rounds=1, repeat=1),  # tests
}


def _families(cfg):
    """{family: fn()} on fixed seeded data."""
    import scipy.sparse as sp

    import hashlab
    from hashlab import _C
    rng = np.random.default_rng(0)
    n = cfg["n"]
    X = rng.standard_normal((n, 128)).astype(np.float32)
    g = hashlab.SimHash(128, 10, 150, kind="gaussian", seed=0)
    hd = hashlab.SimHash(128, 10, 150, kind="hadamard", seed=0)
    sparse = hashlab.SimHash(20_000, 10, 150, kind="sparse", seed=0)
    Xs = sp.random(n // 4, 20_000, density=75 / 20_000, format="csr", dtype=np.float32, random_state=rng)
    bits = hashlab.SimHash(128, 32, 32, kind="hadamard", seed=1).bits(X)
    from hashlab.synthetic import make_xmc
    Xtr, Ytr, _, _ = make_xmc(2_048, 10, 20_000, 20_000, seed=0)
    mlp = hashlab.SparseMLP(20_000, 20_000, hidden=(128,), seed=0)
    W = np.ascontiguousarray(g.W)
    g.hash(X[:128])  # registers scipy's sgemm for the BLAS path
    attention = _attention_families(cfg, rng)

    def train():
        for s in range(0, 2_048, 256):
            mlp._train_batch(Xtr[s:s + 256], Ytr[s:s + 256])

    return {
        "simhash_dense (keys, default path)": lambda: g.hash(X),
        "simhash_dense (own kernel)": lambda: _C.simhash_dense_bits(X, W, g.k * g.l, "kernel"),
        "simhash_csr (keys)": lambda: sparse.hash(Xs),
        "hadamard (keys)": lambda: hd.hash(X),
        "hamming (256 x n, 1024 bits)": lambda: hashlab.hamming(bits[:256], bits),
        **attention,
        "vector_ops (8 SparseMLP batches)": train,
    }


def _attention_families(cfg, rng):
    """{attention family: fn()}: 32 query heads over 8 KV heads of ctx keys, d=128."""
    import hashlab
    from hashlab.attention import _bf16_to_f32, _f32_to_bf16
    Q = rng.standard_normal((32, 128)).astype(np.float32)
    K = rng.standard_normal((8, cfg["ctx"], 128)).astype(np.float32)
    V = rng.standard_normal((8, cfg["ctx"], 128)).astype(np.float32)
    Kb, Vb, Qb = _f32_to_bf16(K), _f32_to_bf16(V), _bf16_to_f32(_f32_to_bf16(Q))
    lsh = hashlab.LSHKVIndex(128, 8, dtype="bfloat16", seed=0)
    lsh.append(Kb, Vb)
    return {
        "attention (dense_attention)": lambda: hashlab.dense_attention(Q, K, V),
        "attention (dense_attention, bf16 keys, float32 queries)": lambda: hashlab.dense_attention(Q, Kb, Vb),
        "attention (dense_attention, bf16 keys, bf16 queries)": lambda: hashlab.dense_attention(Qb, Kb, Vb),
        "attention (LSH decode step, bf16 keys)": lambda: lsh.attend(Q),
    }


def _interleaved_attention(cfg, levels, threads):
    """{attention family: {level: (median s, best s)}}, in this process, the levels taking turns
    call by call (rotating which goes first) over 4 * rounds * repeat calls each, after a warm-up."""
    import time as _time

    import hashlab
    from hashlab import _C
    fams = _attention_families(cfg, np.random.default_rng(0))
    calls = 4 * cfg["rounds"] * cfg["repeat"]
    times = {f: {lv: [] for lv in levels} for f in fams}
    before, threads_before = _C.simd_level() if _C.simd_forced() else "auto", hashlab.get_num_threads()
    hashlab.set_num_threads(threads)
    try:
        for f, fn in fams.items():
            for lv in levels:
                _C.set_simd_level(lv)
                fn()
            for c in range(calls):
                for lv in levels[c % len(levels):] + levels[:c % len(levels)]:
                    _C.set_simd_level(lv)
                    t0 = _time.perf_counter()
                    fn()
                    times[f][lv].append(_time.perf_counter() - t0)
    finally:
        _C.set_simd_level(before)
        hashlab.set_num_threads(threads_before)
    return {f: {lv: (float(np.median(t)), min(t)) for lv, t in per.items()} for f, per in times.items()}


def _worker(mode, out):
    """Times every family at the level HASHLAB_SIMD forces (at avx512bf16 attention's only);
    writes {family: best s} to out."""
    import hashlab
    cfg = CONFIGS[mode]
    res = {"level": hashlab.simd_level(), "times": {}}
    for name, fn in _families(cfg).items():
        if res["level"] != BF16_LEVEL or name.startswith("attention"):
            res["times"][name] = C.best_time(fn, repeat=cfg["repeat"], warmup=1)[0]
    pathlib.Path(out).write_text(json.dumps(res))


def _spawn(level, mode, threads, tmp):
    out = pathlib.Path(tmp) / f"{level}-{time.monotonic_ns()}.json"
    env = dict(os.environ, HASHLAB_SIMD=level, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, "-m", "hashlab.bench.isa", "--worker", mode, str(out)], env=env,
                          capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{level} worker failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(out.read_text())


def run(quick: bool, threads: int | None, out: pathlib.Path, tiny: bool = False) -> dict:
    """Runs every level's worker ``rounds`` times, alternating; writes <out>/isa.json and isa.md."""
    import tempfile

    from hashlab import _C
    mode = "tiny" if tiny else "quick" if quick else "full"
    cfg = dict(CONFIGS[mode])
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rep = C.Report()
    results = C.start(NAME, mode, threads, cfg)
    T = results["machine"].get("threads") or C.resolve_threads(threads)
    levels = [lv for lv in LEVELS if _C.simd_supported(lv)]
    defaults = {} if _C.simd_forced() else dict(_C.simd_levels())
    runs = {lv: [] for lv in levels}
    with tempfile.TemporaryDirectory(prefix="hashlab-isa-") as tmp:
        for r in range(cfg["rounds"]):
            for lv in levels if r % 2 == 0 else levels[::-1]:
                C.progress(f"round {r + 1}/{cfg['rounds']}: {lv}")
                runs[lv].append(_spawn(lv, mode, T, tmp)["times"])
    families = list(runs[levels[0]][0])
    best = {f: {lv: min(x[f] for x in runs[lv]) for lv in levels if f in runs[lv][0]} for f in families}
    C.progress("attention, the levels interleaved in one process")
    interleaved = _interleaved_attention(cfg, levels, T)
    best.update({f"{f} interleaved": {lv: t[0] for lv, t in per.items()} for f, per in interleaved.items()})
    for f in best:
        fastest = min(best[f], key=best[f].get)
        default = defaults.get(f.split(" ")[0], "forced" if not defaults else "-")
        if f.endswith(" interleaved"):  # median (best)
            per = interleaved[f[:-len(" interleaved")]]
            times = ", ".join(f"{lv} {C.fmt_time(m)} ({C.fmt_time(b)})" for lv, (m, b) in per.items())
        else:
            times = ", ".join(f"{lv} {C.fmt_time(t)}" for lv, t in best[f].items())
        ratio = best[f][default] / best[f][fastest] if default in best[f] else None
        rep.row(f, times, f"fastest: {fastest}; default: {default}", ratio)
    results.update(levels=levels, defaults=defaults, runs=runs, best=best, interleaved=interleaved)
    intro = (f"Machine: {C.machine_line(results['machine'])}. Mode: {mode}; each level in its own process, "
             f"{cfg['rounds']} alternating rounds, best of {cfg['repeat']} per round; the table's times are the "
             "best over rounds, except the interleaved rows: attention in one process, the levels taking turns "
             f"call by call, median (best) of {4 * cfg['rounds'] * cfg['repeat']} calls per level, the ratio of "
             "medians; ratio = default level's "
             "time / fastest level's time (1.00x: the default is the fastest). Defaults and their figures: "
             "src_cpp/dispatch.cpp.")
    md = C.render_report(results, rep, {}, intro, ["Kernel family", "Best time per level", "Levels", "Ratio",
                                                   "Target"])
    return C.finish(results, rep, md, out)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "--worker":
        _worker(argv[1], argv[2])
        return 0
    import argparse
    ap = argparse.ArgumentParser(prog="python -m hashlab.bench.isa")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="benchmarks/results/quick")
    a = ap.parse_args(argv)
    print(run(a.quick, a.threads, pathlib.Path(a.out))["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
