"""hashlab: hashing-based sparse computation on CPUs.

Everything public is importable from here:

- hash families and tables: SimHash, WTAHash, DWTAHash, MinHash, LearnedSimHash (with
  DriftScheduler), LSHTables, LSHParams / default_params, hamming;
- applications: SparseMLP (SLIDE training; FeatureReranker and HiddenNeighbours, its last stages), OutputRetriever (top-k of a linear layer),
  LSHKVIndex / dense_attention / topk_attention (LSH-sampled attention), and the
  label-sharded ShardedSparseMLP / ShardedRetriever over torch.distributed;
- XMC data and metrics: load_xmc, save_xmc, make_xmc, make_preset, labels_to_csr,
  precision_at_k, ndcg_at_k, psp_at_k, ...;
- simd_level, simd_levels, set_num_threads, get_num_threads.

numba-callable kernels are in hashlab.jit. torch is optional: hashlab.torch imports it
(torch modules and the transformers attention plug-in); hashlab.distributed imports it
only when a process group is used.
"""
import importlib
import importlib.util

from . import _C
from .attention import LSHKVIndex, dense_attention, fit_key_transform, sampling_probability, table_bits, topk_attention
from .datasets import labels_to_csr, load_xmc, make_preset, make_xmc, save_xmc
from .drift import DriftScheduler, popcount32
from .hashing import hamming
from .learned import LearnedSimHash
from .metrics import *  # noqa: F403  (every metric: hashlab.metrics.__all__)
from .minhash import MinHash
from .neighbours import HiddenNeighbours
from .params import LSHParams, default_params, retrieved_fraction
from .rerank import FeatureReranker
from .retrieval import OutputRetriever, dense_topk
from .simhash import SimHash
from .slide import SparseMLP
from .tables import MAX_BUCKET_CAPACITY, MAX_RANGE_BITS, LSHTables
from .wta import DWTAHash, WTAHash
from . import datasets, metrics

__version__ = "0.1.0"

# imported on first access (module-level __getattr__): hashlab.distributed (the torch.distributed
# layer) and the other data sets' generators; a module missing from this tree stays out of __all__
_LAZY = {
    "ShardedSparseMLP": "distributed", "ShardedRetriever": "distributed", "label_range": "distributed",
    "shard_rows": "distributed", "load_xmc_shard": "distributed",
    "make_teacher_xmc": "teacher_data",
    "make_debian_xmc": "debian_text", "read_dumpavail": "debian_text",
}

__all__ = [
    # hashing and tables
    "SimHash", "WTAHash", "DWTAHash", "MinHash", "LearnedSimHash", "DriftScheduler", "LSHTables", "LSHParams",
    "default_params", "retrieved_fraction", "hamming", "popcount32", "MAX_RANGE_BITS", "MAX_BUCKET_CAPACITY",
    # applications
    "SparseMLP", "FeatureReranker", "HiddenNeighbours", "OutputRetriever", "dense_topk", "LSHKVIndex", "dense_attention", "topk_attention",
    "sampling_probability", "table_bits", "fit_key_transform",
    # data
    "load_xmc", "save_xmc", "make_xmc", "make_preset", "labels_to_csr",
    # runtime
    "simd_level", "simd_levels", "set_num_threads", "get_num_threads",
    # modules
    "datasets", "metrics",
] + metrics.__all__
__all__ += [name for name, mod in _LAZY.items() if importlib.util.find_spec(f"{__name__}.{mod}") is not None]


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{mod}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def simd_level() -> str:
    """The highest instruction set the kernels may use: 'avx512bf16', 'avx512', 'avx2' or 'scalar'.

    Chosen at import from the CPU (cpuid/xgetbv); HASHLAB_SIMD=avx512bf16|avx512|avx2|scalar
    forces a level for every kernel family, and an unavailable one is an error.
    avx512bf16 is AVX-512 with the bfloat16 dot product (vdpbf16ps), which only the
    attention kernels use (for bfloat16 keys); the other families run their avx512 kernels
    at that level. Each family's own level is in simd_levels().
    """
    return _C.simd_level()


def simd_levels() -> dict:
    """The instruction set of each kernel family: {family: 'avx512bf16' | 'avx512' | 'avx2' | 'scalar'}.

    Families: simhash_dense (gaussian/sparse SimHash of dense rows), simhash_csr,
    hadamard, hamming, vector_ops (SparseMLP's layers), attention. Each defaults to the
    fastest level measured for it, capped by the CPU (the figures are in
    src_cpp/dispatch.cpp; `hashlab bench isa` measures them); HASHLAB_SIMD forces all.
    """
    return dict(_C.simd_levels())


def set_num_threads(n: int) -> None:
    """Threads the kernels use (default: OMP_NUM_THREADS, else the core count)."""
    from ._validate import check_int
    _C.set_num_threads(check_int(n, "n", 1, 1024))


def get_num_threads() -> int:
    """Threads the kernels use."""
    return _C.get_num_threads()


simd_level()  # resolve HASHLAB_SIMD now so that a bad value fails at import, clearly
