"""A real-text XMC data set: Debian's package descriptions and their tags or dependencies.

    make_debian_xmc(labels="depends", min_label_count=2, seed=0, test_fraction=0.2, path=None, ...)
        -> (X_train, Y_train, X_test, Y_test), scipy CSR float32, like hashlab.datasets.make_xmc
    read_dumpavail(text) -> list of {field: value} records

The text is what ``apt-cache dumpavail`` prints for the package lists of this machine
(or a saved copy of it: ``path=``): one record per package, ``Field: value`` lines with
indented continuation lines, records separated by blank lines. Nothing is cached or
downloaded.

* Text of a package: its name split on ``-``, ``.``, ``_`` and ``+`` (``python3-numpy``
  -> "python3 numpy"), its one-line ``Description`` and, where the record has them, the
  long description's continuation lines.
* Features: scikit-learn's ``TfidfVectorizer(sublinear_tf=True, min_df=min_df,
  ngram_range=(1, ngram_max))`` (lower-cased word tokens of 2+ characters, smooth idf,
  rows L2-normalised), fitted on the training rows only.
* Labels, ``labels="tags"``: the debtags values (``role::program``, ``devel::lang:python``...).
  ``labels="depends"``: the names of the packages in ``Depends`` (the first of each
  ``a | b`` alternative, without version, architecture qualifier or restriction).
  Labels on fewer than ``min_label_count`` packages are dropped, then packages left
  without labels. A package name seen twice keeps its first record.

On a Debian 12 machine with the main archive: 63K packages; ``tags``: ~30K packages with
tags, ~580 distinct tags; ``depends``: ~56K packages with dependencies, ~35K distinct
names of which ~18K are on >= 2 packages (a longer tail: the harder and more "extreme"
of the two).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import scipy.sparse as sp

from ._validate import check_choice, check_float, check_int

__all__ = ["make_debian_xmc", "read_dumpavail"]

_NAME_SPLIT = re.compile(r"[-._+]+")
_DEP_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9.+\-]*)")


def read_dumpavail(text):
    """Records of ``apt-cache dumpavail`` text (Debian control format).

    Parameters
    ----------
    text : str
        Records separated by blank lines; ``Field: value`` lines, continuation lines start
        with a space or a tab.

    Returns
    -------
    list of dict {field: value}: a continued field's lines joined with "\\n" (continuation
    lines without their leading space); records without a ``Package`` field are skipped.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected a str, got {type(text).__name__}")
    records = []
    for block in re.split(r"\n[ \t]*\n", text):
        rec, key = {}, None
        for line in block.split("\n"):
            if not line.strip():
                continue
            if line[0] in " \t":
                if key is not None:
                    rec[key] += "\n" + line[1:]
                continue
            k, sep, v = line.partition(":")
            if not sep:
                continue
            key = k.strip()
            rec[key] = v.strip()
        if "Package" in rec:
            records.append(rec)
    return records


def _text(rec):
    """Name words, the short description and the long description of one record."""
    name = " ".join(w for w in _NAME_SPLIT.split(rec["Package"]) if w)
    desc = rec.get("Description", "")
    lines = desc.split("\n")
    long_desc = " ".join(ln.strip() for ln in lines[1:] if ln.strip() != ".")
    return " ".join(p for p in (name, lines[0].strip(), long_desc) if p)


def _tags(rec):
    value = rec.get("Tag", "")
    return [t.strip() for t in value.replace("\n", " ").split(",") if t.strip()]


def _depends(rec):
    out = []
    for group in rec.get("Depends", "").replace("\n", " ").split(","):
        m = _DEP_NAME.match(group.split("|")[0])   # first alternative; name stops at ' ', '(', ':', '['
        if m:
            out.append(m.group(1).lower())
    return list(dict.fromkeys(out))


