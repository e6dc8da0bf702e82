"""LSHAttention: one layer's LSH-sampled decode attention as a torch module, for custom models.

``hashlab.torch.attention`` re-exports it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_int
from .attention_decode import _Stats, _allocate_budget, _build_indexes, lsh_decode
from .attention_params import LSHAttentionParams


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
