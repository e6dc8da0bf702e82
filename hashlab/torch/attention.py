"""LSH-sampled decode attention (MagicPIG) for torch models and transformers causal LMs.

Two ways in:

- ``LSHAttention``: a torch module for your own models, fed (B, H, T, D) q/k/v. The first
  call after construction or ``reset()`` is the prefill: dense causal attention (torch SDPA)
  over the prompt, whose keys/values then go into one ``hashlab.attention.LSHKVIndex`` per
  batch element. Every later call continues the sequence: each new token is appended to the
  index and its query attends through it (LSH sampling over the indexed keys, exact over
  the sinks and the recent window). One module = one layer's attention and its KV state.

- ``enable_lsh_attention(model)`` for a transformers decoder-only causal LM whose attention
  goes through transformers' attention-function registry: Llama (incl. SmolLM2), Mistral,
  Qwen2, Qwen3, Phi-3, Gemma 2 and Gemma 3 (``SUPPORTED_MODEL_TYPES``), on the transformers
  versions in ``SUPPORTED_TRANSFORMERS`` (the ``cache=`` API; checked, ImportError outside).
  It uses transformers' own extension points, no copied model code:

  * ``AttentionInterface.register("hashlab_lsh", lsh_attention_forward)`` plus the same
    name in ``AttentionMaskInterface`` (with transformers' SDPA mask), then
    ``model.set_attn_implementation("hashlab_lsh")``;
  * ``LSHCache``, a ``DynamicCache`` subclass laid out as ``DynamicCache(config=...)`` is,
    except that its full-attention layers outside ``dense_layers`` are ``LSHCacheLayer``
    objects holding one LSHKVIndex per batch element. Dense layers stay ``DynamicLayer`` and
    sliding-window layers (Gemma 2/3, Qwen2/3 with ``use_sliding_window``) stay
    ``DynamicSlidingWindowLayer``: dense within their window, where sampling buys nothing;
  * ``model.generate`` is wrapped on the instance (the pattern transformers uses for
    ``custom_generate``) so that a call without ``cache=`` gets a fresh LSHCache.

  The attention function finds its cache layer because ``LSHCache.update`` is always called
  right before it in the same attention forward: the layer hands itself over in a
  thread-local slot, tagged with the very key tensor it returned, and the attention function
  takes it only if it receives that tensor. Anything else (no cache, a plain DynamicCache,
  a dense or sliding layer) runs transformers' ``sdpa_attention_forward`` unchanged, so
  prefill is bit-identical to ``attn_implementation="sdpa"``.

  What the architectures differ in, and how it is handled: QK-norm (Qwen3, Gemma 3) and
  RoPE run before ``cache.update``, so the index holds the keys attention sees; the scale
  the model passes (Gemma: ``query_pre_attn_scalar ** -0.5``) is the one used at decode;
  head dimensions up to 4096 (Gemma: 256) go to the index as they are. Not handled, and
  refused with a ValueError naming it: attention logit soft-capping (Gemma 2's
  ``attn_logit_softcapping``; the kernel has no logit transform, and transformers' own
  SDPA refuses it too), bidirectional attention (``use_bidirectional_attention``), a model
  whose every layer is sliding-window (nothing to sample) and cache layer kinds other than
  full or sliding-window attention.

Semantics and limits (both paths):

- Prefill (the first forward of a sequence) is dense. Decode steps use the index. A later
  multi-token forward (chunked continuation, a second user turn) is run as that many decode
  steps in a row: each token is appended, then its query attends, which is exactly what
  feeding the tokens one at a time would do. As in LSHKVIndex, tokens that leave the window
  join the index (in chunks), so long generations stay sampled.
- Batches: one index per batch element. Left padding of the prompt is supported: the keys of
  padded positions are left out of that element's index (read from the prefill mask).
  Padding inside later steps is not (it would be attended to); right padding is not.
- The index lives in CPU memory as numpy float32 (or bfloat16, ``index_dtype``); queries
  are copied to the CPU for decode and the output copied back, like MagicPIG's CPU side.
- Not supported: beam search (``reorder_cache``), cache cropping (assisted/speculative
  decoding), ``torch.compile`` of the decode step, output_attentions. These raise.
"""
from __future__ import annotations

import copy
import functools
import threading
import weakref
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_choice, check_float, check_int

__all__ = ["LSHAttention", "LSHAttentionParams", "enable_lsh_attention", "disable_lsh_attention",
           "lsh_attention_forward", "lsh_decode", "is_lsh_attention_enabled", "SUPPORTED_MODEL_TYPES",
           "SUPPORTED_TRANSFORMERS", "LSHCache", "LSHCacheLayer"]  # noqa: F822 (the last two: __getattr__ below)

ATTN_IMPLEMENTATION = "hashlab_lsh"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
_ARCH_NOTE = ("decoder-only causal LMs on transformers' attention-function registry (Llama, SmolLM2, Mistral, "
              "Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3 text)")
