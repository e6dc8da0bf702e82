"""Type stub of hashlab._C, the pybind11 module built from src_cpp/ (bindings in src_cpp/bindings/).

The Python API in hashlab.* validates arguments and calls these; array arguments are
C-contiguous with the dtypes given here (``noconvert`` parameters, updated in place,
must be exactly that dtype). Shapes are in the comments; a wrong one raises ValueError.
"""
from typing import Literal, TypeAlias, overload

import numpy as np
from numpy.typing import NDArray

_F32: TypeAlias = NDArray[np.float32]
_I32: TypeAlias = NDArray[np.int32]
_I64: TypeAlias = NDArray[np.int64]
_U8: TypeAlias = NDArray[np.uint8]
_U16: TypeAlias = NDArray[np.uint16]
_U32: TypeAlias = NDArray[np.uint32]
_U64: TypeAlias = NDArray[np.uint64]

# ---- module (src_cpp/bindings/module.cpp) --------------------------------------------------

def simd_level() -> str:
    """SIMD level in use: 'avx512bf16', 'avx512', 'avx2' or 'scalar'."""
def simd_supported(level: str, /) -> bool:
    """Whether this CPU (and build) runs ``level`` ('avx512bf16', 'avx512', 'avx2', 'scalar'); ValueError for another name."""
def set_simd_level(level: str, /) -> None:
    """Forces a SIMD level on every kernel family (tests; 'avx512bf16': attention, the others avx512), 'auto' for the defaults; ValueError if unknown or unsupported."""
def simd_forced() -> bool:
    """Whether a level is forced (HASHLAB_SIMD or set_simd_level)."""
def simd_levels() -> dict[str, str]:
    """{kernel family: SIMD level it uses}."""
def set_num_threads(n: int, /) -> None: ...
def get_num_threads() -> int: ...

# ---- SimHash and Hamming (bindings/simhash.cpp) --------------------------------------------

def register_sgemm(fn: object) -> bool:
    """Registers a BLAS sgemm (a capsule, scipy.linalg.cython_blas's); whether it is usable."""
def simhash_dense_bits(X: _F32, W: _F32, nbits: int, method: Literal["auto", "kernel", "blas"] = "auto") -> _U64:
    """Sign bits of X (n, dim) @ W (dim, >= nbits): (n, ceil(nbits / 64)) uint64, the same for every method."""
def simhash_csr_bits(indptr: _I64, indices: _I32, data: _F32, W: _F32, nbits: int) -> _U64:
    """As simhash_dense_bits for CSR rows (indptr (n + 1,), indices / data (nnz,)), W (dim, >= nbits)."""
def hadamard_bits(X: _F32, signs: _F32, nbits: int) -> _U64:
    """Fast-Hadamard SimHash of X (n, dim); signs (2 + n_rot, D), D the power of two >= dim."""
def bits_to_keys(bits: _U64, k: int, l: int) -> _U32:
    """Packs k bits per table of bits (n, words) into keys (n, l) uint32."""
def hamming(a: _U64, b: _U64) -> _I32:
    """Pairwise Hamming distances of a (n, words) and b (m, words): (n, m) int32."""
def hamming_topm(q: _U64, b: _U64, m: int) -> tuple[_I32, _I32]:
    """The m rows of b (nb, words) closest to each row of q (nq, words): (ids, distances), each (nq, m) int32."""

# ---- WTA / DWTA and MinHash (bindings/wta.cpp) ---------------------------------------------

@overload
def wta_dense(X: _F32, dim: int, k: int, l: int, bin_size: int, n_perm: int, bin_coords: _I32,
              coord_slot: _I32, A: _U32, B: _U32, Binv: _U32, densified: bool,
              want_codes: Literal[False] = False, out: _U32 | None = None) -> _U32:
    """WTA (densified=False) or DWTA keys (n, l) uint32 of dense rows X (n, dim) float32.

    bin_coords (k * l, bin_size), coord_slot (n_perm, dim); A, B, Binv (k * l,) (DWTA probes);
    out: an (n, l) uint32 array written in place and returned.
    """
@overload
def wta_dense(X: _F32, dim: int, k: int, l: int, bin_size: int, n_perm: int, bin_coords: _I32,
              coord_slot: _I32, A: _U32, B: _U32, Binv: _U32, densified: bool,
              want_codes: Literal[True], out: _U32 | None = None) -> tuple[_U32, _I32]:
    """(keys (n, l) uint32, codes (n, k * l) int32)."""
@overload
def wta_csr(indptr: _I64, indices: _I32, data: _F32, dim: int, k: int, l: int, bin_size: int, n_perm: int,
            bin_coords: _I32, coord_slot: _I32, A: _U32, B: _U32, Binv: _U32, densified: bool,
            want_codes: Literal[False] = False, out: _U32 | None = None) -> _U32:
    """As wta_dense for CSR rows (indptr (n + 1,), indices / data (nnz,))."""
@overload
def wta_csr(indptr: _I64, indices: _I32, data: _F32, dim: int, k: int, l: int, bin_size: int, n_perm: int,
            bin_coords: _I32, coord_slot: _I32, A: _U32, B: _U32, Binv: _U32, densified: bool,
            want_codes: Literal[True], out: _U32 | None = None) -> tuple[_U32, _I32]: ...
def minhash_csr(indptr: _I64, indices: _I32, k: int, l: int, a: int, c: int, A: _U32, B: _U32, Binv: _U32,
                out: _U32 | None = None) -> tuple[_U32, _U32]:
    """Densified one-permutation MinHash of the column-id sets of CSR rows.

    a, c: the 64-bit hash's constants; A, B, Binv (k * l,) probes. Returns
    (signatures (n, k * l) uint32, keys (n, l) uint32; keys is ``out`` when given).
    """

