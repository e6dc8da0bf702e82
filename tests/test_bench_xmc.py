"""The XMC benchmark suite (hashlab.bench.xmc): one tiny run through the worker processes, and its parts."""
import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest
import scipy.sparse as sp

from hashlab.bench import xmc

SYSTEMS = [name for name, _, _ in xmc.PEERS] + [xmc.HASHLAB]
KIND = {name: kind for name, kind, _ in xmc.PEERS}
KIND[xmc.HASHLAB] = "hashlab"


def _installed(kind):
    """None if the system can run here, else why not."""
    if kind == "pecos":
        py, why = xmc.find_pecos_python()
        if py is None:
            return why
        ok = subprocess.run([py, "-c", "import pecos.xmc.xlinear"], capture_output=True).returncode == 0
        return None if ok else f"{py} cannot import pecos"
    if kind in ("omikuji", "napkinxc") and importlib.util.find_spec(kind) is None:
        return f"{kind} is not installed (pip install -e '.[peers]')"
    return None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-xmc")
    res = xmc.run(quick=True, threads=2, out=out, tiny=True)
    return res, out


def test_tiny_run_writes_its_files(tiny_run):
    res, out = tiny_run
    assert (out / "xmc.json").is_file() and (out / "xmc.md").is_file()
    assert (out / "xmc_teacher_p1_vs_time.png").is_file()
    on_disk = json.loads((out / "xmc.json").read_text())
    assert list(on_disk["sets"]) == ["teacher"]
    assert not res["errors"], res["errors"]


@pytest.mark.parametrize("system", SYSTEMS)
def test_every_field_for_every_system(tiny_run, system):
    why = _installed(KIND[system])
    res, out = tiny_run
    s = json.loads((out / "xmc.json").read_text())["sets"]["teacher"]
    r = next(x for x in s["peers"] + [s["hashlab"]] if x["system"] == system)
    if why is not None:
        assert r["status"].startswith("not available"), r["status"]
        pytest.skip(why)
    assert r["status"] == "ok", (r["status"], r.get("log_tail"))
    for f in xmc.SYSTEM_FIELDS:
        assert r.get(f) is not None, f
    for m in ("P@1", "P@3", "P@5", "nDCG@5", "PSP@5", "val_P@1"):
        assert 0.0 <= r[m] <= 1.0
    assert r["train_s"] > 0 and r["predict_ms_b5000"] > 0 and r["predict_ms_b1"] > 0
    assert r["peak_rss"] >= r["rss_after_data"] > 0 and r["model_bytes"] > 0
    assert r["threads"] == 2
    if system == xmc.HASHLAB:
        assert r["export_bytes"] > 0 and r["history"] and all(h["P1"] is not None for h in r["history"])
        assert r["lsh"]["P@1"] >= 0
    assert f"| {system} |" in res["markdown"]


def test_budget_and_target_follow_the_peers(tiny_run):
    res, _ = tiny_run
    s = res["sets"]["teacher"]
    ok = [p for p in s["peers"] if p["status"] == "ok"]
    if not ok:
        assert s["budget"] == xmc.CONFIGS["tiny"]["fallback_budget"] and s["target"] is None
        return
    best = max(ok, key=lambda p: (p["P@1"], p["P@5"]))
    assert s["best_peer"] == best["system"]
    assert s["budget"] == pytest.approx(2.0 * best["train_s"])
    assert s["hashlab"]["budget"] == pytest.approx(s["budget"])
    tg = s["target"]
    hl = s["hashlab"]
    for m in ("P@1", "P@5"):
        assert tg[m]["best_peer"] == max(p[m] for p in ok)
        assert tg[m]["shortfall"] == pytest.approx(max(0.0, tg[m]["best_peer"] - hl[m]))
    assert tg["met"] == (hl["P@1"] >= tg["P@1"]["best_peer"] and hl["P@5"] >= tg["P@5"]["best_peer"])
    assert ("Target (issue 15 item 2" in res["markdown"]) and ("met" in res["markdown"])


def test_score_against_hand_counts(tmp_path):
    Ytr = sp.csr_matrix(np.array([[1, 0, 0, 1], [1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0]], np.float32))
    Yte = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 0, 1, 0]], np.float32))
    Yva = sp.csr_matrix(np.array([[0, 1, 0, 0]], np.float32))
    base = str(tmp_path / "r")
    np.save(base + ".test.npy", np.array([[3, 1, 0, -1, -1], [0, 1, 3, 2, -1]]))
    np.save(base + ".val.npy", np.array([[0, 1, 2, 3, -1]]))
    res = dict(_result=base, predict_s_per_row=0.002, predict_s_batch1=0.004)
    from hashlab.metrics import propensities
    xmc.score(res, (Ytr, Yte, Yva), propensities(Ytr))
    # row 0: hits at ranks 1 and 3; row 1: a hit at rank 4
    assert res["P@1"] == pytest.approx(0.5)
    assert res["P@3"] == pytest.approx((2 / 3 + 0) / 2)
    assert res["P@5"] == pytest.approx((2 / 5 + 1 / 5) / 2)
    idcg2 = 1 + 1 / np.log2(3)
    assert res["nDCG@5"] == pytest.approx(((1 + 1 / np.log2(4)) / idcg2 + (1 / np.log2(5)) / 1) / 2)
    assert res["val_P@1"] == 0.0
    assert res["predict_ms_b5000"] == pytest.approx(2.0) and res["predict_ms_b1"] == pytest.approx(4.0)
    assert "_result" not in res


def test_best_peer_and_target_logic():
    peers = [dict(system="a", status="ok", **{"P@1": 0.8, "P@5": 0.30}),
             dict(system="b", status="ok", **{"P@1": 0.8, "P@5": 0.35}),
             dict(system="c", status="not available: x")]
    assert xmc.best_peer(peers)["system"] == "b"
    assert xmc.best_peer(peers[2:]) is None
    tg = xmc.target({"status": "ok", "P@1": 0.82, "P@5": 0.33}, peers)
    assert not tg["met"] and tg["P@5"]["shortfall"] == pytest.approx(0.02) and tg["P@1"]["shortfall"] == 0.0
    assert xmc.target({"status": "ok", "P@1": 0.8, "P@5": 0.35}, peers)["met"]
    assert xmc.target({"status": "ERROR: x"}, peers) is None


def test_pecos_python_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("HASHLAB_PECOS_PYTHON", raising=False)
    py, why = xmc.find_pecos_python(str(tmp_path / "nope"))
    assert py is None and "HASHLAB_PECOS_PYTHON" in why and "nope" in why
    exe = tmp_path / "python"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("HASHLAB_PECOS_PYTHON", str(exe))
    assert xmc.find_pecos_python() == (str(exe), None)
    assert xmc.find_pecos_python(str(tmp_path / "nope"))[0] is None   # the explicit path wins


def test_spawn_reports_a_broken_worker(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    r = xmc.spawn("x", "omikuji", {}, str(data), 1, str(tmp_path / "no-python"))
    assert r["status"].startswith("ERROR: cannot run")
    # a real interpreter, no data: the worker reports the error itself, its output in the log
    r = xmc.spawn("x", "napkinxc", {}, str(data), 1, "python3")
    assert r["status"].startswith("ERROR") and os.path.isfile(r["log"])


def test_unknown_set_name(tmp_path):
    with pytest.raises(ValueError, match="sets"):
        xmc.run(quick=True, threads=1, out=tmp_path, tiny=True, sets=["nope"])
