"""SparseMLP persistence: inference-only files (float32 / float16), format 1 checkpoints, and files
that are not a complete model."""
import json
import os

import numpy as np
import pytest

from hashlab import SparseMLP
from hashlab.datasets import make_preset
from hashlab.slide import FORMAT_VERSION

U16 = 2.0 ** -11  # float16 round-to-nearest: relative error of a normal number
SUB16 = 2.0 ** -25  # ... absolute error of a subnormal one (spacing 2**-24)
EPS32 = 2.0 ** -24


@pytest.fixture(scope="module")
def data():
    return make_preset("tiny", scale=0.05, seed=0)


def train(data, hidden=(16,), rerank=True, **kw):
    Xtr, Ytr, _, _ = data
    m = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=hidden, lr=0.01, seed=1, **kw)
    return m.fit(Xtr, Ytr, epochs=2, batch_size=64, verbose=False, rerank=rerank)


@pytest.fixture(scope="module")
def model(data):
    return train(data)


@pytest.fixture(scope="module")
def files(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    paths = dict(checkpoint=d / "ck.npz", float32=d / "e32.npz", float16=d / "e16.npz")
    model.save(paths["checkpoint"])
    model.save(paths["float32"], optimizer=False)
    model.save(paths["float16"], optimizer=False, dtype="float16")
    return paths


def all_scores(m, X, mode="dense"):
    """(n, output_dim) scores of every label from predict_topk(k=output_dim)."""
    s, lab = m.predict_topk(X, m.output_dim, mode=mode)
    out = np.full((X.shape[0], m.output_dim), np.nan, np.float32)
    np.put_along_axis(out, lab, s, axis=1)
    return out


# -- inference-only files --------------------------------------------------------------------

def test_inference_file_holds_weights_and_biases_only(model, files):
    names = {n for n, _ in model._named_params()}
    counts = {"label_counts"} if getattr(model, "label_counts_", None) is not None else set()  # set by fit
    with np.load(files["float32"]) as z:
        assert model.reranker is not None  # fit's default: the file holds its three arrays, not the Adagrad sums
        assert set(z.files) == {"state"} | counts | {n + ".w" for n in names} | {"rerank.V", "rerank.U", "rerank.ab"}
        np.testing.assert_array_equal(z["rerank.V"], model.reranker.V)
        np.testing.assert_array_equal(z["rerank.ab"], model.reranker.ab)
        state = json.loads(bytes(z["state"]).decode())
        for name, p in model._named_params():
            assert z[name + ".w"].dtype == np.float32
            np.testing.assert_array_equal(z[name + ".w"], p.w)
    assert state["kind"] == "inference" and state["config"] == model._config() and state["step"] == model.step
    with np.load(files["float16"]) as z:
        assert all(z[n].dtype == np.float16 for n in [n + ".w" for n in names] + ["rerank.V", "rerank.U"])
    sizes = {k: os.path.getsize(p) for k, p in files.items()}
    # the MLP keeps 1 of its 3 arrays per parameter, the re-ranker 2 of 4
    assert sizes["float16"] < sizes["float32"] < sizes["checkpoint"] / 2


@pytest.mark.parametrize("mode", ["dense", "lsh"])
def test_float32_export_predicts_exactly_like_the_training_model(model, files, data, mode):
    _, _, Xte, Yte = data
    e = SparseMLP.load(files["float32"])
    assert e.inference_only and not model.inference_only
    assert e._config() == model._config() and e.step == model.step and e.history == model.history
    s0, l0 = model.predict_topk(Xte, 10, mode=mode)
    s1, l1 = e.predict_topk(Xte, 10, mode=mode)
    np.testing.assert_array_equal(l1, l0)
    np.testing.assert_array_equal(s1, s0)
    assert e.evaluate(Xte, Yte, mode=mode) == model.evaluate(Xte, Yte, mode=mode)
    assert e.nbytes == sum(p.w.nbytes for _, p in model._named_params()) + model.reranker.V.nbytes + \
        model.reranker.U.nbytes + model.reranker.ab.nbytes


def float16_score_bound(m, X):
    """Upper bound on |score_float16 - score_float32| of every (row, label) of a model with one
    hidden layer (float64 arithmetic). Every weight and bias moves by at most
    delta(w) = |w| 2**-11 + 2**-25 (float16 rounding). The hidden pre-activation moves by at most
    |x| @ delta(W0) + delta(b0), and so does the activation (ReLU is 1-Lipschitz); the score by the
    hidden change times |w16| plus sum_j |h_j| delta(w_j) + delta(b) (the output layer's own
    rounding, |h| |w| 2**-11 + |b| 2**-11). Both models compute their sums in float32: each dot
    product of n terms is off by at most n 2**-24 times the sum of its terms' magnitudes."""
    def delta(a):
        return np.abs(a).astype(np.float64) * U16 + SUB16
    W0, b0, W, b = m.layers[0].w, m.biases[0].w, m.out_w.w, m.out_b.w
    X64, A = X.astype(np.float64), abs(X).astype(np.float64)
    n_in = int(np.diff(X.indptr).max()) + 1  # terms per hidden sum (bias included)
    mag_z32 = A @ np.abs(W0) + np.abs(b0)
    mag_z16 = A @ (np.abs(W0) + delta(W0)) + np.abs(b0) + delta(b0)
    dz = A @ delta(W0) + delta(b0) + n_in * EPS32 * (mag_z32 + mag_z16)
    h = np.maximum(X64 @ W0 + b0, 0) + n_in * EPS32 * mag_z32  # bounds the float32 model's |h|
    W16 = np.abs(W) + delta(W)
    mag_s = (h + dz) @ W16.T + np.abs(b) + delta(b)  # bounds both models' score magnitudes
    d = W.shape[1] + 1
    return dz @ W16.T + h @ delta(W).T + delta(b) + 2 * d * EPS32 * mag_s


def test_float16_export_changes_scores_within_the_rounding_bound(model, files, data):
    _, _, Xte, Yte = data
    e = SparseMLP.load(files["float16"])
    for (_, p), (_, q) in zip(model._named_params(), e._named_params()):
        assert q.w.dtype == np.float32
        np.testing.assert_array_equal(q.w, p.w.astype(np.float16).astype(np.float32))
    s32, s16 = all_scores(model, Xte), all_scores(e, Xte)
    bound = float16_score_bound(model, Xte)
    err = np.abs(s16.astype(np.float64) - s32)
    assert (err <= bound).all(), float((err - bound).max())
    assert err.max() > 0  # the rounding did happen
    # P@1: a row's top label can change only where the float32 gap to another label is within the bounds
    top32, top16 = s32.argmax(1), s16.argmax(1)
    rows = np.arange(len(top32))
    gap = s32[rows, top32][:, None] - s32
    at_risk = ((gap <= bound[rows, top32][:, None] + bound) & (np.arange(s32.shape[1]) != top32[:, None])).any(1)
    assert not (top16 != top32)[~at_risk].any()
    p32 = model.evaluate(Xte, Yte, ks=(1,))["P@1"]
    p16 = e.evaluate(Xte, Yte, ks=(1,))["P@1"]
    assert abs(p16 - p32) <= at_risk.mean()


def test_inference_only_model_refuses_to_train_or_checkpoint(files, data, tmp_path):
    Xtr, Ytr, _, _ = data
    e = SparseMLP.load(files["float32"])
    before = e.out_w.w.copy()
    with pytest.raises(RuntimeError, match=r"^inference-only model \(saved with optimizer=False\): "):
        e.fit(Xtr, Ytr, epochs=1, verbose=False)
    np.testing.assert_array_equal(e.out_w.w, before)
    with pytest.raises(RuntimeError, match=r"^inference-only model .*optimizer=False"):
        e.save(tmp_path / "ck.npz")
    assert not (tmp_path / "ck.npz").exists()
    e.save(tmp_path / "again.npz", optimizer=False, dtype="float16")  # an export re-exports
    again = SparseMLP.load(tmp_path / "again.npz")
    np.testing.assert_array_equal(again.out_w.w, before.astype(np.float16).astype(np.float32))


def test_label_counts_are_kept_by_both_kinds(data, tmp_path):
    _, Ytr, _, _ = data
    m = train(data, hidden=(8,))
    m.label_counts_, m.train_rows_ = np.asarray(Ytr.sum(0)).ravel().astype(np.int64) * 3, Ytr.shape[0] * 3
    for kw in ({}, {"optimizer": False}, {"optimizer": False, "dtype": "float16"}):
        m.save(tmp_path / "m.npz", **kw)
        got = SparseMLP.load(tmp_path / "m.npz")
        assert got.label_counts_.dtype == np.int64 and got.train_rows_ == m.train_rows_
        np.testing.assert_array_equal(got.label_counts_, m.label_counts_)
    m.label_counts_ = None
    m.save(tmp_path / "none.npz", optimizer=False)
    assert SparseMLP.load(tmp_path / "none.npz").label_counts_ is None


def test_learned_hash_model_exports(data, tmp_path):
    _, _, Xte, _ = data
    m = train(data, hash="learned")
    m.save(tmp_path / "e.npz", optimizer=False)
    with np.load(tmp_path / "e.npz") as z:
        assert not any(name.startswith(("hash_", "sched_", "qbuf", "keys", "dirty")) for name in z.files)
    e = SparseMLP.load(tmp_path / "e.npz")
    for mode in ("dense", "lsh"):
        np.testing.assert_array_equal(e.predict_topk(Xte, 5, mode=mode)[1], m.predict_topk(Xte, 5, mode=mode)[1])


def test_save_arguments_are_validated(model, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        model.save(tmp_path / "m.npz", optimizer=False, dtype="float64")
    with pytest.raises(ValueError, match="checkpoint"):
        model.save(tmp_path / "m.npz", dtype="float16")  # moments in float16 would not resume exactly
    with pytest.raises(TypeError, match="optimizer"):
        model.save(tmp_path / "m.npz", optimizer="no")
    assert os.listdir(tmp_path) == []


def test_float16_export_refuses_weights_beyond_its_range(data, tmp_path):
    m = train(data, hidden=(8,))
    m.out_w.w[3, 2] = 7e4
    with pytest.raises(ValueError, match="65504"):
        m.save(tmp_path / "m.npz", optimizer=False, dtype="float16")
    assert os.listdir(tmp_path) == []
    m.save(tmp_path / "m.npz", optimizer=False)  # float32 keeps it
    assert SparseMLP.load(tmp_path / "m.npz").out_w.w[3, 2] == np.float32(7e4)


# -- format 1 checkpoints ------------------------------------------------------------------------

def save_format1(m, path):
    """The checkpoint layout SparseMLP.save wrote before inference-only files (format 1, no kind)."""
    state = dict(format=1, config=m._config(), step=m.step, rebuilds=m.rebuilds, next_rebuild=m._next_rebuild,
                 period=m._period, history=m.history, epoch_rng=m._epoch_rng.bit_generator.state,
                 range_bits=m._range_bits, refits=m.refits, rows_rehashed=m.rows_rehashed)
    arrays = {"keys": m._keys, "dirty": m._dirty,
              "state": np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)}
    for name, p in m._named_params():
        arrays[name + ".w"], arrays[name + ".m"], arrays[name + ".v"] = p.w, p.m, p.v
    np.savez(path, **arrays)


def test_format1_checkpoint_loads_and_resumes_like_a_current_one(data, tmp_path):
    Xtr, Ytr, Xte, _ = data
    # sampled softmax (tables in use); no re-ranker: format 1 had none
    a = train(data, hidden=(8,), target_active=32, rebuild_first=3, rerank=False)
    save_format1(a, tmp_path / "v1.npz")
    a.save(tmp_path / "v2.npz")
    b, c = SparseMLP.load(tmp_path / "v1.npz"), SparseMLP.load(tmp_path / "v2.npz")
    assert not b.inference_only and b.label_counts_ is None
    assert (b.step, b.rebuilds, b._next_rebuild, b._config()) == (a.step, a.rebuilds, a._next_rebuild, a._config())
    np.testing.assert_array_equal(b.predict_topk(Xte, 5)[1], a.predict_topk(Xte, 5)[1])
    np.testing.assert_array_equal(b._keys, a._keys)
    # the tables are rebuilt from the stored keys either way: both resume the same
    b.fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False)
    c.fit(Xtr, Ytr, epochs=1, batch_size=64, verbose=False)
    for (_, p), (_, q) in zip(b._named_params(), c._named_params()):
        np.testing.assert_array_equal(p.w, q.w)
        np.testing.assert_array_equal(p.m, q.m)


