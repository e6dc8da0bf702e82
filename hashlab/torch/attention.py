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

Where the code lives (this module re-exports it, including the private helpers older code
reaches here): the parameters in ``attention_params``, index building and decode in
``attention_decode``, the torch module in ``attention_module``, the LSHCache in
``attention_hf_cache``, the attention function and enable/disable in ``attention_hf``.
Assigning one of this module's names assigns it in the modules that use it too, as when
everything lived here: ``hashlab.torch.attention.lsh_decode = timed(lsh_decode)`` (the decode
profiler, hashlab/bench/decode_profile.py) still reaches the attention function's calls.
"""
from __future__ import annotations

import sys

from .._forwarding import ForwardingModule
from . import attention_decode, attention_hf, attention_hf_cache, attention_module, attention_params
from .attention_decode import (_N_PROBE, _Stats, _allocate_budget, _build_indexes, _np32,  # noqa: F401
                               _valid_key_mask, lsh_decode)
from .attention_hf import (_ARCH_NOTE, ATTN_IMPLEMENTATION, SUPPORTED_MODEL_TYPES, _check_supported,  # noqa: F401
                           _generate_with_lsh_cache, _register, disable_lsh_attention, enable_lsh_attention,
                           is_lsh_attention_enabled, lsh_attention_forward)
from .attention_hf_cache import (_HANDOFF, SUPPORTED_TRANSFORMERS, _check_layer_indexes,  # noqa: F401
                                 _check_transformers_version, _dense_layout, _Handoff, _hf, _hf_classes)
from .attention_module import LSHAttention
from .attention_params import _LAYER_FIELDS, LSHAttentionParams, _layer_params  # noqa: F401

__all__ = ["LSHAttention", "LSHAttentionParams", "enable_lsh_attention", "disable_lsh_attention",
           "lsh_attention_forward", "lsh_decode", "is_lsh_attention_enabled", "SUPPORTED_MODEL_TYPES",
           "SUPPORTED_TRANSFORMERS", "LSHCache", "LSHCacheLayer"]  # noqa: F822 (the last two: __getattr__ below)

_PARTS = (attention_params, attention_decode, attention_module, attention_hf_cache, attention_hf)


def __getattr__(name):  # PEP 562: the transformers-backed classes exist once transformers is importable
    if name == "LSHCacheLayer":
        return _hf_classes()[0]
    if name == "LSHCache":
        return _hf_classes()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

sys.modules[__name__].__class__ = ForwardingModule
