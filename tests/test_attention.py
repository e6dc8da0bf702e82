"""LSH-sampled attention (hashlab.attention) against independent numpy references.

- forced sampling (min_collisions=0) and the exact kernels equal dense attention;
- the whole algorithm equals a from-scratch numpy implementation (codes from
  SimHash.bits, collision counts, u from scipy.stats.binom.sf, log-sum-exp merge);
- GQA sharing, incremental appends, the u formula, memory, the sampling cap, table layout.
Statistics are in test_attention_statistics.py, bfloat16 in test_attention_bf16.py, bad
input in test_attention_bad_input.py, the references in _attention_reference.py.
Float results are bounded by the float32 error of references in eight summation orders
(tests/_tolerance.py), so the checks hold at every SIMD level and vector width.
"""
import math

import numpy as np
import pytest
from scipy.stats import binom

from hashlab import _C
from hashlab.attention import LSHKVIndex, dense_attention, sampling_probability, table_bits, topk_attention

from _attention_reference import (ORDERS32, check_attention, check_dense, check_lsh, codes_of, np_dense, np_lsh,
                                  planted)
from _sampling_bounds import p_bound, u_bound
from _tolerance import assert_within, dot_error_bound
from conftest import ATTENTION_LEVELS, ATTENTION_PARAMS

pytestmark = pytest.mark.usefixtures("restore_simd")


# ---------------------------------------------------------------------------
# exactness
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("level", ATTENTION_PARAMS)
@pytest.mark.parametrize("d", [1, 7, 33, 64])
def test_forced_sampling_equals_dense(level, d, rng):
    _C.set_simd_level(level)
    K, V, Q = planted(rng, 2, 700, d, 6)
    idx = LSHKVIndex(d, 2, k=6, l=20, min_collisions=0, sinks=4, window=16, chunk=64)
    idx.append(K[:, :500], V[:, :500])
    for t in range(500, 700, 50):  # generated tokens, some of them indexed on the way
        idx.append(K[:, t:t + 50], V[:, t:t + 50])
    assert idx.n_indexed == 700 - 4 - 16 - ((700 - 500) % 64)  # the prompt indexes up to its window
    out, lse, touched = idx.attend(Q, return_stats=True)
    check_dense(out, lse, Q, K, V)
    assert (touched == 700).all()


