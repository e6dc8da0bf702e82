"""Bad input to LSH-sampled attention (hashlab.attention) raises TypeError or ValueError (RuntimeError
for an empty index), by hand and in a property-based sweep (hypothesis) that must never crash."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashlab.attention import LSHKVIndex, _f32_to_bf16, dense_attention, sampling_probability, topk_attention


def test_bad_inputs(rng):
    K = rng.standard_normal((2, 10, 8)).astype(np.float32)
    Q = rng.standard_normal((4, 8)).astype(np.float32)
    idx = LSHKVIndex(8, 2, k=4, l=10)
    with pytest.raises(RuntimeError):
        idx.attend(Q)
    with pytest.raises(TypeError):
        idx.append(K.astype(np.int32), K)
    with pytest.raises(TypeError):
        idx.append(K, K.astype(np.complex64))
    with pytest.raises(TypeError):
        idx.append("keys", K)
    with pytest.raises(ValueError):
        idx.append(K[:1], K[:1])  # wrong number of KV heads
    with pytest.raises(ValueError):
        idx.append(K, K[:, :5])
    with pytest.raises(ValueError):
        idx.append(K[:, :, :4], K[:, :, :4])
    with pytest.raises(ValueError):
        idx.append(K[:, :0], K[:, :0])  # empty prompt
    bad = K.copy()
    bad[1, 3, 2] = np.nan
    with pytest.raises(ValueError):
        idx.append(bad, K)
    assert len(idx) == 0
    idx.append(K, K)
    with pytest.raises(ValueError):
        idx.attend(Q[:3])  # 3 heads, 2 KV heads
    with pytest.raises(ValueError):
        idx.attend(Q[:, :7])
    with pytest.raises(ValueError):
        idx.attend(Q[0])
    with pytest.raises(TypeError):
        idx.attend(Q.astype(np.int64))
    q = Q.copy()
    q[0, 0] = np.inf
    with pytest.raises(ValueError):
        idx.attend(q)
    with pytest.raises(ValueError):
        idx.attend(Q, scale=0.0)
    with pytest.raises(TypeError):
        idx.attend(Q, scale="x")
    b16 = LSHKVIndex(8, 2, k=4, l=10, dtype="bfloat16")
    nanb = _f32_to_bf16(K)
    nanb[0, 0, 0] = 0x7FC0
    with pytest.raises(ValueError):
        b16.append(nanb, _f32_to_bf16(K))
    for kw, err in [(dict(k=0), ValueError), (dict(k=33), ValueError), (dict(l=0), ValueError),
                    (dict(min_collisions=11), ValueError), (dict(l=300, min_collisions=256), ValueError),
                    (dict(dtype="float16"), ValueError), (dict(dtype=np.float32), TypeError),
                    (dict(k=2.5), TypeError), (dict(window=-1), ValueError), (dict(max_sampled=0), ValueError),
                    (dict(seed=-1), ValueError)]:
        with pytest.raises(err):
            LSHKVIndex(8, 2, **{**dict(k=4, l=10), **kw})
    with pytest.raises(ValueError):
        LSHKVIndex(0, 2)
    with pytest.raises(ValueError):
        dense_attention(Q[:3], K, K)
    with pytest.raises(TypeError):
        dense_attention(Q, _f32_to_bf16(K), K)
    with pytest.raises(ValueError):
        topk_attention(Q, K, K, -1)
    with pytest.raises(ValueError):
        topk_attention(Q, K, K, np.ones(3, int))
    with pytest.raises(TypeError):
        topk_attention(Q, K, K, np.ones(4))
    with pytest.raises(ValueError):
        sampling_probability([1.5], 10, 150)
    with pytest.raises(ValueError):
        sampling_probability([0.5], 10, 150, 151)


OK = (TypeError, ValueError)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 40, 2 ** 40),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3))


@st.composite
def kv_arrays(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int32, np.uint16, np.bool_, np.complex64]))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=draw(st.integers(0, 4)), max_size=4)))
    n = int(np.prod(shape)) if shape else 1
    vals = draw(st.lists(st.sampled_from([0.0, 1.0, -2.5, np.nan, np.inf, 3e38]), min_size=n, max_size=n))
    with np.errstate(all="ignore"):
        return np.array(vals, dtype=np.float64).reshape(shape).astype(dtype) if n else np.zeros(shape, dtype)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(kv_arrays(), kv_arrays(), kv_arrays(), scalars, st.sampled_from(["float32", "bfloat16"]))
def test_random_bad_input_never_crashes(K, V, Q, s, dtype):
    idx = LSHKVIndex(4, 2, k=3, l=8, window=1, sinks=1, dtype=dtype)
    for call in (lambda: idx.append(K, V), lambda: idx.attend(Q), lambda: dense_attention(Q, K, V),
                 lambda: topk_attention(Q, K, V, s), lambda: idx.attend(Q, scale=s),
                 lambda: LSHKVIndex(4, 2, k=s)):
        try:
            call()
        except RuntimeError as e:
            assert "append" in str(e)
        except OK:
            pass