# The transformers versions the plug-in is tested on, as in pyproject.toml's extras (a test keeps them equal):
# 5.24 is the first whose forward and generate take ``cache=`` (``past_key_values`` warns there, removed in
# 5.40 / 6.0); 6 is a major release free to change the cache-layer API the LSHCache subclasses.
SUPPORTED_TRANSFORMERS = ">=5.24,<6"


# ---------------------------------------------------------------------------------------------
# parameters and the index


@dataclass(frozen=True)
class LSHAttentionParams:
    """Parameters of the LSH-sampled decode attention (MagicPIG defaults).

    k: SimHash bits per table; l: tables; min_collisions: an indexed key is sampled when it
    shares the query's bucket in at least this many tables (0 = every key sampled, i.e.
    exact attention through the sampling path); sinks: first tokens always attended
    exactly; window: last tokens always attended exactly; seed: hash seed (per layer the
    seed is ``seed + layer_idx``); max_sampled: optional cap on sampled keys per head;
    index_dtype: "float32" or "bfloat16" storage of the keys/values in the index;
    dense_layers: layer indexes kept on full attention (transformers path only);
    learned: fit a per-KV-head map on each layer's prefill queries and keys and hash
    through it (``LSHKVIndex(learned=True)``: same logits, still unbiased, collisions
    reshaped towards each query's top keys); the fit (torch autograd, 100 Adam steps per KV
    head: ~25 s per SmolLM2 layer of 3 KV heads at 4K tokens on a loaded 2-core machine)
    runs at prefill, for every batch element and LSH layer.
    layer_params: per-layer overrides, ``{layer_idx: {"k": ..., "l": ..., "min_collisions": ...,
    "sinks": ..., "window": ..., "max_sampled": ...}}`` (any subset of those names), applied to
    that layer's index on top of the parameters above (stored as a sorted tuple of
    ``(layer_idx, ((name, value), ...))`` pairs; ``for_layer(i)`` gives layer i's parameters).
    target_touched: None (default) or a fraction in (0, 1]: an adaptive budget. At prefill
    each LSH layer profiles the prompt's last 64 queries (``hashlab.attention.prompt_profile``:
    the attention mass on the indexed keys and the cosines to them); at the first decode step
    every layer's min_collisions is re-chosen (``allocate_min_collisions``) so that the
    layers sample about this fraction of their indexed keys on average, layer i's share
    proportional to mass_i ** budget_power (0, the default: the same fraction in every layer;
    on SmolLM2 that beat shares by mass ** 0.5 and mass ** 1, benchmarks/README.md). Per batch
    element; layers whose ``layer_params`` set min_collisions keep it; without the prefill's
    queries (``LSHCache.from_dynamic_cache``) nothing is re-chosen. The profile costs about
    one dense decode step of attention per probe query, once.
    budget_power: float >= 0, default 0 (see target_touched).
    """

    k: int = 10
    l: int = 150
    min_collisions: int = 2
    sinks: int = 4
    window: int = 64
    seed: int = 0
    max_sampled: int | None = None
    index_dtype: str = "float32"
    dense_layers: tuple = (0,)
    learned: bool = False
    layer_params: tuple = ()
    target_touched: float | None = None
    budget_power: float = 0.0

    def __post_init__(self):
        check_int(self.k, "k", 1, 32)
        check_int(self.l, "l", 1, 65535)
        check_int(self.min_collisions, "min_collisions", 0, min(self.l, 255))
        check_int(self.sinks, "sinks", 0)
        check_int(self.window, "window", 0)
        check_int(self.seed, "seed", 0, 2**63 - 1)
        if self.max_sampled is not None:
            check_int(self.max_sampled, "max_sampled", 1)
        check_choice(self.index_dtype, "index_dtype", ("float32", "bfloat16"))
        if not isinstance(self.learned, bool):
            raise TypeError(f"learned: expected a bool, got {type(self.learned).__name__}")
        try:
            dense = tuple(sorted({check_int(i, "dense_layers[i]", 0) for i in self.dense_layers}))
        except TypeError as e:
            if "dense_layers[i]" in str(e):
                raise
            raise TypeError(f"dense_layers: expected an iterable of integers, got "
                            f"{type(self.dense_layers).__name__}") from None
        object.__setattr__(self, "dense_layers", dense)
        object.__setattr__(self, "layer_params", _layer_params(self.layer_params))
        if self.target_touched is not None:
            object.__setattr__(self, "target_touched",
                               check_float(self.target_touched, "target_touched", 0.0, 1.0, lo_open=True))
        object.__setattr__(self, "budget_power", check_float(self.budget_power, "budget_power", 0.0))
        for i, _ in self.layer_params:
            self.for_layer(i)  # each layer's combination is valid (e.g. min_collisions <= l)

    def for_layer(self, layer_idx: int) -> "LSHAttentionParams":
        """The parameters of layer ``layer_idx``'s index: these with its ``layer_params`` applied."""
        over = dict(self.layer_params).get(layer_idx)
        if not over:
            return self
        fields = {f: getattr(self, f) for f in self.__dataclass_fields__ if f != "layer_params"}
        return LSHAttentionParams(**{**fields, **dict(over)})

    def new_index(self, head_dim: int, n_kv_heads: int, layer_idx: int = 0):
        from ..attention import LSHKVIndex  # the numpy/C++ kernel (no torch)

        if self.layer_params:
            p = self.for_layer(layer_idx)
            if p is not self:
                return p.new_index(head_dim, n_kv_heads, layer_idx)
        return LSHKVIndex(head_dim, n_kv_heads, k=self.k, l=self.l, min_collisions=self.min_collisions,
                          sinks=self.sinks, window=self.window, seed=self.seed + layer_idx,
                          max_sampled=self.max_sampled, dtype=self.index_dtype, learned=self.learned)


