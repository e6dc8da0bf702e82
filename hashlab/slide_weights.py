"""SparseMLP's trainable parameters: weights with their Adam moments, and their random init."""
from __future__ import annotations

import math

import numpy as np


class _Adam:
    """Weights with their Adam moments (float32, C-contiguous)."""

    def __init__(self, w):
        self.w = np.ascontiguousarray(w, dtype=np.float32)
        self.m = np.zeros_like(self.w)
        self.v = np.zeros_like(self.w)

    def dense_step(self, g, lr, b1, b2, eps, t):
        """Plain Adam (torch.optim.Adam's rule) for small dense parameters."""
        self.m *= b1
        self.m += (1 - b1) * g
        self.v *= b2
        self.v += (1 - b2) * g * g
        step = lr / (1 - b1 ** t)
        denom = np.sqrt(self.v) / math.sqrt(1 - b2 ** t) + eps
        self.w -= (step * self.m / denom).astype(np.float32)

    @property
    def nbytes(self):
        return self.w.nbytes * 3


def _uniform(rng, shape, bound):
    """U(-bound, bound) float32 without float64 temporaries (huge output layers)."""
    w = rng.random(shape, dtype=np.float32)
    w *= np.float32(2 * bound)
    w -= np.float32(bound)
    return w
