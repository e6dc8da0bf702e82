"""numba twins of the hash kernels, and a ctypes view of the C ABI.

Twins. Each ``@njit`` function below reproduces a C++ kernel bit for bit from the
hasher's plain parameter arrays, so it can run inside your own numba code::

    h = hashlab.wta.DWTAHash(dim, k=6, l=50)
    keys = hashlab.jit.dwta_keys_csr(S.indptr, S.indices, S.data, h.k, h.l, h.bin_size,
                                     h.coord_slot, h.A, h.B, h.Binv)

    WTA / DWTA (hashlab.wta):   wta_codes_dense,  wta_keys_dense   (X, k, l, bin_size, bin_coords)
                                wta_codes_csr,    wta_keys_csr     (indptr, indices, data, dim, k, l, bin_size, bin_coords)
                                dwta_codes_dense, dwta_keys_dense  (X, k, l, bin_size, bin_coords, A, B, Binv)
                                dwta_codes_csr,   dwta_keys_csr    (indptr, indices, data, k, l, bin_size, coord_slot, A, B, Binv)
                                codes_to_keys(codes, k, l, bin_size)
    MinHash (hashlab.minhash):  minhash_signatures_csr, minhash_keys_csr (indptr, indices, k, l, a, c, A, B, Binv)
                                minhash_signatures_to_keys(signatures, k, l)
    SimHash (hashlab.simhash):  simhash_bits_dense(X, W, nbits), simhash_bits_csr(indptr, indices, data, W, nbits),
                                bits_to_keys(bits, k, l)

X is C-contiguous float32 (n, dim); CSR arrays are any integer indptr/indices and
float32 data (use a canonical CSR: duplicate column ids are summed by WTA, taken
as separate entries by DWTA, as in the C++ kernels). Bad sizes raise ValueError.

C ABI. ``lib`` is the compiled extension opened with ctypes, and the module
attributes ``hashlab_wta_dense``, ``hashlab_wta_csr``, ``hashlab_minhash_csr``,
``hashlab_simhash_dense_bits``, ``hashlab_simhash_csr_bits``, ``hashlab_bits_to_keys``
are its functions with typed argtypes (see src_cpp/capi.cpp). numba calls them in
nopython mode; pass arrays as ``arr.ctypes`` (the dtype must match the pointer type)::

    from hashlab.jit import hashlab_minhash_csr as c_minhash

    @numba.njit
    def sketch(indptr, indices, k, l, a, c, A, B, Binv, sig, keys):
        return c_minhash(indptr.ctypes, indices.ctypes, indptr.size - 1, indices.size, k, l,
                         a, c, A.ctypes, B.ctypes, Binv.ctypes, sig.ctypes, keys.ctypes)

Optional outputs may be null: pass ``null_i32()`` / ``null_u32()``. They return 0 on
success, 1 on a bad argument, 2 on any other failure; ``last_error()`` gives the message
(from Python). They run on hashlab's thread pool. The C functions cannot see array
sizes: parameter arrays must have the documented shapes (as the hashers make them).
"""
from __future__ import annotations

import ctypes

import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from . import _C

# ---------------------------------------------------------------------------
# shared pieces

_M32 = np.uint64(0xFFFFFFFF)


@njit(cache=True)
def _fmix32(h):
    """MurmurHash3's 32-bit finaliser on a uint64 holding a 32-bit value."""
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    h ^= h >> np.uint64(16)
    return h