@pytest.mark.parametrize("level", ATTENTION_PARAMS)
def test_exact_kernels(level, rng):
    _C.set_simd_level(level)
    K, V, Q = planted(rng, 3, 5000, 40, 9)
    out, lse = dense_attention(Q, K, V, scale=0.3, return_lse=True)
    check_dense(out, lse, Q, K, V, 0.3)
    # top-k: numpy selection of the budget largest logits, in float64
    budget = np.array([1, 5, 50, 400, 4999, 5000, 9000, 0, 77])
    out = topk_attention(Q, K, V, budget, scale=0.3)
    for h in range(9):
        Kh = K[h // 3].astype(np.float64)
        z = Kh @ Q[h]
        b = min(budget[h], 5000)
        if b == 0:
            assert (out[h] == 0).all()
            continue
        order = np.argsort(-z, kind="stable")
        top = order[:b]
        if b < 5000:  # the set is the same for float32 logits in any order (the kernel's)
            err = dot_error_bound(Kh[order[b - 1:b + 1]], Q[h])
            assert z[order[b - 1]] - z[order[b]] > err.sum(), "ambiguous test data: a near tie at the budget"
        check_dense(out[h:h + 1], None, Q[h:h + 1], K[h // 3:h // 3 + 1, top], V[h // 3:h // 3 + 1, top], 0.3,
                    what=f"top-{b}")
    check_dense(topk_attention(Q, K, V, 5000, scale=0.3), None, Q, K, V, 0.3, what="top-all")


@pytest.mark.parametrize("k,l,m", [(6, 30, 2), (10, 150, 2), (8, 40, 1), (7, 60, 3), (16, 80, 2), (32, 20, 1)])
def test_matches_numpy_reference(k, l, m, rng):
    """Sampled sets, corrections and the merge, against numpy from scratch (k > kb exercises tags)."""
    d, n_kv, H, n = 48, 2, 4, 3000
    K, V, Q = planted(rng, n_kv, n, d, H, strength=4.0)
    idx = LSHKVIndex(d, n_kv, k=k, l=l, min_collisions=m, sinks=4, window=32, seed=k * 100 + l)
    idx.append(K, V)
    for g in range(n_kv):  # codes decoded from the index = SimHash bits picked by table_bits
        want = codes_of(idx.hasher, idx.table_bits, K[g, 4:n - 32] - idx.key_mean[g])
        assert np.array_equal(idx.indexed_codes(g), want)
    out, lse, touched = idx.attend(Q, return_stats=True)
    assert np.array_equal(touched, check_lsh(out, lse, idx, K, V, Q))


@pytest.mark.parametrize("level", ATTENTION_PARAMS)
@pytest.mark.parametrize("d", [1, 2, 16, 100, 128, 1000])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_index_codes_match_simhash_at_every_width(level, d, dtype, rng):
    """The index hashes keys with butterfly passes laid out by the padded width (one to
    four stages fused with the sign test): its codes equal the core SimHash's bits."""
    _C.set_simd_level(level)
    n = 700
    K = rng.standard_normal((2, n, d)).astype(np.float32)
    K = (K.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # exact in bfloat16
    idx = LSHKVIndex(d, 2, k=10, l=40, sinks=4, window=32, seed=d, dtype=dtype)
    idx.append(K, K)
    for g in range(2):
        want = codes_of(idx.hasher, idx.table_bits, K[g, 4:n - 32] - idx.key_mean[g])
        assert np.array_equal(idx.indexed_codes(g), want)


def test_identical_across_simd_levels(rng, each_simd):
    K, V, Q = planted(rng, 2, 2000, 64, 8)

    def run():
        idx = LSHKVIndex(64, 2, k=8, l=60, window=16)
        idx.append(K, V)
        return idx.indexed_codes(0), idx.indexed_codes(1), *idx.attend(Q, return_stats=True)

    res = each_simd(run, ATTENTION_LEVELS)
    first = next(iter(res.values()))
    idx = LSHKVIndex(64, 2, k=8, l=60, window=16)
    idx.append(K, V)
    ref_out, ref_lse, ref_touched = np_lsh(idx, K, V, Q)
    refs32 = [np_lsh(idx, K, V, Q, None, o)[:2] for o in ORDERS32]
    for lv, r in res.items():
        assert np.array_equal(r[0], first[0]) and np.array_equal(r[1], first[1])
        assert np.array_equal(r[4], ref_touched)  # same sampled sets
        # each level within the float32 bound of the float64 reference (not bit-equal: the
        # sums run in each level's vector width)
        check_attention(r[2], r[3], (ref_out, ref_lse), refs32, what=lv)


def test_short_context_is_dense(rng):
    K, V, Q = planted(rng, 1, 150, 16, 2, n_hot=0)
    idx = LSHKVIndex(16, 1, sinks=4, window=200)
    idx.append(K[:, :3], V[:, :3])  # shorter than the sinks
    idx.append(K[:, 3:], V[:, 3:])
    assert idx.n_indexed == 0 and len(idx) == 150
    out, lse, touched = idx.attend(Q, return_stats=True)
    check_dense(out, lse, Q, K, V)
    assert (touched == 150).all()


# ---------------------------------------------------------------------------
# GQA, incremental appends
# ---------------------------------------------------------------------------

def test_gqa_sharing_equals_per_head_indexes(rng):
    d, n_kv, G, n = 32, 2, 4, 2500
    K, V, Q = planted(rng, n_kv, n, d, n_kv * G)
    idx = LSHKVIndex(d, n_kv, k=7, l=50, seed=5, window=20)
    idx.append(K, V)
    out, lse, touched = idx.attend(Q, return_stats=True)
    assert np.array_equal(touched, check_lsh(out, lse, idx, K, V, Q, what="gqa"))
    # one index per query head: the same sampled sets; the sums split into other parts, so
    # both are checked against the float32 bound (all heads at once: the bound is estimated
    # from the largest float32 error over the array, noisy on one head's 33 numbers)
    outs, lses, refs = [], [], {order: ([], []) for order in (None,) + ORDERS32}
    for h in range(n_kv * G):
        g = h // G
        one = LSHKVIndex(d, 1, k=7, l=50, seed=5, window=20)
        one.append(K[g:g + 1], V[g:g + 1])
        o, ls, t = one.attend(Q[h:h + 1], return_stats=True)
        assert touched[h] == t[0]
        outs.append(o)
        lses.append(ls)
        for order, (ro, rl) in refs.items():
            r = np_lsh(one, K[g:g + 1], V[g:g + 1], Q[h:h + 1], None, order)
            ro.append(r[0])
            rl.append(r[1])
    refs = {order: (np.concatenate(ro), np.concatenate(rl)) for order, (ro, rl) in refs.items()}
    check_attention(np.concatenate(outs), np.concatenate(lses), refs.pop(None), list(refs.values()),
                    what="per head")


def test_incremental_append_equals_bulk_and_scratch(rng):
    d, n_kv, H = 32, 2, 4
    n0, n_gen = 1500, 900
    K, V, Q = planted(rng, n_kv, n0 + n_gen, d, H)
    kw = dict(k=7, l=40, seed=2, window=24, sinks=4, chunk=50)
    inc = LSHKVIndex(d, n_kv, **kw)
    inc.append(K[:, :n0], V[:, :n0])
    indexed = [inc.n_indexed]
    for t in range(n0, n0 + n_gen):
        inc.append(K[:, t:t + 1], V[:, t:t + 1])
        indexed.append(inc.n_indexed)
        if t % 300 == 0:  # tokens that left the window are indexed at most chunk - 1 late
            assert 0 <= (len(inc) - kw["window"] - kw["sinks"]) - inc.n_indexed < kw["chunk"]
            out, lse, touched = inc.attend(Q, return_stats=True)
            assert np.array_equal(touched, check_lsh(out, lse, inc, K[:, :t + 1], V[:, :t + 1], Q, what=f"t={t}"))
    assert np.all(np.diff(indexed) >= 0) and indexed[-1] > indexed[0] + n_gen - kw["chunk"]
    assert inc.n_segments <= 1 + math.ceil(math.log2(n_gen / kw["chunk"] + 1))
    bulk = LSHKVIndex(d, n_kv, **kw)
    bulk.append(K[:, :n0], V[:, :n0])
    bulk.append(K[:, n0:], V[:, n0:])
    assert bulk.n_indexed == inc.n_indexed
    for g in range(n_kv):
        assert np.array_equal(bulk.indexed_codes(g), inc.indexed_codes(g))
    a, la, ta = inc.attend(Q, return_stats=True)
    b, lb, tb = bulk.attend(Q, return_stats=True)
    assert np.array_equal(ta, tb)
    # against the index built from scratch in numpy; both within the float32 bound
    assert np.array_equal(ta, check_lsh(a, la, inc, K, V, Q, what="incremental"))
    check_lsh(b, lb, bulk, K, V, Q, what="bulk")


# ---------------------------------------------------------------------------
# u, memory, cap
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("k,l,m", [(10, 150, 2), (10, 150, 1), (4, 7, 3), (12, 500, 5), (1, 1, 1), (32, 1000, 2)])
def test_u_against_binomial(k, l, m):
    cos = np.r_[np.linspace(-1, 1, 2001), 1 - np.logspace(-7, -1, 50), -1 + np.logspace(-7, -1, 50)]
    cos = cos.astype(np.float32).astype(np.float64)  # the kernels take float32
    p, u = sampling_probability(cos, k, l, m)
    p_ref = (1 - np.arccos(cos) / np.pi) ** k
    assert_within(p, p_ref, p_bound(cos, p_ref, k), "p")
    # u against the binomial tail at the kernel's own p: the table's error alone (with p's
    # above, the error of u end to end)
    pos = p > 0
    u_at_p, bound = u_bound(p[pos], l, m)
    ok = u_at_p > 1e-30
    assert_within(u[pos][ok], u_at_p[ok], bound[ok], "u")
    if m == 2:  # MagicPIG's closed form, whose float64 terms are within (l + 4) 2^-53 each
        q = p[pos].astype(np.float64)
        closed = 1 - (1 - q) ** l - l * q * (1 - q) ** (l - 1)
        big = closed > 1e-6
        assert_within(u[pos][big], closed[big], bound[big] + (2 * l + 8) * 2.0 ** -53, "u, closed form")
    for pp in (1e-9, 1e-4, 0.01, 0.3, 0.99):
        assert math.isclose(_C.log_binom_sf(m, l, pp), binom.logsf(m - 1, l, pp), rel_tol=1e-9, abs_tol=1e-12)
    p0, u0 = sampling_probability(np.array([0.3]), k, l, 0)
    assert u0[0] == 1.0


def test_index_memory_below_half_bf16_kv():
    rng = np.random.default_rng(0)
    n, d = 40000, 128
    K = rng.standard_normal((1, n, d)).astype(np.float32)
    idx = LSHKVIndex(d, 1, dtype="bfloat16")
    idx.append(K, K)
    assert idx.kv_nbytes == 2 * n * d * 2
    assert idx.nbytes < 0.5 * idx.kv_nbytes, idx.nbytes / idx.kv_nbytes
    h, t = idx.build_seconds
    assert h > 0 and t > 0


def test_max_sampled(rng):
    K, V, Q = planted(rng, 1, 3000, 32, 2)
    base = LSHKVIndex(32, 1, k=5, l=60, window=16, seed=1)
    base.append(K, V)
    o0, _, t0 = base.attend(Q, return_stats=True)
    dense_part = 4 + 16
    assert (t0 - dense_part > 100).all()
    capped = LSHKVIndex(32, 1, k=5, l=60, window=16, seed=1, max_sampled=50)
    capped.append(K, V)
    o1, _, t1 = capped.attend(Q, return_stats=True)
    assert (t1 == dense_part + 50).all()
    assert np.isfinite(o1).all()
    big = LSHKVIndex(32, 1, k=5, l=60, window=16, seed=1, max_sampled=10 ** 6)
    big.append(K, V)
    np.testing.assert_array_equal(big.attend(Q), o0)
    # m = 0 with a cap is uniform sampling, weighted by the sampled fraction: exp(lse)
    # (the estimated softmax denominator) is unbiased
    K, V, Q = planted(rng, 1, 3000, 32, 2, n_hot=0)
    _, ref_lse = np_dense(Q, K, V)
    ratios = []
    for s in range(60):
        uni = LSHKVIndex(32, 1, min_collisions=0, window=16, seed=s, max_sampled=300)
        uni.append(K, V)
        ratios.append(np.exp(uni.attend(Q, return_stats=True)[1] - ref_lse))
    ratios = np.array(ratios)
    assert (np.abs(ratios.mean(0) - 1) < 4 * ratios.std(0) / math.sqrt(60) + 0.01).all()


def test_table_bits_layout():
    tb = table_bits(128, 10, 150)
    assert tb.shape == (150, 10) and len(np.unique(tb)) == 1500
    rot = tb // 128
    assert all(len(set(r)) == 10 for r in rot)  # a table's bits come from k different rotations
    assert table_bits(4, 8, 2).max() < 8 * 4  # n_rot >= k even when k*l < D*k
