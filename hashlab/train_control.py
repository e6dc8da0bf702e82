"""Training controls of SparseMLP.fit: learning-rate schedules, the time budget, early stopping.

The schedule is a function of the planned run's progress in [0, 1]: the fraction of the
planned batches done (``epochs`` given) or of the time budget spent (``time_budget`` given),
the larger of the two when both are. A warm-up ramps the rate up linearly over the first
``warmup`` fraction, then "linear" decays it to ``MIN_FACTOR`` of the base rate at the end,
"cosine" likewise along a half cosine, "constant" keeps it. Each ``fit`` call is one planned run.
"""
from __future__ import annotations

import math
import time

import numpy as np

SCHEDULES = ("linear", "cosine", "constant")
# the last batches of a decayed run still move the weights a little (0 would waste them)
MIN_FACTOR = 0.02


def lr_factor(schedule: str, progress: float, warmup: float) -> float:
    """Multiplier of the base learning rate at ``progress`` (float, 0 = start, 1 = planned end)."""
    p = min(max(progress, 0.0), 1.0)
    ramp = min(1.0, (p + 1e-12) / warmup) if warmup > 0 else 1.0
    if schedule == "constant":
        decay = 1.0
    elif schedule == "linear":
        decay = 1.0 - p
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * p))
    return max(MIN_FACTOR, ramp * decay)


class RunClock:
    """Progress of one planned run: batches done against ``total_batches`` (or None) and wall
    seconds since start against ``time_budget`` (or None)."""

    def __init__(self, total_batches, time_budget):
        self.total_batches = total_batches
        self.time_budget = time_budget
        self.t0 = time.perf_counter()
        self.batches = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def progress(self) -> float:
        p = 0.0
        if self.total_batches:
            p = self.batches / self.total_batches
        if self.time_budget:
            p = max(p, self.elapsed() / self.time_budget)
        return p

    def out_of_time(self) -> bool:
        return self.time_budget is not None and self.elapsed() >= self.time_budget


class EarlyStopping:
    """Tracks validation P@1: the best value, a snapshot of the weights it was reached with
    (copies, when ``keep_best``), and whether ``patience`` evaluations in a row have not
    improved on it (``patience`` None: never stops)."""

    def __init__(self, patience, keep_best):
        self.patience = patience
        self.keep_best = keep_best
        self.best = -math.inf
        self.best_step = None
        self.snapshot = None
        self.bad = 0

    def update(self, score: float, step: int, arrays) -> bool:
        """Records an evaluation; ``arrays()`` returns the weights to copy if it is a new best.
        Returns True when training should stop."""
        if score > self.best:
            self.best, self.best_step, self.bad = score, step, 0
            if self.keep_best:
                self.snapshot = [np.array(a, copy=True) for a in arrays()]
            return False
        self.bad += 1
        return self.patience is not None and self.bad >= self.patience
