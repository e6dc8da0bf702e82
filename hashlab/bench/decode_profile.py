"""The decode benchmark's step profiler (hashlab.bench.decode, pass B): manual timers that split a
decode step into exclusive times per category (forward hooks on the modules, wrappers around the
attention functions, the cache updates, the plug-in's functions and the LSH kernel's C++ calls)."""
from __future__ import annotations

import functools
import time
from collections import defaultdict

# profile categories, in display order (exclusive times)
EMB, NORM, PROJ, CACHE, SDPA, KERNEL, PLUGIN, MLP, HEAD, GLUE = (
    "embedding", "norms", "attention projections, RoPE", "cache update", "attention kernel: SDPA",
    "attention kernel: LSH (C++)", "plug-in Python", "MLP", "LM head", "transformers' Python (+ timers)")
CATEGORIES = (EMB, NORM, PROJ, CACHE, SDPA, KERNEL, PLUGIN, MLP, HEAD, GLUE)


class _Profiler:
    """Exclusive wall time per category over nested timed regions (a region's children are
    subtracted from it). Off while ``enabled`` is False (the wrappers then cost one test)."""

    def __init__(self):
        self.clock = time.perf_counter
        self.enabled = False
        self.stack = []
        self.excl = defaultdict(float)

    def enter(self, name):
        if self.enabled:
            self.stack.append([name, self.clock(), 0.0])

    def exit(self):
        if self.enabled:
            name, t0, child = self.stack.pop()
            dt = self.clock() - t0
            self.excl[name] += dt - child
            if self.stack:
                self.stack[-1][2] += dt

    def wrap(self, fn, name):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if not self.enabled:
                return fn(*args, **kwargs)
            self.enter(name)
            try:
                return fn(*args, **kwargs)
            finally:
                self.exit()
        return timed

    def hook(self, module, name):
        module.register_forward_pre_hook(lambda m, a: self.enter(name))
        module.register_forward_hook(lambda m, a, o: self.exit())


class _TimedCore:
    """An LSHKVIndex's C++ core whose append/attend calls are timed as the kernel."""

    def __init__(self, core, prof):
        self._core = core
        self.append = prof.wrap(core.append, KERNEL)
        self.attend = prof.wrap(core.attend, KERNEL)

    def __len__(self):
        return len(self._core)

    def __getattr__(self, name):
        return getattr(self._core, name)


def _install_profiler(model, prof):
    """Timers on the model's modules and on the functions a decode step calls (this process only)."""
    import transformers.integrations.sdpa_attention as sdpa_mod
    from torch import nn
    from transformers import AttentionInterface
    from transformers.cache_utils import DynamicLayer

    import hashlab.attention as ha
    import hashlab.torch.attention as hta

    sdpa = prof.wrap(sdpa_mod.sdpa_attention_forward, SDPA)
    sdpa_mod.sdpa_attention_forward = sdpa        # what the plug-in calls for dense layers and prefill
    AttentionInterface.register("sdpa", sdpa)       # what the model calls with attn_implementation="sdpa"
    AttentionInterface.register(hta.ATTN_IMPLEMENTATION, prof.wrap(hta.lsh_attention_forward, PLUGIN))
    hta.lsh_decode = prof.wrap(hta.lsh_decode, PLUGIN)
    ha.LSHKVIndex.append = prof.wrap(ha.LSHKVIndex.append, PLUGIN)
    ha.LSHKVIndex.attend = prof.wrap(ha.LSHKVIndex.attend, PLUGIN)
    layer_cls = hta._hf_classes()[0]
    layer_cls.update = prof.wrap(layer_cls.update, PLUGIN)
    DynamicLayer.update = prof.wrap(DynamicLayer.update, CACHE)
    head = model.get_output_embeddings()
    prof.hook(head, HEAD)
    for module in model.modules():
        cls = type(module).__name__
        if module is head or module is model:
            continue
        if isinstance(module, nn.Embedding):
            prof.hook(module, EMB)
        elif cls.endswith("Attention"):
            prof.hook(module, PROJ)
        elif cls.endswith("MLP"):
            prof.hook(module, MLP)
        elif cls.endswith("RMSNorm") or isinstance(module, nn.LayerNorm):
            prof.hook(module, NORM)


def _time_kernel_calls(cache, prof):
    """Wraps the C++ core of every index an LSHCache holds (built at its prefill)."""
    for layer in cache.layers:
        for index in getattr(layer, "indexes", None) or ():
            if not isinstance(index._core, _TimedCore):
                index._core = _TimedCore(index._core, prof)

