"""One layer's LSH indexes from torch tensors: building them at prefill, decoding through them.

``_build_indexes`` fills one LSHKVIndex per batch element with the prompt (and profiles it
for ``target_touched``), ``_allocate_budget`` re-chooses min_collisions from those profiles,
``lsh_decode`` appends and attends token by token. Shared by ``LSHAttention`` and the
transformers plug-in; ``hashlab.torch.attention`` re-exports them.
"""
from __future__ import annotations

import numpy as np
import torch

from .attention_params import LSHAttentionParams


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
