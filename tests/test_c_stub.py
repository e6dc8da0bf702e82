"""hashlab/_C.pyi against the compiled module: the same names, parameters, defaults and dtypes.

mypy's stubtest only sees names in a pybind11 module (its functions carry no
inspectable signature), so the signatures are compared here with the ones pybind11
writes on the first line of each docstring, e.g.
``hamming(a: typing.Annotated[numpy.typing.ArrayLike, numpy.uint64], b: ...) -> numpy.typing.NDArray[numpy.int32]``.
"""
import ast
import importlib.util
import os
import re
import subprocess
import sys

import pytest

from hashlab import _C

STUB = os.path.join(os.path.dirname(_C.__file__), "_C.pyi")
ALIAS = {"_F32": "float32", "_I32": "int32", "_I64": "int64", "_U8": "uint8", "_U16": "uint16", "_U32": "uint32",
         "_U64": "uint64"}
DTYPE = re.compile(r"numpy\.(float32|float64|u?int(?:8|16|32|64))\b")


def _split_top(s):
    """Splits at commas outside brackets."""
    out, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "[("
        depth -= ch in "])"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def runtime_signature(obj):
    """[(name, type, has_default)], return type from pybind11's docstring; self dropped."""
    first = obj.__doc__.strip().split("\n")[0]
    m = re.fullmatch(r"\w+\((.*)\) -> (.*)", first)
    assert m, first
    params = []
    for p in _split_top(m.group(1)):
        name, _, rest = p.partition(": ")
        typ, _, default = rest.partition(" = ")
        if name != "self":
            params.append((name, typ, bool(default)))
    return params, m.group(2)


def _stub_dtypes(annotation):
    return [ALIAS[n] for n in re.findall(r"_[A-Z]\d+", annotation)]


def stub_definitions():
    """{'name' or 'Class.method': ast.FunctionDef} (the first of overloads), and the class names."""
    with open(STUB) as f:
        tree = ast.parse(f.read())
    defs, classes = {}, set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            defs.setdefault(node.name, node)
        elif isinstance(node, ast.ClassDef):
            classes.add(node.name)
            for sub in node.body:
                if isinstance(sub, ast.FunctionDef):
                    defs.setdefault(f"{node.name}.{sub.name}", sub)
    return defs, classes


def runtime_definitions():
    """{'name' or 'Class.method': callable or property} of hashlab._C, and the class names."""
    defs, classes = {}, set()
    for name in dir(_C):
        if name.startswith("__"):
            continue
        obj = getattr(_C, name)
        if isinstance(obj, type):
            classes.add(name)
            for mname, member in vars(obj).items():
                if mname.startswith("_") and mname not in ("__init__", "__len__"):
                    continue
                defs[f"{name}.{mname}"] = member
        else:
            defs[name] = obj
    return defs, classes


def test_same_names():
    sdefs, sclasses = stub_definitions()
    rdefs, rclasses = runtime_definitions()
    assert sclasses == rclasses
    assert set(sdefs) == set(rdefs)


def signature_problems(name, sdef, robj):
    """Differences between the stub's ast.FunctionDef and the runtime signature of robj."""
    rparams, rret = runtime_signature(robj)
    args = sdef.args
    sparams = [a for a in args.posonlyargs + args.args if a.arg != "self"]
    if len(sparams) != len(rparams):
        return [f"{name}: {len(sparams)} parameters in the stub, {len(rparams)} at run time"]
    problems = []
    n_defaults = len(args.defaults)
    for i, (sp, (rname, rtype, rdefault)) in enumerate(zip(sparams, rparams)):
        if not re.fullmatch(r"arg\d+", rname) and sp.arg != rname:  # arg0, ...: unnamed, positional-only
            problems.append(f"{name}: parameter {i} is {sp.arg!r} in the stub, {rname!r} at run time")
        if (i >= len(sparams) - n_defaults) != rdefault:
            problems.append(f"{name}: {rname} has a default in only one of stub and module")
        ann = ast.unparse(sp.annotation)
        if DTYPE.search(rtype):
            ok = _stub_dtypes(ann) == DTYPE.findall(rtype)
        elif "SupportsInt" in rtype:
            ok = ann == "int"
        elif "SupportsFloat" in rtype:
            ok = ann == "float"
        elif rtype in ("bool", "str"):
            ok = ann == rtype or ann.startswith("Literal[")
        else:
            ok = True
        if not ok:
            problems.append(f"{name}: {rname} is {ann} in the stub, {rtype} at run time")
    sret = ast.unparse(sdef.returns)
    if DTYPE.search(rret):
        ok = _stub_dtypes(sret) == DTYPE.findall(rret)
    else:
        ok = rret not in ("None", "int", "float", "bool", "str") or sret == rret
    if not ok:
        problems.append(f"{name}: returns {sret} in the stub, {rret} at run time")
    return problems


@pytest.mark.parametrize("name", sorted(n for n, o in runtime_definitions()[0].items()
                                        if not isinstance(o, property)))
def test_same_signature(name):
    assert signature_problems(name, stub_definitions()[0][name], runtime_definitions()[0][name]) == []


def test_properties_are_properties_in_the_stub():
    sdefs, _ = stub_definitions()
    for name, member in runtime_definitions()[0].items():
        if isinstance(member, property):
            decorators = [ast.unparse(d) for d in sdefs[name].decorator_list]
            assert decorators == ["property"], name


def test_the_comparison_can_fail():
    def problems(src):
        return signature_problems("hamming", ast.parse(src).body[0], _C.hamming)

    assert problems("def hamming(a: _U64, b: _U64) -> _I32: ...") == []
    assert "parameter 1 is 'bb'" in problems("def hamming(a: _U64, bb: _U64) -> _I32: ...")[0]
    assert "b is _F32" in problems("def hamming(a: _U64, b: _F32) -> _I32: ...")[0]
    assert "returns _I64" in problems("def hamming(a: _U64, b: _U64) -> _I64: ...")[0]
    assert "has a default" in problems("def hamming(a: _U64, b: _U64 = ...) -> _I32: ...")[0]
    assert "1 parameters" in problems("def hamming(a: _U64) -> _I32: ...")[0]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy not installed")
def test_mypy_accepts_the_stub(tmp_path):
    r = subprocess.run([sys.executable, "-m", "mypy", "--follow-imports=silent", "--cache-dir", str(tmp_path), STUB],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
