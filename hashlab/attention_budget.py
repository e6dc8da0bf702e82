"""Adaptive sampling budget: per-layer min_collisions from a prompt's last queries.

``prompt_profile`` measures what a layer's prompt queries see of the keys an index would
sample; ``expected_sampled_fraction`` turns that into the fraction any (k, l, min_collisions)
samples; ``allocate_min_collisions`` picks each layer's min_collisions for a target fraction
(the plug-in's ``target_touched``, hashlab.torch.attention). Measured on SmolLM2:
benchmarks/README.md, "The 4K agreement gap".
"""
from __future__ import annotations

import math

import numpy as np

from ._validate import check_float, check_int
from .attention import _array, _heads, _scale, sampling_probability

__all__ = ["prompt_profile", "expected_sampled_fraction", "allocate_min_collisions"]

_COS_BINS = 2048


def prompt_profile(queries, keys, sinks=4, window=64, scale=None, n_probe=64):
    """What a prompt's last queries say about one layer's sampling, for choosing its budget.

    queries: (n_heads, t_q, head_dim), the queries of the prompt's last t_q positions;
    keys: (n_kv_heads, t, head_dim), the prompt's keys (t >= t_q; n_heads a multiple of
    n_kv_heads, GQA as in ``attend``). The last ``min(n_probe, t_q)`` queries are probes: a
    probe at position s attends keys [0, s], of which [sinks, s + 1 - window) are the ones an
    index would sample from. Returns (mass, cos_hist): mass, the mean over probes and query
    heads of the dense attention weight on those keys (the part of the output that sampling
    estimates); cos_hist, float64 (``_COS_BINS``,) summing to 1 (or all zero when no probe
    has such keys), the histogram over [-1, 1] of cos(q, k - mean) of those (probe, key)
    pairs, mean = the prompt keys' mean (the index's centring), from which
    ``expected_sampled_fraction`` gives the fraction of them any (k, l, m) samples.
    """
    Q = _array(queries, "queries")
    K = _array(keys, "keys")
    for x, name in ((Q, "queries"), (K, "keys")):
        if x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a float array, got {x.dtype}")
    if K.ndim != 3 or K.shape[1] < 1:
        raise ValueError(f"keys: expected shape (n_kv_heads, t >= 1, head_dim), got {K.shape}")
    if Q.ndim != 3 or Q.shape[2] != K.shape[2] or not 1 <= Q.shape[1] <= K.shape[1]:
        raise ValueError(f"queries: expected shape (n_heads, 1 <= t_q <= {K.shape[1]}, {K.shape[2]}), got {Q.shape}")
    _heads(Q.shape[0], K.shape[0])
    sinks = check_int(sinks, "sinks", 0)
    window = check_int(window, "window", 0)
    n_probe = check_int(n_probe, "n_probe", 1)
    scale = _scale(scale, K.shape[2])
    Q = np.asarray(Q[:, -n_probe:], dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    H, P, _ = Q.shape
    Hkv, t, _ = K.shape
    G = H // Hkv
    pos = np.arange(t - P, t)
    hi = np.maximum(sinks, pos + 1 - window)           # probe j samples from keys [sinks, hi[j])
    if sinks >= t or hi.max() <= sinks:
        return 0.0, np.zeros(_COS_BINS)
    Kc = K - K.mean(axis=1, keepdims=True)
    Kc /= np.maximum(np.linalg.norm(Kc, axis=2, keepdims=True), 1e-30)
    cols = np.arange(t)
    causal = cols[None, :] <= pos[:, None]              # (P, t)
    region = (cols[None, :] >= sinks) & (cols[None, :] < hi[:, None])
    mass, hist = 0.0, np.zeros(_COS_BINS)
    for h in range(H):
        g = h // G
        lg = np.where(causal, Q[h] @ K[g].T * scale, -np.inf)
        w = np.exp(lg - lg.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        mass += float(np.sum(w * region))
        qn = Q[h] / np.maximum(np.linalg.norm(Q[h], axis=1, keepdims=True), 1e-30)
        c = (qn @ Kc[g].T)[region]
        hist += np.bincount(np.clip(((c + 1) * (_COS_BINS / 2)).astype(np.int64), 0, _COS_BINS - 1),
                            minlength=_COS_BINS)
    return mass / (H * P), hist / hist.sum()


_U_GRID = {}


def _u_grid(k: int, l: int) -> np.ndarray:
    """(min(l, 255) + 1, _COS_BINS) float64: u at each cosine bin's centre for m = 0 .. min(l, 255)."""
    key = (k, l)
    if key not in _U_GRID:
        c = (np.arange(_COS_BINS) + 0.5) * (2 / _COS_BINS) - 1
        _U_GRID[key] = np.stack([sampling_probability(c, k, l, m)[1].astype(np.float64)
                                 for m in range(min(l, 255) + 1)])
    return _U_GRID[key]


def expected_sampled_fraction(cos_hist, k, l, min_collisions):
    """The expected fraction of keys sampled at (k, l, min_collisions) given a ``prompt_profile`` histogram."""
    h = np.asarray(cos_hist, dtype=np.float64)
    if h.shape != (_COS_BINS,):
        raise ValueError(f"cos_hist: expected shape ({_COS_BINS},), got {h.shape}")
    k = check_int(k, "k", 1, 32)
    l = check_int(l, "l", 1, 65535)
    m = check_int(min_collisions, "min_collisions", 0, min(l, 255))
    return float(_u_grid(k, l)[m] @ h)


def allocate_min_collisions(profiles, target, power=0.0):
    """Per-layer min_collisions sharing a sampling budget by attention mass.

    profiles: one (mass, cos_hist, k, l) per layer (``prompt_profile`` and the layer's k, l);
    target: float in (0, 1], the fraction of indexed keys the layers should sample on average.
    Layer i's share is f_i = target * w_i / mean(w), w_i = mass_i ** power: power 0 (default)
    gives every layer the same fraction; power 1 would minimise the summed variance of the
    layers' estimates (sum of mass_i^2 / n_i for n_i samples, at fixed sum of n_i, is smallest
    at n_i proportional to mass_i), but on SmolLM2 it agreed with dense less often than power
    0 or a single m for all layers (benchmarks/README.md, the 4K agreement gap). Its m is the one
    whose expected sampled fraction is nearest f_i in log scale (m >= 1). Returns a list of
    ints; layers with an all-zero histogram, or all layers when every mass is 0, get None
    (keep their own m).
    """
    target = check_float(target, "target", 0.0, 1.0, lo_open=True)
    power = check_float(power, "power", 0.0)
    profiles = list(profiles)
    live = [i for i, (mass, hist, _, _) in enumerate(profiles) if mass > 0 and np.any(hist)]
    out = [None] * len(profiles)
    if not live:
        return out
    w = np.array([profiles[i][0] ** power for i in live])
    for i, f in zip(live, target * w / w.mean()):
        _, hist, k, l = profiles[i]
        curve = _u_grid(check_int(k, "k", 1, 32), check_int(l, "l", 1, 65535))[1:] @ np.asarray(hist, np.float64)
        out[i] = 1 + int(np.argmin(np.abs(np.log(np.maximum(curve, 1e-12)) - math.log(min(f, 1.0)))))
    return out
