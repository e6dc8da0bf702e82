"""SparseMLP: gradients and dense equivalence against torch, learning, persistence, bad input."""
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import hashlab
from hashlab.slide import SparseMLP

from _mlp_reference import ORDERS32, TorchMLP, logits_bound
from _tolerance import assert_close_to_f64, assert_within

torch = pytest.importorskip("torch")


def tiny_data(rng, n=24, D=20, L=12):
    X = sp.random(n, D, density=0.3, format="csr", dtype=np.float32, random_state=rng)
    X.data = rng.random(X.nnz, dtype=np.float32) + 0.1
    labels = [sorted(rng.choice(L, size=rng.integers(1, 3), replace=False).tolist()) for _ in range(n)]
    return X, labels


@pytest.mark.parametrize("hidden", [(8,), (8, 6)])
def test_full_softmax_training_equals_dense_torch(hidden):
    """Losses, weights and Adam moments after six steps against torch float64, within the
    float32 error of torch in six orders (tests/_mlp_reference.py)."""
    rng = np.random.default_rng(0)
    X, labels = tiny_data(rng)
    model = SparseMLP(20, 12, hidden=hidden, target_active=12, lr=0.01, seed=3)
    ref = TorchMLP(model)
    refs32 = [TorchMLP(model, "float32", o) for o in ORDERS32]
    for step in range(6):
        rows = np.arange(8 * (step % 3), 8 * (step % 3) + 8)
        Yb = [labels[i] for i in rows]
        Yc = sp.csr_matrix((np.ones(sum(map(len, Yb)), np.float32), np.concatenate(Yb),
                            np.cumsum([0] + [len(y) for y in Yb])), shape=(8, 12))
        loss, active = model._train_batch(X[rows], Yc)
        assert active == 8 * 12
        want = ref.step(X[rows], Yb)
        assert_close_to_f64(loss, want, [np.float64(r.step(X[rows], Yb)) for r in refs32], what=f"loss {step}")
    ours = [p for p in model.layers + model.biases] + [model.out_w, model.out_b]
    for kind in "wmv":
        for j, (got, want, *r32) in enumerate(zip(ours, ref.state(kind), *(r.state(kind) for r in refs32))):
            assert_close_to_f64(getattr(got, kind), want, r32, what=f"{kind} of parameter {j}")


def _softmax_grad(Z, labels, dtype, perm, sequential):
    """softmax(Z) - target and the summed loss in dtype, the columns summed in the order perm
    (sequential: one running sum, else numpy's pairwise sum)."""
    Z = np.asarray(Z, dtype)[:, perm]
    inv = np.argsort(perm)
    G, loss = np.empty_like(Z), dtype(0)
    for i, lab in enumerate(labels):
        pos = inv[lab]
        e = np.exp(Z[i] - Z[i].max())
        tot = np.cumsum(e, dtype=dtype)[-1] if sequential else e.sum(dtype=dtype)
        loss += Z[i].max() + np.log(tot) - Z[i, pos].mean()
        G[i] = e / tot
        G[i, pos] -= dtype(1) / dtype(len(lab))
    return G[:, inv], loss


def test_full_softmax_gradient_against_float64():
    """_C.softmax_xent_grad (fit's full-softmax path) against float64, within the error of
    numpy float32 in six column orders; rows with 1 to 200 labels of 300."""
    from hashlab import _C
    rng = np.random.default_rng(7)
    n, L = 7, 300
    Z = (rng.standard_normal((n, L)) * 4).astype(np.float32)
    labels = [np.sort(rng.choice(L, size=c, replace=False)) for c in (1, 2, 5, 16, 75, 200, 300)]
    indptr = np.cumsum([0] + [len(x) for x in labels]).astype(np.int64)
    ids = np.concatenate(labels).astype(np.int32)
    G64, loss64 = _softmax_grad(Z, labels, np.float64, np.arange(L), False)
    refs = [_softmax_grad(Z, labels, np.float32, rng.permutation(L) if o else np.arange(L), o % 2 == 1)
            for o in range(6)]
    out = Z.copy()
    loss = _C.softmax_xent_grad(out, indptr, ids)
    assert_close_to_f64(out, G64, [g for g, _ in refs], what="dLoss/dZ")
    assert_close_to_f64(loss, loss64, [np.float64(x) for _, x in refs], what="loss")
    bad = ids.copy()
    bad[3] = L
    with pytest.raises(ValueError, match="label ids"):
        _C.softmax_xent_grad(Z.copy(), indptr, bad)
    with pytest.raises(ValueError, match="at least one label"):
        _C.softmax_xent_grad(Z.copy(), np.array([0, 0, *indptr[2:]], np.int64), ids)
    with pytest.raises(TypeError):
        _C.softmax_xent_grad(Z.astype(np.float64), indptr, ids)


