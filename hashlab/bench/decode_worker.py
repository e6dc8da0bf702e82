"""One (context, system) of the decode benchmark (hashlab.bench.decode) in its own process, so that
its peak RSS is its own: ``_spawn`` (the parent) writes the run's configuration to a JSON file and
starts ``python -m hashlab.bench.decode_worker CONFIG.json``, whose ``_worker`` loads the model,
installs the system and measures pass A (free-running greedy generate, timed per token) and pass
B (teacher-forced on dense's tokens, every other step profiled), or, for PAIRED, ``_paired``
(pass C: the systems' decode steps interleaved); the result comes back as a JSON file."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np

import hashlab

from . import _common as C
from .decode_model import load_checkpoint
from .decode_profile import CATEGORIES, GLUE, _install_profiler, _Profiler, _time_kernel_calls
from .xmc_worker import _proc_status, _reset_peak  # the standalone worker's peak-RSS readers

PAIRED = "paired"  # the systems' decode steps interleaved in one process (same load for each)
WORKER_TIMEOUT = 3600


def _worker(cfg) -> dict:
    import torch
    from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

    from hashlab.torch import LSHCache, enable_lsh_attention, install_lsh_head

    res = dict(system=cfg["system"], length=len(cfg["ids"]), threads_set=C.set_threads(cfg["threads"]),
               loadavg_start=os.getloadavg())
    t = time.perf_counter()
    model = load_checkpoint(cfg["model_file"])
    res["load_s"] = time.perf_counter() - t
    if cfg["system"] == PAIRED:
        res.update(_paired(cfg, model))
        res["loadavg_end"] = os.getloadavg()
        return res
    system = cfg["system"]
    lsh = system != "dense"
    ids = torch.tensor(cfg["ids"], dtype=torch.long)[None]
    if system == "lsh+head":
        t = time.perf_counter()
        head = install_lsh_head(model, calibration=torch.tensor(cfg["calibration"], dtype=torch.long)[None],
                                **cfg["head"])
        r = head.retriever
        res["head"] = dict(build_s=time.perf_counter() - t, retriever=repr(r), max_candidates=int(r.max_candidates),
                           classes=int(head.out_features), nbytes=int(r.nbytes))
    if lsh:
        enable_lsh_attention(model, **cfg["lsh"])
        res["lsh_params"] = dataclasses.asdict(model._hashlab_lsh_params)

    def new_cache():
        return LSHCache(model) if lsh else DynamicCache(config=model.config)

    gen = copy.deepcopy(model.generation_config)
    gen.update(max_new_tokens=cfg["steps"], do_sample=False, eos_token_id=None,
               pad_token_id=cfg["pad"] if gen.pad_token_id is None else gen.pad_token_id)

    # A. free-running greedy generate, timed per token
    stamps, fwd = [], []

    class Stamp(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            stamps.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    pre = model.register_forward_pre_hook(lambda m, a: fwd.append(-time.perf_counter()))
    post = model.register_forward_hook(lambda m, a, o: fwd.__setitem__(-1, fwd[-1] + time.perf_counter()))
    cache = new_cache()
    res["rss_ready"] = _proc_status()["VmRSS"]
    res["peak_reset"] = _reset_peak()
    t0 = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache, generation_config=gen,
                         stopping_criteria=StoppingCriteriaList([Stamp()]))
    t_end = time.perf_counter()
    res["peak_rss"] = _proc_status()["VmHWM"]
    pre.remove()
    post.remove()
    tokens = out[0, ids.shape[1]:].tolist()
    if len(tokens) != cfg["steps"] or len(stamps) != cfg["steps"]:
        raise RuntimeError(f"generate: expected {cfg['steps']} new tokens, got {len(tokens)} ({len(stamps)} stamps)")
    n = cfg["decode_tokens"]
    step_s = np.diff(stamps)  # step i makes token i (token 0 comes from the prefill)
    res.update(tokens=tokens, generate_s=t_end - t0, prefill_s=stamps[0] - t0,
               decode_tokens=n, decode_s=stamps[n] - stamps[0], decode_tokens_per_s=n / (stamps[n] - stamps[0]),
               step_ms=(1e3 * step_s).tolist(), forward_ms=(1e3 * np.asarray(fwd[1:])).tolist(),
               prefill_forward_s=fwd[0], cache_nbytes=int(getattr(cache, "nbytes", 0)) or _dense_nbytes(cache))
    res["generate_overhead_ms"] = float(np.mean(step_s[:n]) * 1e3 - np.mean(fwd[1:n + 1]) * 1e3)
    if lsh:
        res["stats"] = cache.stats()
    del cache, out

    # B. teacher-forced on dense's tokens (dense: its own), every other step profiled
    forced = cfg.get("forced") or tokens
    prof = _Profiler()
    _install_profiler(model, prof)
    cache = new_cache()
    preds, timed, untimed = [], [], []
    with torch.no_grad():
        logits = model(ids, attention_mask=torch.ones_like(ids), cache=cache, use_cache=True, logits_to_keep=1).logits
        preds.append(int(logits[0, -1].argmax()))
        if lsh:
            _time_kernel_calls(cache, prof)
        for i, tok in enumerate(forced[:-1]):
            prof.enabled = i % 2 == 0
            x = torch.tensor([[tok]], dtype=torch.long)
            t = time.perf_counter()
            prof.enter(GLUE)
            logits = model(x, cache=cache, use_cache=True).logits
            prof.exit()
            (timed if prof.enabled else untimed).append(time.perf_counter() - t)
            prof.enabled = False
            preds.append(int(logits[0, -1].argmax()))
    res["forced_preds"] = preds
    k = max(1, len(timed))
    res["profile"] = dict(steps=len(timed), step_ms_timed=1e3 * float(np.mean(timed)) if timed else None,
                          step_ms_untimed=1e3 * float(np.mean(untimed)) if untimed else None,
                          ms={c: 1e3 * prof.excl.get(c, 0.0) / k for c in CATEGORIES})
    if lsh:
        res["stats_forced"] = cache.stats()
    res["loadavg_end"] = os.getloadavg()
    return res


def _paired(cfg, model) -> dict:
    """The systems' decode steps interleaved in one process, so that they see the same load: after
    a prefill of each, every step feeds dense's next greedy token to each system in turn (the order
    rotating), timing the model forward. Returns {"paired_ms": {system: [ms per step]}}."""
    import torch
    from transformers import DynamicCache

    from hashlab.torch import LSHCache, enable_lsh_attention, install_lsh_head
    from hashlab.torch.attention import ATTN_IMPLEMENTATION

    systems = cfg["systems"]
    ids = torch.tensor(cfg["ids"], dtype=torch.long)[None]
    linear = model.get_output_embeddings()
    head = None
    if "lsh+head" in systems:
        head = install_lsh_head(model, calibration=torch.tensor(cfg["calibration"], dtype=torch.long)[None],
                                **cfg["head"])
        model.set_output_embeddings(linear)
    enable_lsh_attention(model, **cfg["lsh"])
    setups = {"dense": ("sdpa", linear), "lsh": (ATTN_IMPLEMENTATION, linear), "lsh+head": (ATTN_IMPLEMENTATION, head)}

    def use(system):
        impl, out = setups[system]
        if model.config._attn_implementation != impl:
            model.set_attn_implementation(impl)
        model.set_output_embeddings(out)

    caches = {}
    with torch.no_grad():
        for system in systems:
            use(system)
            caches[system] = DynamicCache(config=model.config) if system == "dense" else LSHCache(model)
            model(ids, attention_mask=torch.ones_like(ids), cache=caches[system], use_cache=True, logits_to_keep=1)
        times = {system: [] for system in systems}
        for i, tok in enumerate(cfg["forced"][:cfg["decode_tokens"]]):
            x = torch.tensor([[tok]], dtype=torch.long)
            for j in range(len(systems)):
                system = systems[(i + j) % len(systems)]
                use(system)
                t = time.perf_counter()
                model(x, cache=caches[system], use_cache=True)
                times[system].append(1e3 * (time.perf_counter() - t))
    return {"paired_ms": times}


def _dense_nbytes(cache):
    total = 0
    for layer in cache.layers:
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if t is not None:
                total += t.numel() * t.element_size()
    return int(total)


def _worker_main(path):
    cfg = json.load(open(path))
    try:
        res = _worker(cfg)
        res["status"] = "ok"
    except Exception as e:  # noqa: BLE001  (reported to the parent)
        res = dict(system=cfg["system"], length=len(cfg["ids"]), status=f"ERROR: {type(e).__name__}: {e}",
                   traceback=traceback.format_exc())
    with open(cfg["result"], "w") as f:
        json.dump(res, f, default=C._json_default)


def _spawn(cfg, workdir, threads) -> dict:
    """Runs one (context, system) in a fresh interpreter; returns its result dict."""
    tag = f"{cfg['system'].replace('+', '_')}-{len(cfg['ids'])}"
    path = os.path.join(workdir, f"{tag}.json")
    cfg = dict(cfg, result=os.path.join(workdir, f"{tag}.result.json"), threads=threads)
    with open(path, "w") as f:
        json.dump(cfg, f)
    env = dict(os.environ)
    for var in C.THREAD_ENV:
        env[var] = str(threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    root = os.path.dirname(os.path.dirname(os.path.abspath(hashlab.__file__)))  # the worker imports this hashlab
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    log = os.path.join(workdir, f"{tag}.log")
    try:
        with open(log, "w") as lf:
            proc = subprocess.run([sys.executable, "-m", "hashlab.bench.decode_worker", path], env=env,
                                  stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  timeout=WORKER_TIMEOUT)
    except subprocess.TimeoutExpired:
        return dict(system=cfg["system"], length=len(cfg["ids"]), status=f"ERROR: timed out after {WORKER_TIMEOUT} s")
    if not os.path.exists(cfg["result"]):
        tail = open(log).read()[-2000:]
        return dict(system=cfg["system"], length=len(cfg["ids"]),
                    status=f"ERROR: worker exited with status {proc.returncode}", log=tail)
    res = json.load(open(cfg["result"]))
    res["worker_wall_s"] = time.perf_counter() - t0
    return res



if __name__ == "__main__":
    _worker_main(sys.argv[1])
