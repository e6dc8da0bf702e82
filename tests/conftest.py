import numpy as np
import pytest

from hashlab import _C

LEVELS = [lv for lv in ("scalar", "avx2", "avx512") if _C.simd_supported(lv)]
AWKWARD_DIMS = [1, 3, 7, 8, 17, 33, 127, 128, 1000]


@pytest.fixture
def each_simd():
    """Yields a function that runs f() on every SIMD level this CPU has and returns the results."""
    before = _C.simd_level()

    def run(f):
        out = {}
        for lv in LEVELS:
            _C.set_simd_level(lv)
            out[lv] = f()
        return out

    yield run
    _C.set_simd_level(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
