"""hashlab: hashing-based sparse computation on CPUs.

Hash families (SimHash, WTAHash, DWTAHash, MinHash), LSH tables, SLIDE-style
sparse training (SparseMLP), data sets and metrics, and the numba-callable kernels
in hashlab.jit. torch is optional: hashlab.torch imports it.
"""
from . import _C
from .hashing import hamming
from .learned import DriftScheduler, LearnedSimHash
from .minhash import MinHash
from .params import LSHParams, default_params
from .simhash import SimHash
from .slide import SparseMLP
from .tables import LSHTables
from .wta import DWTAHash, WTAHash
from . import datasets, metrics

__version__ = "0.1.0"
__all__ = ["SimHash", "WTAHash", "DWTAHash", "MinHash", "LearnedSimHash", "DriftScheduler", "LSHTables", "LSHParams", "default_params", "hamming",
           "SparseMLP", "datasets", "metrics", "simd_level", "set_num_threads", "get_num_threads"]


def simd_level() -> str:
    """The instruction set the kernels use: 'avx512', 'avx2' or 'scalar'.

    Chosen at import from the CPU (cpuid/xgetbv); HASHLAB_SIMD=avx512|avx2|scalar
    forces a level, and an unavailable one is an error.
    """
    return _C.simd_level()


def set_num_threads(n: int) -> None:
    """Threads the kernels use (default: OMP_NUM_THREADS, else the core count)."""
    from ._validate import check_int
    _C.set_num_threads(check_int(n, "n", 1, 1024))


def get_num_threads() -> int:
    """Threads the kernels use."""
    return _C.get_num_threads()


simd_level()  # resolve HASHLAB_SIMD now so that a bad value fails at import, clearly
