"""The public surface: every name in hashlab.__all__ and hashlab.torch.__all__ imports and is documented.

Rule for the docstrings: every public function and class has one; the docstring of a
callable that takes or returns arrays names a dtype (float32, int64, uint32, ...,
"dtype", "indicator" for a 0/1 label matrix, or a kind right after a shape, as in
"(n, m) float scores" for any float width) and a shape ("shape", or a tuple such as
"(n, dim)" / "(n,)"). For a class, the docstrings of the class, its __init__ and the
public methods it defines are read together (its arrays usually go through methods:
fit, topk, ...). Callables without array
arguments or results are listed in NO_ARRAYS with the reason.
"""
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys

import pytest

import hashlab

DTYPE = re.compile(r"\b(float16|float32|float64|bfloat16|u?int(8|16|32|64)|bool|dtype|indicator)\b"
                   r"|\)\s+(float|int|integer)\b", re.IGNORECASE)
SHAPE = re.compile(r"\bshape\b|\(\s*[\w.*+\- ]+,[\w.*+\-, ]*\)")

NO_ARRAYS = {
    "LSHParams": "a frozen dataclass of integers (k, l, bin_size, ...)",
    "default_params": "takes sizes and a target fraction, returns an LSHParams",
    "retrieved_fraction": "scalar probability arithmetic",
    "label_range": "integer arithmetic: a rank's [lo, hi) label range",
    "read_dumpavail": "parses apt-cache dumpavail text into a list of dicts",
    "simd_level": "returns a string",
    "simd_levels": "returns a dict of strings",
    "set_num_threads": "takes an int",
    "get_num_threads": "returns an int",
    # hashlab.torch
    "LSHAttentionParams": "a dataclass of integers and floats",
    "enable_lsh_attention": "takes a transformers model and integer parameters",
    "disable_lsh_attention": "takes a transformers model",
    "is_lsh_attention_enabled": "takes a transformers model, returns a bool",
    "install_lsh_head": "takes a transformers model (calibration token ids documented in LSHOutputHead)",
    "remove_lsh_head": "takes a transformers model",
    "LSHCache": "a transformers DynamicCache subclass (tensors managed by transformers)",
    "LSHCacheLayer": "one layer of LSHCache",
}


def _doc(obj):
    doc = inspect.getdoc(obj) or ""
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if name == "__init__" or not name.startswith("_"):
                member = getattr(member, "__func__", getattr(member, "fget", member))
                doc += "\n" + (getattr(member, "__doc__", None) or "")
    return doc


def _public(module):
    for name in module.__all__:
        yield name, getattr(module, name)


def _check(name, obj):
    if inspect.ismodule(obj) or not callable(obj):
        return
    doc = _doc(obj)
    assert doc.strip(), f"{name}: no docstring"
    if name in NO_ARRAYS:
        return
    assert DTYPE.search(doc), f"{name}: docstring names no dtype (float32, int64, ...)"
    assert SHAPE.search(doc), f"{name}: docstring states no shape ('shape' or '(n, d)')"


@pytest.mark.parametrize("name", hashlab.__all__)
def test_hashlab_names(name):
    _check(name, getattr(hashlab, name))


def test_torch_names():
    pytest.importorskip("torch")
    ht = importlib.import_module("hashlab.torch")
    names = list(ht.__all__)
    if importlib.util.find_spec("transformers") is None:
        names = [n for n in names if n not in ("LSHCache", "LSHCacheLayer")]
    failures = []
    for name in names:
        try:
            _check(name, getattr(ht, name))
        except AssertionError as e:
            failures.append(str(e))
    assert not failures, failures


def test_exempt_names_exist():
    """NO_ARRAYS lists only public names (a stale entry hides nothing but misleads)."""
    pytest.importorskip("torch")
    ht = importlib.import_module("hashlab.torch")
    public = set(hashlab.__all__) | set(hashlab._LAZY) | set(ht.__all__)  # _LAZY: modules that may be absent
    assert set(NO_ARRAYS) <= public, sorted(set(NO_ARRAYS) - public)


def test_the_rule_catches_missing_shapes_and_dtypes():
    def no_doc(x):
        pass

    def only_shape(x):
        """x: (n, d) array."""

    def both(x):
        """x: (n, d) float32."""

    with pytest.raises(AssertionError, match="no docstring"):
        _check("no_doc", no_doc)
    with pytest.raises(AssertionError, match="no dtype"):
        _check("only_shape", only_shape)
    _check("both", both)


def test_import_does_not_import_torch():
    code = ("import sys, hashlab; "
            "[getattr(hashlab, n) for n in hashlab.__all__]; "
            "from hashlab import ShardedSparseMLP, OutputRetriever, LSHKVIndex; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_lazy_names_resolve_to_their_modules():
    from hashlab import distributed

    assert hashlab.ShardedSparseMLP is distributed.ShardedSparseMLP
    assert hashlab.ShardedRetriever is distributed.ShardedRetriever
    assert hashlab.OutputRetriever is importlib.import_module("hashlab.retrieval").OutputRetriever
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = hashlab.not_a_name
