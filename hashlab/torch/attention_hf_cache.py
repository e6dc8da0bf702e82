"""LSHCache and LSHCacheLayer: the transformers cache whose full-attention layers hold LSH indexes.

The classes subclass transformers' and are built on first use (``_hf_classes``), after
``_hf`` has checked the installed transformers version; ``_HANDOFF`` is the thread-local
slot through which a layer's ``update`` hands itself to the attention function
(``attention_hf.lsh_attention_forward``). ``hashlab.torch.attention`` re-exports all of it.
"""
from __future__ import annotations

import copy
import functools
import threading
import weakref
from dataclasses import asdict

import torch

from .._validate import check_int
from .attention_decode import _Stats, _allocate_budget, _build_indexes
from .attention_params import LSHAttentionParams

# The transformers versions the plug-in is tested on, as in pyproject.toml's extras (a test keeps them equal):
# 5.24 is the first whose forward and generate take ``cache=`` (``past_key_values`` warns there, removed in
# 5.40 / 6.0); 6 is a major release free to change the cache-layer API the LSHCache subclasses.
SUPPORTED_TRANSFORMERS = ">=5.24,<6"


class _Handoff(threading.local):
    layer = None
    key = None


_HANDOFF = _Handoff()


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

    # their public home, whose __getattr__ resolves them: repr and pickle name hashlab.torch.attention
    LSHCacheLayer.__module__ = LSHCache.__module__ = "hashlab.torch.attention"
    LSHCacheLayer.__qualname__, LSHCache.__qualname__ = "LSHCacheLayer", "LSHCache"
    return LSHCacheLayer, LSHCache


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