_LAYER_FIELDS = ("k", "l", "min_collisions", "sinks", "window", "max_sampled")


def _layer_params(given):
    """``layer_params`` as a sorted tuple of (layer_idx, ((name, value), ...)) pairs (from a dict or that form)."""
    if given is None:
        return ()
    try:
        items = list(given.items()) if isinstance(given, dict) else [tuple(x) for x in given]
    except TypeError:
        raise TypeError(f"layer_params: expected a dict {{layer_idx: {{name: value}}}}, got "
                        f"{type(given).__name__}") from None
    out = {}
    for pair in items:
        if len(pair) != 2:
            raise TypeError(f"layer_params: expected (layer_idx, overrides) pairs, got {pair!r}")
        i, over = pair
        i = check_int(i, "layer_params key", 0)
        over = dict(over.items() if isinstance(over, dict) else over)
        bad = sorted(set(over) - set(_LAYER_FIELDS))
        if bad:
            raise ValueError(f"layer_params[{i}]: expected names among {_LAYER_FIELDS}, got {bad}")
        if i in out:
            raise ValueError(f"layer_params: layer {i} given twice")
        out[i] = tuple(sorted(over.items()))
    return tuple(sorted(out.items()))


class _Stats:
    """Running counts over decode steps: keys the sampler touched vs keys it could sample."""

    __slots__ = ("steps", "touched", "candidates", "keys")

    def __init__(self):
        self.steps = 0          # (query token, batch element) decode steps
        self.touched = 0        # sum over steps and query heads of sampled keys touched
        self.candidates = 0     # sum over steps and query heads of keys eligible for sampling
        self.keys = 0           # sum over steps and query heads of all keys in the index

    def add(self, other):
        self.steps += other.steps
        self.touched += other.touched
        self.candidates += other.candidates
        self.keys += other.keys

    def as_dict(self):
        return {"decode_steps": self.steps, "keys_touched": self.touched, "sampling_candidates": self.candidates,
                "touched_fraction": self.touched / self.candidates if self.candidates else 0.0,
                "touched_fraction_of_all_keys": self.touched / self.keys if self.keys else 0.0}


def _np32(x: torch.Tensor) -> np.ndarray:
    """A CPU float32 C-contiguous numpy view/copy of a torch tensor."""
    return x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def lsh_decode(indexes, query, key, value, scale, stats: _Stats | None = None):
    """Decode T tokens through per-batch-element LSH indexes.

    indexes: list of B LSHKVIndex; query (B, H, T, D); key/value (B, H_kv, T, D) for the new
    tokens. For t = 0..T-1: append key/value t to each index, then attend query t.
    Returns (B, H, T, D) in query's dtype and device. ``stats`` (optional) accumulates the
    keys the sampler touched: ``touched`` from the kernel counts sampled + dense keys, so the
    sampled ones are touched - (len - n_indexed) per head, out of n_indexed candidates.
    """
    B, H, T, D = query.shape
    if len(indexes) != B:
        raise ValueError(f"expected {len(indexes)} batch elements (the prefill's batch size), got {B}")
    q = _np32(query)
    k = _np32(key)
    v = _np32(value)
    out = np.empty((B, H, T, D), dtype=np.float32)
    for t in range(T):
        for b, index in enumerate(indexes):
            index.append(k[b, :, t:t + 1], v[b, :, t:t + 1])
            if stats is None:
                out[b, :, t] = index.attend(q[b, :, t], scale=scale)
            else:
                o, _, touched = index.attend(q[b, :, t], scale=scale, return_stats=True)
                out[b, :, t] = o
                n, n_indexed = len(index), index.n_indexed
                stats.steps += 1
                stats.touched += int(np.sum(touched)) - H * (n - n_indexed)
                stats.candidates += H * n_indexed
                stats.keys += H * n
    return torch.from_numpy(out).to(device=query.device, dtype=query.dtype)


