"""hashlab.distributed: label-sharded training on 2 and 3 gloo processes on loopback.

Checks against independent references: torch float64 training (losses, weights and Adam
state with all neurons active, within the float32 error of torch in several orders:
tests/_mlp_reference.py), float64 scores and top-k, load_xmc; P@1 of LSH-sampled training
against single-process training; save on 2 ranks / load on 1 and 3; a dead rank; bad input.
Every launch has a deadline, so a bug fails the test instead of hanging CI.
"""
import datetime
import os
import pickle
import socket
import time
import traceback

import numpy as np
import pytest
import scipy.sparse as sp

import hashlab
from hashlab.datasets import load_xmc, make_xmc, save_xmc
from hashlab.distributed import ShardedRetriever, ShardedSparseMLP, label_range, load_xmc_shard, shard_rows
from hashlab.retrieval import dense_topk
from hashlab.slide import SparseMLP, _as_labels

from _mlp_reference import ORDERS32, TorchMLP, logits_bound
from _tolerance import U, assert_close_to_f64, assert_within, float32_error, gamma

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as tmp  # noqa: E402

DEADLINE = 60.0  # seconds per launch; the process group's own timeout is shorter


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, scenarios, outdir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    hashlab.set_num_threads(1)
    results = {}
    out = os.path.join(outdir, f"{rank}.pkl")
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=15))
        for name, fn, args in scenarios:
            try:
                results[name] = ("ok", fn(rank, world, *args))
            except Exception as e:  # reported to the parent, which fails that test with it
                results[name] = ("error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            with open(out, "wb") as f:  # after each scenario: a rank may exit on purpose
                pickle.dump(results, f)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(scenarios, world, outdir):
    """Runs each fn(rank, world, *args) of scenarios [(name, fn, args)] in turn on ``world``
    spawned processes sharing one process group (process start-up dominates the test time).
    Returns (per rank: {name: (status, value)}, exit codes)."""
    os.makedirs(outdir, exist_ok=True)
    ctx = tmp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, scenarios, outdir), daemon=True)
             for r in range(world)]
    for p in procs:
        p.start()
    end = time.monotonic() + DEADLINE
    for p in procs:
        p.join(max(0.1, end - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} still running after {DEADLINE} s"
    results = []
    for r in range(world):
        f = os.path.join(outdir, f"{r}.pkl")
        results.append(pickle.loads(open(f, "rb").read()) if os.path.exists(f) else {})
    return results, [p.exitcode for p in procs]


def ok(results, name):
    """The values of scenario ``name`` on every rank (fails if one raised)."""
    vals = []
    for r, res in enumerate(results):
        status, value = res.get(name, ("missing", None))
        assert status == "ok", f"{name} on rank {r}: {status}: {value}"
        vals.append(value)
    return vals


def tiny(seed=0, n=48, D=30, L=17):
    rng = np.random.default_rng(seed)
    X = sp.random(n, D, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    X.data = rng.random(X.nnz, dtype=np.float32) + 0.1
    Y = [sorted(rng.choice(L, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(n)]
    return X, _as_labels(Y, n, L)


FULL = dict(hidden=(16, 8), lr=1e-2, seed=3)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank run of every 2-rank scenario; the dead-rank one last (it ends the group)."""
    d = tmp_path_factory.mktemp("two-ranks")
    ckpt = str(d / "ckpt")
    scenarios = [("full", _full_active, (6, 10)), ("lsh", _lsh_train, (LSH_EPOCHS,)),
                 ("save", _train_and_save, (ckpt,)), ("mismatch", _mismatched, ()),
                 ("dead", _die_after_one_step, ())]
    results, codes = launch(scenarios, 2, str(d / "out"))
    return dict(results=results, codes=codes, ckpt=ckpt)


@pytest.fixture(scope="module")
def three_ranks(two_ranks, tmp_path_factory):
    d = tmp_path_factory.mktemp("three-ranks")
    scenarios = [("full", _full_active, (6, 10)),  # batch 10 over 3 ranks: uneven parts
                 ("load", _load_predict, (two_ranks["ckpt"],))]
    results, codes = launch(scenarios, 3, str(d / "out"))
    return dict(results=results, codes=codes)


def _params(model):
    return model.layers + model.biases


# -- full softmax: the sharded model is the single-process model -----------------------------------
def _batches(steps, batch, n):
    return [np.arange(s * batch, (s + 1) * batch) % n for s in range(steps)]


def _label_lists(Y):
    return [Y.indices[Y.indptr[i]:Y.indptr[i + 1]] for i in range(Y.shape[0])]


def _full_active(rank, world, steps, batch):
    X, Y = tiny()
    L = Y.shape[1]
    model = ShardedSparseMLP(X.shape[1], L, target_active=L, distributed=True, **FULL)
    losses = []
    for idx in _batches(steps, batch, X.shape[0]):
        mine = idx[shard_rows(batch)]  # this rank's part of the global batch
        ls, nb = model.train_batch(X[mine], Y[mine])
        assert nb == batch
        losses.append(ls)
    params = _params(model) + [model.out_w, model.out_b]
    hidden = np.concatenate([p.w.ravel() for p in _params(model)])
    return dict(losses=losses, state={k: [getattr(p, k) for p in params] for k in "wmv"}, hidden=hidden,
                rows=(model.label_lo, model.label_hi))


def assert_trains_like_torch(model, X, Y, batches, losses, state, rows=slice(None), activation="relu"):
    """losses and state ({"w", "m", "v"}: layers + biases + [out_w, out_b], the output
    ones restricted to ``rows``) of full-softmax training on ``batches`` of (X, Y), from
    ``model``'s initial weights, against torch float64 within the float32 error of torch in
    ORDERS32 (method (a) of tests/_tolerance.py, c = 3)."""
    ref = TorchMLP(model)
    refs32 = [TorchMLP(model, "float32", o) for o in ORDERS32]
    labels = _label_lists(Y)
    for s, idx in enumerate(batches):
        Yb = [labels[i] for i in idx]
        want = ref.step(X[idx], Yb)
        assert_close_to_f64(losses[s], want, [np.float64(r.step(X[idx], Yb)) for r in refs32], what=f"loss {s}")
    n_hidden = len(model.layers) + len(model.biases)
    for kind in "wmv":
        for j, (got, want, *r32) in enumerate(zip(state[kind], ref.state(kind), *(r.state(kind) for r in refs32))):
            # a shard's own rows are few: the float32 error of the whole parameter is the estimate
            sl = rows if j >= n_hidden else slice(None)
            bound = 3 * float32_error(want, r32) + U * np.abs(want[sl])
            assert_within(got, want[sl], bound, f"{kind} of parameter {j}")


@pytest.mark.parametrize("world", [2, 3])
def test_full_active_trains_like_torch(world, request):
    out = ok(request.getfixturevalue("two_ranks" if world == 2 else "three_ranks")["results"], "full")
    X, Y = tiny()
    init = SparseMLP(X.shape[1], Y.shape[1], target_active=Y.shape[1], **FULL)  # the same initial weights
    batches = _batches(6, 10, X.shape[0])
    for r in out:
        assert_trains_like_torch(init, X, Y, batches, r["losses"], r["state"], slice(*r["rows"]))
    # replicated layers stay bit-identical on every rank; shards tile the labels
    for r in out[1:]:
        np.testing.assert_array_equal(r["hidden"], out[0]["hidden"])
    assert [r["rows"] for r in out] == [label_range(17, q, world) for q in range(world)]


def test_one_process_trains_like_torch():
    X, Y = tiny(1)
    ref = SparseMLP(30, 17, target_active=17, activation="tanh", **FULL)
    model = ShardedSparseMLP(30, 17, target_active=17, activation="tanh", distributed=False, **FULL)
    batches = [np.arange(s * 12, (s + 1) * 12) for s in range(4)]
    init = SparseMLP(30, 17, target_active=17, activation="tanh", **FULL)
    losses = []
    for idx in batches:
        ref._train_batch(X[idx], Y[idx])
        losses.append(model.train_batch(X[idx], Y[idx])[0])
    params = _params(model) + [model.out_w, model.out_b]
    assert_trains_like_torch(init, X, Y, batches, losses, {k: [getattr(p, k) for p in params] for k in "wmv"})
    np.testing.assert_array_equal(model.predict_topk(X, 3)[1], ref.predict_topk(X, 3)[1])


def test_sampled_active_sets():
    """Labels first, then candidates, no duplicates, sizes max(labels, target), random fill."""
    from hashlab.distributed import _active_sets

    rng = np.random.default_rng(0)
    n, n_out, target = 40, 50, 6
    lab_samp = np.repeat(np.arange(n), rng.integers(0, 9, n))
    lab_ids = np.concatenate([rng.choice(n_out, np.sum(lab_samp == i), replace=False) for i in range(n)])
    cind = np.concatenate([[0], np.cumsum(rng.integers(0, 10, n))]).astype(np.int64)
    cids = rng.integers(0, n_out, cind[-1]).astype(np.int32)
    for t in (target, 30):  # 30: dense fill (more than half the ids)
        indptr, ids, samp = _active_sets(n, lab_samp, lab_ids, cind, cids, t, n_out, rng)
        for i in range(n):
            a = ids[indptr[i]:indptr[i + 1]]
            labs = lab_ids[lab_samp == i]
            assert a.size == max(labs.size, t) and np.unique(a).size == a.size
            np.testing.assert_array_equal(a[:labs.size], labs)
            c = list(dict.fromkeys(x for x in cids[cind[i]:cind[i + 1]] if x not in set(labs)))
            np.testing.assert_array_equal(a[labs.size:labs.size + len(c)], c[:a.size - labs.size])
        assert (samp == np.repeat(np.arange(n), np.diff(indptr))).all()


# -- LSH-sampled training: P@1 within noise of one process --------------------------------------------
def _xmc():
    Xtr, Ytr, Xte, Yte = make_xmc(2400, 600, 500, 300, seed=0)
    return Xtr, Ytr, Xte, Yte


LSH_EPOCHS = 3
LSH = dict(hidden=(32,), target_active=40, lr=3e-3, seed=0, rebuild_first=10)


def _lsh_train(rank, world, epochs):
    Xtr, Ytr, Xte, Yte = _xmc()
    rows = shard_rows(Xtr.shape[0])
    model = ShardedSparseMLP(Xtr.shape[1], Ytr.shape[1], **LSH)
    model.fit(Xtr[rows], Ytr[rows], epochs=epochs, batch_size=64, verbose=False, lr_schedule="constant")
    return dict(p1=model.evaluate(Xte, Yte, ks=(1,))["P@1"], p1_lsh=model.evaluate(Xte, Yte, ks=(1,), mode="lsh")["P@1"],
                step=model.step, active=model.local_active)


def test_lsh_p_at_1_within_noise_of_single_process(two_ranks):
    Xtr, Ytr, Xte, Yte = _xmc()
    # the sharded fit has no centroid init: both start from the same random weights
    single = SparseMLP(Xtr.shape[1], Ytr.shape[1], **LSH).fit(Xtr, Ytr, epochs=LSH_EPOCHS, batch_size=64,
                                                              verbose=False, lr_schedule="constant",
                                                              init="random", rerank=False)  # sharded: none
    p_single = single.evaluate(Xte, Yte, ks=(1,))["P@1"]
    out = ok(two_ranks["results"], "lsh")
    assert out[0]["p1"] == out[1]["p1"] and out[0]["step"] == single.step
    assert out[0]["active"] < 40  # sampled, not the full softmax
    p = out[0]["p1"]
    noise = 3 * np.sqrt(2 * p_single * (1 - p_single) / Xte.shape[0]) + 0.02
    assert abs(p - p_single) < noise, (p, p_single)
    top_label = np.bincount(Ytr.indices, minlength=Ytr.shape[1]).argmax()
    assert p > float(Yte[:, top_label].sum()) / Yte.shape[0] + 0.1  # beats always answering the top label
    assert out[0]["p1_lsh"] > 0.5 * p


# -- persistence across world sizes, sharded retrieval -------------------------------------------------
SAVE = dict(hidden=(16,), target_active=6, seed=1, rebuild_first=3)


def _train_and_save(rank, world, path):
    X, Y = tiny(2)
    model = ShardedSparseMLP(30, 17, **SAVE)
    rows = shard_rows(X.shape[0])
    model.fit(X[rows], Y[rows], epochs=2, batch_size=16, verbose=False)
    model.save(path)
    H = model.hidden_activations(X)
    retr = ShardedRetriever.from_full(np.random.default_rng(0).standard_normal((17, 16)).astype(np.float32),
                                      target_fraction=1.0, seed=2)
    Wfull = np.random.default_rng(0).standard_normal((17, 16)).astype(np.float32)
    return dict(pred=model.predict_topk(X, 4), retr=retr.topk(H, 4), ref=dense_topk(H, Wfull, None, 4),
                lsh=model.predict_topk(X, 4, mode="lsh"), H=H, W=Wfull)


def _load_predict(rank, world, path):
    X, Y = tiny(2)
    model = ShardedSparseMLP.load(path)
    assert model.world_size == world
    pred = model.predict_topk(X, 4)
    rows = shard_rows(X.shape[0])
    model.fit(X[rows], Y[rows], epochs=1, batch_size=16, verbose=False)  # training resumes
    return dict(pred=pred, step=model.step)


def test_save_on_2_load_on_1_and_3(two_ranks, three_ranks):
    path = two_ranks["ckpt"]
    saved = ok(two_ranks["results"], "save")
    X, _ = tiny(2)
    for r in saved:
        np.testing.assert_array_equal(r["retr"][1], r["ref"][1])  # all candidates: exact top-k
        H, W = r["H"].astype(np.float64), r["W"].astype(np.float64)
        pick = r["retr"][1]
        exact = np.take_along_axis(H @ W.T, pick, 1)
        bound = np.take_along_axis(gamma(H.shape[1] + 1) * (np.abs(H) @ np.abs(W).T), pick, 1)
        assert_within(r["retr"][0], exact, bound, "retriever scores")
        np.testing.assert_array_equal(r["pred"][1], saved[0]["pred"][1])
    want_s, want_l = saved[0]["pred"]
    one = ShardedSparseMLP.load(path)  # no process group: one process holds every label
    assert one.world_size == 1 and one.n_local == 17
    s, l = one.predict_topk(X, 4)
    np.testing.assert_array_equal(l, want_l)
    # every world size scores the saved weights: each within float32 error of their float64 logits
    logits, bound = logits_bound([p.w for p in one.layers], [b.w for b in one.biases], one.out_w.w, one.out_b.w, X)
    top4, row_bound = -np.sort(-logits, 1)[:, :4], bound.max(1, keepdims=True)  # sorting: see test_slide
    for q, r in enumerate(saved):
        assert_within(r["pred"][0], top4, row_bound, f"scores on rank {q} of 2")
    assert_within(s, top4, row_bound, "scores on 1 process")
    for q, r in enumerate(ok(three_ranks["results"], "load")):
        np.testing.assert_array_equal(r["pred"][1], want_l)
        assert_within(r["pred"][0], top4, row_bound, f"scores on rank {q} of 3")
        assert r["step"] == one.step + 4  # 16 rows per rank, 5 or 6 per batch: 4 batches


def test_corrupt_or_mismatched_checkpoint(two_ranks, three_ranks, tmp_path):
    import shutil

    path = str(tmp_path / "ckpt")
    shutil.copytree(two_ranks["ckpt"], path)
    shard = sorted(f for f in os.listdir(path) if f.startswith("shard-"))[1]
    with open(os.path.join(path, shard), "r+b") as f:
        f.seek(100)
        f.write(b"garbage")
    with pytest.raises(ValueError, match="SHA-256"):
        ShardedSparseMLP.load(path)
    with pytest.raises(FileNotFoundError):
        ShardedSparseMLP.load(str(tmp_path))
    import json
    man = json.loads(open(os.path.join(path, "manifest.json")).read())
    man["shards"][0]["labels"] = [0, 5]
    open(os.path.join(path, "manifest.json"), "w").write(json.dumps(man))
    with pytest.raises(ValueError, match="tiling"):
        ShardedSparseMLP.load(path)


# -- failures -------------------------------------------------------------------------------------------
def _die_after_one_step(rank, world):
    X, Y = tiny(3)
    model = ShardedSparseMLP(30, 17, hidden=(8,), target_active=6, timeout=15)
    rows = shard_rows(X.shape[0])
    model.train_batch(X[rows], Y[rows])
    if rank == 1:
        os._exit(3)
    t0 = time.monotonic()
    try:
        for _ in range(100):
            model.train_batch(X[rows], Y[rows])
    except RuntimeError as e:
        return dict(error=str(e), seconds=time.monotonic() - t0)
    return dict(error=None)


def test_dead_rank_makes_the_others_fail_clearly(two_ranks):
    assert two_ranks["codes"][1] == 3 and "dead" not in two_ranks["results"][1]
    status, value = two_ranks["results"][0]["dead"]
    assert status == "ok", value
    assert value["error"] is not None
    assert "hashlab.distributed: rank 0 of 2" in value["error"] and "step 2" in value["error"]


def _mismatched(rank, world):
    errors = []
    try:
        ShardedSparseMLP(30, 17, hidden=(8,), seed=rank)  # ranks disagree
    except ValueError as e:
        errors.append(str(e))
    try:
        ShardedSparseMLP(30, 17 if rank == 0 else -1, hidden=(8,))  # one rank fails validation
    except ValueError as e:
        errors.append(str(e))
    return errors


def test_bad_input(two_ranks):
    with pytest.raises(ValueError, match="init_process_group"):
        ShardedSparseMLP(30, 17, distributed=True)
    with pytest.raises(TypeError):
        ShardedSparseMLP(30, 17, distributed="yes")
    with pytest.raises(ValueError):
        ShardedSparseMLP(30, 17, timeout=0)
    m = ShardedSparseMLP(30, 17, hidden=(8,), distributed=False)
    with pytest.raises(TypeError):
        m.train_batch(np.zeros((2, 30)), [[1], [2]])
    with pytest.raises(ValueError):
        m.train_batch(sp.csr_matrix((2, 30), dtype=np.float32), [[1], [17]])
    for rank, errs in enumerate(ok(two_ranks["results"], "mismatch")):
        assert len(errs) == 2
        assert "differ from rank 0" in errs[0]
        assert "output_dim" in errs[1] if rank == 1 else "rank(s) [1]" in errs[1]


def test_load_xmc_shard_reads_disjoint_slices(tmp_path):
    Xtr, Ytr, _, _ = make_xmc(101, 0, 200, 25, seed=1, nnz_per_row=10)
    path = str(tmp_path / "train.txt")
    save_xmc(path, Xtr, Ytr)
    X, Y = load_xmc(path, verbose=False)
    for world in (1, 2, 3):
        parts = [load_xmc_shard(path, r, world) for r in range(world)]
        assert all(p[0].shape[0] > 0 for p in parts)
        assert (sp.vstack([p[0] for p in parts]) != X).nnz == 0
        assert (sp.vstack([p[1] for p in parts]) != Y).nnz == 0
    save_xmc(path + ".gz", Xtr, Ytr)
    with pytest.raises(ValueError, match="gzip"):
        load_xmc_shard(path + ".gz", 0, 2)


def test_example_runs_as_one_process(capsys):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / "distributed_train.py"
    spec = importlib.util.spec_from_file_location("distributed_train", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--labels", "300", "--features", "500", "--train-rows", "600", "--hidden", "16",
                     "--target-active", "30"]) == 0
    assert "test P@1" in capsys.readouterr().out


def test_defaults_are_sparse_mlps():
    # the docstring promises SparseMLP's defaults for every shared parameter
    import inspect

    from hashlab.slide import SparseMLP

    def defaults(fn):
        return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}
    ours, theirs = defaults(ShardedSparseMLP.__init__), defaults(SparseMLP.__init__)
    shared = set(ours) & set(theirs)
    assert {"hidden", "lr", "target_active", "hash"} <= shared
    assert {n: ours[n] for n in shared} == {n: theirs[n] for n in shared}