@njit(cache=True)
def _densify(vals, full, ne, n_ne, nb, A, B, Binv, if_none):
    """Empty bin b (full[b] == 0) takes vals[j] of the first non-empty bin j on its walk
    (A[b] + t*B[b]) mod nb, t = 1..nb; no non-empty bin -> if_none everywhere."""
    if n_ne == nb:
        return
    if n_ne == 0:
        for b in range(nb):
            vals[b] = if_none
        return
    if n_ne == 1:
        v = vals[ne[0]]
        for b in range(nb):
            if full[b] == 0:
                vals[b] = v
        return
    if 2 * n_ne * n_ne < nb:
        # closed form: the walk of b reaches j at step ((j - A[b]) mod nb) * Binv[b] mod nb (0 -> nb)
        for b in range(nb):
            if full[b] != 0:
                continue
            a = np.int64(A[b])
            inv = np.int64(Binv[b])
            best = nb + 1
            src = ne[0]
            for i in range(n_ne):
                j = np.int64(ne[i])
                d = j - a
                if d < 0:
                    d += nb
                s = (d * inv) % nb
                if s == 0:
                    s = nb
                if s < best:
                    best = s
                    src = j
            vals[b] = vals[src]
        return
    for b in range(nb):
        if full[b] != 0:
            continue
        step = np.int64(B[b])
        pos = np.int64(A[b])
        for t in range(nb):
            pos += step
            if pos >= nb:
                pos -= nb
            if full[pos] != 0:
                vals[b] = vals[pos]
                break


@njit(cache=True)
def _check_probe(A, B, Binv, nb):
    if A.shape[0] != nb or B.shape[0] != nb or Binv.shape[0] != nb:
        raise ValueError("A, B, Binv: expected k*l entries each")
    one = 0 if nb == 1 else 1
    for b in range(nb):
        if np.int64(A[b]) >= nb or np.int64(B[b]) >= nb or np.int64(Binv[b]) >= nb:
            raise ValueError("densification: expected A, B, Binv entries in [0, k*l)")
        if (np.int64(B[b]) * np.int64(Binv[b])) % nb != one:
            raise ValueError("densification: expected Binv[b] to be the inverse of B[b] mod k*l")


@njit(cache=True)
def _check_geometry(k, l, bin_size, nb_have, m_have):
    if k < 1 or l < 1 or k * l > 65535:
        raise ValueError("k, l: expected k >= 1, l >= 1 and k*l <= 65535")
    if bin_size < 2 or (bin_size & (bin_size - 1)) != 0:
        raise ValueError("bin_size: expected a power of two >= 2")
    cb = 0
    while (1 << cb) < bin_size:
        cb += 1
    if k * cb > 32:
        raise ValueError("k: expected k*log2(bin_size) <= 32")
    if nb_have != k * l or (m_have >= 0 and m_have != bin_size):
        raise ValueError("bin_coords / coord_slot: shape does not match k*l and bin_size")
    return cb


@njit(cache=True)
def _check_csr(indptr, nnz, data_size):
    n = indptr.shape[0] - 1
    if n < 0:
        raise ValueError("indptr: expected at least 1 entry (n + 1)")
    if data_size >= 0 and data_size != nnz:
        raise ValueError("data: expected as many entries as indices")
    if indptr[0] < 0:
        raise ValueError("indptr: expected indptr[0] >= 0")
    for r in range(n):
        if indptr[r] > indptr[r + 1]:
            raise ValueError("indptr: expected non-decreasing offsets")
    if indptr[n] > nnz:
        raise ValueError("indptr: expected indptr[-1] <= len(indices)")
    return n


@njit(cache=True)
def codes_to_keys(codes, k, l, bin_size):
    """keys[:, t] = sum_i codes[:, t*k + i] << (i * log2(bin_size)), (n, l) uint32."""
    cb = 0
    while (1 << cb) < bin_size:
        cb += 1
    n = codes.shape[0]
    if codes.shape[1] != k * l:
        raise ValueError("codes: expected k*l columns")
    keys = np.empty((n, l), dtype=np.uint32)
    for r in range(n):
        for t in range(l):
            key = np.uint64(0)
            for i in range(k):
                key |= np.uint64(codes[r, t * k + i]) << np.uint64(i * cb)
            keys[r, t] = np.uint32(key & _M32)
    return keys


# ---------------------------------------------------------------------------
# WTA / DWTA