def _labelled(rng, n, D, L, per_row):
    X = sp.random(n, D, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    X.data = rng.random(X.nnz, dtype=np.float32) + 0.1
    return X, [sorted(rng.choice(L, size=per_row, replace=False).tolist()) for _ in range(n)]


@pytest.mark.parametrize("per_row, L, kw, full", [
    (16, 1000, {}, True),                            # many labels per row: the full softmax
    (15, 1000, {}, False),                           # fewer than MANY_LABELS: sampled
    (16, 16385, {}, False),                          # above FULL_SOFTMAX_MAX: sampled
    (16, 1000, {"target_active": 600}, False),       # a given target_active is kept
])
def test_default_target_active_chooses_the_full_softmax_for_many_labels(per_row, L, kw, full):
    from hashlab.slide import FULL_SOFTMAX_MAX, MANY_LABELS
    assert (MANY_LABELS, FULL_SOFTMAX_MAX) == (16, 16384)
    X, labels = _labelled(np.random.default_rng(3), 40, 30, L, per_row)
    m = SparseMLP(30, L, hidden=(8,), seed=0, **kw)
    before = m.target_active
    m.fit(X, labels, epochs=1, batch_size=20, verbose=False, rerank=False, neighbours=False)
    assert m.target_active == (L if full else before)
    assert before < L


def test_sampled_training_touches_only_active_rows_and_labels_are_active():
    rng = np.random.default_rng(1)
    X, labels = tiny_data(rng, n=16, D=30, L=400)
    model = SparseMLP(30, 400, hidden=(16,), target_active=20, seed=0)
    before = model.out_w.w.copy()
    Yc = sp.csr_matrix((np.ones(sum(map(len, labels)), np.float32), np.concatenate(labels),
                        np.cumsum([0] + [len(y) for y in labels])), shape=(16, 400))
    loss, active = model._train_batch(X, Yc)
    assert active == 16 * 20
    changed = np.flatnonzero((model.out_w.w != before).any(axis=1))
    assert set(np.concatenate(labels)) <= set(changed)
    assert len(changed) <= 16 * 20
    assert set(changed) == set(np.flatnonzero(model._dirty))


def test_thread_count_does_not_change_training():
    rng = np.random.default_rng(2)
    X, labels = tiny_data(rng, n=64, D=40, L=300)
    results = []
    before = hashlab.get_num_threads()
    try:
        for threads in (1, 2, 3):
            hashlab.set_num_threads(threads)
            m = SparseMLP(40, 300, hidden=(16,), target_active=30, seed=5, rebuild_first=2)
            m.fit(X, labels, epochs=2, batch_size=16, verbose=False)
            results.append(m.out_w.w.copy())
    finally:
        hashlab.set_num_threads(before)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def xmc(n_train=6000, n_test=1000, seed=0):
    from hashlab.datasets import make_xmc
    return make_xmc(n_train, n_test, n_features=3000, n_labels=2000, seed=seed)


def test_learns_far_above_the_most_frequent_label_baseline():
    Xtr, Ytr, Xte, Yte = xmc()
    model = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(64,), target_active=200, lr=3e-3, seed=0)
    model.fit(Xtr, Ytr, epochs=4, batch_size=128, verbose=False)
    p1 = model.evaluate(Xte, Yte, ks=(1,))["P@1"]
    top = np.asarray(Ytr.sum(0)).ravel().argmax()
    baseline = float(np.asarray(Yte[:, top].todense()).mean())
    assert p1 > max(3 * baseline, baseline + 0.2), (p1, baseline)
    lsh = model.evaluate(Xte, Yte, ks=(1,), mode="lsh")["P@1"]
    assert lsh > 0.8 * p1
    assert model.rebuilds >= 1


def test_save_load_round_trip_and_exact_resume(tmp_path):
    rng = np.random.default_rng(3)
    X, labels = tiny_data(rng, n=48, D=25, L=10)
    a = SparseMLP(25, 10, hidden=(8,), target_active=10, seed=1)
    # a constant rate: each fit call is one planned run of a decaying schedule, so two calls of
    # one epoch equal one call of two only without it
    const = dict(batch_size=8, verbose=False, lr_schedule="constant", warmup=0.0)
    a.fit(X, labels, epochs=2, **const)
    b = SparseMLP(25, 10, hidden=(8,), target_active=10, seed=1)
    b.fit(X, labels, epochs=1, **const)
    b.save(tmp_path / "m.npz")
    c = SparseMLP.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(c.predict_topk(X, 3)[1], b.predict_topk(X, 3)[1])
    assert c.step == b.step and np.array_equal(c.out_w.m, b.out_w.m)
    c.fit(X, labels, epochs=1, **const)
    for p, q in zip(a._named_params(), c._named_params()):
        np.testing.assert_array_equal(p[1].w, q[1].w)


def test_sampled_model_save_load_keeps_tables_and_schedule(tmp_path):
    Xtr, Ytr, Xte, Yte = xmc(2000, 300, seed=1)
    # with buckets that never overflow, reloaded tables hold exactly the same ids
    m = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(32,), target_active=100, seed=2, rebuild_first=3,
                  bucket_capacity=65535)
    m.fit(Xtr, Ytr, epochs=1, batch_size=128, verbose=False)
    m.save(tmp_path / "m.npz")
    r = SparseMLP.load(tmp_path / "m.npz")
    assert (r.rebuilds, r._next_rebuild, r.k, r.l) == (m.rebuilds, m._next_rebuild, m.k, m.l)
    H = m.hidden_activations(Xte)
    for q, w in ((r.tables.query(H), m.tables.query(H)),):
        assert all(set(q[1][q[0][i]:q[0][i + 1]]) == set(w[1][w[0][i]:w[0][i + 1]]) for i in range(len(H)))
    r.fit(Xtr, Ytr, epochs=1, batch_size=128, verbose=False)
    assert r.step == 2 * m.step


