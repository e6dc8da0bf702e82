"""Choosing LSH parameters from a target retrieved fraction (ThirdAI-style auto-tuning).

Model: a table key is k codes; an unrelated item (random direction) shares one
code with probability q0 (1/2 for SimHash bits, 1/bin_size for WTA codes) and a
near neighbour with probability q1 (1 - angle/pi for SimHash). With l tables:

    retrieved fraction  f(k, l) = 1 - (1 - q0^k)^l      (unrelated items)
    neighbour recall    r(k, l) = 1 - (1 - q1^k)^l

For each l we take the smallest k with f <= target, and return the smallest l
whose recall reaches ``min_recall`` (else the l with the best recall).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ._validate import check_choice, check_float, check_int


@dataclass(frozen=True)
class LSHParams:
    """Parameters for an LSHTables index.

    k: codes per key; l: tables; range_bits: log2 of buckets per table;
    bucket_capacity: ids per bucket; expected_fraction: predicted fraction of
    unrelated items a query retrieves; expected_recall: predicted probability that a
    neighbour at the model angle collides in at least one table.
    """

    k: int
    l: int
    range_bits: int
    bucket_capacity: int
    expected_fraction: float
    expected_recall: float


def retrieved_fraction(q: float, k: int, l: int) -> float:
    """P[an item whose codes each collide with probability q collides in >= 1 of l tables]."""
    return 1.0 - (1.0 - q ** k) ** l


def default_params(n_items, dim, target_fraction, family="simhash", bin_size=8,
                   neighbor_angle=math.pi / 4, min_recall=0.9, max_l=512, l=None) -> LSHParams:
    """LSH parameters for indexing ``n_items`` vectors of ``dim`` dimensions.

    target_fraction: in (0, 1], the fraction of the items a query should retrieve.
    family: "simhash" (1 bit per code, k <= 32) or "wta"/"dwta" (log2(bin_size)
    bits per code). neighbor_angle: angle (radians) of the neighbours whose recall
    is optimised; for WTA families it sets the per-code collision probability
    q1 = 1 - angle/pi as well (an approximation: WTA codes have no closed form).
    l: fix the number of tables and choose only k (e.g. many tables so that
    collision counts rank candidates, as SparseMLP does). Returns an LSHParams.
    """
    n_items = check_int(n_items, "n_items", 1)
    check_int(dim, "dim", 1)
    f = check_float(target_fraction, "target_fraction", 0.0, 1.0, lo_open=True)
    family = check_choice(family, "family", ("simhash", "wta", "dwta"))
    angle = check_float(neighbor_angle, "neighbor_angle", 0.0, math.pi, lo_open=True)
    min_recall = check_float(min_recall, "min_recall", 0.0, 1.0)
    max_l = check_int(max_l, "max_l", 1, 65535)
    ls = range(1, max_l + 1) if l is None else [check_int(l, "l", 1, 65535)]
    if family == "simhash":
        q0, code_bits = 0.5, 1
    else:
        bin_size = check_int(bin_size, "bin_size", 2, 256)
        if bin_size & (bin_size - 1):
            raise ValueError(f"bin_size: expected a power of two, got {bin_size}")
        q0, code_bits = 1.0 / bin_size, bin_size.bit_length() - 1
    q1 = 1.0 - angle / math.pi
    k_max = 32 // code_bits
    best = None
    for l in ls:
        k = next((k for k in range(1, k_max + 1) if retrieved_fraction(q0, k, l) <= f), k_max)
        cand = (k, l, retrieved_fraction(q0, k, l), retrieved_fraction(q1, k, l))
        if best is None or cand[3] > best[3] + 1e-12:
            best = cand
        if cand[3] >= min_recall:
            best = cand
            break
    k, l, frac, recall = best
    key_bits = k * code_bits
    range_bits = min(key_bits, 24, max(8, math.ceil(math.log2(n_items)) + 1))
    load = n_items * max(q0 ** k, 2.0 ** -range_bits)  # expected ids per bucket
    capacity = int(min(65535, max(32, 8 * math.ceil(load))))
    return LSHParams(k, l, range_bits, capacity, frac, recall)
