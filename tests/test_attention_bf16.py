"""bfloat16 keys and values in LSH-sampled attention (hashlab.attention): the index and the
kernels against the float32 ones and the numpy references (_attention_reference.py) at every
SIMD level, the avx512bf16 level, and bfloat16 torch tensors without a copy."""
import numpy as np
import pytest

from hashlab import _C
from hashlab.attention import LSHKVIndex, _bf16_to_f32, _f32_to_bf16, dense_attention, topk_attention

from _attention_reference import (ORDERS32, bf16_level_extra, bf16_logit_extra, check_dense, check_lsh, np_dense,
                                  np_dense32, planted)
from _tolerance import assert_close_to_f64, dot_error_bound
from conftest import ATTENTION_LEVELS, ATTENTION_PARAMS, BF16_LEVEL

pytestmark = pytest.mark.usefixtures("restore_simd")


def test_bfloat16_matches_float32(rng):
    d, n_kv, H, n = 64, 2, 4, 3000
    K, V, Q = planted(rng, n_kv, n, d, H)
    Kb, Vb = _f32_to_bf16(K), _f32_to_bf16(V)
    Kr, Vr = _bf16_to_f32(Kb), _bf16_to_f32(Vb)
    assert (np.abs(Kr - K) <= np.abs(K) * 2 ** -8).all()  # round to nearest, 8 significant bits
    b16 = LSHKVIndex(d, n_kv, dtype="bfloat16", window=32)
    b16.append(Kb, Vb)
    f32 = LSHKVIndex(d, n_kv, window=32)
    f32.append(Kr, Vr)  # the same values in float32: the same index and output
    assert b16.kv_nbytes * 2 == f32.kv_nbytes
    np.testing.assert_array_equal(b16.key_mean, f32.key_mean)
    ob, lb, tb = b16.attend(Q, return_stats=True)
    of, lf, tf = f32.attend(Q, return_stats=True)
    assert np.array_equal(tb, tf)
    # both the exact attention of the bfloat16 values within the float32 bound
    check_lsh(of, lf, f32, Kr, Vr, Q, what="float32")
    check_lsh(ob, lb, b16, Kr, Vr, Q, what="bfloat16")
    # float input to a bfloat16 index is rounded to nearest even
    b16f = LSHKVIndex(d, n_kv, dtype="bfloat16", window=32)
    b16f.append(K, V)
    np.testing.assert_array_equal(b16f.attend(Q), ob)
    # forced sampling and the exact kernels in bfloat16: exact attention of the bfloat16
    # values within the float32 bound (what rounding to bfloat16 costs is the data's business)
    allb = LSHKVIndex(d, n_kv, dtype="bfloat16", min_collisions=0)
    allb.append(Kb, Vb)
    ob, lb, _ = allb.attend(Q, return_stats=True)
    check_dense(ob, lb, Q, Kr, Vr, what="forced bfloat16")
    check_dense(*dense_attention(Q, Kb, Vb, return_lse=True), Q, Kr, Vr, what="dense bfloat16")
    check_dense(*dense_attention(Q, Kr, Vr, return_lse=True), Q, Kr, Vr, what="dense float32")


def bf16_query(Q, parts):
    """Q as the sum of its first ``parts`` bfloat16 parts (float32): the avx512bf16 level
    splits such queries into that many (attention_kernels.h, split_query)."""
    Q = np.asarray(Q, np.float32)
    out = np.zeros_like(Q)
    for _ in range(parts):
        out += _bf16_to_f32(_f32_to_bf16(Q - out))
    return out


