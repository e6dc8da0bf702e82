"""The transformers plug-in on every supported architecture, from tiny random-weight configs built here.

Each config exercises what its family adds to Llama's attention: Qwen2's qkv bias, Qwen3's
and Gemma 3's QK-norm (before the cache, so the index must hold the normed keys), Phi-3's
fused qkv projection, Gemma's head_dim 256 with a scale of query_pre_attn_scalar ** -0.5
far from head_dim ** -0.5, and sliding-window layers mixed with full ones (Gemma 2/3, Qwen3
with use_sliding_window), which must stay dense within their window while the full layers
are sampled. The dense reference is the same model on transformers' sdpa (eager for Gemma 2,
which transformers keeps off sdpa) with its own DynamicCache. With every key sampled (min_collisions=0: the sampled path computes exact
attention) generation must equal dense token for token, with logits within float32 error:
against the model in float64, bounded by the error of float32 runs of it in other orders
(method (a) of tests/_tolerance.py); with real sampling it must run and touch a fraction
of the keys.
"""
import contextlib
import re
import warnings

import numpy as np
import pytest

from _tolerance import assert_close_to_f64

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import DynamicCache  # noqa: E402
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer  # noqa: E402

from hashlab.torch import LSHCache, disable_lsh_attention, enable_lsh_attention, is_lsh_attention_enabled  # noqa: E402

FORCED = dict(min_collisions=0, sinks=2, window=8, dense_layers=())
SAMPLED = dict(k=4, l=30, min_collisions=2, sinks=2, window=8, dense_layers=())
COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=512, bos_token_id=1, eos_token_id=None,
              pad_token_id=0)
GEMMA = dict(num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=256,
             query_pre_attn_scalar=16, sliding_window=16)
ALTERNATING = ["sliding_attention", "full_attention"] * 2

# name -> (config class, overrides, the full-attention layers (the LSH-sampled ones))
ARCHS = {
    "llama": ("LlamaConfig", {}, [0, 1]),
    "qwen2": ("Qwen2Config", dict(use_sliding_window=False), [0, 1]),
    "qwen3": ("Qwen3Config", dict(head_dim=32), [0, 1]),
    "qwen3-sliding": ("Qwen3Config", dict(head_dim=32, num_hidden_layers=3, use_sliding_window=True,
                                          sliding_window=16, max_window_layers=1), [0]),
    "mistral": ("MistralConfig", dict(sliding_window=None), [0, 1]),
    "phi3": ("Phi3Config", dict(sliding_window=None), [0, 1]),
    "gemma2": ("Gemma2Config", dict(GEMMA, attn_logit_softcapping=None, layer_types=ALTERNATING), [1, 3]),
    "gemma3": ("Gemma3TextConfig", dict(GEMMA, layer_types=ALTERNATING), [1, 3]),
}


# transformers refuses sdpa for Gemma 2 (built for its soft-capping): its dense reference runs eager
IMPLEMENTATION = {"gemma2": "eager"}


def _config(name, **kw):
    cls, overrides, _ = ARCHS[name]
    return getattr(transformers, cls)(**{**COMMON, **overrides, **kw})


def _model(name, seed=0, attn=None, **kw):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_config(name, **kw),
                                                          attn_implementation=attn or IMPLEMENTATION.get(name, "sdpa"))
    return model.eval()


def _dense_runs(name, ids, dense_cache_logits, positions):
    """(float64 logits, float32 logits in other orders) of the dense model at ``positions``
    of the sequences ``ids``, all positions in one forward (batch, positions, vocab):
    float32 on sdpa and on eager, and ``dense_cache_logits``, the float32 logits of the
    same positions one step at a time with a cache. Gemma 2 has eager only."""
    def run(dtype, attn=None):
        with torch.no_grad():
            return _model(name, attn=attn).to(dtype)(ids).logits[:, positions].double().numpy()
    attns = ["eager"] if IMPLEMENTATION.get(name) == "eager" else ["sdpa", "eager"]
    return run(torch.float64), [run(torch.float32, a) for a in attns] + [dense_cache_logits]


