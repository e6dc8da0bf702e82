import numpy as np
import pytest

import hashlab
from hashlab import _C

ALL_LEVELS = ("scalar", "avx2", "avx512")
LEVELS = [lv for lv in ALL_LEVELS if _C.simd_supported(lv)]  # the ones this CPU has
# for @pytest.mark.parametrize("level", SIMD_PARAMS): every level is a test id, the ones
# this CPU lacks skipped with the reason, never dropped from the run without a word
SIMD_PARAMS = [pytest.param(lv, marks=pytest.mark.skipif(lv not in LEVELS, reason=f"this CPU lacks {lv}"))
               for lv in ALL_LEVELS]
AWKWARD_DIMS = [1, 3, 7, 8, 17, 33, 127, 128, 1000]


def pytest_report_header(config):
    missing = [lv for lv in ALL_LEVELS if lv not in LEVELS]
    return (f"hashlab SIMD levels tested: {', '.join(LEVELS)}"
            + (f"; not on this CPU (skipped): {', '.join(missing)}" if missing else ""))


@pytest.fixture
def each_simd():
    """Yields a function that runs f() on every SIMD level this CPU has and returns the results."""
    before = _C.simd_level() if _C.simd_forced() else "auto"

    def run(f):
        out = {}
        for lv in LEVELS:
            _C.set_simd_level(lv)
            out[lv] = f()
        return out

    yield run
    _C.set_simd_level(before)


@pytest.fixture
def threads():
    """Yields hashlab.set_num_threads; the thread count in force before the test is restored after it."""
    before = hashlab.get_num_threads()
    yield hashlab.set_num_threads
    hashlab.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