@njit(cache=True)
def _row_codes(x, bin_coords, densified, code, full, ne):
    """Codes of one dense row from the bin layout; returns the number of non-empty bins."""
    nb, m = bin_coords.shape
    dim = x.shape[0]
    n_ne = 0
    for b in range(nb):
        bv = np.float32(-np.inf)
        bp = m
        for i in range(m):
            c = bin_coords[b, i]
            if c < 0 or c >= dim:
                continue
            v = x[c]
            if densified and v == 0:
                continue
            if v > bv or (v == bv and i < bp):
                bv = v
                bp = i
        if bp != m:
            full[b] = 1
            code[b] = bp
            ne[n_ne] = b
            n_ne += 1
        else:
            full[b] = 0
            code[b] = 0
    return n_ne


@njit(cache=True)
def _codes_dense(X, k, l, bin_size, bin_coords, densified, A, B, Binv):
    _check_geometry(k, l, bin_size, bin_coords.shape[0], bin_coords.shape[1])
    nb = k * l
    if densified:
        _check_probe(A, B, Binv, nb)
    n = X.shape[0]
    codes = np.empty((n, nb), dtype=np.int32)
    code = np.empty(nb, dtype=np.int64)
    full = np.zeros(nb, dtype=np.uint8)
    ne = np.empty(nb, dtype=np.int64)
    for r in range(n):
        n_ne = _row_codes(X[r], bin_coords, densified, code, full, ne)
        if densified:
            _densify(code, full, ne, n_ne, nb, A, B, Binv, 0)
        for b in range(nb):
            codes[r, b] = code[b]
    return codes


@njit(cache=True)
def _wta_codes_csr(indptr, indices, data, dim, k, l, bin_size, bin_coords):
    _check_geometry(k, l, bin_size, bin_coords.shape[0], bin_coords.shape[1])
    n = _check_csr(indptr, indices.shape[0], data.shape[0])
    nb = k * l
    codes = np.empty((n, nb), dtype=np.int32)
    code = np.empty(nb, dtype=np.int64)
    full = np.zeros(nb, dtype=np.uint8)
    ne = np.empty(nb, dtype=np.int64)
    xbuf = np.zeros(dim, dtype=np.float32)
    for r in range(n):
        for j in range(indptr[r], indptr[r + 1]):
            c = indices[j]
            if c < 0 or c >= dim:
                raise ValueError("indices: expected column indices in [0, dim)")
            xbuf[c] += np.float32(data[j])
        _row_codes(xbuf, bin_coords, False, code, full, ne)
        for j in range(indptr[r], indptr[r + 1]):
            xbuf[indices[j]] = 0
        for b in range(nb):
            codes[r, b] = code[b]
    return codes


@njit(cache=True)
def _dwta_codes_csr(indptr, indices, data, k, l, bin_size, coord_slot, A, B, Binv):
    cb = _check_geometry(k, l, bin_size, k * l, -1)
    nb = k * l
    _check_probe(A, B, Binv, nb)
    n = _check_csr(indptr, indices.shape[0], data.shape[0])
    n_perm, dim = coord_slot.shape
    m = bin_size
    nslots = nb * m
    codes = np.empty((n, nb), dtype=np.int32)
    best = np.empty(nb, dtype=np.float32)
    code = np.empty(nb, dtype=np.int64)
    full = np.zeros(nb, dtype=np.uint8)
    ne = np.empty(nb, dtype=np.int64)
    for r in range(n):
        best[:] = -np.inf
        code[:] = m
        n_ne = 0
        for j in range(indptr[r], indptr[r + 1]):
            c = indices[j]
            if c < 0 or c >= dim:
                raise ValueError("indices: expected column indices in [0, dim)")
            v = np.float32(data[j])
            if v == 0:
                continue
            for p in range(n_perm):
                s = np.int64(coord_slot[p, c])
                if s < 0 or s >= nslots:
                    continue
                b = s >> cb
                pos = s & (m - 1)
                if v > best[b] or (v == best[b] and pos < code[b]):
                    best[b] = v
                    code[b] = pos
                    if full[b] == 0:
                        full[b] = 1
                        ne[n_ne] = b
                        n_ne += 1
        _densify(code, full, ne, n_ne, nb, A, B, Binv, 0)
        for b in range(nb):
            codes[r, b] = code[b]
        for i in range(n_ne):
            full[ne[i]] = 0
    return codes