# -- files that are not a complete model ---------------------------------------------------------

def rewrite(src, dst, drop=(), **replace):
    with np.load(src) as z:
        arrays = {n: z[n] for n in z.files if n not in drop}
    arrays.update(replace)
    np.savez(dst, **arrays)


def restate(src, dst, **changes):
    with np.load(src) as z:
        state = json.loads(bytes(z["state"]).decode())
    state.update(changes)
    rewrite(src, dst, state=np.frombuffer(json.dumps(state).encode(), dtype=np.uint8))


BAD = {
    "newer format": (lambda f, d: restate(f["float32"], d, format=FORMAT_VERSION + 1),
                     f"format 1 to {FORMAT_VERSION}, got {FORMAT_VERSION + 1}"),
    "format missing": (lambda f, d: restate(f["checkpoint"], d, format=None), "format"),
    "unknown kind": (lambda f, d: restate(f["float32"], d, kind="weights"), "kind"),
    "missing weights": (lambda f, d: rewrite(f["float32"], d, drop=("out_w.w",)), "missing array 'out_w.w'"),
    "missing moments": (lambda f, d: rewrite(f["checkpoint"], d, drop=("layer0.v",)), "missing array 'layer0.v'"),
    "missing keys": (lambda f, d: rewrite(f["checkpoint"], d, drop=("keys",)), "missing array 'keys'"),
    "wrong shape": (lambda f, d: rewrite(f["float16"], d, **{"out_b.w": np.zeros(7, np.float16)}), "out_b.w"),
    "wrong config": (lambda f, d: restate(f["checkpoint"], d, config={"input_dim": 300}), "cannot read"),
    "wrong dtype": (lambda f, d: rewrite(f["float32"], d, **{"bias0.w": np.zeros(16, np.int32)}), "bias0.w"),
    "bad counts": (lambda f, d: rewrite(f["float32"], d, label_counts=np.zeros(3, np.int64)), "label_counts"),
    "other npz": (lambda f, d: np.savez(d, a=np.arange(3)), "not a hashlab model file"),
    "npy": (lambda f, d: np.save(d.with_suffix(".npy"), np.arange(3)) or d.with_suffix(".npy").rename(d),
            "not a hashlab model file"),
    "text": (lambda f, d: d.write_text("1 2 3\n"), "not a hashlab model file"),
    "empty": (lambda f, d: d.write_bytes(b""), "not a hashlab model file"),
}
for frac in (0.02, 0.5, 0.999):
    BAD[f"truncated at {frac}"] = (lambda f, d, frac=frac: d.write_bytes(
        f["checkpoint"].read_bytes()[:int(os.path.getsize(f["checkpoint"]) * frac)]), "cannot read")


def flip_a_byte(f, d):
    raw = bytearray(f["float32"].read_bytes())
    raw[len(raw) // 2] ^= 0x5A  # inside the weights: the zip member's CRC no longer matches
    d.write_bytes(bytes(raw))


BAD["flipped byte"] = (flip_a_byte, "cannot read")


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_model_files_raise_value_error_naming_the_file(files, tmp_path, case):
    make, msg = BAD[case]
    path = tmp_path / "bad.npz"
    make(files, path)
    with pytest.raises(ValueError) as e:
        SparseMLP.load(path)
    assert str(e.value).startswith(f"{path}: ") and msg in str(e.value)


def test_missing_model_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        SparseMLP.load(tmp_path / "none.npz")
    with pytest.raises(IsADirectoryError, match="folder"):
        SparseMLP.load(tmp_path)
