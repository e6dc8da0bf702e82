"""Benchmark suites, run by ``hashlab bench [SUITE|all]`` (see hashlab.cli).

Each module hashlab.bench.<suite> (hashing, tables, slide, attention, retrieval,
learned) runs hashlab and its peers side by side and exposes
``run(quick: bool, threads: int | None, out: pathlib.Path) -> dict``, which writes
``<out>/<suite>.json`` (figures, raw timings, machine, CPU flags, SIMD level, threads,
package versions, date), ``<out>/<suite>.md`` (absolute figures and hashlab/peer ratios)
and PNG plots. Shared helpers: hashlab.bench._common. Peers (torch, faiss-cpu,
datasketch, transformers, the SmolLM2 model) are optional: a missing one turns its
measurement into a note.
"""