_EMPTY_U32 = np.zeros(0, dtype=np.uint32)


@njit(cache=True)
def wta_codes_dense(X, k, l, bin_size, bin_coords):
    """WTA codes of dense rows X (n, dim) float32: (n, k*l) int32."""
    return _codes_dense(X, k, l, bin_size, bin_coords, False, _EMPTY_U32, _EMPTY_U32, _EMPTY_U32)


@njit(cache=True)
def wta_keys_dense(X, k, l, bin_size, bin_coords):
    """WTA keys of dense rows: (n, l) uint32, as WTAHash.hash."""
    return codes_to_keys(wta_codes_dense(X, k, l, bin_size, bin_coords), k, l, bin_size)


@njit(cache=True)
def wta_codes_csr(indptr, indices, data, dim, k, l, bin_size, bin_coords):
    """WTA codes of CSR rows (absent entries are zeros, duplicates summed): (n, k*l) int32."""
    return _wta_codes_csr(indptr, indices, data, dim, k, l, bin_size, bin_coords)


@njit(cache=True)
def wta_keys_csr(indptr, indices, data, dim, k, l, bin_size, bin_coords):
    """WTA keys of CSR rows: (n, l) uint32."""
    return codes_to_keys(_wta_codes_csr(indptr, indices, data, dim, k, l, bin_size, bin_coords), k, l, bin_size)


@njit(cache=True)
def dwta_codes_dense(X, k, l, bin_size, bin_coords, A, B, Binv):
    """DWTA codes of dense rows (zeros absent, empty bins densified): (n, k*l) int32."""
    return _codes_dense(X, k, l, bin_size, bin_coords, True, A, B, Binv)


@njit(cache=True)
def dwta_keys_dense(X, k, l, bin_size, bin_coords, A, B, Binv):
    """DWTA keys of dense rows: (n, l) uint32, as DWTAHash.hash."""
    return codes_to_keys(_codes_dense(X, k, l, bin_size, bin_coords, True, A, B, Binv), k, l, bin_size)


@njit(cache=True)
def dwta_codes_csr(indptr, indices, data, k, l, bin_size, coord_slot, A, B, Binv):
    """DWTA codes of CSR rows, O(nnz * n_perm + k*l) per row: (n, k*l) int32."""
    return _dwta_codes_csr(indptr, indices, data, k, l, bin_size, coord_slot, A, B, Binv)


@njit(cache=True)
def dwta_keys_csr(indptr, indices, data, k, l, bin_size, coord_slot, A, B, Binv):
    """DWTA keys of CSR rows: (n, l) uint32."""
    return codes_to_keys(_dwta_codes_csr(indptr, indices, data, k, l, bin_size, coord_slot, A, B, Binv),
                         k, l, bin_size)


# ---------------------------------------------------------------------------
# MinHash

@njit(cache=True)
def minhash_signatures_csr(indptr, indices, k, l, a, c, A, B, Binv):
    """Densified one-permutation MinHash values of CSR rows' id sets: (n, k*l) uint32."""
    if k < 1 or l < 1 or k * l > 65535:
        raise ValueError("k, l: expected k >= 1, l >= 1 and k*l <= 65535")
    nb = k * l
    _check_probe(A, B, Binv, nb)
    n = _check_csr(indptr, indices.shape[0], -1)
    a64 = np.uint64(a)
    c64 = np.uint64(c)
    nb64 = np.uint64(nb)
    sh = np.uint64(32)
    sig = np.empty((n, nb), dtype=np.uint32)
    val = np.empty(nb, dtype=np.uint64)
    full = np.zeros(nb, dtype=np.uint8)
    ne = np.empty(nb, dtype=np.int64)
    for r in range(n):
        n_ne = 0
        for j in range(indptr[r], indptr[r + 1]):
            x = indices[j]
            if x < 0:
                raise ValueError("indices: expected non-negative ids")
            h = (a64 * np.uint64(x) + c64) >> sh
            b = np.int64((h * nb64) >> sh)
            if full[b] == 0:
                full[b] = 1
                ne[n_ne] = b
                n_ne += 1
                val[b] = h
            elif h < val[b]:
                val[b] = h
        _densify(val, full, ne, n_ne, nb, A, B, Binv, np.uint64(0xFFFFFFFF))
        for b in range(nb):
            sig[r, b] = np.uint32(val[b])
        for i in range(n_ne):
            full[ne[i]] = 0
    return sig


