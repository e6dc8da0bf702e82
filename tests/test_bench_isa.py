"""`hashlab bench isa`: every level this CPU has, each in its own process, one row per kernel family."""
import json

import pytest

from hashlab import _C
from hashlab.bench import isa


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("isa")
    return isa.run(quick=True, threads=1, out=out, tiny=True), out


def test_every_supported_level_times_every_family(result):
    r, out = result
    levels = [lv for lv in isa.LEVELS if _C.simd_supported(lv)]
    assert r["levels"] == levels and "scalar" in levels
    data = json.loads((out / "isa.json").read_text())
    assert set(data["best"]) == {row[0] for row in data["table"]["rows"]}
    for family, times in data["best"].items():
        want = set(levels) if family.startswith("attention") else set(levels) - {isa.BF16_LEVEL}
        assert set(times) == want and all(t > 0 for t in times.values()), family
    # each worker ran at the level it was given (HASHLAB_SIMD in its own process)
    assert all(len(runs) == 1 for runs in data["runs"].values())
    # attention also interleaved in one process, at every level it has
    assert set(data["interleaved"]) == {f for f in data["best"] if f.startswith("attention") and "interleaved" not in f}
    assert all(set(t) == set(levels) for t in data["interleaved"].values())
    md = (out / "isa.md").read_text()
    assert "| Kernel family |" in md and "attention (dense_attention)" in md and "bf16 keys" in md


def test_the_default_column_is_the_build_default(result):
    r, _ = result
    if _C.simd_forced():
        pytest.skip("HASHLAB_SIMD forces a level in this process: no defaults to compare")
    defaults = dict(_C.simd_levels())
    for row in r["table"]["rows"]:
        family = row[0].split(" ")[0]
        assert f"default: {defaults[family]}" in row[2]
