"""The benchmark's data sets: make_teacher_xmc (hidden-network labels) and make_debian_xmc (real text)."""
import shutil

import numba
import numpy as np
import pytest
import scipy.sparse as sp

from hashlab import debian_text
from hashlab import teacher_data as td
from hashlab.debian_text import make_debian_xmc, read_dumpavail
from hashlab.metrics import most_frequent_baseline
from hashlab.teacher_data import make_teacher_xmc

from _tolerance import assert_within, unit_norm_bound


def _same(a, b):
    return all((x != y).nnz == 0 and x.shape == y.shape for x, y in zip(a, b))


def _check_csr(M, n, d):
    assert sp.isspmatrix_csr(M) and M.dtype == np.float32 and M.shape == (n, d)
    assert M.has_sorted_indices
    for i in range(n):
        row = M.indices[M.indptr[i]:M.indptr[i + 1]]
        assert np.all(np.diff(row) > 0)   # sorted, no duplicates


# ---------------------------------------------------------------------------
# make_teacher_xmc

@pytest.fixture(scope="module")
def teacher():
    return make_teacher_xmc(3000, 400, 4000, 2000, seed=5)


def test_teacher_shapes_and_dtypes(teacher):
    Xtr, Ytr, Xte, Yte = teacher
    for M, n, d in ((Xtr, 3000, 4000), (Ytr, 3000, 2000), (Xte, 400, 4000), (Yte, 400, 2000)):
        _check_csr(M, n, d)
    for X in (Xtr, Xte):
        norms = sp.linalg.norm(X.astype(np.float64), axis=1)
        assert_within(norms, np.ones_like(norms), unit_norm_bound(np.diff(X.indptr)), "row norms")
        assert (X.data > 0).all()
    for Y in (Ytr, Yte):
        assert (Y.data == 1.0).all() and (np.diff(Y.indptr) >= 1).all()
        assert np.diff(Y.indptr).max() <= 20   # max_labels = ceil(4 * 5)


def test_teacher_labels_per_row_near_target():
    # every row's best label plus the n * (labels_per_row - 1) candidates above tau (the cap
    # of 4 * labels_per_row rarely binds; ties at tau are improbable with float scores)
    for lpr in (2.0, 5.0):
        _, Ytr, _, Yte = make_teacher_xmc(2000, 500, 3000, 1500, seed=1, labels_per_row=lpr)
        mean = (Ytr.nnz + Yte.nnz) / 2500
        assert abs(mean - lpr) < 0.01, mean


def test_teacher_deterministic_in_seed_and_threads(teacher):
    again = make_teacher_xmc(3000, 400, 4000, 2000, seed=5)
    assert _same(teacher, again)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one_thread = make_teacher_xmc(3000, 400, 4000, 2000, seed=5)
    finally:
        numba.set_num_threads(before)
    assert _same(teacher, one_thread)
    other = make_teacher_xmc(3000, 400, 4000, 2000, seed=6)
    assert not _same(teacher[:2], other[:2])


