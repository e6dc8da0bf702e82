"""Learned hashing in sparse training: SparseMLP(hash="learned") (MONGOOSE LearnedSimHash +
DriftScheduler) against the random families (SimHash, DWTA) with the decaying rehash schedule.

The three models train round-robin on the same shuffled stream, a chunk of batches each
in turn, so that the load of a shared machine falls on all of them alike; each model's
clock runs only inside its own ``fit`` calls, and P@1 on a fixed validation subset is
measured with every clock stopped. Reports P@1 against training time and samples, the
time each needs to reach the best random family's best P@1 - 0.01, the maintenance
passes, the hash refits (each a full rebuild) and the rows re-hashed.
"""
from __future__ import annotations

import pathlib
import time

import numpy as np

from hashlab import SparseMLP
from hashlab.datasets import make_xmc

SYSTEMS = ("learned", "simhash", "dwta")
# full: the early phase at 200K labels, where the families differ most (keeps the suite's hour)
FULL = dict(n_train=200_000, n_test=5_000, n_features=100_000, n_labels=200_000, budget=150.0, chunk_batches=120,
            rebuild_first=50, val=1000, learn_after=800)
# quick: small enough for minutes, with maintenance passes and a refit inside the budget
QUICK = dict(n_train=10_000, n_test=1_000, n_features=10_000, n_labels=10_000, budget=12.0, chunk_batches=10,
             rebuild_first=8, val=500, learn_after=40)
MODEL = dict(hidden=(128,), target_active=512, lr=3e-3, batch_size=128)  # the SLIDE pilot's picks


def _first_time_at(curve, level):
    """Training seconds at the first evaluation with P@1 >= level (None if never)."""
    for point in curve:
        if point["P@1"] >= level:
            return point["time"]
    return None


def measure(quick: bool = False, progress=print) -> dict:
    """Trains the three systems round-robin; returns {"config", "curves", "rows"}.

    curves: per system a list of {"time" (s), "samples", "P@1"}; rows: summary dicts
    with name, per-system figures and the verdict against the issue's target (the same
    P@1 sooner, or a better P@1 in the same time, with fewer rows re-hashed).
    """
    cfg = dict(QUICK if quick else FULL)
    Xtr, Ytr, Xte, Yte = make_xmc(cfg["n_train"], cfg["n_test"], n_features=cfg["n_features"],
                                  n_labels=cfg["n_labels"], seed=0)
    sub = np.random.default_rng(4).permutation(Xte.shape[0])[:cfg["val"]]  # P@1 evaluations cost
    Xv, Yv = Xte[sub], Yte[sub]
    bs = MODEL["batch_size"]
    models = {h: SparseMLP(Xtr.shape[1], Ytr.shape[1], hidden=MODEL["hidden"], hash=h,
                           target_active=MODEL["target_active"], lr=MODEL["lr"], rebuild_first=cfg["rebuild_first"],
                           seed=0, **({"learn_after": cfg["learn_after"]} if h == "learned" else {}))
              for h in SYSTEMS}
    clock = {h: 0.0 for h in SYSTEMS}
    seen = {h: 0 for h in SYSTEMS}
    curves = {h: [] for h in SYSTEMS}
    order = np.random.default_rng(0).permutation(Xtr.shape[0])
    chunk = cfg["chunk_batches"] * bs
    pos = 0
    while min(clock.values()) < cfg["budget"]:
        idx = np.sort(order[pos:pos + chunk])
        pos = (pos + chunk) % Xtr.shape[0]
        for h in SYSTEMS:
            if clock[h] >= cfg["budget"]:
                continue
            t0 = time.perf_counter()
            models[h].fit(Xtr[idx], Ytr[idx], epochs=1, batch_size=bs, verbose=False)
            clock[h] += time.perf_counter() - t0
            seen[h] += idx.size
            p1 = models[h].evaluate(Xv, Yv, ks=(1,))["P@1"]
            curves[h].append({"time": clock[h], "samples": seen[h], "P@1": p1})
        progress(" | ".join(f"{h} {clock[h]:.0f}s P@1 {curves[h][-1]['P@1']:.3f}" for h in SYSTEMS))
    best = {h: max(p["P@1"] for p in curves[h]) for h in SYSTEMS}
    level = max(best["simhash"], best["dwta"]) - 0.01
    reach = {h: _first_time_at(curves[h], level) for h in SYSTEMS}
    m = models["learned"]
    rows = []
    for h in SYSTEMS:
        mm = models[h]
        rows.append(dict(system=h, k=mm.k, l=mm.l, samples=seen[h], samples_per_s=seen[h] / clock[h],
                         best_p1=best[h], final_p1=curves[h][-1]["P@1"], time_to_level=reach[h],
                         passes=mm.rebuilds, refits=mm.refits,
                         rows_rehashed=mm.rows_rehashed,
                         fit_seconds=(m.hasher.fit_seconds_ if h == "learned" else 0.0)))
    rand_best = min((reach[h] for h in ("simhash", "dwta") if reach[h] is not None), default=None)
    sooner = reach["learned"] is not None and rand_best is not None and reach["learned"] < rand_best
    better = best["learned"] > max(best["simhash"], best["dwta"])
    # the random families re-hash every row touched since the last pass; the learned one only rows whose
    # fingerprint moved, plus every row at a refit
    fewer = m.rows_rehashed < min(models["simhash"].rows_rehashed, models["dwta"].rows_rehashed)
    verdict = "met" if (sooner or better) and fewer else "missed"
    return dict(config={**cfg, **MODEL, "level": level}, curves=curves, rows=rows, verdict=verdict,
                learned_fit_info=dict(m.hasher.fit_info_))


def plot(result: dict, path) -> None:
    """P@1 vs training time of the three systems, to a PNG at path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for h, curve in result["curves"].items():
        ax.plot([p["time"] for p in curve], [p["P@1"] for p in curve], marker=".", label=h)
    ax.axhline(result["config"]["level"], color="grey", ls=":", lw=1, label="best random - 0.01")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation P@1")
    ax.set_title("SparseMLP: learned vs random hashing")
    ax.legend()
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(result: dict) -> str:
    """The summary table of ``measure``'s result as markdown."""
    c = result["config"]
    head = (f"Data: `make_xmc({c['n_train']:,}, {c['n_test']:,}, {c['n_features']:,}, {c['n_labels']:,}, seed=0)`; "
            f"128 ReLU, target_active {c['target_active']}, batch {c['batch_size']}, lr {c['lr']}; "
            f"{c['budget']:.0f} s of training each, round-robin in chunks of {c['chunk_batches']} batches. "
            f"Level: best random P@1 - 0.01 = {c['level']:.4f}.\n\n")
    lines = ["| System | k, l | Samples/s | Best P@1 | Final P@1 | Time to level | Maintenance passes | "
             "Hash refits (full rebuilds) | Rows re-hashed | Hash fit s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        t = "never" if r["time_to_level"] is None else f"{r['time_to_level']:.0f} s"
        lines.append(f"| {r['system']} | {r['k']}, {r['l']} | {r['samples_per_s']:.0f} | {r['best_p1']:.4f} | "
                     f"{r['final_p1']:.4f} | {t} | {r['passes']} | {r['refits']} | {r['rows_rehashed']:,} | "
                     f"{r['fit_seconds']:.1f} |")
    return head + "\n".join(lines) + f"\n\nTarget (same P@1 sooner or better P@1 in the same time, with fewer " \
        f"rows re-hashed): **{result['verdict']}**.\n"