def _valid_key_mask(attention_mask, batch: int, kv_len: int):
    """Per batch element, which key positions the last query of the prefill may attend (or None)."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() != 4:
        return None
    row = m[:, 0, -1, :kv_len]
    if row.dtype == torch.bool:
        valid = row
    else:
        valid = row > torch.finfo(row.dtype).min / 2
    valid = valid.expand(batch, kv_len).cpu().numpy()
    return None if valid.all() else valid


_N_PROBE = 64  # prompt queries profiled per layer for target_touched


def _build_indexes(params: LSHAttentionParams, key, value, layer_idx: int, valid=None, query=None, scale=None,
                   profiles=None):
    """One LSHKVIndex per batch element holding the prompt (keys whose ``valid`` is False left out).

    query (B, H, S, D): the prefill's queries (their positions are the keys'), needed with
    ``params.learned`` to fit each element's maps (the query heads of a KV head fit its map).
    With ``params.target_touched`` and a query (there (B, H, S_q <= S, D), the last S_q
    positions suffice), ``profiles`` (a list) receives one ``prompt_profile`` (mass, cos_hist)
    per batch element, or None for an element without indexed keys."""
    B, H_kv, S, D = key.shape
    if params.learned and (query is None or query.shape[0] != B or query.shape[2] != S or query.shape[3] != D):
        raise ValueError(f"learned=True: expected the prefill's queries shaped ({B}, H, {S}, {D}), got "
                         f"{None if query is None else tuple(query.shape)}")
    k = _np32(key)
    v = _np32(value)
    q = _np32(query) if params.learned else None
    profile = profiles is not None and params.target_touched is not None and query is not None
    if profile:
        from ..attention_budget import prompt_profile
    indexes = []
    for b in range(B):
        index = params.new_index(D, H_kv, layer_idx)
        sel = slice(None) if valid is None else np.flatnonzero(valid[b])
        prof = None
        if valid is None or sel.size:
            kb = np.ascontiguousarray(k[b][:, sel])
            if params.learned:
                index.fit(q[b][:, sel], kb)
            index.append(kb, np.ascontiguousarray(v[b][:, sel]))
            if profile:  # left padding: an element's last positions are its own
                n_q = min(_N_PROBE, kb.shape[1], query.shape[2])
                prof = prompt_profile(_np32(query[b, :, query.shape[2] - n_q:]), kb, index.sinks, index.window,
                                      scale, n_probe=n_q)
                if not np.any(prof[1]):
                    prof = None
        elif params.learned:  # an all-padding prompt: nothing to fit on, hash as the plain index
            index.transform = np.broadcast_to(np.eye(D, dtype=np.float32), (H_kv, D, D))
        if profiles is not None:
            profiles.append(prof)
        indexes.append(index)
    return indexes


def _allocate_budget(params: LSHAttentionParams, layers):
    """target_touched: re-choose min_collisions of every (layer_idx, indexes, profiles) in ``layers``,
    per batch element, sharing the budget by attention mass (layers whose layer_params set
    min_collisions, and elements without a profile, keep theirs)."""
    from ..attention_budget import allocate_min_collisions

    fixed = {i for i, over in params.layer_params if "min_collisions" in dict(over)}
    layers = [(i, ix, pr) for i, ix, pr in layers if i not in fixed and pr is not None]
    if not layers:
        return
    for b in range(len(layers[0][1])):
        live = [(ix[b], pr[b]) for _, ix, pr in layers if pr[b] is not None]
        ms = allocate_min_collisions([(mass, hist, index.k, index.l) for index, (mass, hist) in live],
                                     params.target_touched, params.budget_power)
        for (index, _), m in zip(live, ms):
            if m is not None:
                index.set_min_collisions(min(m, index.l, 255))


# ---------------------------------------------------------------------------------------------
# torch module for custom models


class LSHAttention(nn.Module):
    """One layer's attention with LSH-sampled decode, for (B, H, T, D) q/k/v.

    ``forward(q, k, v)``: q (B, H, T, D), k/v (B, H_kv, T, D) for the *new* tokens, H a
    multiple of H_kv (GQA: query head h reads KV head h // (H // H_kv)). The first call
    (module empty) is the prefill: causal SDPA over the T tokens, then the keys/values go
    into one LSHKVIndex per batch element. Later calls continue the same sequences: each
    new token is appended and attends through the index (T == 1 in a generation loop;
    T > 1 runs T decode steps). Returns (B, H, T, D) in q's dtype. ``reset()`` starts over.

    scale defaults to D ** -0.5. Stats: ``stats()`` (keys touched per decode step and the
    fraction of sampling candidates), memory: ``nbytes``.
    """

    def __init__(self, n_heads, n_kv_heads, head_dim, *, k=10, l=150, min_collisions=2, sinks=4, window=64,
                 seed=0, max_sampled=None, index_dtype="float32", scale=None, learned=False, target_touched=None):
        super().__init__()
        self.n_heads = check_int(n_heads, "n_heads", 1)
        self.n_kv_heads = check_int(n_kv_heads, "n_kv_heads", 1)
        self.head_dim = check_int(head_dim, "head_dim", 1)
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads: expected a multiple of n_kv_heads={self.n_kv_heads}, got {self.n_heads}")
        self.params = LSHAttentionParams(k=k, l=l, min_collisions=min_collisions, sinks=sinks, window=window,
                                         seed=seed, max_sampled=max_sampled, index_dtype=index_dtype,
                                         dense_layers=(), learned=learned, target_touched=target_touched)
        self.scale = None if scale is None else float(scale)
        self.reset()

    def reset(self):
        """Forget the held sequences; the next forward is a prefill."""
        self.indexes = None
        self._stats = _Stats()

    def __len__(self):
        """Tokens held per batch element (the first element's count)."""
        return 0 if self.indexes is None else len(self.indexes[0])

    @property
    def nbytes(self) -> int:
        """Memory held: the indexes plus their stored keys and values, in bytes."""
        return 0 if self.indexes is None else int(sum(ix.nbytes + ix.kv_nbytes for ix in self.indexes))

    def stats(self) -> dict:
        return self._stats.as_dict()

    def _check(self, q, k, v):
        for name, x in (("q", q), ("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
            if not x.is_floating_point():
                raise TypeError(f"{name}: expected a floating-point tensor, got {x.dtype}")
            if x.dim() != 4:
                raise ValueError(f"{name}: expected 4 dims (B, H, T, D), got shape {tuple(x.shape)}")
        B, H, T, D = q.shape
        if (H, D) != (self.n_heads, self.head_dim):
            raise ValueError(f"q: expected (B, {self.n_heads}, T, {self.head_dim}), got {tuple(q.shape)}")
        want = (B, self.n_kv_heads, T, self.head_dim)
        for name, x in (("k", k), ("v", v)):
            if tuple(x.shape) != want:
                raise ValueError(f"{name}: expected shape {want}, got {tuple(x.shape)}")
        if T == 0:
            raise ValueError("q: expected at least one token (T >= 1), got T = 0")

    def forward(self, q, k, v):
        self._check(q, k, v)
        B = q.shape[0]
        if self.indexes is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                                 enable_gqa=self.n_heads != self.n_kv_heads)
            profiles = []
            self.indexes = _build_indexes(self.params, k, v, 0, query=q, scale=self.scale, profiles=profiles)
            if self.params.target_touched is not None:  # one layer: its m for the target fraction itself
                _allocate_budget(self.params, [(0, self.indexes, profiles)])
            return out
        if B != len(self.indexes):
            raise ValueError(f"q: expected batch size {len(self.indexes)} (the prefill's), got {B}; "
                             f"call reset() to start new sequences")
        scale = self.scale if self.scale is not None else self.head_dim ** -0.5
        return lsh_decode(self.indexes, q, k, v, scale, self._stats)


# ---------------------------------------------------------------------------------------------
# transformers integration


class _Handoff(threading.local):
    layer = None
    key = None


_HANDOFF = _Handoff()


def lsh_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """The ``hashlab_lsh`` attention function (transformers AttentionInterface signature).

    query (B, H, T, D), key/value as returned by the cache. With an LSHCache layer behind
    them: prefill -> transformers' SDPA, then the layer builds its indexes; decode -> LSH.
    Otherwise it is exactly transformers' ``sdpa_attention_forward``.
    Returns (attn_output (B, T, H, D) in query's dtype, None).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer = _HANDOFF.layer if _HANDOFF.key is key else None
    _HANDOFF.layer = _HANDOFF.key = None
    if layer is None or layer._pending is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    if kwargs.get("output_attentions"):
        raise ValueError("hashlab_lsh attention does not return attention weights (output_attentions=True)")
    if kwargs.get("softcap") is not None:
        raise ValueError(f"hashlab_lsh attention: expected no logit soft-capping (attn_logit_softcapping=None), got "
                         f"softcap={kwargs['softcap']}; the LSH kernel does not soft-cap")
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    kind, k_new, v_new = layer._pending
    layer._pending = None
    if kind == "prefill":
        out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                     scaling=scaling, **kwargs)
        layer._ingest_prompt(k_new, v_new, _valid_key_mask(attention_mask, key.shape[0], key.shape[2]), query, scaling)
        return out
    out = lsh_decode(layer.indexes, query, k_new, v_new, scaling, layer.stats)
    return out.transpose(1, 2).contiguous(), None


def _check_transformers_version(installed: str):
    """ImportError unless ``installed`` (a transformers version string) is in SUPPORTED_TRANSFORMERS."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:  # pre-releases count: 5.26.0.dev0 is in, 6.0.0rc1 is out (PEP 440: "<6" excludes 6's pre-releases)
        ok = SpecifierSet(SUPPORTED_TRANSFORMERS).contains(Version(installed), prereleases=True)
    except InvalidVersion:
        ok = False
    if not ok:
        raise ImportError(f"hashlab's transformers plug-in supports transformers{SUPPORTED_TRANSFORMERS}, got "
                          f"transformers {installed}; pip install 'transformers{SUPPORTED_TRANSFORMERS}'")


def _hf():
    try:
        import transformers
        from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"the transformers integration of hashlab.torch needs the `transformers` package "
                          f"(pip install 'transformers{SUPPORTED_TRANSFORMERS}')") from e
    _check_transformers_version(transformers.__version__)
    return Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer


@functools.lru_cache(maxsize=None)
def _hf_classes():
    """Build LSHCacheLayer and LSHCache (subclasses of transformers classes) on first use."""
    Cache, DynamicCache, DynamicLayer, _ = _hf()

    class LSHCacheLayer(DynamicLayer):
        """A cache layer holding one LSHKVIndex per batch element instead of K/V tensors.

        ``update`` returns the new key/value states (the whole prompt at prefill) and hands
        the layer to the ``hashlab_lsh`` attention function, which builds the indexes at
        prefill and decodes through them afterwards. ``get_seq_length`` counts tokens.
        """

        is_croppable = False
        is_compileable = False

        def __init__(self, params: LSHAttentionParams, layer_idx: int):
            super().__init__()
            self.params = params
            self.layer_idx = layer_idx
            self.indexes = None
            self.stats = _Stats()
            self.seq_len = 0
            self._pending = None
            self.profiles = None    # target_touched: prompt_profile per batch element, until the first decode
            self._owner = None      # the LSHCache (a weakref), which allocates the budget over its layers

        def __repr__(self):
            return f"LSHCacheLayer(layer_idx={self.layer_idx}, tokens={self.seq_len})"

        def lazy_initialization(self, key_states, value_states):
            self.dtype, self.device = key_states.dtype, key_states.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if self._pending is not None:
                raise RuntimeError(
                    f"LSHCache layer {self.layer_idx} was updated twice without the hashlab_lsh attention running "
                    f"in between; call hashlab.torch.enable_lsh_attention(model) before using an LSHCache")
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            kind = "prefill" if self.indexes is None else "decode"
            if kind == "decode" and key_states.shape[0] != len(self.indexes):
                raise ValueError(f"expected batch size {len(self.indexes)} (the prefill's), got {key_states.shape[0]}")
            if kind == "decode" and self.profiles is not None:
                owner = self._owner() if self._owner is not None else None
                if owner is not None and any(layer is self for layer in owner.layers):
                    owner._allocate_budget()
                else:
                    _allocate_budget(self.params, [(self.layer_idx, self.indexes, self.profiles)])
                    self.profiles = None
            self._pending = (kind, key_states, value_states)
            self.seq_len += key_states.shape[-2]
            _HANDOFF.layer, _HANDOFF.key = self, key_states
            return key_states, value_states

        def _ingest_prompt(self, keys, values, valid=None, query=None, scale=None):
            profiles = [] if self.params.target_touched is not None and query is not None else None
            self.indexes = _build_indexes(self.params, keys, values, self.layer_idx, valid, query, scale, profiles)
            self.profiles = profiles

        def get_seq_length(self) -> int:
            return self.seq_len

        def get_mask_sizes(self, query_length: int):
            return self.seq_len + query_length, 0

        @property
        def batch_size(self):
            return -1 if self.indexes is None else len(self.indexes)

        @property
        def nbytes(self) -> int:
            return 0 if self.indexes is None else int(sum(ix.nbytes + ix.kv_nbytes for ix in self.indexes))

        def reset(self):
            self.indexes = self._pending = self.profiles = None
            self.seq_len = 0
            self.stats = _Stats()
            self.is_initialized = False

        def offload(self):
            pass

        def prefetch(self):
            pass

        def _unsupported(self, what):
            raise NotImplementedError(f"LSHCache does not support {what} (beam search, assisted or speculative "
                                      f"decoding); use a DynamicCache (disable_lsh_attention) for those")

        def crop(self, tokens_to_remove):
            self._unsupported("crop()")

        def reorder_cache(self, beam_idx):
            self._unsupported("reorder_cache()")

        def batch_repeat_interleave(self, repeats):
            if self.indexes is None:
                return  # nothing held yet: the batch is set by the prefill
            self._unsupported("batch_repeat_interleave() after the prefill")

        def batch_select_indices(self, indices):
            if self.indexes is None:
                return
            idx = [int(i) for i in torch.as_tensor(indices).reshape(-1).tolist()]
            if len(set(idx)) != len(idx):
                self._unsupported("selecting a batch element twice")
            self.indexes = [self.indexes[i] for i in idx]

    class LSHCache(DynamicCache):
        """A DynamicCache whose full-attention layers hold LSH indexes (one per batch element).

        ``LSHCache(model)`` takes the parameters given to ``enable_lsh_attention(model)``;
        ``LSHCache(model_or_config, **params)`` sets them (see LSHAttentionParams). The layout
        is ``DynamicCache(config=...)``'s: layers in ``dense_layers`` stay ``DynamicLayer``
        (full attention) and sliding-window layers ``DynamicSlidingWindowLayer``; the other
        full-attention layers are ``LSHCacheLayer``. Pass it as ``model(..., cache=cache)`` or
        ``model.generate(..., cache=cache)``. ``stats()`` reports keys touched during decode;
        ``nbytes`` the memory of indexes and dense tensors.
        """

        def __init__(self, model_or_config, params: LSHAttentionParams | None = None, **kwargs):
            config = getattr(model_or_config, "config", model_or_config)
            if params is None:
                base = getattr(model_or_config, "_hashlab_lsh_params", None) or LSHAttentionParams()
                params = LSHAttentionParams(**{**asdict(base), **kwargs}) if kwargs else base
            elif kwargs:
                raise TypeError("pass either params= or keyword parameters, not both")
            layers, full = _dense_layout(config)
            _check_layer_indexes(params, len(layers))
            self.params = params
            layers = [LSHCacheLayer(params, i) if i in full and i not in params.dense_layers else layer
                      for i, layer in enumerate(layers)]
            Cache.__init__(self, layers=layers)
            for layer in self.layers:
                if isinstance(layer, LSHCacheLayer):
                    layer._owner = weakref.ref(self)

        def _allocate_budget(self):
            """target_touched, at the first decode step: re-choose every LSH layer's min_collisions."""
            mine = [layer for layer in self.layers if isinstance(layer, LSHCacheLayer) and layer.profiles is not None]
            _allocate_budget(self.params, [(layer.layer_idx, layer.indexes, layer.profiles) for layer in mine])
            for layer in mine:
                layer.profiles = None

        @classmethod
        def from_dynamic_cache(cls, cache, model_or_config, params: LSHAttentionParams | None = None, **kwargs):
            """An LSHCache holding the prompt already stored in a (prefilled, unpadded) DynamicCache.

            Lets one dense prefill serve both a dense and an LSH decode. The given cache is
            not modified; dense and sliding-window layers are copies of its layers.
            """
            new = cls(model_or_config, params, **kwargs)
            if new.params.learned:
                raise ValueError("learned=True fits on the prefill's queries, which a DynamicCache does not hold; "
                                 "prefill with the LSHCache itself")
            if len(cache.layers) != len(new.layers):
                raise ValueError(f"cache: expected {len(new.layers)} layers, got {len(cache.layers)}")
            for i, (src, dst) in enumerate(zip(cache.layers, new.layers)):
                if src.keys is None or src.keys.numel() == 0:
                    raise ValueError(f"cache: layer {i} holds no tokens; prefill it first")
                if not isinstance(dst, LSHCacheLayer):
                    new.layers[i] = copy.deepcopy(src)
                    continue
                if getattr(src, "is_sliding", False):  # the index needs every key, a window keeps the last ones
                    raise ValueError(f"cache: expected layer {i} to hold the whole prompt (full attention), got a "
                                     f"{type(src).__name__}; build the cache as DynamicCache(config=model.config)")
                dst.lazy_initialization(src.keys, src.values)
                dst._ingest_prompt(src.keys, src.values)
                dst.seq_len = src.keys.shape[-2]
            return new

        def stats(self) -> dict:
            """Decode statistics summed over the LSH layers (see LSHAttention.stats)."""
            total = _Stats()
            n = 0
            for layer in self.layers:
                if isinstance(layer, LSHCacheLayer):
                    total.add(layer.stats)
                    n += 1
            d = total.as_dict()
            d["lsh_layers"] = n
            d["decode_steps"] = total.steps // max(n, 1)
            return d

        @property
        def nbytes(self) -> int:
            total = 0
            for layer in self.layers:
                if isinstance(layer, LSHCacheLayer):
                    total += layer.nbytes
                elif getattr(layer, "keys", None) is not None:
                    total += layer.keys.numel() * layer.keys.element_size() * 2
            return int(total)

    LSHCacheLayer.__module__ = LSHCache.__module__ = __name__
    LSHCacheLayer.__qualname__, LSHCache.__qualname__ = "LSHCacheLayer", "LSHCache"
    return LSHCacheLayer, LSHCache


def __getattr__(name):  # PEP 562: the transformers-backed classes exist once transformers is importable
    if name == "LSHCacheLayer":
        return _hf_classes()[0]
    if name == "LSHCache":
        return _hf_classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dense_layout(config):
    """transformers' own cache layout for ``config`` (the layers of ``DynamicCache(config=config)``) and
    the indexes of its full-attention layers, the ones LSH can sample; ValueError for what it cannot hold."""
    _, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer = _hf()
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    check_int(getattr(text, "num_hidden_layers", None), "config.num_hidden_layers", 1)
    layers = DynamicCache(config=config).layers
    kinds = {type(layer).__name__ for layer in layers} - {DynamicLayer.__name__, DynamicSlidingWindowLayer.__name__}
    if kinds:
        raise ValueError(f"model: expected full or sliding-window attention layers, got cache layers of kind "
                         f"{sorted(kinds)} (layer_types={getattr(text, 'layer_types', None)})")
    full = {i for i, layer in enumerate(layers) if type(layer) is DynamicLayer}
    if not full:
        raise ValueError(f"model: expected at least one full-attention layer, got sliding-window attention in every "
                         f"layer (sliding_window={getattr(text, 'sliding_window', None)}): nothing for LSH to sample")
    return layers, full


def _check_layer_indexes(params: LSHAttentionParams, n_layers: int):
    """ValueError when ``dense_layers`` or ``layer_params`` name a layer the model does not have."""
    for name, idx in (("dense_layers", params.dense_layers), ("layer_params", [i for i, _ in params.layer_params])):
        bad = [i for i in idx if i >= n_layers]
        if bad:
            raise ValueError(f"{name}: expected layer indexes in [0, {n_layers - 1}], got {bad}")


def _register():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, lsh_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)


def _check_supported(model):
    """The model's layers as ``_dense_layout`` gives them, or the ValueError that says what is not supported."""
    _hf()
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise ValueError(f"model: expected a transformers causal LM among {_ARCH_NOTE} "
                         f"(model_type one of {', '.join(SUPPORTED_MODEL_TYPES)}), got {type(model).__name__}")
    config = model.config
    mtype = getattr(config, "model_type", None)  # the model's own type: a multimodal wrapper's text part is not it
    if mtype not in SUPPORTED_MODEL_TYPES or getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"model: expected one of {_ARCH_NOTE}, i.e. model_type in "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}; got model_type={mtype!r} ({type(model).__name__})")
    text = config.get_text_config(decoder=True)
    if getattr(text, "use_bidirectional_attention", False):
        raise ValueError("model: expected causal attention, got use_bidirectional_attention=True")
    softcap = getattr(text, "attn_logit_softcapping", None)
    if softcap is not None:
        raise ValueError(f"model: expected attn_logit_softcapping=None, got {softcap}: the LSH kernel does not "
                         f"soft-cap attention logits (nor does transformers' sdpa); setting "
                         f"model.config.attn_logit_softcapping = None runs the model without it (its outputs change)")
    return _dense_layout(config)


