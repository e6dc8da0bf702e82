"""SparseMLP.fit's controls: time budget, early stopping with restore_best, lr schedule,
held-out validation, centroid init. A fake clock and scripted validation scores make the
stopping points exact (no timing thresholds)."""
import math

import numpy as np
import pytest

from hashlab import rerank, slide_data, slide_fit, train_control
from hashlab.slide import SparseMLP
from hashlab.synthetic import make_xmc

from _tolerance import assert_close_to_f64


def data(n=400, seed=0):
    Xtr, Ytr, Xte, Yte = make_xmc(n, 100, 300, 60, seed=seed)
    return Xtr, Ytr, Xte, Yte


def model(**kw):
    return SparseMLP(300, 60, hidden=(16,), target_active=60, seed=1, **kw)


class FakeClock:
    """time.perf_counter stand-in that moves only when a batch trains."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_time_budget_stops_after_the_batch_that_crosses_it(monkeypatch):
    Xtr, Ytr, _, _ = data()
    clock = FakeClock()
    monkeypatch.setattr(train_control.time, "perf_counter", clock)
    m = model()
    real = m._train_batch

    def batch(X, Y):
        clock.t += 0.3  # every batch "takes" 0.3 s
        return real(X, Y)

    monkeypatch.setattr(m, "_train_batch", batch)
    m.fit(Xtr, Ytr, time_budget=1.0, batch_size=50, verbose=False, rerank=False)
    assert m.step == 4  # 0.3, 0.6, 0.9 < 1.0 <= 1.2
    # with the re-ranker (default) the MLP's loop keeps to the budget less the stage's reserve
    # (here a stated 0.25 s; fit's own steps before the loop take real, not fake, seconds)
    monkeypatch.setattr(slide_fit, "_rerank_reserve", lambda *a: 0.25)
    m.fit(Xtr, Ytr, time_budget=1.0, batch_size=50, verbose=False)
    assert m.step == 4 + 3  # 0.3, 0.6 < 0.75 - (real seconds) <= 0.9


def test_rerank_reserve_is_its_share_at_most_and_less_when_it_needs_less():
    Xtr, Ytr, _, _ = data()
    m = model()
    m.fit(Xtr, Ytr, epochs=1, verbose=False, rerank=False)
    X, Y = slide_data._as_features(Xtr, m.input_dim), slide_data._as_labels(Ytr, Xtr.shape[0], m.output_dim)
    assert rerank.reserve(m, X, Y, 50, 1e-3) == rerank.SHARE * 1e-3  # a tiny budget: its share
    r = rerank.reserve(m, X, Y, 50, 1e9)  # a huge one: the measured cost (x2), far below the share
    assert 0 < r < rerank.SHARE * 1e9


def test_automatic_evaluations_keep_to_their_share_of_the_time(monkeypatch):
    Xtr, Ytr, Xte, Yte = data()
    clock = FakeClock()
    monkeypatch.setattr(train_control.time, "perf_counter", clock)

    def run(**kw):
        m = model()
        real = m._train_batch

        def batch(X, Y):
            clock.t += 0.1
            return real(X, Y)

        def slow_eval(X, Y):
            clock.t += 1.0  # one evaluation "costs" ten batches
            return 0.5

        monkeypatch.setattr(m, "_train_batch", batch)
        monkeypatch.setattr(m, "_precision_at_1", slow_eval)
        m.fit(Xtr, Ytr, epochs=2, batch_size=40, validation=(Xte, Yte), verbose=False, **kw)
        return [h["step"] for h in m.history]

    # 10 batches per epoch: the default plans one evaluation per batch; after the first (1 s of
    # 1.1 s) evaluations exceed EVAL_SHARE of the time until the end, and the last batch always has one
    assert run() == [1, 20]
    assert run(eval_every=1) == list(range(1, 21))  # an explicit cadence is kept


def test_early_stopping_restores_the_best_weights(monkeypatch):
    Xtr, Ytr, Xte, Yte = data()
    m = model()
    scores = iter([0.1, 0.5, 0.3, 0.2, 0.45, 0.9])
    taken = {}

    def scripted(X, Y):
        s = next(scores)
        taken[m.step] = [w.copy() for w in m._weights()]
        return s

    monkeypatch.setattr(m, "_precision_at_1", scripted)
    m.fit(Xtr, Ytr, epochs=3, batch_size=40, eval_every=1, validation=(Xte, Yte), early_stopping=3,
          verbose=False)
    # evaluations 0.1, 0.5 (best), then 0.3, 0.2, 0.45: three without a better one -> stop
    assert m.step == 5 and [h["P@1"] for h in m.history] == [0.1, 0.5, 0.3, 0.2, 0.45]
    assert m.best_step_ == 2
    for w, best in zip(m._weights(), taken[2]):
        np.testing.assert_array_equal(w, best)
    # the tables were rebuilt over the restored output layer
    np.testing.assert_array_equal(m._keys, m.hasher.hash(m.out_w.w))


def test_without_restore_best_the_last_weights_stay(monkeypatch):
    Xtr, Ytr, Xte, Yte = data()
    m = model()
    scores = iter([0.5, 0.1, 0.1])
    monkeypatch.setattr(m, "_precision_at_1", lambda X, Y: next(scores))
    m.fit(Xtr, Ytr, epochs=1, batch_size=40, eval_every=1, validation=(Xte, Yte), early_stopping=2,
          restore_best=False, verbose=False)
    assert m.step == 3 and m.best_step_ is None


def test_held_out_fraction_is_not_trained_on():
    Xtr, Ytr, _, _ = data()
    m = model()
    m.fit(Xtr, Ytr, epochs=1, validation=0.25, eval_size=None, verbose=False)
    assert m.train_rows_ == 300
    held = np.sort(np.random.default_rng(m.seed + 4).permutation(400)[:100])
    kept = np.setdiff1d(np.arange(400), held)
    np.testing.assert_array_equal(m.label_counts_, np.bincount(Ytr[kept].indices, minlength=60))


def test_lr_schedule_factors():
    f = train_control.lr_factor
    assert f("constant", 0.5, 0.0) == 1.0
    assert f("linear", 0.0, 0.1) == train_control.MIN_FACTOR  # warm-up starts near 0
    assert math.isclose(f("linear", 0.05, 0.1), 0.5 * 0.95)
    assert math.isclose(f("linear", 0.5, 0.1), 0.5)
    assert math.isclose(f("cosine", 0.5, 0.0), 0.5)
    assert f("linear", 1.0, 0.1) == f("cosine", 1.0, 0.1) == train_control.MIN_FACTOR


def test_schedule_is_applied_per_batch(monkeypatch):
    Xtr, Ytr, _, _ = data()
    m = model(lr=1e-2)
    seen = []
    real = m._train_batch
    monkeypatch.setattr(m, "_train_batch", lambda X, Y: (seen.append(m.lr * m._lr_scale), real(X, Y))[1])
    m.fit(Xtr, Ytr, epochs=2, batch_size=100, warmup=0.25, verbose=False)  # 8 batches
    expect = [1e-2 * train_control.lr_factor("linear", b / 8, 0.25) for b in range(8)]
    np.testing.assert_allclose(seen, expect, rtol=1e-12)
    assert m._lr_scale == 1.0


def centroid_activations(X, Y, W, b, dtype, order=0):
    """relu(c W + b) / |relu(c W + b)| of each label's normalised centroid c of its rows of X,
    in ``dtype``; order > 0 permutes the rows and the features (another order of every sum).
    Returns (labels with rows, their activations)."""
    rng = np.random.default_rng(order)
    r = np.arange(X.shape[0]) if order == 0 else rng.permutation(X.shape[0])
    f = np.arange(X.shape[1]) if order == 0 else rng.permutation(X.shape[1])
    C = (Y[r].astype(dtype).T @ X[r][:, f].astype(dtype)).toarray()
    norms = np.linalg.norm(C, axis=1)
    has = np.flatnonzero(norms > 0)
    E = np.maximum((C[has] / norms[has, None]) @ W[f].astype(dtype) + b.astype(dtype), 0)
    return has, E / np.linalg.norm(E, axis=1, keepdims=True)


def test_centroid_init_is_the_normalised_centroid_activation():
    Xtr, Ytr, _, _ = data()
    m = model()
    m.fit(Xtr, Ytr, epochs=0, verbose=False)  # init only
    W, b = m.layers[0].w, m.biases[0].w
    has, E = centroid_activations(Xtr, Ytr, W, b, np.float64)
    refs32 = [centroid_activations(Xtr, Ytr, W, b, np.float32, o)[1] for o in range(4)]
    row = m.out_w.w[has].astype(np.float64)
    row /= np.linalg.norm(row, axis=1, keepdims=True)
    assert_close_to_f64(row, E, refs32, what="centroid rows")
    random = model()
    random.fit(Xtr, Ytr, epochs=0, init="random", verbose=False)
    np.testing.assert_array_equal(random.out_w.w, model().out_w.w)


@pytest.mark.parametrize("kw,err", [
    (dict(early_stopping=3), ValueError),                 # no validation data
    (dict(time_budget=-1.0), ValueError),
    (dict(time_budget="1"), TypeError),
    (dict(lr_schedule="step"), ValueError),
    (dict(warmup=1.0), ValueError),
    (dict(validation=0.7), ValueError),
    (dict(validation="x"), TypeError),
    (dict(init="pifa"), ValueError),
    (dict(eval_size=0), ValueError),
])
def test_bad_controls(kw, err):
    Xtr, Ytr, _, _ = data(100)
    with pytest.raises(err):
        model().fit(Xtr, Ytr, epochs=1, verbose=False, **kw)
