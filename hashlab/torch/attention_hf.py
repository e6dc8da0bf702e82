"""The transformers plug-in: the ``hashlab_lsh`` attention function and enable/disable_lsh_attention.

How it works and what it supports: the docstring of ``hashlab.torch.attention``, which
re-exports all of it. The cache it decodes through is in ``attention_hf_cache``.
"""
from __future__ import annotations

import functools

from .attention_decode import _valid_key_mask, lsh_decode
from .attention_hf_cache import _HANDOFF, _check_layer_indexes, _dense_layout, _hf, _hf_classes
from .attention_params import LSHAttentionParams

ATTN_IMPLEMENTATION = "hashlab_lsh"
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text")
_ARCH_NOTE = ("decoder-only causal LMs on transformers' attention-function registry (Llama, SmolLM2, Mistral, "
              "Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3 text)")


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
