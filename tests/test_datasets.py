"""XMC text I/O (against a plain-Python reference parser), synthetic data statistics, presets."""
import gzip
import os
import re

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashlab import datasets as ds
from hashlab.datasets import labels_to_csr, load_xmc, make_preset, make_xmc, save_xmc
from hashlab.metrics import most_frequent_baseline, precision_at_k

from _tolerance import assert_within, unit_norm_bound


# ---------------------------------------------------------------------------
# a plain-Python reference parser, written from the format description

_NUM = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_WS = "[ \t\r\x0b\x0c]+"


class RefError(Exception):
    def __init__(self, line):
        self.line = line


def ref_load(text, n_features=None, n_labels=None):
    """(X, Y) as dense-free dicts, or raises RefError(line) / RefError('header')."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = None
    first_line = 1
    if lines:
        parts = lines[0].split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            header = tuple(int(p) for p in parts)
            lines = lines[1:]
            first_line = 2
    D = n_features if n_features is not None else (header[1] if header else 2**31 - 1)
    L = n_labels if n_labels is not None else (header[2] if header else 2**31 - 1)
    rows = []
    for i, line in enumerate(lines):
        no = first_line + i
        tokens = [t for t in re.split(_WS, line) if t]
        labels, feats = [], {}
        if line and not re.match(_WS, line[0]) and ":" not in tokens[0]:
            for piece in tokens[0].split(","):
                if not piece.isdigit() or int(piece) >= L:
                    raise RefError(no)
                labels.append(int(piece))
            tokens = tokens[1:]
        for t in tokens:
            m = re.fullmatch(r"(\d+):(.*)", t)
            if not m or int(m.group(1)) >= D or not _NUM.fullmatch(m.group(2)):
                raise RefError(no)
            with np.errstate(over="ignore"):
                v = np.float32(float(m.group(2)))
            if not np.isfinite(v):
                raise RefError(no)
            f = int(m.group(1))
            if f in feats:
                raise RefError(no)
            feats[f] = v
        rows.append((sorted(set(labels)), feats))
    n = len(rows)
    while n > (header[0] if header else 0) and not rows[n - 1][0] and not rows[n - 1][1]:
        n -= 1
    if header is not None and n != header[0]:
        raise RefError("header")
    rows = rows[:n]
    if n_features is None:
        D = header[1] if header else 1 + max([max(f) for _, f in rows if f], default=-1)
    if n_labels is None:
        L = header[2] if header else 1 + max([max(lab) for lab, _ in rows if lab], default=-1)
    return rows, D, L


def assert_matches_ref(X, Y, ref):
    rows, D, L = ref
    assert X.shape == (len(rows), D) and Y.shape == (len(rows), L)
    assert X.dtype == np.float32 and Y.dtype == np.float32
    for i, (labels, feats) in enumerate(rows):
        a, b = X.indptr[i], X.indptr[i + 1]
        assert X.indices[a:b].tolist() == sorted(feats)
        np.testing.assert_array_equal(X.data[a:b], np.array([feats[f] for f in sorted(feats)], np.float32))
        assert Y.indices[Y.indptr[i]:Y.indptr[i + 1]].tolist() == labels
    assert np.all(Y.data == 1.0)


def write(tmp_path, text, name="f.txt"):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def assert_same(A, B):
    assert A.shape == B.shape and A.dtype == B.dtype
    A, B = sp.csr_matrix(A), sp.csr_matrix(B)
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    np.testing.assert_array_equal(A.data, B.data)


@pytest.fixture(params=[None, 7, 64], ids=["chunk-default", "chunk-7B", "chunk-64B"])
def chunk(request, monkeypatch):
    """Runs a test with the default read chunk and with tiny chunks (many parallel pieces)."""
    if request.param is not None:
        monkeypatch.setattr(ds, "_CHUNK", request.param)
    return request.param


# ---------------------------------------------------------------------------
# round trips


def small_xy(rng, n=60, D=40, L=15):
    X = sp.random(n, D, density=0.15, format="csr", dtype=np.float32, random_state=rng)
    X.data = (rng.standard_normal(X.nnz) * 10.0 ** rng.integers(-40, 38, X.nnz)).astype(np.float32)
    X.data[::7] = 0.0                                   # explicit zeros are kept
    X.data[1::11] = np.float32(1e-45)                   # subnormal
    X.data[2::13] = np.finfo(np.float32).max
    X.data[3::17] = -np.float32(0.1)
    Y = sp.random(n, L, density=0.2, format="csr", dtype=np.float32, random_state=rng)
    Y.data[:] = 1.0
    X = X.tolil()
    Y = Y.tolil()
    X[0, :] = 0.0
    Y[0, :] = 0.0                                       # a row with nothing
    Y[1, :] = 0.0                                       # no labels
    X[2, :] = 0.0                                       # no features
    X, Y = X.tocsr(), Y.tocsr()
    X.sort_indices()
    Y.sort_indices()
    return X, Y


@pytest.mark.parametrize("name", ["d.txt", "d.txt.gz"])
def test_round_trip_exact(tmp_path, rng, name, chunk):
    X, Y = small_xy(rng)
    path = tmp_path / name
    save_xmc(path, X, Y)
    if name.endswith(".gz"):
        assert path.read_bytes()[:2] == b"\x1f\x8b"
        gzip.decompress(path.read_bytes())
    X2, Y2 = load_xmc(path)
    assert X2.dtype == np.float32 and Y2.dtype == np.float32
    assert_same(X2, X)
    assert_same(Y2, Y)
    assert np.signbit(X2.data).sum() == np.signbit(X.data).sum()
    # and the text matches the reference parser
    text = gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()
    assert_matches_ref(X2, Y2, ref_load(text))
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_round_trip_generated_and_label_lists(tmp_path):
    Xtr, Ytr, _, _ = make_xmc(300, 0, 500, 80, seed=3)
    lists = [Ytr.indices[Ytr.indptr[i]:Ytr.indptr[i + 1]].tolist()[::-1] for i in range(300)]
    save_xmc(tmp_path / "a.txt", Xtr, lists, n_labels=80)
    X2, Y2 = load_xmc(tmp_path / "a.txt")
    assert_same(X2, Xtr)
    assert_same(Y2, Ytr)
    first = (tmp_path / "a.txt").read_text().split("\n")[0]
    assert first == "300 500 80"


def test_gzip_detected_by_content_and_corrupt_gzip(tmp_path):
    data = gzip.compress(b"2 3 2\n0 1:1\n1,0 2:2.5\n")
    X, Y = load_xmc(write(tmp_path, data, "plain-name.txt"))
    assert X.shape == (2, 3) and X[1, 2] == 2.5 and Y[1].indices.tolist() == [0, 1]
    with pytest.raises(ValueError, match="gzip"):
        load_xmc(write(tmp_path, data[:len(data) // 2], "cut.gz"))


def test_libsvm_format_and_widths(tmp_path, chunk):
    text = "1,2 0:1.5 3:2\n 4:1\n0\n7:0.25\n"
    p = write(tmp_path, text)
    X, Y = load_xmc(p)
    assert X.shape == (4, 8) and Y.shape == (4, 3)
    assert X.toarray()[0].tolist() == [1.5, 0, 0, 2, 0, 0, 0, 0]
    assert Y.toarray().tolist() == [[0, 1, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0]]
    assert_matches_ref(X, Y, ref_load(text))
    X, Y = load_xmc(p, n_features=10, n_labels=5)
    assert X.shape == (4, 10) and Y.shape == (4, 5)
    with pytest.raises(ValueError, match=r"line 4: feature index 7 out of range: expected < n_features=6"):
        load_xmc(p, n_features=6)
    with pytest.raises(ValueError, match=r"line 1: label index 2 out of range: expected < n_labels=2"):
        load_xmc(p, n_labels=2)


def test_header_widths_can_be_overridden(tmp_path):
    p = write(tmp_path, "1 5 3\n2 4:1\n")
    X, Y = load_xmc(p, n_features=9, n_labels=4)
    assert X.shape == (1, 9) and Y.shape == (1, 4)


@pytest.mark.parametrize("text,shape_x,shape_y", [
    ("", (0, 0), (0, 0)),
    ("\n\n", (0, 0), (0, 0)),
    ("0 10 5\n", (0, 10), (0, 5)),
    ("0 10 5", (0, 10), (0, 5)),
    ("2 4 3\n\n\n", (2, 4), (2, 3)),             # blank rows count toward the header's N
    ("1 4 3\n1 2:1\n\n \n", (1, 4), (1, 3)),      # trailing blank lines beyond N are ignored
    ("1 3:1\r\n0 0:2\r\n", (2, 4), (2, 2)),       # CRLF
    ("1 3:1\n0 0:2", (2, 4), (2, 2)),             # no final newline
    ("\ufeff2 4 2\n1 3:1\n0 0:2\n", (2, 4), (2, 2)),  # byte order mark
    ("1\t3:1 \t 0:5\n", (1, 4), (1, 2)),          # tabs, unsorted features
    ("3,1,3,0 1:+1e-2 2:-.5 3:7. 4:2E+3\n", (1, 5), (1, 4)),
])
def test_edge_cases(tmp_path, text, shape_x, shape_y, chunk):
    X, Y = load_xmc(write(tmp_path, text))
    assert X.shape == shape_x and Y.shape == shape_y
    assert_matches_ref(X, Y, ref_load(text))
    assert X.has_canonical_format and Y.has_canonical_format


def test_values_parse_like_python_float(tmp_path, rng):
    vals = np.concatenate([
        rng.standard_normal(300) * 10.0 ** rng.integers(-45, 38, 300),
        [1e-45, 3.4028234e38, 0.1, 1 / 3, 123456789012345678901234.5, 1e-40],
    ])
    toks = [repr(float(v)) for v in vals] + ["%.25f" % v for v in vals[:50]] \
        + ["0.000000000000000000000000000123456789012345678901", "12345678901234567890123e-30"]
    text = "".join(f"0 0:{t}\n" for t in toks)
    X, _ = load_xmc(write(tmp_path, text))
    expect = np.array([np.float32(float(t)) for t in toks], np.float32)
    np.testing.assert_array_equal(X.data, expect)


# ---------------------------------------------------------------------------
# malformed input


BAD = [
    # (text, line, message fragment)
    ("3 5 2\n0 1:1\n1 2:1\n", None, "header says 3 rows, file has 2"),
    ("1 5 2\n0 1:1\n1 2:1\n", None, "header says 1 rows, file has 2"),
    ("3 5 2\n0 1:1\n\n", None, "header says 3 rows, file has 2"),
    ("0 1:1\n1 2:1\n0 abc\n", 3, "expected feature 'index:value', got 'abc'"),
    ("2 5 2\n0 1:1\n0 abc\n", 3, "expected feature 'index:value', got 'abc'"),
    ("0 1:1 2\n", 1, "expected feature 'index:value', got '2'"),
    ("0 1;1\n", 1, "expected feature 'index:value', got '1;1'"),
    ("0 :1\n", 1, "expected feature 'index:value', got ':1'"),
    ("2 5 2\n0 1:1\n0 5:1\n", 3, "feature index 5 out of range: expected < D=5 from the header"),
    ("0 99999999999:1\n", 1, "feature index out of range"),
    ("2 5 2\n0 1:1\n2 1:1\n", 3, "label index 2 out of range: expected < L=2 from the header"),
    ("0 1:1\n0 -1:0.5\n", 2, "expected a non-negative feature index, got '-1:0.5'"),
    ("-1 1:1\n", 1, "expected non-negative label indices, got '-1'"),
    ("0,-1 1:1\n", 1, "expected non-negative label indices"),
    ("0 1:nan\n", 1, "expected a finite float32 value, got '1:nan'"),
    ("0 1:-inf\n", 1, "expected a finite float32 value"),
    ("0 1:Infinity\n", 1, "expected a finite float32 value"),
    ("0 1:1e39\n", 1, "expected a finite float32 value, got '1:1e39'"),
    ("0 1:abc\n", 1, "expected a number after ':', got '1:abc'"),
    ("0 1:\n", 1, "expected a number after ':'"),
    ("0 1:1.5x\n", 1, "expected a number after ':'"),
    ("0 1:1e\n", 1, "expected a number after ':'"),
    ("0 1:1:2\n", 1, "expected a number after ':'"),
    ("0 1:.\n", 1, "expected a number after ':'"),
    ("1,,2 1:1\n", 1, "expected labels 'l1,l2,...'"),
    ("1,2, 1:1\n", 1, "expected labels 'l1,l2,...'"),
    ("1,a 1:1\n", 1, "expected labels 'l1,l2,...'"),
    ("1,2:1\n", 1, "expected feature 'index:value', got '1,2:1'"),
    ("0 1:1\n0 1:1 3:1 1:2\n", 2, "expected each feature index once per row, got feature 1 repeated"),
    ("0 1:1 1:2\n0 abc\n", 1, "feature 1 repeated"),   # the first problem in file order
]


@pytest.mark.parametrize("text,line,fragment", BAD)
def test_malformed_input(tmp_path, text, line, fragment, chunk):
    p = write(tmp_path, text)
    with pytest.raises(ValueError) as e:
        load_xmc(p)
    msg = str(e.value)
    assert fragment in msg
    assert str(p) in msg
    if line is not None:
        assert f": line {line}: " in msg
    with pytest.raises(RefError) as r:  # the reference agrees on where
        ref_load(text)
    assert r.value.line == (line if line is not None else "header")


def test_error_line_numbers_deep_in_a_big_file(tmp_path, monkeypatch):
    X, Y, _, _ = make_xmc(3000, 0, 200, 50, seed=1)
    save_xmc(tmp_path / "a.txt", X, Y)
    lines = (tmp_path / "a.txt").read_text().split("\n")
    lines[2500] = lines[2500] + " 12:zz"
    p = write(tmp_path, "\n".join(lines), "b.txt")
    for size in (None, 1000, 4096):
        if size:
            monkeypatch.setattr(ds, "_CHUNK", size)
        with pytest.raises(ValueError, match="line 2501: expected a number after ':', got '12:zz'"):
            load_xmc(p)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        load_xmc(tmp_path / "nope.txt")
    with pytest.raises(IsADirectoryError):
        load_xmc(tmp_path)


def test_bad_arguments(tmp_path):
    p = write(tmp_path, "0 1:1\n")
    with pytest.raises(TypeError):
        load_xmc(p, n_features=2.5)
    with pytest.raises(ValueError):
        load_xmc(p, n_labels=-1)


_value = st.builds(lambda sign, ip, frac, exp: f"{sign}{ip}{frac}{exp}",
                   st.sampled_from(["", "", "-", "+"]), st.integers(0, 999),
                   st.sampled_from(["", ".", ".5", ".25", ".0625", ".1234567"]),
                   st.sampled_from(["", "", "e3", "E-2", "e+1", "e-30", "e30"]))
_junk = st.sampled_from(["nan", "1:inf", "-3:1", ":", ",", "1:1e45", "5:-0", "x", "2:.", "3:+", "4:1e",
                         "0,1", "7", "9:1 9:2", "1:1:1", "-2"])
_labels = st.lists(st.integers(0, 99), min_size=1, max_size=4).map(lambda v: ",".join(map(str, v)))
_line = st.tuples(
    st.sampled_from(["", "", " ", "\t"]),
    st.one_of(st.just(""), _labels, _labels),
    st.lists(st.tuples(st.integers(0, 99), _value), max_size=5, unique_by=lambda t: t[0])
    .map(lambda fv: [f"{f}:{v}" for f, v in fv]),
    st.sampled_from(["", "", "\r", " "]),
).map(lambda t: (t[1] if t[1] else t[0]) + " ".join(([""] if t[1] else []) + t[2]).rstrip(" ") + t[3])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(_line, max_size=8), header=st.booleans(), final_nl=st.booleans(),
       widths=st.sampled_from([(None, None), (20, 20), (100, 100)]),
       junk=st.one_of(st.none(), st.tuples(st.integers(0, 99), st.integers(0, 9), _junk)))
def test_parser_agrees_with_reference(tmp_path_factory, lines, header, final_nl, widths, junk):
    """Random files, about half malformed: same rows or the same error line as the reference."""
    if junk is not None and lines:
        i, j, tok = junk
        words = lines[i % len(lines)].split(" ")
        words.insert(1 + j % len(words), tok)
        lines[i % len(lines)] = " ".join(words)
    if header:
        lines = [f"{len(lines)} 60 60"] + lines
    text = "\n".join(lines) + ("\n" if final_nl and lines else "")
    p = tmp_path_factory.mktemp("fuzz") / "f.txt"
    p.write_text(text)
    try:
        ref = ref_load(text, *widths)
    except RefError as e:
        with pytest.raises(ValueError) as got:
            load_xmc(p, *widths)
        if e.line == "header":
            assert "header says" in str(got.value)
        else:
            assert f": line {e.line}: " in str(got.value)
        return
    X, Y = load_xmc(p, *widths)
    assert_matches_ref(X, Y, ref)


# ---------------------------------------------------------------------------
# saving


def test_save_is_atomic_and_validates(tmp_path, rng):
    X, Y = small_xy(rng)
    p = tmp_path / "out.txt"
    save_xmc(p, X, Y)
    before = p.read_bytes()
    bad = X.copy()
    bad.data[5] = np.nan
    with pytest.raises(ValueError, match="finite"):
        save_xmc(p, bad, Y)
    with pytest.raises(ValueError, match="rows"):
        save_xmc(p, X, Y[:-1])
    with pytest.raises(TypeError):
        save_xmc(p, X.toarray(), Y)
    with pytest.raises(ValueError, match="row 1"):
        save_xmc(p, X[:2], [[0], [-1]])
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]


def test_save_writes_what_the_format_says(tmp_path):
    X = sp.csr_matrix(np.array([[0, 1.5, 0], [0, 0, 0], [2, 0, 0.1]], np.float32))
    save_xmc(tmp_path / "s.txt", X, [[2, 0], [], [1]], n_labels=4)
    assert (tmp_path / "s.txt").read_text() == "3 3 4\n0,2 1:1.5\n\n1 0:2 2:0.100000001\n"


# ---------------------------------------------------------------------------
# labels_to_csr


def test_labels_to_csr():
    Y = labels_to_csr([[3, 1, 3], [], np.array([0, 4])], 5)
    assert Y.dtype == np.float32 and Y.shape == (3, 5)
    assert Y.toarray().tolist() == [[0, 1, 0, 1, 0], [0] * 5, [1, 0, 0, 0, 1]]
    assert_same(labels_to_csr(Y, 5), Y)
    M = sp.csr_matrix(np.array([[0, 2.0], [0.5, 0]]))
    assert labels_to_csr(M, 2).toarray().tolist() == [[0, 1], [1, 0]]
    assert labels_to_csr([], 3).shape == (0, 3)
    with pytest.raises(ValueError, match="row 1: expected labels in \\[0, 5\\), got -1"):
        labels_to_csr([[0], [-1]], 5)
    with pytest.raises(ValueError, match="row 2: expected labels in \\[0, 5\\), got 5"):
        labels_to_csr([[0], [1], [2, 5]], 5)
    with pytest.raises(TypeError, match="row 1"):
        labels_to_csr([[0], [1.5]], 5)
    with pytest.raises(TypeError, match="row 0"):
        labels_to_csr([[True]], 5)
    with pytest.raises(TypeError, match="row 1"):
        labels_to_csr([[0], 3], 5)
    with pytest.raises(TypeError):
        labels_to_csr(np.zeros((2, 5)), 5)
    with pytest.raises(ValueError, match="columns"):
        labels_to_csr(M, 3)


# ---------------------------------------------------------------------------
# synthetic data


@pytest.fixture(scope="module")
def synth():
    return make_xmc(6000, 1500, 3000, 2000, seed=7, labels_per_row=5.0, nnz_per_row=60.0)


def test_make_xmc_shapes_dtypes_and_canonical(synth):
    Xtr, Ytr, Xte, Yte = synth
    assert Xtr.shape == (6000, 3000) and Ytr.shape == (6000, 2000)
    assert Xte.shape == (1500, 3000) and Yte.shape == (1500, 2000)
    for M in synth:
        assert isinstance(M, sp.csr_matrix) and M.dtype == np.float32
        assert M.has_canonical_format
        for i in range(0, M.shape[0], 97):
            row = M.indices[M.indptr[i]:M.indptr[i + 1]]
            assert np.all(np.diff(row) > 0)
    for Y in (Ytr, Yte):
        assert np.all(Y.data == 1.0)
        assert Y.getnnz(axis=1).min() >= 1
    for X in (Xtr, Xte):
        assert np.all(X.data > 0) and np.all(np.isfinite(X.data))
        X64 = X.astype(np.float64)  # the check's own norm in float64: unit_norm_bound
        norms = np.sqrt(np.asarray(X64.multiply(X64).sum(axis=1)).ravel())
        assert_within(norms, np.ones_like(norms), unit_norm_bound(np.diff(X.indptr)), "row norms")


def test_make_xmc_statistics(synth):
    Xtr, Ytr, Xte, Yte = synth
    for X, Y in ((Xtr, Ytr), (Xte, Yte)):
        assert abs(Y.getnnz(axis=1).mean() / 5.0 - 1) < 0.2
        assert abs(X.getnnz(axis=1).mean() / 60.0 - 1) < 0.2
        assert X.getnnz(axis=1).std() > 10  # document lengths vary
    freq = np.sort(np.bincount(Ytr.indices, minlength=2000))[::-1]
    share_top1 = freq[:20].sum() / freq.sum()
    assert share_top1 > 0.07            # 7x the uniform share: a heavy head
    assert freq[0] > 20 * np.median(freq)
    # test labels follow the training distribution
    ftest = np.bincount(Yte.indices, minlength=2000)
    assert np.corrcoef(np.bincount(Ytr.indices, minlength=2000), ftest)[0, 1] > 0.8


def test_make_xmc_labels_co_occur(synth):
    """Labels of a row come from a topic: pairs co-occur far more than independence predicts."""
    _, Ytr, _, _ = synth
    C = (Ytr.T @ Ytr).tocsr()
    C.setdiag(0)
    C.eliminate_zeros()
    p = np.asarray(Ytr.mean(axis=0)).ravel()
    n = Ytr.shape[0]
    r, c = C.nonzero()
    lift = np.asarray(C[r, c]).ravel() / (n * p[r] * p[c])
    assert np.median(lift) > 5


def test_make_xmc_deterministic_and_thread_independent(monkeypatch):
    a = make_xmc(700, 100, 400, 300, seed=5)
    b = make_xmc(700, 100, 400, 300, seed=5)
    monkeypatch.setattr(ds, "_num_threads", lambda: 1)
    c = make_xmc(700, 100, 400, 300, seed=5)
    for x, y, z in zip(a, b, c):
        assert_same(x, y)
        assert_same(x, z)
    d = make_xmc(700, 100, 400, 300, seed=6)
    assert (a[0] != d[0]).nnz > 0


def test_make_xmc_small_and_bad_arguments():
    X, Y, Xt, Yt = make_xmc(5, 0, 3, 2, seed=0, labels_per_row=1.5, nnz_per_row=3)
    assert X.shape == (5, 3) and Y.shape == (5, 2) and Xt.shape == (0, 3) and Yt.shape == (0, 2)
    assert Y.getnnz(axis=1).min() >= 1
    with pytest.raises(ValueError):
        make_xmc(10, 10, 100, 10, labels_per_row=11)
    with pytest.raises(ValueError):
        make_xmc(10, 10, 100, 10, nnz_per_row=0.5)
    with pytest.raises(ValueError):
        make_xmc(10, 10, 100, 10, noise=1.5)
    with pytest.raises(TypeError):
        make_xmc(10.0, 10, 100, 10)
    with pytest.raises(ValueError):
        make_xmc(10, 10, 0, 10)


def test_make_xmc_is_learnable(synth):
    """A nearest-centroid classifier beats the most-frequent-labels baseline by far."""
    Xtr, Ytr, Xte, Yte = synth
    centroids = (Ytr.T @ Xtr).tocsr()                       # (L, D)
    norms = np.sqrt(np.asarray(centroids.multiply(centroids).sum(axis=1)).ravel())
    centroids = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ centroids
    scores = (Xte @ centroids.T).toarray().astype(np.float32)
    p1 = precision_at_k(scores, Yte, 1)
    base = most_frequent_baseline(Ytr, Yte, 1)
    assert p1 > 0.3
    assert p1 > 3 * base + 0.1


def test_presets(monkeypatch):
    assert set(ds.PRESETS) >= {"amazon-670k-like", "delicious-200k-like", "tiny"}
    a = ds.PRESETS["amazon-670k-like"]
    assert (a["n_train"], a["n_test"], a["n_features"], a["n_labels"]) == (490_449, 153_025, 135_909, 670_091)
    Xtr, Ytr, Xte, Yte = make_preset("tiny", scale=0.25, seed=1)
    t = ds.PRESETS["tiny"]
    assert Xtr.shape == (round(t["n_train"] / 4), round(t["n_features"] / 4))
    assert Yte.shape == (round(t["n_test"] / 4), round(t["n_labels"] / 4))
    Xtr, Ytr, Xte, Yte = make_preset("amazon-670k-like", scale=0.001, seed=1)
    assert Xtr.shape[0] == 490 and Ytr.shape[1] == 670
    assert abs(Ytr.getnnz(axis=1).mean() / 5.45 - 1) < 0.2
    Xtr, *_ = make_preset("tiny", scale=0.01, noise=0.5)
    assert Xtr.shape[0] >= 100 and Xtr.shape[1] >= 300
    with pytest.raises(ValueError, match="amazon-670k-like, delicious-200k-like, tiny"):
        make_preset("amazon")
    with pytest.raises(ValueError):
        make_preset("tiny", scale=0)