def _ids(batch, n, seed):
    return torch.randint(3, 128, (batch, n), generator=torch.Generator().manual_seed(seed))


def _generate(model, ids, n, **kw):
    with torch.no_grad():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                              return_dict_in_generate=True, output_logits=True, **kw)


def _deprecations(run):
    """run()'s result and the (category, message) of the FutureWarnings and DeprecationWarnings it raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, {(w.category, str(w.message)) for w in caught
                    if issubclass(w.category, (FutureWarning, DeprecationWarning))}


@contextlib.contextmanager
def _deprecations_raise(theirs):
    """FutureWarning and DeprecationWarning raise inside, except those in ``theirs`` (not caused by hashlab)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        for category, message in theirs:
            warnings.filterwarnings("ignore", message=re.escape(message), category=category)
        yield


@pytest.mark.parametrize("name", list(ARCHS))
def test_all_sampled_generation_equals_dense(name):
    """Every full layer LSH, every key sampled: the dense tokens, logits to float32 rounding, the
    sliding layers kept as windows, and no deprecation warning that the plug-in causes."""
    model = _model(name)
    ids = _ids(2, 90, seed=1)  # longer than the sliding window (16): the windows slide during the prompt
    dense, theirs = _deprecations(lambda: _generate(model, ids, 10))
    enable_lsh_attention(model, **FORCED)
    try:
        with _deprecations_raise(theirs):
            out = _generate(model, ids, 10)
    finally:
        disable_lsh_attention(model)
    full = ARCHS[name][2]
    kinds = [type(layer) for layer in out.cache.layers]
    assert [i for i, k in enumerate(kinds) if k.__name__ == "LSHCacheLayer"] == full
    assert all(kinds[i] is DynamicSlidingWindowLayer for i in range(len(kinds)) if i not in full)
    stats = out.cache.stats()
    assert stats["lsh_layers"] == len(full) and stats["decode_steps"] == 9 * 2
    assert stats["touched_fraction"] == 1.0
    assert torch.equal(out.sequences, dense.sequences)
    # float32 attention in another summation order, through 2-4 layers
    steps = np.arange(ids.shape[1] - 1, ids.shape[1] + 9)
    ref, refs32 = _dense_runs(name, dense.sequences, torch.stack(dense.logits, 1).double().numpy(), steps)
    assert_close_to_f64(torch.stack(out.logits, 1).numpy(), ref, refs32, what="logits")


@pytest.mark.parametrize("name", list(ARCHS))
def test_sampled_generation_touches_a_fraction(name):
    model = _model(name)
    ids = _ids(1, 300, seed=2)
    enable_lsh_attention(model, **SAMPLED)
    try:
        out = _generate(model, ids, 6)
    finally:
        disable_lsh_attention(model)
    assert out.sequences.shape == (1, 306)
    stats = out.cache.stats()
    assert stats["decode_steps"] == 5 and stats["lsh_layers"] == len(ARCHS[name][2])
    assert 0.0 < stats["touched_fraction"] < 1.0
    assert out.cache.get_seq_length() == 305


@pytest.mark.parametrize("name", ["qwen3", "gemma3", "gemma2"])
def test_the_index_holds_the_keys_attention_sees(name):
    """QK-norm and RoPE come before the cache: each index's centring mean is the mean of the keys
    transformers' own DynamicCache holds for that layer (normed, rotated)."""
    model = _model(name)
    ids = _ids(2, 40, seed=3)
    lsh = LSHCache(model, **FORCED)
    dyn = DynamicCache(config=model.config)
    enable_lsh_attention(model, **FORCED)
    try:
        with torch.no_grad():
            model(ids, cache=lsh, use_cache=True)
            model(ids, cache=dyn, use_cache=True)
    finally:
        disable_lsh_attention(model)
    # the reference: the mean of the float64 model's keys; the float32 ones in another order
    # (sdpa, eager) bound the error (past layer 0 the keys hang on float32 attention)
    means32 = [dyn] + [_key_cache(name, ids, torch.float32, "eager")] * (IMPLEMENTATION.get(name) != "eager")
    dyn64 = _key_cache(name, ids, torch.float64)
    for i in ARCHS[name][2]:
        want = dyn64.layers[i].keys.mean(dim=2).numpy()  # (B, H_kv, D)
        refs32 = [c.layers[i].keys.double().mean(dim=2).numpy() for c in means32]
        for b, index in enumerate(lsh.layers[i].indexes):
            assert index.head_dim == model.config.head_dim
            assert_close_to_f64(index.key_mean, want[b], [r[b] for r in refs32], what=f"key mean {i}")


