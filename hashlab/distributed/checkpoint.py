"""The checkpoint format of ShardedSparseMLP: a directory of per-rank shard files and a manifest.

``manifest.json`` (format FORMAT_VERSION) holds the model arguments, the training state,
the label range and SHA-256 of every shard file (``shard-RRRRR-of-WWWWW-stepSSSSSSSSS.npz``:
the rank's output rows, Adam moments, LSH keys) and of the replicated layers
(``dense-stepSSSSSSSSS.npz``). A checkpoint written by W ranks loads on any number of ranks.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

import numpy as np

from ..slide import _Adam, atomic_savez
from .sharding import label_range

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def write_checkpoint(model, path):
    """ShardedSparseMLP.save: writes ``model`` to the directory ``path`` (collective)."""
    comm = model._comm
    path = os.fspath(path)
    if comm.rank == 0:
        os.makedirs(path, exist_ok=True)
    comm.barrier("save: create directory")
    tag = f"step{model.step:09d}"
    shard = {"out_w.w": model.out_w.w, "out_w.m": model.out_w.m, "out_w.v": model.out_w.v,
             "out_b.w": model.out_b.w, "out_b.m": model.out_b.m, "out_b.v": model.out_b.v,
             "keys": model._keys, "dirty": model._dirty}
    name = f"shard-{comm.rank:05d}-of-{comm.world:05d}-{tag}.npz"
    digest = _write_npz(os.path.join(path, name), shard)
    if comm.rank == 0:
        dense = {}
        for i, p in enumerate(model.layers):
            dense.update({f"layer{i}.w": p.w, f"layer{i}.m": p.m, f"layer{i}.v": p.v})
        for i, p in enumerate(model.biases):
            dense.update({f"bias{i}.w": p.w, f"bias{i}.m": p.m, f"bias{i}.v": p.v})
        dense_name = f"dense-{tag}.npz"
        dense_digest = _write_npz(os.path.join(path, dense_name), dense)
    digests = comm.all_gather(np.frombuffer(bytes.fromhex(digest), np.uint8), "save: checksums")
    if comm.rank == 0:
        manifest = dict(format=FORMAT_VERSION, config=model._config(), world_size=comm.world, step=model.step,
                        epochs=model.epochs, rebuilds=model.rebuilds, next_rebuild=model._next_rebuild,
                        period=model._period, history=model.history,
                        dense={"file": dense_name, "sha256": dense_digest},
                        shards=[{"file": f"shard-{q:05d}-of-{comm.world:05d}-{tag}.npz",
                                 "labels": list(label_range(model.output_dim, q, comm.world)),
                                 "sha256": digests[q].tobytes().hex()} for q in range(comm.world)])
        tmp = os.path.join(path, MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(path, MANIFEST))
        keep = {manifest["dense"]["file"]} | {s["file"] for s in manifest["shards"]}
        for old in glob.glob(os.path.join(path, "shard-*.npz")) + glob.glob(os.path.join(path, "dense-*.npz")):
            if os.path.basename(old) not in keep:
                os.unlink(old)
    comm.barrier("save: manifest written")


def read_checkpoint(model, path):
    """The local part of ShardedSparseMLP.load: configures the bare ``model`` (its ``_comm``
    set) from the manifest in ``path`` and reads the shard files overlapping its label range."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise FileNotFoundError(f"{path}: expected a checkpoint directory with {MANIFEST}, found none")
    try:
        with open(mpath) as f:
            man = json.load(f)
        if man.get("format") != FORMAT_VERSION:
            raise ValueError(f"expected format {FORMAT_VERSION}, got {man.get('format')}")
        cfg, shards = man["config"], man["shards"]
        model._configure(**cfg)
        model.step, model.epochs, model.rebuilds = int(man["step"]), int(man["epochs"]), int(man["rebuilds"])
        model._next_rebuild, model._period = int(man["next_rebuild"]), float(man["period"])
        model.history = list(man["history"])
        ranges = np.array([s["labels"] for s in shards], np.int64).reshape(-1, 2)
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{mpath}: not a valid hashlab.distributed manifest: {e}") from e
    if len(shards) != man["world_size"] or ranges[0, 0] != 0 or ranges[-1, 1] != model.output_dim \
            or (ranges[1:, 0] != ranges[:-1, 1]).any() or (ranges[:, 1] <= ranges[:, 0]).any():
        raise ValueError(f"{mpath}: expected {man['world_size']} shards tiling [0, {model.output_dim}), "
                         f"got label ranges {ranges.tolist()}")
    d = model.hidden[-1]
    with _open_npz(path, man["dense"]) as z:
        model.layers, model.biases = [], []
        sizes = (model.input_dim,) + model.hidden
        for i in range(len(model.hidden)):
            model.layers.append(_adam_from(z, f"layer{i}", (sizes[i], sizes[i + 1]), path))
            model.biases.append(_adam_from(z, f"bias{i}", (model.hidden[i],), path))
    parts = {k: [] for k in ("out_w.w", "out_w.m", "out_w.v", "out_b.w", "out_b.m", "out_b.v", "keys", "dirty")}
    for s, (lo, hi) in zip(shards, ranges):
        a, b = max(lo, model.label_lo), min(hi, model.label_hi)
        if a >= b:
            continue
        with _open_npz(path, s) as z:
            for key in parts:
                arr = z[key]
                want = (hi - lo,) + ((d,) if key.startswith("out_w") else (model.l,) if key == "keys" else ())
                if arr.shape != want:
                    raise ValueError(f"{os.path.join(path, s['file'])}: {key} has shape {arr.shape}, "
                                     f"expected {want} from the manifest")
                parts[key].append(arr[a - lo:b - lo])
    cat = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}
    model.out_w, model.out_b = _Adam.__new__(_Adam), _Adam.__new__(_Adam)
    for part in "wmv":
        setattr(model.out_w, part, cat[f"out_w.{part}"].astype(np.float32, copy=False))
        setattr(model.out_b, part, cat[f"out_b.{part}"].astype(np.float32, copy=False))
    model._build_tables(cat["keys"].astype(np.uint32, copy=False))
    model._dirty = cat["dirty"].astype(np.uint8, copy=False)


def _write_npz(path, arrays):
    """Atomic np.savez (temporary file + rename); returns the file's SHA-256 (hex)."""
    atomic_savez(path, arrays)
    return _sha256(path)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class _open_npz:
    """np.load of a manifest entry after checking its SHA-256; ValueError if corrupt."""

    def __init__(self, folder, entry):
        self.path = os.path.join(folder, os.path.basename(str(entry["file"])))
        self.want = str(entry["sha256"])

    def __enter__(self):
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"{self.path}: listed in the manifest but missing")
        if _sha256(self.path) != self.want:
            raise ValueError(f"{self.path}: SHA-256 differs from the manifest's (corrupt, or from another save)")
        try:
            self.z = np.load(self.path, allow_pickle=False)
        except Exception as e:
            raise ValueError(f"{self.path}: not a readable .npz shard: {e}") from e
        return self.z

    def __exit__(self, *exc):
        self.z.close()


def _adam_from(z, name, shape, path):
    p = _Adam.__new__(_Adam)
    for part in "wmv":
        key = f"{name}.{part}"
        if key not in z.files or z[key].shape != shape:
            raise ValueError(f"{path}: {key} missing or not of shape {shape}")
        setattr(p, part, np.ascontiguousarray(z[key], dtype=np.float32))
    return p