def test_to_torch_matches_predictions():
    rng = np.random.default_rng(4)
    X, labels = tiny_data(rng, n=30, D=20, L=50)
    m = SparseMLP(20, 50, hidden=(16, 8), target_active=10, seed=0)
    m.fit(X, labels, epochs=2, batch_size=10, verbose=False, rerank=False)  # to_torch is the MLP alone
    want, bound = logits_bound([p.w for p in m.layers], [b.w for b in m.biases], m.out_w.w, m.out_b.w, X)
    assert_within(m.to_torch()(X).detach().numpy(), want, bound, "torch logits")
    scores, top = m.predict_topk(X, 5)
    # the k-th largest of values each within e of the reference is within e of the k-th
    # largest of the reference: each row's largest bound bounds its sorted scores
    assert_within(scores, -np.sort(-want, 1)[:, :5], bound.max(1, keepdims=True), "top-5 scores")


def test_keyboard_interrupt_leaves_model_usable_and_checkpoint_intact(tmp_path):
    Xtr, Ytr, _, _ = xmc(4000, 10, seed=2)
    ck = tmp_path / "ck.npz"
    m = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(32,), target_active=100, seed=0)
    timer = threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        m.fit(Xtr, Ytr, epochs=200, batch_size=64, checkpoint=ck, checkpoint_every=5, verbose=False)
    timer.cancel()
    assert m.step > 0
    saved = SparseMLP.load(ck)
    assert saved.step % 5 == 0 and saved.step <= m.step
    m.fit(Xtr[:64], Ytr[:64], epochs=1, batch_size=64, verbose=False)  # still trains


@pytest.mark.parametrize("bad, err", [
    (lambda X, Y: (X[:, :-1], Y), ValueError),                           # dimension mismatch
    (lambda X, Y: (X, [[99]] + Y[1:]), ValueError),                      # label out of range
    (lambda X, Y: (X, [[]] + Y[1:]), ValueError),                        # row without labels
    (lambda X, Y: (X[:0], Y[:0]), ValueError),                           # empty data set
    (lambda X, Y: (X.toarray(), Y), TypeError),                          # dense X
    (lambda X, Y: (X, Y[:-1]), ValueError),                              # row count mismatch
    (lambda X, Y: (X, "labels"), TypeError),
])
def test_bad_training_input(bad, err):
    rng = np.random.default_rng(5)
    X, labels = tiny_data(rng, n=10, D=20, L=12)
    m = SparseMLP(20, 12, hidden=(4,), seed=0)
    with pytest.raises(err):
        m.fit(*bad(X, labels), verbose=False)


def test_nan_input_names_the_row():
    rng = np.random.default_rng(6)
    X, labels = tiny_data(rng, n=10, D=20, L=12)
    X = X.tolil()
    X[7, 3] = np.nan
    with pytest.raises(ValueError, match="row 7"):
        SparseMLP(20, 12, hidden=(4,)).fit(X.tocsr(), labels, verbose=False)


@pytest.mark.parametrize("kwargs, err", [
    (dict(input_dim=0, output_dim=5), ValueError), (dict(input_dim=5, output_dim=1), ValueError),
    (dict(input_dim=5, output_dim=5, hash="md5"), ValueError), (dict(input_dim=5, output_dim=5, hidden=()), TypeError),
    (dict(input_dim=5, output_dim=5, lr=-1.0), ValueError), (dict(input_dim=5.5, output_dim=5), TypeError),
])
def test_bad_constructor_arguments(kwargs, err):
    with pytest.raises(err):
        SparseMLP(**kwargs)


@pytest.mark.slow
def test_amazon_670k_sized_model_trains_within_4_gb():
    code = r"""
import resource, numpy as np, scipy.sparse as sp
from hashlab.slide import SparseMLP
rng = np.random.default_rng(0)
D, L, n = 135_909, 670_091, 1024
X = sp.csr_matrix((rng.random(n * 75, dtype=np.float32), (np.repeat(np.arange(n), 75), rng.integers(0, D, n * 75))),
                  shape=(n, D))
Y = [rng.choice(L, 5, replace=False).tolist() for _ in range(n)]
m = SparseMLP(D, L, hidden=(128,), seed=0, rebuild_first=2)
m.fit(X, Y, epochs=1, batch_size=256, verbose=False)
assert m.rebuilds >= 1
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, m.nbytes)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    peak, nbytes = map(int, r.stdout.split())
    assert peak < 4 * 2**30, f"peak RSS {peak / 2**30:.2f} GiB"
    assert nbytes < peak