def _key_cache(name, ids, dtype, attn=None):
    """The DynamicCache of the dense model in ``dtype`` after the prompt ``ids``."""
    model = _model(name, attn=attn).to(dtype)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
    return cache


def test_from_dynamic_cache_keeps_sliding_layers_and_continues_like_dense():
    model = _model("gemma3")
    ids = _ids(1, 60, seed=4)
    enable_lsh_attention(model, **FORCED)
    try:
        with torch.no_grad():
            dyn = DynamicCache(config=model.config)
            model(ids, cache=dyn, use_cache=True)
            lsh = LSHCache.from_dynamic_cache(dyn, model)
            for i in (0, 2):  # copies of the sliding layers, the window position included
                assert type(lsh.layers[i]) is DynamicSlidingWindowLayer and lsh.layers[i] is not dyn.layers[i]
                assert lsh.layers[i].get_seq_length() == 60
            chunk = _ids(1, 3, seed=5)
            a = model(chunk, cache=dyn, use_cache=True).logits
            b = model(chunk, cache=lsh, use_cache=True).logits
    finally:
        disable_lsh_attention(model)
    assert lsh.stats()["decode_steps"] == 3
    ref, refs32 = _dense_runs("gemma3", torch.cat([ids, chunk], 1), a.double().numpy(), np.arange(60, 63))
    assert_close_to_f64(b.numpy(), ref, refs32, what="logits")


def test_dense_layers_stay_dynamic_layers():
    model = _model("gemma3")
    cache = LSHCache(model, **{**FORCED, "dense_layers": (1,)})
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert kinds == ["DynamicSlidingWindowLayer", DynamicLayer.__name__, "DynamicSlidingWindowLayer", "LSHCacheLayer"]


def test_gemma2_soft_capping_is_refused_by_name():
    model = _model("gemma2", attn_logit_softcapping=50.0)
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        enable_lsh_attention(model)
    assert not is_lsh_attention_enabled(model)
    # turned on after enabling: the attention function refuses it at the first LSH layer
    model = _model("gemma2")
    enable_lsh_attention(model, **FORCED)
    try:
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = 50.0
        with pytest.raises(ValueError, match="softcap"):
            _generate(model, _ids(1, 30, seed=6), 2)
    finally:
        disable_lsh_attention(model)


def test_models_with_nothing_to_sample_or_not_causal_are_refused():
    with pytest.raises(ValueError, match="sliding-window attention in every layer"):
        enable_lsh_attention(_model("gemma3", layer_types=["sliding_attention"] * 4))
    with pytest.raises(ValueError, match="sliding-window attention in every layer.*sliding_window=16"):
        enable_lsh_attention(_model("phi3", sliding_window=16))
    with pytest.raises(ValueError, match="sliding-window attention in every layer"):
        LSHCache(_config("mistral", sliding_window=16))
    with pytest.raises(ValueError, match="use_bidirectional_attention"):
        enable_lsh_attention(_model("gemma3", use_bidirectional_attention=True))


def test_unsupported_architecture_is_refused():
    opt = transformers.OPTForCausalLM(transformers.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1,
                                                             ffn_dim=32, num_attention_heads=2,
                                                             word_embed_proj_dim=16))
    with pytest.raises(ValueError, match=r"model_type in llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text; "
                                         r"got model_type='opt'"):
        enable_lsh_attention(opt)
    assert not is_lsh_attention_enabled(opt)
