"""torch integration of hashlab (the only place hashlab imports torch).

- SparseMLPModule: a dense torch.nn.Module with a trained SparseMLP's weights.
- LSHAttention: one layer's attention for custom torch models, dense at prefill and
  LSH-sampled (MagicPIG) at decode, one hashlab.attention.LSHKVIndex per batch element.
- enable_lsh_attention / disable_lsh_attention: the same decode attention for transformers
  Llama-family causal LMs, through transformers' AttentionInterface and an LSHCache
  (a DynamicCache subclass; needs the `transformers` package).
- LSHOutputHead / install_lsh_head / remove_lsh_head: an nn.Linear output layer (LM head,
  XMC layer) scored only on the classes an OutputRetriever finds.
"""
from .mlp import SparseMLPModule
from .output_head import LSHOutputHead, install_lsh_head, remove_lsh_head
from .attention import (LSHAttention, LSHAttentionParams, SUPPORTED_MODEL_TYPES, disable_lsh_attention,
                        enable_lsh_attention, is_lsh_attention_enabled, lsh_attention_forward, lsh_decode)

__all__ = ["SparseMLPModule", "LSHAttention", "LSHAttentionParams", "enable_lsh_attention",
           "disable_lsh_attention", "is_lsh_attention_enabled", "lsh_attention_forward", "lsh_decode",
           "SUPPORTED_MODEL_TYPES", "LSHCache", "LSHCacheLayer", "LSHOutputHead", "install_lsh_head",
           "remove_lsh_head"]


def __getattr__(name):  # LSHCache / LSHCacheLayer subclass transformers classes: built on first access
    if name in ("LSHCache", "LSHCacheLayer"):
        from . import attention
        return getattr(attention, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