def _dumpavail():
    exe = shutil.which("apt-cache")
    if exe is None:
        raise RuntimeError("make_debian_xmc: `apt-cache` (Debian/Ubuntu's apt) was not found; run it on a Debian "
                           "system or pass path= to a saved `apt-cache dumpavail` output")
    proc = subprocess.run([exe, "dumpavail"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"make_debian_xmc: `apt-cache dumpavail` failed (status {proc.returncode}): "
                           f"{proc.stderr.strip()[:500]}")
    if "Package:" not in proc.stdout:
        raise RuntimeError("make_debian_xmc: `apt-cache dumpavail` listed no packages; run `apt-get update` first")
    return proc.stdout


def make_debian_xmc(labels="depends", min_label_count=2, seed=0, test_fraction=0.2, path=None, min_df=2,
                    ngram_max=1, max_rows=None, return_names=False):
    """Debian package descriptions as a multi-label text classification set.

    Parameters
    ----------
    labels : "depends" or "tags"
        What to predict: the packages a package depends on, or its debtags.
    min_label_count : int >= 1
        Labels on fewer packages (over all rows, before the split) are dropped.
    seed : int >= 0
        Seeds the row subsample (max_rows) and the train/test split.
    test_fraction : float in (0, 1)
        Share of the (labelled) rows in the test set; both sets get at least one row.
    path : str or os.PathLike, optional
        A saved ``apt-cache dumpavail`` text file; by default ``apt-cache dumpavail`` is run
        (RuntimeError if it is missing or lists nothing).
    min_df : int >= 1
        TfidfVectorizer's min_df: features in fewer training rows are dropped.
    ngram_max : int in [1, 3]
        Word n-grams up to this length.
    max_rows : int, optional
        Keep a seeded random sample of at most this many packages with labels (before the
        label-count filter), for smaller sets.
    return_names : bool
        Also return (feature_names, label_names), lists of str.

    Returns
    -------
    X_train : csr_matrix (n_train, n_features) float32, rows L2-normalised (an empty row
        when none of its words is in the vocabulary)
    Y_train : csr_matrix (n_train, n_labels) float32, values 1.0
    X_test, Y_test : the same for the test rows
    (feature_names, label_names) when return_names: feature j is feature_names[j], label
    j is label_names[j] (labels sorted by name).
    """
    labels = check_choice(labels, "labels", ("depends", "tags"))
    min_label_count = check_int(min_label_count, "min_label_count", 1)
    seed = check_int(seed, "seed", 0, 2**63 - 1)
    test_fraction = check_float(test_fraction, "test_fraction", 0.0, 1.0, lo_open=True)
    if test_fraction >= 1.0:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction}")
    min_df = check_int(min_df, "min_df", 1)
    ngram_max = check_int(ngram_max, "ngram_max", 1, 3)
    if max_rows is not None:
        max_rows = check_int(max_rows, "max_rows", 2)
    if not isinstance(return_names, bool):
        raise TypeError(f"return_names: expected a bool, got {type(return_names).__name__}")
    from sklearn.feature_extraction.text import TfidfVectorizer

    if path is None:
        text = _dumpavail()
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    seen, texts, labs = set(), [], []
    get = _depends if labels == "depends" else _tags
    for rec in read_dumpavail(text):
        if rec["Package"] in seen:
            continue
        seen.add(rec["Package"])
        lab = get(rec)
        if lab:
            texts.append(_text(rec))
            labs.append(lab)
    rng = np.random.default_rng(seed)
    if max_rows is not None and len(texts) > max_rows:
        keep = np.sort(rng.choice(len(texts), size=max_rows, replace=False))
        texts, labs = [texts[i] for i in keep], [labs[i] for i in keep]
    names, counts = np.unique(np.array([x for ls in labs for x in ls], dtype=object).astype(str), return_counts=True)
    names = names[counts >= min_label_count]
    index = {name: j for j, name in enumerate(names.tolist())}
    rows = [(t, sorted(index[x] for x in ls if x in index)) for t, ls in zip(texts, labs)]
    rows = [r for r in rows if r[1]]
    if len(rows) < 2:
        raise ValueError(f"expected at least 2 packages with {labels} on >= {min_label_count} packages, "
                         f"got {len(rows)} (in {len(seen)} package records)")
    order = rng.permutation(len(rows))
    n_test = min(len(rows) - 1, max(1, int(round(test_fraction * len(rows)))))
    test, train = order[:n_test], order[n_test:]
    vec = TfidfVectorizer(sublinear_tf=True, min_df=min_df, ngram_range=(1, ngram_max), dtype=np.float32)
    try:
        X_train = vec.fit_transform([rows[i][0] for i in train])
    except ValueError as e:   # empty vocabulary
        raise ValueError(f"no feature is in >= {min_df} training packages (min_df): {e}") from None
    X_test = vec.transform([rows[i][0] for i in test])

    def indicator(idx):
        lab = [rows[i][1] for i in idx]
        indptr = np.zeros(len(lab) + 1, np.int64)
        np.cumsum([len(x) for x in lab], out=indptr[1:])
        ind = np.fromiter((j for x in lab for j in x), dtype=np.int32, count=int(indptr[-1]))
        Y = sp.csr_matrix((np.ones(ind.size, np.float32), ind, indptr), shape=(len(lab), len(names)))
        Y.has_sorted_indices = True
        return Y

    out = [sp.csr_matrix(X_train, dtype=np.float32), indicator(train), sp.csr_matrix(X_test, dtype=np.float32),
           indicator(test)]
    for M in (out[0], out[2]):
        M.sort_indices()
    if return_names:
        out.append((vec.get_feature_names_out().tolist(), names.tolist()))
    return tuple(out)