@njit(cache=True)
def minhash_signatures_to_keys(signatures, k, l):
    """Table keys from MinHash values: FNV-1a over the k 32-bit values, then fmix32."""
    n = signatures.shape[0]
    if signatures.shape[1] != k * l:
        raise ValueError("signatures: expected k*l columns")
    keys = np.empty((n, l), dtype=np.uint32)
    for r in range(n):
        for t in range(l):
            h = np.uint64(0x811C9DC5)
            for i in range(k):
                h = ((h ^ np.uint64(signatures[r, t * k + i])) * np.uint64(0x01000193)) & _M32
            keys[r, t] = np.uint32(_fmix32(h))
    return keys


@njit(cache=True)
def minhash_keys_csr(indptr, indices, k, l, a, c, A, B, Binv):
    """MinHash table keys of CSR rows: (n, l) uint32, as MinHash.hash."""
    return minhash_signatures_to_keys(minhash_signatures_csr(indptr, indices, k, l, a, c, A, B, Binv), k, l)


# ---------------------------------------------------------------------------
# SimHash

@njit(cache=True)
def _check_w(W, nbits, dim):
    if nbits < 1 or W.shape[1] < nbits:
        raise ValueError("nbits: expected 1 <= nbits <= W.shape[1]")
    if W.shape[0] != dim:
        raise ValueError("W: expected dim rows")


@njit(cache=True)
def simhash_bits_dense(X, W, nbits):
    """SimHash bits of dense rows X (n, dim) float32 with W (dim, wstride) float32:
    (n, ceil(nbits/64)) uint64, bit b = (sum_j x[j]*W[j, b] > 0), accumulated in
    float32 in increasing j with a separate multiply and add."""
    n, dim = X.shape
    _check_w(W, nbits, dim)
    nwords = (nbits + 63) // 64
    out = np.zeros((n, nwords), dtype=np.uint64)
    acc = np.empty(nbits, dtype=np.float32)
    for r in range(n):
        acc[:] = 0
        for j in range(dim):
            xj = np.float32(X[r, j])
            for b in range(nbits):
                acc[b] = acc[b] + np.float32(xj * W[j, b])
        for b in range(nbits):
            if acc[b] > 0:
                out[r, b >> 6] |= np.uint64(1) << np.uint64(b & 63)
    return out


@njit(cache=True)
def simhash_bits_csr(indptr, indices, data, W, nbits):
    """SimHash bits of CSR rows (entries in stored order; canonical CSR gives the dense bits)."""
    dim = W.shape[0]
    _check_w(W, nbits, dim)
    n = _check_csr(indptr, indices.shape[0], data.shape[0])
    nwords = (nbits + 63) // 64
    out = np.zeros((n, nwords), dtype=np.uint64)
    acc = np.empty(nbits, dtype=np.float32)
    for r in range(n):
        acc[:] = 0
        for jj in range(indptr[r], indptr[r + 1]):
            j = indices[jj]
            if j < 0 or j >= dim:
                raise ValueError("indices: expected column indices in [0, dim)")
            xj = np.float32(data[jj])
            for b in range(nbits):
                acc[b] = acc[b] + np.float32(xj * W[j, b])
        for b in range(nbits):
            if acc[b] > 0:
                out[r, b >> 6] |= np.uint64(1) << np.uint64(b & 63)
    return out


