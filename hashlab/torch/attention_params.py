"""LSHAttentionParams: the parameters of LSH-sampled decode attention, per model and per layer.

Both ways in (``LSHAttention``, ``enable_lsh_attention``) build their indexes from these;
``hashlab.torch.attention`` re-exports them.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._validate import check_choice, check_float, check_int


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
