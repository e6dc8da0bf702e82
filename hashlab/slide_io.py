"""SparseMLP's model file format: writing (``save``), reading and checking (``load``) .npz files.

A file is an .npz archive: a JSON ``state`` entry (format version, kind "checkpoint" or
"inference", configuration, step, history, schedule...) and one array per weight (with its Adam
moments in a checkpoint), hash keys, learned-hash state, re-ranker and neighbour arrays.
``_ModelFile`` is a base class of hashlab.slide.SparseMLP; it holds no state of its own.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib

import numpy as np

from ._validate import check_choice
from . import neighbours as _nb
from .rerank import AB_INIT, LOSSES, FeatureReranker
from .slide_weights import _Adam

# 2: a "kind", checkpoint or inference-only; 3: the feature re-ranker; 4: neighbours; 5: the
# logistic re-ranker (its loss and scalars a, b); 1-4 load (their re-rankers are softmax ones)
FORMAT_VERSION = 5
SAVE_DTYPES = ("float32", "float16")  # weights of an inference-only file


class _ModelFile:
    """SparseMLP's ``save`` and ``load`` (see hashlab.slide.SparseMLP)."""

    def save(self, path, optimizer=True, dtype="float32"):
        """Writes the model to ``path`` (.npz), atomically.

        optimizer=True (default), a training checkpoint: weights, Adam moments, hash keys, the
        rehash schedule, the learned hash's state and the shuffling rng, so that ``load`` then
        ``fit`` continues exactly where training stopped. The LSH tables are stored as each
        neuron's current keys and rebuilt at load; where a bucket had overflowed, the rebuilt
        bucket keeps a different sample of its neurons.

        optimizer=False, an inference-only file: weights and biases (no moments or hash keys:
        under a third of a checkpoint's size in float32), the configuration, ``step``,
        ``history``, ``label_counts_`` and ``train_rows_``.
        ``load`` gives a model that predicts and evaluates (mode="lsh" builds its retriever from
        the weights) and that ``fit`` refuses.

        dtype : "float32" | "float16", the stored weights of an inference-only file. float16
            halves the file again and rounds every weight and bias to float16 (relative error
            <= 2**-11, absolute <= 2**-25 below 2**-14; loaded back as float32; ValueError if a
            value is beyond float16's 65504). Checkpoints are float32 only.

        Written to a temporary file in the same folder, then renamed, so an interrupted save
        never damages an existing file.
        """
        path = os.fspath(path)
        if not isinstance(optimizer, (bool, np.bool_)):
            raise TypeError(f"optimizer: expected a bool, got {type(optimizer).__name__}")
        dtype = check_choice(dtype, "dtype", SAVE_DTYPES)
        if optimizer and dtype != "float32":
            raise ValueError(f"dtype: expected 'float32' for a checkpoint (optimizer=True), got {dtype!r}")
        if optimizer and self.inference_only:
            raise RuntimeError("inference-only model (saved with optimizer=False): no optimizer state to "
                               "checkpoint; use save(path, optimizer=False)")
        if optimizer:
            state, arrays = self._checkpoint_state()
        else:
            state = dict(format=FORMAT_VERSION, kind="inference", dtype=dtype, config=self._config(),
                         step=self.step, history=self.history)
            arrays = {}
        counts = getattr(self, "label_counts_", None)
        if counts is not None:  # with the rows they count: the propensities of PSP@k need both
            arrays["label_counts"] = np.asarray(counts, dtype=np.int64)
            state["train_rows"] = int(getattr(self, "train_rows_", 0))
        rr = self.reranker
        if rr is not None:
            state["rerank"] = dict(bits=rr.bits, n_candidates=rr.n_candidates, lr=rr.lr, loss=rr.loss)
            arrays["rerank.V"], arrays["rerank.U"] = (rr.V, rr.U) if optimizer else \
                (_stored_weights(rr.V, dtype, "rerank.V"), _stored_weights(rr.U, dtype, "rerank.U"))
            arrays["rerank.ab"] = rr.ab  # two float64 scalars: kept exact in every dtype
            if optimizer:
                arrays["rerank.GV"], arrays["rerank.GU"], arrays["rerank.Gab"] = rr.GV, rr.GU, rr.Gab
        if self.neighbours is not None:
            store = (lambda a, name: a) if optimizer else (lambda a, name: _stored_weights(a, dtype, name))
            state["neighbours"], extra = _nb.to_arrays(self.neighbours, store)
            arrays.update(extra)
        arrays["state"] = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
        for name, p in self._named_params():
            if optimizer:
                arrays[name + ".w"], arrays[name + ".m"], arrays[name + ".v"] = p.w, p.m, p.v
            else:
                arrays[name + ".w"] = _stored_weights(p.w, dtype, name)
        atomic_savez(path, arrays)

    def _checkpoint_state(self):
        """(state dict, arrays) of a training checkpoint, weights and moments aside."""
        state = dict(format=FORMAT_VERSION, kind="checkpoint", config=self._config(), step=self.step,
                     rebuilds=self.rebuilds, next_rebuild=self._next_rebuild, period=self._period,
                     history=self.history, epoch_rng=self._epoch_rng.bit_generator.state,
                     range_bits=self._range_bits, refits=self.refits, rows_rehashed=self.rows_rehashed)
        arrays = {"keys": self._keys, "dirty": self._dirty}
        if self.hash == "learned":
            h = self.hasher
            state.update(qfill=self._qfill, drift_bits=self._sched._drift_bits, hash_fit_seconds=h.fit_seconds_,
                         hash_fitted=self._hash_fitted,
                         hash_loss_history=list(h.loss_history_))
            arrays.update(hash_W=h.W, qbuf=self._qbuf, sched_ids=self._sched._ids,
                          sched_codes=self._sched._codes, sched_base=self._sched._base)
            if h._opt is not None:  # the hash's Adam state: later refits continue from it
                arrays.update(hash_opt_m=h._opt["m"], hash_opt_v=h._opt["v"], hash_opt_t=np.int64(h._opt["t"]))
        return state, arrays

    @classmethod
    def load(cls, path):
        """Loads a file written by ``save``: a checkpoint (``fit`` then resumes where it stopped;
        also format 1, written before inference-only files existed) or an inference-only file
        (``inference_only`` is True; weights stored as float16 come back as float32).

        Raises FileNotFoundError for a missing file and ValueError naming the file for anything
        that is not a complete model of this format: another format version, a damaged or
        truncated file, an .npz from elsewhere, a missing array, a shape that does not match
        the stored configuration.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"expected a model file, got a folder: {path}")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no such model file: {path}")
        try:
            with open(path, "rb") as f:
                if f.read(4) != b"PK\x03\x04":  # what every non-empty .npz (a zip archive) starts with
                    raise _BadModelFile("not a hashlab model file (not an .npz archive)")
            with np.load(path, allow_pickle=False) as z:
                return cls._from_npz(z)
        except _BadModelFile as e:
            raise ValueError(f"{path}: {e}") from None
        except (ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            # a damaged archive (bad CRC, cut short) or a state that does not decode
            raise ValueError(f"{path}: cannot read the model ({type(e).__name__}: {e}); the file is damaged, "
                             "truncated or not written by SparseMLP.save") from None

    @classmethod
    def _from_npz(cls, z):
        """The model stored in the open archive z; raises _BadModelFile or a decoding error."""
        if "state" not in z.files:
            raise _BadModelFile("not a hashlab model file (no 'state' entry)")
        state = json.loads(bytes(_entry(z, "state", (None,), "u")).decode())
        if not isinstance(state, dict) or "format" not in state:
            raise _BadModelFile("not a hashlab model file (no format in its state)")
        fmt = state["format"]
        if not isinstance(fmt, int) or fmt not in range(1, FORMAT_VERSION + 1):
            newer = " (written by a newer hashlab?)" if isinstance(fmt, int) and fmt > FORMAT_VERSION else ""
            raise _BadModelFile(f"expected model format 1 to {FORMAT_VERSION}, got {fmt!r}{newer}")
        kind = state.get("kind", "checkpoint")  # format 1 files are all checkpoints
        if kind not in ("checkpoint", "inference"):
            raise _BadModelFile(f"expected kind 'checkpoint' or 'inference', got {kind!r}")
        model = cls.__new__(cls)
        model._configure(**state["config"])
        model.step, model.history = int(state["step"]), list(state["history"])
        shapes = model._param_shapes()
        trainable = kind == "checkpoint"
        params = {}
        for name, shape in shapes.items():
            p = _Adam.__new__(_Adam) if trainable else _Weights.__new__(_Weights)
            for part in "wmv" if trainable else "w":
                setattr(p, part, np.ascontiguousarray(_entry(z, f"{name}.{part}", shape, "f"), dtype=np.float32))
            params[name] = p
        n_hidden = len(model.hidden)
        model.layers = [params[f"layer{i}"] for i in range(n_hidden)]
        model.biases = [params[f"bias{i}"] for i in range(n_hidden)]
        model.out_w, model.out_b = params["out_w"], params["out_b"]
        model.label_counts_, model.train_rows_ = None, 0
        if "label_counts" in z.files:
            counts = _entry(z, "label_counts", (model.output_dim,), "iu").astype(np.int64)
            if counts.size and counts.min() < 0:
                raise _BadModelFile("label_counts: expected non-negative counts")
            model.label_counts_, model.train_rows_ = counts, int(state.get("train_rows", 0))
        model.reranker = _stored_reranker(z, state, model.output_dim, trainable, fmt)
        model.neighbours = _nb.from_arrays(z, state, model.output_dim, model.hidden[-1], _entry, _BadModelFile)
        if trainable:
            model._restore_training(z, state)
        else:  # no tables, keys or learned-hash state: prediction needs none of them
            model.tables = model._keys = model._dirty = None
            if model.hash == "learned":
                model._sched = model._qbuf = None
        return model

    def _restore_training(self, z, state):
        """The rehash schedule, rng, hash keys (tables rebuilt from them) and learned-hash state
        of a checkpoint."""
        self.rebuilds, self._next_rebuild, self._period = state["rebuilds"], state["next_rebuild"], state["period"]
        self._range_bits = state["range_bits"]
        self._epoch_rng.bit_generator.state = state["epoch_rng"]
        self.refits, self.rows_rehashed = state.get("refits", 0), state.get("rows_rehashed", 0)
        keys = np.ascontiguousarray(_entry(z, "keys", (self.output_dim, self.l), "u"), dtype=np.uint32)
        dirty = np.ascontiguousarray(_entry(z, "dirty", (self.output_dim,), "u"), dtype=np.uint8)
        if self.hash == "learned":
            self._restore_learned(z, state)
        self._build_tables(keys)
        self._dirty = dirty

    def _restore_learned(self, z, state):
        """The learned hasher, the drift fingerprints and the query buffer of a checkpoint."""
        need = ("hash_W", "qbuf", "sched_ids", "sched_codes", "sched_base")
        if any(name not in z.files for name in need):
            raise _BadModelFile("a hash='learned' checkpoint without its learned hash state")
        self.hasher = self._make_hasher()
        self.hasher._set_W(np.asarray(_entry(z, "hash_W", self.hasher.W.shape, "f")))
        self.hasher.fit_seconds_ = float(state["hash_fit_seconds"])
        self.hasher.loss_history_ = [float(v) for v in state["hash_loss_history"]]
        self._hash_fitted = bool(state.get("hash_fitted", self.hasher.loss_history_))
        if "hash_opt_m" in z.files:
            shape = (self.hasher.dim, self.hasher.nbits)
            m = np.asarray(_entry(z, "hash_opt_m", shape, "f"), np.float64)
            v = np.asarray(_entry(z, "hash_opt_v", shape, "f"), np.float64)
            self.hasher._opt = dict(m=m, v=v, t=int(_entry(z, "hash_opt_t", (), "iu")))
        self._qbuf = np.ascontiguousarray(_entry(z, "qbuf", self._qbuf.shape, "f"), dtype=np.float32)
        self._qfill = int(state["qfill"])
        s = self._sched
        s._ids, s._codes, s._base = (np.asarray(z["sched_ids"], np.int64), np.asarray(z["sched_codes"], np.uint32),
                                     np.asarray(z["sched_base"], np.uint32))
        if not (s._ids.ndim == 1 and s._ids.shape == s._codes.shape == s._base.shape):
            raise _BadModelFile("drift fingerprints have mismatched shapes")
        s._drift_bits = int(state["drift_bits"])


def atomic_savez(path, arrays):
    """np.savez of a dict of arrays to path through a temporary file in the same folder,
    fsynced then renamed over path: a reader or a crash never sees a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".hashlab-", suffix=".npz.tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _BadModelFile(ValueError):
    """A model file that is not a complete model of this format (load adds the path)."""