@njit(cache=True)
def bits_to_keys(bits, k, l):
    """keys[i, t] = bits k*t .. k*t+k-1 of row i (bit k*t lowest): (n, l) uint32."""
    n, nwords = bits.shape
    if k < 1 or k > 32 or l < 1 or k * l > nwords * 64:
        raise ValueError("k, l: expected 1 <= k <= 32, l >= 1 and k*l <= 64*nwords")
    keys = np.empty((n, l), dtype=np.uint32)
    one = np.uint64(1)
    for r in range(n):
        for t in range(l):
            key = np.uint64(0)
            for i in range(k):
                pos = t * k + i
                bit = (bits[r, pos >> 6] >> np.uint64(pos & 63)) & one
                key |= bit << np.uint64(i)
            keys[r, t] = np.uint32(key)
    return keys


# ---------------------------------------------------------------------------
# ctypes view of the C ABI (src_cpp/capi.cpp)

lib = ctypes.CDLL(_C.__file__)

_f32p = ctypes.POINTER(ctypes.c_float)
_i32p = ctypes.POINTER(ctypes.c_int32)
_i64p = ctypes.POINTER(ctypes.c_int64)
_u32p = ctypes.POINTER(ctypes.c_uint32)
_u64p = ctypes.POINTER(ctypes.c_uint64)
_i64 = ctypes.c_int64
_int = ctypes.c_int
_wta_params = [_i64, _int, _int, _int, _int, _i32p, _i32p, _u32p, _u32p, _u32p, _int, _i32p, _u32p]

_SIGNATURES = {
    # (X, n, dim, k, l, bin_size, n_perm, bin_coords, coord_slot, A, B, Binv, densified, codes, keys)
    "hashlab_wta_dense": [_f32p, _i64] + _wta_params,
    # (indptr, indices, data, n, nnz, dim, k, l, bin_size, n_perm, bin_coords, coord_slot, A, B, Binv,
    #  densified, codes, keys)
    "hashlab_wta_csr": [_i64p, _i32p, _f32p, _i64, _i64] + _wta_params,
    # (indptr, indices, n, nnz, k, l, a, c, A, B, Binv, signatures, keys)
    "hashlab_minhash_csr": [_i64p, _i32p, _i64, _i64, _int, _int, ctypes.c_uint64, ctypes.c_uint64,
                            _u32p, _u32p, _u32p, _u32p, _u32p],
    # (X, n, dim, W, wstride, nbits, out)
    "hashlab_simhash_dense_bits": [_f32p, _i64, _i64, _f32p, _i64, _i64, _u64p],
    # (indptr, indices, data, n, nnz, dim, W, wstride, nbits, out)
    "hashlab_simhash_csr_bits": [_i64p, _i32p, _f32p, _i64, _i64, _i64, _f32p, _i64, _i64, _u64p],
    # (bits, n, nwords, k, l, keys)
    "hashlab_bits_to_keys": [_u64p, _i64, _i64, _int, _int, _u32p],
}

for _name, _argtypes in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.argtypes = _argtypes
    _fn.restype = ctypes.c_int

hashlab_wta_dense = lib.hashlab_wta_dense
hashlab_wta_csr = lib.hashlab_wta_csr
hashlab_minhash_csr = lib.hashlab_minhash_csr
hashlab_simhash_dense_bits = lib.hashlab_simhash_dense_bits
hashlab_simhash_csr_bits = lib.hashlab_simhash_csr_bits
hashlab_bits_to_keys = lib.hashlab_bits_to_keys

lib.hashlab_last_error.argtypes = []
lib.hashlab_last_error.restype = ctypes.c_char_p


def last_error() -> str:
    """Message of the last failed hashlab_* call on this thread ('' after a success)."""
    return lib.hashlab_last_error().decode("utf-8", "replace")


# Null pointers for the optional outputs (codes, keys, signatures), usable in @njit code:
#     jit.hashlab_wta_dense(..., jit.null_i32(), keys.ctypes)   # keys only
def _null_pointer(nbtype):
    @intrinsic
    def null(typingctx):
        def codegen(context, builder, signature, args):
            return cgutils.get_null_value(context.get_value_type(signature.return_type))

        return types.CPointer(nbtype)(), codegen

    return null


null_i32 = _null_pointer(types.int32)
null_u32 = _null_pointer(types.uint32)
