"""Run-time SIMD dispatch, the HASHLAB_SIMD override, and thread settings."""
import os
import subprocess
import sys

import pytest

import hashlab
from hashlab import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_env(**env):
    code = "import hashlab; print(hashlab.simd_level())"
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, cwd=ROOT)


ORDER = ["scalar", "avx2", "avx512", "avx512bf16"]  # avx512bf16: attention's bf16 dot products


def test_default_level_is_the_best_supported():
    best = next(lv for lv in ORDER[::-1] if _C.simd_supported(lv))
    r = run_with_env(HASHLAB_SIMD="")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == best


@pytest.mark.parametrize("level", ORDER)
def test_env_forces_a_level_or_fails_clearly(level):
    r = run_with_env(HASHLAB_SIMD=level)
    if _C.simd_supported(level):
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == level
    else:
        assert r.returncode != 0
        assert "ValueError" in r.stderr and "not supported" in r.stderr


def test_unknown_level_is_a_value_error_naming_the_choices():
    r = run_with_env(HASHLAB_SIMD="sse9")
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "avx512bf16, avx512, avx2, scalar" in r.stderr
    with pytest.raises(ValueError):
        _C.set_simd_level("sse9")


def test_num_threads_round_trip_and_validation():
    before = hashlab.get_num_threads()
    try:
        hashlab.set_num_threads(3)
        assert hashlab.get_num_threads() == 3
        with pytest.raises(ValueError):
            hashlab.set_num_threads(0)
        with pytest.raises(TypeError):
            hashlab.set_num_threads(2.5)
    finally:
        hashlab.set_num_threads(before)


def test_default_threads_follow_omp_num_threads():
    code = "import hashlab; print(hashlab.get_num_threads())"
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, OMP_NUM_THREADS="3"),
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.strip() == "3", r.stderr


def test_kernel_errors_in_worker_threads_propagate_as_value_error():
    import numpy as np
    # out-of-range column index reaching the C++ core directly: checked there too
    indptr = np.array([0, 1], dtype=np.int64)
    indices = np.array([5], dtype=np.int32)
    data = np.ones(1, dtype=np.float32)
    W = np.zeros((3, 64), dtype=np.float32)
    with pytest.raises(ValueError):
        _C.simhash_csr_bits(indptr, indices, data, W, 10)


def test_each_family_has_a_level_and_hashlab_simd_forces_all():
    code = "import hashlab, json; print(json.dumps(hashlab.simd_levels()))"
    import json
    best = next(lv for lv in ORDER[::-1] if _C.simd_supported(lv))
    order = ORDER
    r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, HASHLAB_SIMD=""), capture_output=True,
                       text=True, cwd=ROOT)
    levels = json.loads(r.stdout)
    assert set(levels) == {"simhash_dense", "simhash_csr", "hadamard", "hamming", "vector_ops", "attention"}
    assert all(order.index(lv) <= order.index(best) for lv in levels.values())
    if order.index(best) >= order.index("avx512"):  # measured slower at AVX-512 than at AVX2 (src_cpp/dispatch.cpp)
        assert levels["simhash_dense"] == levels["attention"] == "avx2"
        assert levels["hadamard"] == "avx512"
    for lv in order[:order.index(best) + 1]:
        r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, HASHLAB_SIMD=lv), capture_output=True,
                           text=True, cwd=ROOT)
        forced = json.loads(r.stdout)
        if lv == "avx512bf16":  # attention's level only: the other families run their avx512 kernels
            assert forced.pop("attention") == lv and set(forced.values()) == {"avx512"}, r.stderr
        else:
            assert set(forced.values()) == {lv}, r.stderr


def test_a_level_the_cpu_lacks_is_skipped_with_a_reason():
    """conftest's level parameters: every level is a test id; one this CPU lacks is skipped
    with the reason (pytest -rs lists it), never dropped."""
    from conftest import ATTENTION_PARAMS, SIMD_PARAMS
    assert [p.values[0] for p in SIMD_PARAMS] == ORDER[:3]
    assert [p.values[0] for p in ATTENTION_PARAMS] == ORDER
    for p in ATTENTION_PARAMS:
        (mark,) = p.marks
        assert mark.args[0] == (not _C.simd_supported(p.values[0])) and "lacks" in mark.kwargs["reason"]


def test_auto_returns_to_the_defaults():
    before = _C.simd_level() if _C.simd_forced() else "auto"
    try:
        _C.set_simd_level("scalar")
        assert _C.simd_forced() and set(hashlab.simd_levels().values()) == {"scalar"}
        _C.set_simd_level("auto")
        assert not _C.simd_forced()
    finally:
        _C.set_simd_level(before)