class _Weights:
    """A parameter of an inference-only model: weights (float32, C-contiguous), no moments."""

    m = v = None

    def __init__(self, w):
        self.w = np.ascontiguousarray(w, dtype=np.float32)

    @property
    def nbytes(self):
        return self.w.nbytes


def _stored_weights(w, dtype, name):
    """w as an inference-only file stores it: as is (float32) or rounded to float16."""
    if dtype == "float32":
        return w
    with np.errstate(over="ignore"):
        w16 = w.astype(np.float16)
    if np.isinf(w16).any() and not np.isinf(w).any():
        raise ValueError(f"dtype: expected weights within float16's range (|w| <= 65504), got max |{name}| = "
                         f"{float(np.abs(w).max()):.4g}; save with dtype='float32'")
    return w16


def _stored_reranker(z, state, n_labels, trainable, fmt):
    """The FeatureReranker stored in the open archive z (None if it has none); format ``fmt``."""
    cfg = state.get("rerank")
    if cfg is None:
        return None
    rr = FeatureReranker.__new__(FeatureReranker)
    rr.n_labels, rr.bits, rr.n_candidates, rr.lr = n_labels, int(cfg["bits"]), int(cfg["n_candidates"]), float(cfg["lr"])
    rr.loss = cfg.get("loss", "softmax") if fmt >= 5 else "softmax"  # before 5: softmax only
    if rr.loss not in LOSSES:
        raise _BadModelFile(f"rerank: expected a loss in {LOSSES}, got {rr.loss!r}")
    shapes = {"V": (1 << rr.bits,), "U": (n_labels,), "ab": (2,)}
    parts = ("V", "U") + (("ab",) if fmt >= 5 else ())
    for part in parts + tuple("G" + p for p in parts) if trainable else parts:
        arr = _entry(z, f"rerank.{part}", shapes[part[1:] if part.startswith("G") else part], "f")
        setattr(rr, part, np.ascontiguousarray(arr, dtype=np.float64 if part.endswith("ab") else np.float32))
    if fmt < 5:
        rr.ab, rr.Gab = np.array(AB_INIT, np.float64), np.zeros(2, np.float64)
    if not trainable:
        rr.GV = rr.GU = rr.Gab = None
    return rr


def _entry(z, name, shape, kinds):
    """Array ``name`` of the open archive z with the given shape (None: any length) and dtype kind
    (a string of numpy kind codes), else _BadModelFile."""
    if name not in z.files:
        raise _BadModelFile(f"missing array {name!r}")
    a = z[name]
    if a.dtype.kind not in kinds:
        raise _BadModelFile(f"{name}: expected dtype kind {kinds!r}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = "(" + ", ".join("n" if s is None else str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"
        raise _BadModelFile(f"{name} has shape {a.shape}, expected {want}")
    return a
