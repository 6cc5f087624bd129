"""Benchmark: which crystal explains a measured EXAFS (or XANES)? Every structure of the embedded
dataset with that absorber, ranked as `xastruct predict spectrum STRUCTURE... --kind EXAFS --compare
FILE` ranks candidates, and where the compound's true crystal lands.

    .venv/bin/python benchmarks/bench_exafs_rank.py [--work scratch/bench_measured] [--kind EXAFS|XANES]

--kind XANES: the same with the XANES scans (every bench_measured scan whose twin the dataset has a
FEFF10 XANES of), the shipped XANES model's and FEFF10's spectra, ranked by the MAE after the best
rigid shift (+-15 eV) and Gaussian broadening (`match.compare(..., broaden="auto")`); writes
benchmarks/results/xanes_rank.md.

Needs bench_measured.py's work directory (its store: embedded dataset + shipped models; its
measured.json: the xaslib test scans with their compound's simulated twin). For every scan there with
EXAFS (k to 12 1/A) and a twin: each candidate structure (every dataset structure with a feff8l K-edge
EXAFS of the absorber) gets its k^2 chi(k) from

- the shipped forward EXAFS path model: the multiplicity-weighted mean over the structure's absorber
  orbits (`train.element_sites`, `train.site_average`), as `predict spectrum --average` computes it;
- FEFF (feff8l) itself: the stored spectra of the same orbits, weighted the same way (the upper bound:
  what an analyst with the FEFF runs of every candidate would get);

then `match.fit_exafs` (amplitude, extra disorder, E0 over k 3-11, k^2 weight) to the scan, and the
candidates are sorted by the fitted R^2. Reported: the rank of the twin (1 = best), top-1 / top-3
counts, and the twin's side of the path model's split (train: the model saw its FEFF spectrum).
Writes benchmarks/results/exafs_rank.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_measured import XASLIB, load_work  # noqa: E402  (same files, same place)

OUT = ROOT / "benchmarks" / "results" / "exafs_rank.md"


def candidates(engine, element: str, kind: str, x: np.ndarray) -> list[dict]:
    """Dataset structures with a FEFF K-edge spectrum of *element* (feff8l EXAFS / FEFF10 XANES): id,
    source_id, formula, structure, and the multiplicity-weighted stored spectrum ``feff`` on the grid *x*
    (EXAFS: chi(k); XANES: normalized mu on E - E0)."""
    from stored_spectra import site_averaged

    return site_averaged(engine, element, kind, x, structures=True)


def scores(kind: str, path: Path, element: str, x: np.ndarray, names: list[str], rows: np.ndarray,
           shift_range: float) -> dict[str, float] | None:
    """Candidate -> score against the scan (higher is better): EXAFS the fitted R^2, XANES -MAE after
    the shift and broadening. None when the scan has no such spectrum."""
    from xastruct import inverse, match

    if kind == "EXAFS":
        meas = inverse.spectrum_features(path, element=element).exafs
        if meas is None:
            return None
        return {n: match.fit_exafs(x, meas / x**2, row)["r2_fit"] for n, row in zip(names, rows)}
    query = match.read_query(path, element=element, edge="K")
    return {r["label"]: -r["mae"] for r in match.compare(query, x, rows, labels=names, shift_range=shift_range,
                                                         broaden="auto")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "scratch" / "bench_measured")
    ap.add_argument("--kind", choices=["EXAFS", "XANES"], default="EXAFS")
    ap.add_argument("--shift-range", type=float, default=15.0, help="XANES: eV searched each way for the shift")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<kind>_rank.md")
    args = ap.parse_args()
    args.out = args.out or OUT.with_name(f"{args.kind.lower()}_rank.md")
    t0 = time.perf_counter()
    measured, eng = load_work(args.work)
    import torch

    from xastruct import inverse, registry, store, train

    torch.set_num_threads(2)
    exafs = args.kind == "EXAFS"
    rows = [r for r in measured if r.get("twin") and (r.get("input") == "XANES+EXAFS" or not exafs)]
    entry = registry.latest(eng, "forward", None, None, args.kind, device="cpu")
    split = json.loads((Path(entry.artifact) / "split.json").read_text())
    side_of = {h: side for side in ("train", "val", "test") for h in split.get(side, [])}
    x = inverse.EXAFS_GRID if exafs else train.grid_points(entry.grid)
    cands, model_y = {}, {}
    for el in sorted({r["element"] for r in rows}):
        cands[el] = candidates(eng, el, args.kind, x)
        for c in cands[el]:  # the model's site average, as `predict spectrum --average`
            reps, weights = train.element_sites(c["structure"], el, source=c["source_id"])
            avg = train.site_average(train.predict_sites(entry, c["structure"], reps, device="cpu", edge="K"), weights)
            model_y[c["id"]] = avg.mean(0) / x**2 if exafs else avg.mean(0)
        print(f"{el}: {len(cands[el])} candidates predicted", flush=True)
    with eng.connect() as conn:
        hashes = {sid: h for sid, h in conn.exec_driver_sql("SELECT source_id, content_hash FROM structures").all()}
    results = []
    for r in rows:
        cs = cands[r["element"]]
        if r["twin"] not in {c["source_id"] for c in cs}:
            continue  # the dataset has no such spectrum of the true crystal (XANES: only some compounds)
        names = [c["source_id"] for c in cs]
        got = {"model": scores(args.kind, XASLIB / r["rel"], r["element"], x, names,
                               np.stack([model_y[c["id"]] for c in cs]), args.shift_range)}
        if got["model"] is None:
            continue
        got["feff"] = scores(args.kind, XASLIB / r["rel"], r["element"], x, names, np.stack([c["feff"] for c in cs]),
                             args.shift_range)
        rec = {"file": r["file"], "compound": r["compound"], "element": r["element"], "twin": r["twin"],
               "side": side_of.get(hashes.get(r["twin"]), "-"), "n": len(cs)}
        for name, sc in got.items():
            order = sorted(sc, key=lambda s: -sc[s])
            rec[name] = {"rank": order.index(r["twin"]) + 1, "best": order[0], "best_r2": sc[order[0]],
                         "twin_r2": sc[r["twin"]]}
        results.append(rec)
        print(f"{r['file']}: twin rank model {rec['model']['rank']} / FEFF {rec['feff']['rank']} of {rec['n']}", flush=True)
    store.dispose_engines()
    write(results, entry, args, time.perf_counter() - t0, exafs)


def write(res: list[dict], entry, args, seconds: float, exafs: bool = True) -> None:
    def tops(name, sel=lambda r: True):
        rr = [r for r in res if sel(r) and r[name]["rank"] is not None]
        return (f"{sum(r[name]['rank'] == 1 for r in rr)} / {sum(r[name]['rank'] <= 3 for r in rr)} of {len(rr)} "
                f"(median rank {np.median([r[name]['rank'] for r in rr]):.0f})") if rr else "-"

    kind, model, feff, score = (("EXAFS", "path model", "feff8l", "R^2") if exafs else ("XANES", "XANES model", "FEFF10", "MAE"))
    val = (lambda v: f"{v:.2f}") if exafs else (lambda v: f"{-v:.3f}")  # XANES scores are -MAE
    how = ("fitted to the scan with `match.fit_exafs` (amplitude, extra disorder, E0; k 3-11 1/A, k^2 weight) and the "
           "candidates sorted by R^2" if exafs else
           f"compared with the scan by `match.compare` (best rigid shift within +-{args.shift_range:g} eV and the Gaussian "
           "broadening of 0-16 eV FWHM that fits best; MAE of normalized mu over the common window) and the candidates "
           "sorted by MAE")
    L = [f"# Which crystal explains a measured {kind}? Candidates ranked by the {score}", "",
         f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `.venv/bin/python benchmarks/bench_exafs_rank.py"
         f"{'' if exafs else ' --kind XANES'}` in {seconds:.0f} s (load average {os.getloadavg()[0]:.1f}). Scans: "
         f"bench_measured.py's xaslib test scans {'with EXAFS ' if exafs else ''}whose compound's simulated twin in the "
         f"embedded dataset has a {feff} spectrum ({len(res)}). Candidates: every dataset structure with a {feff} "
         f"K-edge {kind} of the absorber. Each candidate's spectrum -- from the shipped {model} ({entry.name}, site "
         f"average as `predict spectrum --average`) or from its stored {feff} spectra -- is {how}, as `xastruct predict "
         f"spectrum STRUCTURE... --kind {kind} --compare FILE` ranks them.",
         "",
         f"| compound | file | candidates | twin ({model}'s split) | {model}: twin rank | best candidate ({score}) | twin "
         f"{score} | {feff}: twin rank | best candidate ({score}) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in res:
        m, f = r["model"], r["feff"]
        L.append(f"| {r['compound']} | {r['file']} | {r['n']} | {r['twin']} ({r['side']}) | {m['rank']} | "
                 f"{m['best']} ({val(m['best_r2'])}) | {val(m['twin_r2'])} | {f['rank']} | {f['best']} ({val(f['best_r2'])}) |")
    L += ["", "## Summary (true crystal ranked first / in the top 3)", "",
          f"- {model}: {tops('model')}; {feff}'s own spectra: {tops('feff')}.",
          f"- scans whose twin the {model} trained on: {tops('model', lambda r: r['side'] == 'train')}; "
          f"on its validation materials: {tops('model', lambda r: r['side'] == 'val')}; "
          f"on its test materials: {tops('model', lambda r: r['side'] == 'test')}.",
          "", "A rank above 1 often means a polymorph or a near-identical local environment won (see the best "
          "candidate column)" + (": EXAFS over k 3-11 sees the first few shells, and an amplitude / disorder / E0 fit "
                                 "absorbs part of what distinguishes them." if exafs else ".")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