def test_teacher_popularity_skew(teacher):
    Ytr = teacher[1]
    counts = np.sort(np.bincount(Ytr.indices, minlength=Ytr.shape[1]))[::-1]
    # uniform popularity would put ~10% of the occurrences in the top 10% of labels
    assert counts[:Ytr.shape[1] // 10].sum() / counts.sum() > 0.3
    assert counts[0] > 10 * counts.sum() / Ytr.shape[1]


def test_teacher_labels_follow_the_features(teacher):
    # the labels are a function of the features: cosine 1-NN transfers them far better than
    # predicting the most frequent labels
    Xtr, Ytr, Xte, Yte = teacher
    nn = np.asarray((Xte @ Xtr.T).argmax(axis=1)).ravel()
    hit = [len(set(Yte[i].indices) & set(Ytr[nn[i]].indices)) > 0 for i in range(Xte.shape[0])]
    assert np.mean(hit) > most_frequent_baseline(Ytr, Yte, 1) + 0.3


def test_teacher_test_rows_can_be_empty():
    Xtr, Ytr, Xte, Yte = make_teacher_xmc(50, 0, 100, 40, seed=0)
    assert Xte.shape == (0, 100) and Yte.shape == (0, 40) and Xtr.shape == (50, 100)


def test_alias_table_reproduces_the_weights():
    w = np.random.default_rng(0).random(37) ** 3 + 1e-3
    prob, alias = td._alias(w)
    n = w.size
    mass = prob / n
    np.add.at(mass, alias, (1.0 - prob) / n)
    assert np.allclose(mass, w / w.sum(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("kw, exc", [
    (dict(n_train=0), ValueError),
    (dict(n_train=10.0), TypeError),
    (dict(n_labels=0), ValueError),
    (dict(n_labels="5"), TypeError),
    (dict(n_concepts=101), ValueError),          # more concepts than labels
    (dict(labels_per_row=0.5), ValueError),
    (dict(labels_per_row=9.0, max_labels=4), ValueError),
    (dict(topic_share=1.5), ValueError),
    (dict(threshold=float("nan")), ValueError),
    (dict(concept_words=0), ValueError),
    (dict(seed=-1), ValueError),
])
def test_teacher_bad_args(kw, exc):
    args = dict(n_train=20, n_test=5, n_features=50, n_labels=100)
    args.update(kw)
    with pytest.raises(exc):
        make_teacher_xmc(**args)


# ---------------------------------------------------------------------------
# make_debian_xmc on a fixture

PACKAGES = [
    # (name, short description, long description lines, tags, depends field)
    ("python3-numpy", "fast array processing for Python", ["NumPy arrays and linear algebra", "."],
     "devel::lang:python, role::shared-lib", "python3 (>= 3.11), libc6 (>= 2.34), libblas3 | libblas.so.3"),
    ("python3-scipy", "scientific tools for Python", ["signal processing and linear algebra"],
     "devel::lang:python, role::shared-lib", "python3:any, python3-numpy (>= 1:1.22) [amd64], libc6"),
    ("libc6-dev", "GNU C Library development files", [],
     "devel::library, role::devel-lib", "libc6 (= 2.36-9)"),
    ("gcc-12", "GNU C compiler", ["the GNU C compiler for C programs"],
     "devel::compiler, role::program", "cpp-12 (= 12.2.0-14), libc6 (>= 2.34)"),
    ("vim", "Vi IMproved text editor", ["an improved vi editor for programs and text"],
     "role::program, use::editing", "vim-common (= 2:9.0), libc6 (>= 2.34)"),
    ("emacs-nox", "GNU Emacs editor without X", [],
     "role::program, use::editing", "emacs-common, libc6"),
    ("python3-pandas", "data structures for Python", ["data analysis and tables"],
     "devel::lang:python, role::program", "python3, python3-numpy"),
    ("libblas3", "basic linear algebra subroutines", ["linear algebra reference library"],
     "role::shared-lib", "libc6 (>= 2.29)"),
    ("doc-only", "documentation package", [], "", ""),   # no tags, no depends: dropped
]


def _dumpavail_text():
    out = []
    for name, short, long_lines, tags, deps in PACKAGES:
        rec = [f"Package: {name}", "Version: 1.0", "Architecture: amd64"]
        if deps:
            rec.append(f"Depends: {deps}")
        rec.append(f"Description: {short}")
        rec += [f" {ln}" for ln in long_lines]
        if tags:   # debtags wrap onto continuation lines
            parts = tags.split(", ")
            rec.append("Tag: " + ", ".join(parts[:1]) + ("," if len(parts) > 1 else ""))
            if len(parts) > 1:
                rec.append(" " + ", ".join(parts[1:]))
        out.append("\n".join(rec))
    # a second record of a package already seen: ignored
    out.append("Package: vim\nVersion: 0.9\nDepends: ed\nDescription: an old vim\nTag: role::obsolete")
    return "\n\n".join(out) + "\n"


EXPECTED_DEPENDS = {
    "python3-numpy": ["python3", "libc6", "libblas3"],
    "python3-scipy": ["python3", "python3-numpy", "libc6"],
    "libc6-dev": ["libc6"], "gcc-12": ["cpp-12", "libc6"], "vim": ["vim-common", "libc6"],
    "emacs-nox": ["emacs-common", "libc6"], "python3-pandas": ["python3", "python3-numpy"], "libblas3": ["libc6"],
}


def _expected_text(name, short, long_lines):
    words = [w for w in name.replace("-", " ").replace(".", " ").replace("_", " ").replace("+", " ").split()]
    return " ".join(words + [short] + [ln for ln in long_lines if ln != "."])


@pytest.fixture
def dump(tmp_path):
    path = tmp_path / "dumpavail.txt"
    path.write_text(_dumpavail_text())
    return path


def test_read_dumpavail_fields(dump):
    recs = read_dumpavail(dump.read_text())
    assert [r["Package"] for r in recs] == [p[0] for p in PACKAGES] + ["vim"]
    assert recs[0]["Tag"] == "devel::lang:python,\nrole::shared-lib"
    assert recs[0]["Description"] == "fast array processing for Python\nNumPy arrays and linear algebra\n."
    assert debian_text._depends(recs[1]) == ["python3", "python3-numpy", "libc6"]


@pytest.mark.parametrize("labels", ["tags", "depends"])
def test_debian_rows_match_sklearn(dump, labels):
    from sklearn.feature_extraction.text import TfidfVectorizer
    min_count = 2
    Xtr, Ytr, Xte, Yte, (feat, lab) = make_debian_xmc(labels=labels, min_label_count=min_count, path=dump, seed=3,
                                                      test_fraction=0.25, min_df=1, return_names=True)
    # expected labels per package, by hand from the fixture
    per_pkg = {}
    for name, short, long_lines, tags, _ in PACKAGES:
        if labels == "tags":
            ls = [t for t in tags.split(", ") if t]
        else:
            ls = EXPECTED_DEPENDS.get(name, [])
        per_pkg[name] = (_expected_text(name, short, long_lines), ls)
    counts = {}
    for _, ls in per_pkg.values():
        for x in ls:
            counts[x] = counts.get(x, 0) + 1
    kept = sorted(x for x, c in counts.items() if c >= min_count)
    assert lab == kept
    expect = {n: (t, sorted(kept.index(x) for x in ls if x in kept)) for n, (t, ls) in per_pkg.items()}
    expect = {n: v for n, v in expect.items() if v[1]}
    assert Xtr.shape[0] + Xte.shape[0] == len(expect)
    assert Xte.shape[0] == round(0.25 * len(expect))
    for M in (Xtr, Xte):
        _check_csr(M, M.shape[0], len(feat))
    # identify each training row's package by its words; then its labels and TF-IDF values
    # the builder is TfidfVectorizer in float32: the same arithmetic, so the same bits
    ref = TfidfVectorizer(sublinear_tf=True, min_df=1, dtype=np.float32)
    names = []
    for i in range(Xtr.shape[0]):
        words = {feat[j] for j in Xtr[i].indices}
        match = [n for n, (t, _) in expect.items() if set(ref.build_analyzer()(t)) == words]
        assert len(match) == 1, (words, match)
        names.append(match[0])
        assert Ytr[i].indices.tolist() == expect[match[0]][1]
    assert len(set(names)) == len(names)
    R = ref.fit_transform([expect[n][0] for n in names])
    assert ref.get_feature_names_out().tolist() == feat
    np.testing.assert_array_equal(Xtr.toarray(), R.toarray())
    seen = set(names)
    for i in range(Xte.shape[0]):   # test rows: the rest, in the training vocabulary
        left = [n for n in expect if n not in seen and Yte[i].indices.tolist() == expect[n][1]]
        assert left


def test_debian_split_is_seeded(dump):
    a = make_debian_xmc(labels="depends", path=dump, seed=1, min_df=1)
    b = make_debian_xmc(labels="depends", path=dump, seed=1, min_df=1)
    assert _same(a, b)
    splits = {tuple(make_debian_xmc(labels="depends", path=dump, seed=s, min_df=1)[1].indptr) for s in range(6)}
    assert len(splits) > 1


def test_debian_min_label_count_and_max_rows(dump):
    Ytr = make_debian_xmc(labels="depends", path=dump, min_label_count=1, min_df=1)[1]
    all_names = {x for v in EXPECTED_DEPENDS.values() for x in v}
    assert Ytr.shape[1] == len(all_names)
    Xtr, _, Xte, _ = make_debian_xmc(labels="depends", path=dump, min_label_count=1, min_df=1, max_rows=4)
    assert Xtr.shape[0] + Xte.shape[0] == 4


def test_debian_errors(dump, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="labels"):
        make_debian_xmc(labels="section", path=dump)
    with pytest.raises(TypeError):
        make_debian_xmc(labels=1, path=dump)
    with pytest.raises(ValueError, match="test_fraction"):
        make_debian_xmc(path=dump, test_fraction=1.0)
    with pytest.raises(ValueError, match="test_fraction"):
        make_debian_xmc(path=dump, test_fraction=0.0)
    with pytest.raises(ValueError, match="min_label_count"):
        make_debian_xmc(path=dump, min_label_count=0)
    with pytest.raises(TypeError, match="path"):
        make_debian_xmc(path=3)
    with pytest.raises(FileNotFoundError):
        make_debian_xmc(path=tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("Package: a\nDescription: nothing\n")
    with pytest.raises(ValueError, match="at least 2 packages"):
        make_debian_xmc(path=empty)
    with pytest.raises(ValueError, match="at least 2 packages"):   # every label on one package only
        make_debian_xmc(path=dump, labels="depends", min_label_count=100)
    monkeypatch.setattr(debian_text.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-cache"):
        make_debian_xmc()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-cache") is None, reason="apt-cache is not installed")
def test_debian_from_apt_cache():
    try:
        Xtr, Ytr, Xte, Yte = make_debian_xmc(labels="tags", max_rows=2000, seed=0)
    except RuntimeError as e:   # apt-cache without package lists
        pytest.skip(str(e))
    assert Xtr.shape[0] + Xte.shape[0] <= 2000 and Ytr.shape[1] > 50
    assert (np.diff(Ytr.indptr) >= 1).all() and (np.diff(Yte.indptr) >= 1).all()