def is_lsh_attention_enabled(model) -> bool:
    """True while ``enable_lsh_attention`` is in effect on ``model``."""
    return getattr(model, "_hashlab_lsh_params", None) is not None


def _generate_with_lsh_cache(*args, model, **kwargs):
    """model.generate, with a fresh LSHCache (as ``cache=``) when the caller passes no cache."""
    gen_config = kwargs.get("generation_config")
    use_cache = kwargs.get("use_cache", getattr(gen_config, "use_cache", True))
    num_beams = kwargs.get("num_beams", getattr(gen_config, "num_beams", None) or
                           getattr(model.generation_config, "num_beams", 1) or 1)
    # a cache under one of the names transformers still accepts (and warns about) is the caller's choice
    given = any(kwargs.get(name) is not None for name in ("cache", "past_key_values", "cache_params"))
    if not given and use_cache is not False and kwargs.get("cache_implementation") is None and num_beams == 1:
        kwargs["cache"] = _hf_classes()[1](model)
    return type(model).generate(model, *args, **kwargs)


def enable_lsh_attention(model, k=10, l=150, sinks=4, window=64, dense_layers=(0,), min_collisions=2, seed=0,
                         max_sampled=None, index_dtype="float32", learned=False, layer_params=None,
                         target_touched=None, budget_power=0.0):
    """Make a transformers decoder-only causal LM decode with LSH-sampled attention (MagicPIG).

    Prefill stays dense (transformers' SDPA); at each decode step every full-attention layer
    not in ``dense_layers`` attends through per-batch-element LSHKVIndex objects held by an
    ``LSHCache``; sliding-window layers stay dense within their window. ``model.generate(...)``
    creates that cache by itself; for your own forward loops pass ``cache=LSHCache(model)``.
    A plain DynamicCache keeps the model dense. Parameters: see LSHAttentionParams. Returns
    the model (changed in place). ``disable_lsh_attention(model)`` restores it.

    Supported: model_type in SUPPORTED_MODEL_TYPES (Llama incl. SmolLM2, Mistral, Qwen2,
    Qwen3, Phi-3, Gemma 2 without soft-capping, Gemma 3 text) with at least one
    full-attention layer; anything else raises ValueError naming what is not supported.
    A transformers version outside SUPPORTED_TRANSFORMERS raises ImportError. Not
    supported: beam search, assisted decoding, padding after the prompt (left-padded
    prompts are fine).
    """
    layers, _ = _check_supported(model)
    n_layers = len(layers)
    params = LSHAttentionParams(k=k, l=l, min_collisions=min_collisions, sinks=sinks, window=window, seed=seed,
                                max_sampled=max_sampled, index_dtype=index_dtype, dense_layers=dense_layers,
                                learned=learned, layer_params=layer_params, target_touched=target_touched,
                                budget_power=budget_power)
    _check_layer_indexes(params, n_layers)
    _register()
    if not is_lsh_attention_enabled(model):
        model._hashlab_lsh_previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:  # pragma: no cover - transformers refused
        raise ValueError(f"model: {type(model).__name__} does not accept a registered attention function "
                         f"(transformers kept attn_implementation={model.config._attn_implementation!r})")
    model._hashlab_lsh_params = params
    model.generate = functools.partial(_generate_with_lsh_cache, model=model)
    return model


def disable_lsh_attention(model):
    """Undo enable_lsh_attention: the previous attention implementation and plain generate. Idempotent."""
    if not is_lsh_attention_enabled(model):
        return model
    previous = getattr(model, "_hashlab_lsh_previous", None) or "sdpa"
    model.set_attn_implementation(previous)
    for name in ("_hashlab_lsh_params", "_hashlab_lsh_previous"):
        model.__dict__.pop(name, None)
    if isinstance(model.__dict__.get("generate"), functools.partial):
        del model.__dict__["generate"]
    return model
