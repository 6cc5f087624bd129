"""Benchmark: where a measured file's inverse error comes from -- the model, the measured XANES or the
measured EXAFS.

    .venv/bin/python benchmarks/bench_measured_attrib.py [--work scratch/bench_measured] \
        [--models duckdb:///./scratch/cand/store.duckdb --out benchmarks/results/measured_attrib_cand.md]

Needs benchmarks/bench_measured.py's work directory (its store with the shipped models and the embedded
dataset, and measured.json with the truth labels and the simulated twins): run that first.
Writes benchmarks/results/measured_attrib.md.

For every measured test file whose compound the dataset simulated (a StructureMatcher twin,
bench_measured.library_twins) the shipped models read CN, MNND and neighbour from four inputs, each
through `inverse.predict_spectra` (what `xastruct predict structure` uses) with the kinds the file gives:

- measured: the file itself (measured.md's numbers);
- FEFF: the twin's own FEFF spectra (FEFF10 XANES, feff8l EXAFS), each the mean over the twin's absorber
  sites weighted by multiplicity (what a scan of the crystal records), featurized like a file
  (XANES on E - half-step E0, k^2 chi(k) on the model grid);
- measured XANES + FEFF EXAFS and FEFF XANES + measured EXAFS (files with both kinds).

A wrong answer from FEFF is the model's (it misreads the very spectrum kind it trained on); a right one
from FEFF and a wrong one from the file is the simulation-to-measurement gap, and the swapped inputs say
which kind carries it. The twin's place in the shipped model's split (its split.json: train / val / test
by formula) is listed: a training twin's FEFF reading says little (forests reproduce their training rows).
The measured files are a test set: this reports, nothing is tuned on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
OUT = ROOT / "benchmarks" / "results" / "measured_attrib.md"

from bench_measured import XASLIB, load_work  # noqa: E402
from bench_sim_vs_measured import predict, twin_chi  # noqa: E402

#: fine FEFF-E0-relative grid the twin's XANES are averaged on before the half-step E0 is found
_X_FINE = np.arange(-30.0, 120.0, 0.1)
COMBOS = ("measured", "FEFF", "meas XANES + FEFF EXAFS", "FEFF XANES + meas EXAFS", "FEFF XANES broadened + meas EXAFS")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def twin_xanes(engine, twin: str, element: str, measured: np.ndarray | None = None) -> tuple:
    """The twin's FEFF10 XANES, multiplicity-weighted over its absorber sites, on the model's XANES grid
    relative to the half-step E0 of that mean (as a scan of the crystal would be featurized); and, with
    *measured* (the file's XANES features), the same after the Gaussian broadening of
    match.BROADEN_FWHM (applied before E0 is found, as the scan's own broadening would be) that brings it
    closest to the measured features (MAE), with that FWHM. (None, None, None) without a FEFF XANES."""
    from stored_spectra import site_averaged

    from xastruct import inverse, match
    from xastruct.errors import InputError

    got = site_averaged(engine, element, "XANES", _X_FINE, source_id=twin)
    if not got:
        return None, None, None

    def feats(fwhm: float):
        try:
            y = match.gaussian_broaden(got[0]["feff"], _X_FINE, fwhm)[0]
            return inverse.xanes_features(_X_FINE, y, source=f"{twin} FEFF XANES")[0]
        except InputError:
            return None

    plain = feats(0.0)
    if measured is None or plain is None:
        return plain, None, None
    tries = [(f, feats(f)) for f in match.BROADEN_FWHM]
    fwhm, best = min(((f, x) for f, x in tries if x is not None), key=lambda t: np.abs(t[1] - measured).mean())
    return plain, best, fwhm


def split_role(engine, twin: str, element: str) -> str:
    """train / val / test of the twin's formula in the shipped XANES+EXAFS CN model's split.json."""
    from xastruct import inverse

    entry = inverse.find_model(engine, "cn", element, "K", have_xanes=True, have_exafs=True, measured=True)
    split = Path(entry.artifact) / "split.json" if entry is not None else None
    if split is None or not split.exists():
        return "?"
    with engine.connect() as c:
        formula = c.exec_driver_sql("SELECT formula FROM structures WHERE source_id = ?", (twin,)).scalar()
    groups = json.loads(split.read_text())
    return next((part for part, names in groups.items() if formula in names), "not in split")


def attribute(rows: list[dict], engine, models=None) -> list[dict]:
    """*engine*: the store with the twins' FEFF spectra; *models*: the store whose newest inverse models
    read the inputs (default: the same)."""
    from dataclasses import replace

    from xastruct import inverse

    models = engine if models is None else models
    k2 = inverse.EXAFS_GRID**2
    out = []
    for r in rows:
        if not r.get("twin"):
            continue
        inp = inverse.spectrum_features(XASLIB / r["rel"], element=r["element"])
        fx, fxb, fwhm = twin_xanes(engine, r["twin"], r["element"], inp.xanes)
        fe = twin_chi(engine, r["twin"], r["element"])
        fe = None if fe is None else fe[0] * k2
        has_x, has_e = inp.xanes is not None, inp.exafs is not None
        rec = {"file": r["file"], "compound": r["compound"], "element": r["element"], "truth": r["truth"],
               "input": "+".join(k for k, v in (("XANES", has_x), ("EXAFS", has_e)) if v),
               "role": split_role(models, r["twin"], r["element"]), "fwhm": fwhm, "pred": {}}
        rec["pred"]["measured"] = predict(models, inp)
        if (fx is not None or not has_x) and (fe is not None or not has_e):
            rec["pred"]["FEFF"] = predict(models, replace(inp, xanes=fx if has_x else None, exafs=fe if has_e else None))
        if has_x and has_e and fe is not None:
            rec["pred"]["meas XANES + FEFF EXAFS"] = predict(models, replace(inp, exafs=fe))
        if has_x and has_e and fx is not None:
            rec["pred"]["FEFF XANES + meas EXAFS"] = predict(models, replace(inp, xanes=fx))
        if has_x and has_e and fxb is not None:
            rec["pred"]["FEFF XANES broadened + meas EXAFS"] = predict(models, replace(inp, xanes=fxb))
        out.append(rec)
        p = rec["pred"]
        log(f"{r['file']} ({rec['role']}): CN true {r['truth']['cn']} " + ", ".join(
            f"{c} {p[c].get('cn')}" for c in COMBOS if c in p))
    return out


def verdict(rec: dict, task: str, tol: float) -> str:
    """Who the file's error on *task* belongs to: '' (right), 'model', 'gap: XANES', 'gap: EXAFS',
    'gap: both' or 'gap' (cannot split)."""
    def ok(c):
        v = rec["pred"].get(c, {}).get(task)
        t = rec["truth"][task]
        return None if v is None else (abs(v - t) <= tol if task == "mnnd" else v == t)


    if ok("measured"):
        return ""
    if ok("FEFF") is False:
        return "model"
    if ok("FEFF") is None:
        return "?"
    mx, mxe = ok("meas XANES + FEFF EXAFS"), ok("FEFF XANES + meas EXAFS")
    if mx is None or mxe is None:
        return "gap"
    return {(False, True): "gap: XANES", (True, False): "gap: EXAFS", (False, False): "gap: both"}.get(
        (mx, mxe), "gap: together")


def report(recs: list[dict], elapsed: float, tol: float, models: str | None = None) -> str:
    def cell(rec, c):
        p = rec["pred"].get(c)
        if p is None:
            return "-"
        t = rec["truth"]
        cn = p.get("cn")
        cn_s = f"**{cn:g}**" if cn is not None and cn != t["cn"] else f"{cn:g}" if cn is not None else "-"
        m = p.get("mnnd")
        m_s = "-" if m is None else (f"**{m:.2f}**" if abs(m - t["mnnd"]) > tol else f"{m:.2f}")
        nb = p.get("neighbor")
        nb_s = f"**{nb}**" if nb != t["neighbor"] else str(nb)
        return f"{cn_s} / {m_s} / {nb_s}"

    lines = ["# Where the measured files' errors come from: model, measured XANES or measured EXAFS", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `.venv/bin/python "
             f"benchmarks/bench_measured_attrib.py{(' ' + ' '.join(sys.argv[1:])) if sys.argv[1:] else ''}` in "
             f"{elapsed:.0f} s (after bench_measured.py). "
             + (f"The newest inverse models of `{models}`" if models else "The shipped inverse models (bench_measured.py's store)")
             + " on the "
             "measured test files whose crystal the dataset simulated, and on that twin's own FEFF spectra "
             "(multiplicity-weighted mean over its absorber sites, featurized like a file), with the kinds the file "
             "gives. Cells: CN / MNND (A) / neighbour; **bold** = wrong (CN class, neighbour element, MNND off by more "
             f"than {tol:g} A). *twin in split*: the twin's formula in the shipped CN model's split.json.", "",
             "| compound | file | input | twin in split | truth | " + " | ".join(COMBOS) + " | FWHM (eV) | CN error | MNND error "
             "| neighbour error |",
             "|---|---|---|---|---|" + "---|" * len(COMBOS) + "---|---|---|---|"]
    for r in recs:
        t = r["truth"]
        lines.append(f"| {r['compound']} | {r['file']} | {r['input']} | {r['role']} | {t['cn']} / {t['mnnd']:.2f} / "
                     f"{t['neighbor']} | " + " | ".join(cell(r, c) for c in COMBOS)
                     + f" | {'-' if r['fwhm'] is None else format(r['fwhm'], 'g')} | "
                     + " | ".join(verdict(r, task, tol) or "-" for task in ("cn", "mnnd", "neighbor")) + " |")
    fw = [r["fwhm"] for r in recs if r["fwhm"] is not None]
    if fw:
        lines += ["", f"FWHM: the Gaussian broadening (eV, of match.BROADEN_FWHM) that brings the twin's FEFF XANES closest "
                  f"to the scan's (MAE of the features); median {np.median(fw):g} eV over {len(fw)} scans "
                  f"(range {min(fw):g}-{max(fw):g})."]
    lines += ["", "Summary over these files (CN accuracy, MNND MAE in A, neighbour accuracy; n files with that input):", "",
              "| input | files | CN acc | MNND MAE | neighbour acc | n |", "|---|---|---|---|---|---|"]
    for c in COMBOS:
        for sel_name, sel in (("all", lambda r: True), ("twin not in training", lambda r: r["role"] != "train")):
            rr = [r for r in recs if sel(r) and c in r["pred"] and r["pred"][c].get("mnnd") is not None]
            if not rr:
                continue
            cn = np.mean([r["pred"][c].get("cn") == r["truth"]["cn"] for r in rr])
            mn = np.mean([abs(r["pred"][c]["mnnd"] - r["truth"]["mnnd"]) for r in rr])
            nb = np.mean([r["pred"][c].get("neighbor") == r["truth"]["neighbor"] for r in rr])
            lines.append(f"| {c} | {sel_name} | {cn:.2f} | {mn:.3f} | {nb:.2f} | {len(rr)} |")
    for task, name in (("cn", "CN"), ("mnnd", f"MNND (> {tol:g} A off)"), ("neighbor", "Neighbour")):
        counts: dict[str, int] = {}
        for r in recs:
            v = verdict(r, task, tol)
            if v:
                counts[v] = counts.get(v, 0) + 1
        lines.append("")
        lines.append(f"{name} errors on measured input, by cause: " + (
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])) or "none") + ".")
    lines += ["", "'model': wrong from the twin's FEFF spectra too; 'gap: XANES' / 'gap: EXAFS': right from FEFF, and "
              "putting FEFF's spectrum of that kind in place of the measured one fixes it; 'gap: both': either swap "
              "alone leaves it wrong; 'gap: together': either swap alone fixes it; 'gap': the file gives one kind."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "scratch" / "bench_measured")
    ap.add_argument("--tol", type=float, default=0.05, help="MNND error (A) counted as wrong")
    ap.add_argument("--models", default=None, help="store URL whose newest inverse models read the inputs "
                    "(e.g. candidates); default: the work store's (shipped) models")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows, engine = load_work(args.work)
    from xastruct import store

    models = store.get_engine(args.models) if args.models else None
    recs = attribute(rows, engine, models)
    args.out.write_text(report(recs, time.perf_counter() - t0, args.tol, args.models))
    (args.work / f"{args.out.stem}.json").write_text(json.dumps(recs, default=str, indent=1))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