@pytest.mark.parametrize("level", ATTENTION_PARAMS)
@pytest.mark.parametrize("d", [1, 31, 64, 100])
@pytest.mark.parametrize("parts", [1, 2, 3])
def test_bfloat16_keys_at_every_level(level, d, parts, rng):
    """bfloat16 keys and values through dense, top-k and forced-sampling attention, with
    queries of 1, 2 or 3 bfloat16 parts (3: any float32): the exact attention of the
    bfloat16 values within the float32 bound, plus at avx512bf16 (vdpbf16ps) its own
    error bound for what the float32 references do not share (bf16_level_extra)."""
    _C.set_simd_level(level)
    K, V, Q = planted(rng, 2, 900, d, 6)
    Q = bf16_query(Q, parts)
    Kb, Vb = _f32_to_bf16(K), _f32_to_bf16(V)
    Kr, Vr = _bf16_to_f32(Kb), _bf16_to_f32(Vb)
    extra = bf16_level_extra(Q, Kr, Vr) if level == BF16_LEVEL else (0.0, 0.0)
    check_dense(*dense_attention(Q, Kb, Vb, return_lse=True), Q, Kr, Vr, what="dense", extra=extra)
    idx = LSHKVIndex(d, 2, dtype="bfloat16", min_collisions=0, sinks=4, window=16)
    idx.append(Kb, Vb)
    check_dense(*idx.attend(Q, return_stats=True)[:2], Q, Kr, Vr, what="forced sampling", extra=extra)
    budget = 40
    out = topk_attention(Q, Kb, Vb, budget)
    for h in range(6):
        Kh = Kr[h // 3].astype(np.float64)
        z = Kh @ Q[h]
        order = np.argsort(-z, kind="stable")
        top = order[:budget]
        pair = Kh[order[budget - 1:budget + 1]]
        err = dot_error_bound(pair, Q[h]).sum()
        if level == BF16_LEVEL:
            err += bf16_logit_extra(Q[h].astype(np.float64), pair).sum()
        assert z[order[budget - 1]] - z[order[budget]] > err, "ambiguous test data: a near tie at the budget"
        sel = (slice(h // 3, h // 3 + 1), top)
        ex = bf16_level_extra(Q[h:h + 1], Kr[sel], Vr[sel]) if level == BF16_LEVEL else (0.0, 0.0)
        check_dense(out[h:h + 1], None, Q[h:h + 1], Kr[sel], Vr[sel], what=f"top-{budget}", extra=ex)


def test_avx512bf16_runs_float32_keys_as_avx512(rng):
    """The level changes bfloat16 rows only: on float32 keys its results are avx512's, bit for bit."""
    if BF16_LEVEL not in ATTENTION_LEVELS:
        pytest.skip(f"this CPU (or this build's compiler) lacks {BF16_LEVEL}")
    K, V, Q = planted(rng, 2, 1500, 64, 8)

    def run(level):
        _C.set_simd_level(level)
        idx = LSHKVIndex(64, 2, k=8, l=60, window=16)
        idx.append(K, V)
        return [*dense_attention(Q, K, V, return_lse=True), *idx.attend(Q, return_stats=True)]

    for a, b in zip(run("avx512"), run(BF16_LEVEL)):
        np.testing.assert_array_equal(a, b)


def test_torch_tensors_zero_copy(rng):
    torch = pytest.importorskip("torch")
    d, n_kv, H, n = 32, 2, 4, 800
    K = torch.randn(n_kv, n, d, dtype=torch.bfloat16)
    V = torch.randn(n_kv, n, d, dtype=torch.bfloat16)
    Q = torch.randn(H, d)
    idx = LSHKVIndex(d, n_kv, dtype="bfloat16", window=16)
    idx.append(K, V)
    Kn = K.view(torch.int16).numpy().view(np.uint16)
    Vn = V.view(torch.int16).numpy().view(np.uint16)
    ref = LSHKVIndex(d, n_kv, dtype="bfloat16", window=16)
    ref.append(Kn, Vn)
    np.testing.assert_array_equal(idx.attend(Q), ref.attend(Q.numpy()))
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        Q.view(n_kv, H // n_kv, d).float(), K.float(), V.float()).reshape(H, d).numpy()
    Kf, Vf = K.float().numpy(), V.float().numpy()
    # torch's SDPA is one more float32 order of the same quantity
    refs32 = [sdpa] + [np_dense32(Q.numpy(), Kf, Vf, None, o)[0] for o in ORDERS32]
    assert_close_to_f64(dense_attention(Q, K, V), np_dense(Q.numpy(), Kf, Vf)[0], refs32, what="dense torch")