# ---- LSH tables (bindings/tables.cpp) ------------------------------------------------------

class LSHTables:
    """L hash tables over uint32 keys (use hashlab.tables.LSHTables)."""

    def __init__(self, l: int, key_bits: int, range_bits: int, capacity: int,
                 policy: Literal["fifo", "reservoir"], seed: int) -> None: ...
    def insert(self, ids: _I32, keys: _U32) -> None:
        """ids (n,) int32, keys (n, l) uint32."""
    def remove(self, ids: _I32) -> int:
        """Removes ids (n,) int32; returns how many were present."""
    def clear(self) -> None: ...
    def query(self, keys: _U32, min_collisions: int, max_candidates: int) -> tuple[_I64, _I32, _I32]:
        """keys (nq, l) uint32 -> (indptr int64 (nq + 1,), ids int32, counts int32)."""
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    @property
    def l(self) -> int: ...
    @property
    def frozen(self) -> bool: ...
    def size(self) -> int: ...
    def nbytes(self) -> int: ...
    def stats(self) -> dict[str, _I64 | int]:
        """{'size_histogram': (capacity + 1,) int64, 'full_buckets', 'stored', 'dropped': int}."""

# ---- sparse output layer and Adam (bindings/sparse_layer.cpp) ------------------------------

def softmax_xent_grad(Z: _F32, label_indptr: _I64, label_ids: _I32) -> float:
    """Full softmax cross-entropy of logits Z (n, n_out) float32 (written in place), the target
    spread evenly over each row's labels (CSR: indptr (n + 1,) int64, ids int32, unique per row):
    Z becomes softmax(Z) - target. Returns the loss summed over rows."""
def sparse_output_train(H: _F32, cand_indptr: _I64, cand_ids: _I32, label_indptr: _I64, label_ids: _I32,
                        target_active: int, seed: int, W: _F32, mW: _F32, vW: _F32, b: _F32, mb: _F32,
                        vb: _F32, lr: float, beta1: float, beta2: float, eps: float, step: int,
                        dirty: _U8) -> tuple[float, int, int, _F32]:
    """One softmax step of the output layer on active sets, lazy Adam in place.

    H (n, d); candidates and labels as CSR (indptr (n + 1,), ids int32); W, mW, vW
    (n_out, d) and b, mb, vb (n_out,) float32 updated in place; dirty (n_out,) uint8 set
    to 1 on updated rows. Returns (loss summed over rows, active pairs, rows touched,
    dH (n, d) float32).
    """
def gather_scores(H: _F32, W: _F32, b: _F32 | None, indptr: _I64, ids: _I32) -> _F32:
    """H[i] . W[ids[j]] + b[ids[j]] for the CSR candidates of each row i of H (n, d): (nnz,) float32."""
def adam_rows(W: _F32, M: _F32, V: _F32, rows: _I64, G: _F32, lr: float, beta1: float, beta2: float,
              eps: float, step: int) -> None:
    """Adam on rows (m,) of W / M / V (r, d) or (r,) float32, in place, with gradients G (m, d)."""

# ---- LSH-sampled attention (bindings/attention.cpp) ----------------------------------------

class LSHAttentionIndex:
    """LSH-sampled KV index (use hashlab.attention.LSHKVIndex)."""

    def __init__(self, head_dim: int, n_kv_heads: int, k: int, l: int, min_collisions: int, sinks: int,
                 window: int, chunk: int, max_sampled: int, bf16: bool, seed: int, signs: _F32) -> None:
        """signs: (n_rot + 2, D) float32, D the power of two >= head_dim."""
    def append(self, keys: _F32 | _U16, values: _F32 | _U16) -> None:
        """keys, values (n_kv_heads, t, head_dim): float32, or uint16 bfloat16 bits when bf16."""
    def attend(self, queries: _F32, scale: float) -> tuple[_F32, _F32, _I64]:
        """queries (n_heads, head_dim) -> (out (n_heads, head_dim) float32, lse (n_heads,) float32,
        touched keys (n_heads,) int64)."""
    def __len__(self) -> int: ...
    @property
    def n_indexed(self) -> int: ...
    @property
    def n_segments(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def kv_nbytes(self) -> int: ...
    @property
    def build_seconds(self) -> tuple[float, float]: ...
    def set_min_collisions(self, min_collisions: int) -> None:
        """Collisions a key needs to be sampled from now on (0 <= min_collisions <= min(l, 255)); the keys stay indexed."""
    def key_mean(self) -> _F32:
        """(n_kv_heads, head_dim) float32: the mean key each head's keys are centred by."""
    def indexed_codes(self, head: int) -> _U32:
        """(n_indexed, l) uint32: the codes of ``head``'s indexed keys."""

def dense_attention(queries: _F32, keys: _F32 | _U16, values: _F32 | _U16,
                    scale: float) -> tuple[_F32, _F32]:
    """queries (n_heads, d); keys, values (n_kv_heads, n, d) float32 or uint16 (bfloat16 bits).
    Returns (out (n_heads, d) float32, lse (n_heads,) float32)."""
def topk_attention(queries: _F32, keys: _F32 | _U16, values: _F32 | _U16, budget: _I64,
                   scale: float) -> tuple[_F32, _F32]:
    """As dense_attention over the budget (n_heads,) int64 largest-score keys of each head."""
def attention_sampling_prob(cos: _F32, k: int, l: int, min_collisions: int) -> tuple[_F32, _F32]:
    """(p, u) of the cosines cos (n,) float32: p = (1 - acos(c) / pi)^k, u = P[Binomial(l, p) >= min_collisions]."""
def log_binom_sf(m: int, l: int, p: float) -> float:
    """log P[Binomial(l, p) >= m] in double precision."""
