"""Benchmark: how a measured chi(k) differs from FEFF's chi(k) of the same crystal, and what that
does to the inverse models; optionally, candidate inverse models against the shipped ones on the
measured files.

    .venv/bin/python benchmarks/bench_sim_vs_measured.py [--work scratch/bench_measured] \
        [--candidate duckdb:///./scratch/aug/store.duckdb --candidate-label "augment 2"]

Needs benchmarks/bench_measured.py's work directory (its store with the shipped models and the
embedded dataset, and its measured.json with truth labels and simulated twins): run that first.
Writes benchmarks/results/sim_vs_measured.md and sim_vs_measured.png.

Part 1, for every measured file with EXAFS whose compound has a simulated twin in the dataset
(StructureMatcher, bench_measured.library_twins): least-squares fit, over k = 3-11 1/A with k^2
weight, of measured chi(k) = A exp(-2 k^2 ds2) chi_FEFF(sqrt(k^2 + dE / 3.81)) -- an amplitude
factor, extra disorder and an E0 offset, the three numbers an EXAFS analyst fits -- and the
shipped models' MNND read from the measured chi and from the twin's FEFF chi (EXAFS input only);
the same fit with the forward EXAFS model's (the shipped path model's) chi of the twin in FEFF's place.

Part 2 (--candidate): the newest models of a candidate store (e.g. trained with `--augment`) and
the shipped models on every file through the same `inverse.predict_spectra` that `xastruct predict
structure` uses, with XANES+EXAFS (what the file gives) and with EXAFS only.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_measured import XASLIB, load_work  # noqa: E402  (owned by bench_measured.py: same files, same place)

OUT = ROOT / "benchmarks" / "results" / "sim_vs_measured.md"
PLOT_FILES = ("Cu_Foil_rt_2016Foils.xdi", "cr2o3_rt_001.xdi", "Fe2O3_rt_01.xdi", "FeO_rt_01.xdi", "ZnO.xdi",
              "Chorover13BM_Znfoil_rt_01.xdi")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def twin_chi(engine, twin: str, element: str) -> tuple[np.ndarray, int] | None:
    """The twin structure's stored feff8l chi(k) on EXAFS_GRID, averaged over its absorber sites with
    their multiplicities (what the scan of the crystal records), and the number of stored sites."""
    from stored_spectra import site_averaged

    from xastruct import inverse

    got = site_averaged(engine, element, "EXAFS", inverse.EXAFS_GRID, source_id=twin)
    return (got[0]["feff"], len(got[0]["weights"])) if got else None


def twin_model_chi(engine, entry, twin: str, element: str) -> np.ndarray | None:
    """chi(k) on EXAFS_GRID that the forward EXAFS model (*entry*) predicts for the twin structure:
    its members' mean over the same stored absorber sites, weighted as :func:`twin_chi` weights them."""
    from stored_spectra import site_averaged

    from xastruct import inverse, train

    got = site_averaged(engine, element, "EXAFS", inverse.EXAFS_GRID, source_id=twin, structures=True)
    if not got or entry is None:
        return None
    d = got[0]
    k2chi = train.predict_sites(entry, d["structure"], d["site_indices"], device="cpu", edge="K")  # (m, sites, k)
    k = train.grid_points(entry.grid)
    if len(k) != len(inverse.EXAFS_GRID) or not np.allclose(k, inverse.EXAFS_GRID):
        raise SystemExit(f"{entry.name}: grid {entry.grid} is not inverse.EXAFS_GRID")
    return train.site_average(k2chi, d["weights"]).mean(0) / k**2


def fit_nuisance(meas: np.ndarray, sim: np.ndarray) -> dict:
    """A, ds2 (A^2), dE (eV) of meas(k) = A exp(-2 k^2 ds2) sim(sqrt(k^2 + dE/3.81)); R^2 of the
    k^2-weighted fit and of sim itself over match.EXAFS_FIT_K (`match.fit_exafs`, what `predict spectrum --compare`
    reports for an EXAFS model)."""
    from xastruct import inverse, match

    got = match.fit_exafs(inverse.EXAFS_GRID, meas, sim)
    return {key: got[key] for key in ("A", "ds2", "dE", "r2_fit", "r2_raw")}


def predict(engine, inp, **kinds) -> dict:
    from xastruct import inverse

    p = inverse.predict_spectra(engine, replace(inp, **kinds), device="cpu")
    return {t: (v.get("value") if t != "neighbor" else v.get("label")) for t, v in p.items() if "error" not in v}


def twin_pairs(rows, engine):
    """(row, featurized measured file, twin's FEFF chi, its site count) for bench_measured rows whose
    compound has a simulated twin and whose scan gives EXAFS."""
    from xastruct import inverse

    for r in rows:
        if not r.get("twin") or r.get("input") != "XANES+EXAFS":
            continue
        inp = inverse.spectrum_features(XASLIB / r["rel"], element=r["element"])
        tw = twin_chi(engine, r["twin"], r["element"])
        if inp.exafs is not None and tw is not None:
            yield r, inp, tw[0], tw[1]


def part1(rows, engine, candidate=None) -> tuple[list[dict], dict]:
    from xastruct import inverse, registry

    k = inverse.EXAFS_GRID
    out, curves = [], {}
    # the forward EXAFS model (the shipped path model) in FEFF's place: the same fit against the scan
    fwd = registry.latest(engine, "forward", None, None, "EXAFS", device="cpu")
    for r, inp, sim, n in twin_pairs(rows, engine):
        fit = fit_nuisance(inp.exafs / k**2, sim)
        model_chi = twin_model_chi(engine, fwd, r["twin"], r["element"])
        if model_chi is not None:
            fit.update({f"model_{key}": v for key, v in fit_nuisance(inp.exafs / k**2, model_chi).items()})
        on_meas = predict(engine, inp, xanes=None)
        on_sim = predict(engine, inp, xanes=None, exafs=sim * k**2)
        out.append({"file": r["file"], "compound": r["compound"], "T": r["T"], "truth": r["truth"]["mnnd"],
                    "sites": n, **fit, "mnnd_meas": on_meas.get("mnnd"), "mnnd_sim": on_sim.get("mnnd"),
                    "nb_meas": on_meas.get("neighbor"), "nb_sim": on_sim.get("neighbor")})
        if candidate is not None:
            out[-1]["cand_meas"] = predict(candidate, inp, xanes=None).get("mnnd")
            out[-1]["cand_sim"] = predict(candidate, inp, xanes=None, exafs=sim * k**2).get("mnnd")
        out[-1]["model"] = fwd.name if model_chi is not None else None
        curves[r["file"]] = (inp.exafs, sim * k**2, out[-1], None if model_chi is None else model_chi * k**2)
        log(f"{r['file']}: A {fit['A']:.2f} ds2 {fit['ds2'] * 1e3:+.1f}e-3 dE {fit['dE']:+.1f} eV; MNND "
            f"measured {on_meas.get('mnnd', np.nan):.2f} / FEFF {on_sim.get('mnnd', np.nan):.2f} / true {r['truth']['mnnd']:.2f}")
    return out, curves


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xastruct import inverse

    names = [f for f in PLOT_FILES if f in curves]
    fig, ax = plt.subplots(len(names), 2, figsize=(11, 2.6 * len(names)), squeeze=False)
    for i, f in enumerate(names):
        meas, sim, rec, model = curves[f]
        ax[i, 0].plot(inverse.EXAFS_GRID, meas, label=f"measured (model: {rec['mnnd_meas']:.2f} A)")
        ax[i, 0].plot(inverse.EXAFS_GRID, sim, label=f"FEFF, same crystal (model: {rec['mnnd_sim']:.2f} A)")
        if model is not None:
            ax[i, 0].plot(inverse.EXAFS_GRID, model, lw=1.0, ls="--", label="forward path model, same crystal")
        ax[i, 0].set_title(f"{rec['compound']}, {f}: MNND {rec['truth']:.2f} A", fontsize=9)
        ax[i, 0].set_ylabel("k$^2$ chi(k)")
        ax[i, 0].legend(fontsize=7)
        ax[i, 1].plot(inverse.R_GRID, inverse.chir_magnitude(meas)[0])
        ax[i, 1].plot(inverse.R_GRID, inverse.chir_magnitude(sim)[0])
        if model is not None:
            ax[i, 1].plot(inverse.R_GRID, inverse.chir_magnitude(model)[0], lw=1.0, ls="--")
        ax[i, 1].set_ylabel("|chi(R)|")
    ax[-1, 0].set_xlabel("k (1/A)")
    ax[-1, 1].set_xlabel("R (A), not phase-corrected")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def part2(rows, shipped, candidate) -> list[dict]:
    from xastruct import inverse
    from xastruct.errors import InputError

    out = []
    for r in rows:
        try:
            inp = inverse.spectrum_features(XASLIB / r["rel"], element=r["element"])
        except InputError:
            continue
        rec = {"file": r["file"], "compound": r["compound"], "truth": r["truth"], "twin": bool(r.get("twin")),
               "input": "+".join(k for k, v in (("XANES", inp.xanes), ("EXAFS", inp.exafs)) if v is not None)}
        for name, eng in (("shipped", shipped), ("candidate", candidate)):
            rec[name] = predict(eng, inp)
            if inp.exafs is not None and inp.xanes is not None:
                rec[name + "_exafs"] = predict(eng, inp, xanes=None)
        out.append(rec)
        log(f"{r['file']}: shipped {rec['shipped'].get('mnnd', np.nan):.2f} candidate "
            f"{rec['candidate'].get('mnnd', np.nan):.2f} true {r['truth']['mnnd']:.2f}")
    return out


def summary(recs: list[dict], key: str) -> str:
    rr = [r for r in recs if r.get(key) and r[key].get("mnnd") is not None]
    if not rr:
        return "-"
    err = np.array([abs(r[key]["mnnd"] - r["truth"]["mnnd"]) for r in rr])
    cn = np.mean([r[key].get("cn") == r["truth"]["cn"] for r in rr])
    nb = np.mean([r[key].get("neighbor") == r["truth"]["neighbor"] for r in rr])
    return f"{err.mean():.3f} (median {np.median(err):.3f}) | {cn:.2f} | {nb:.2f} | {len(rr)}"


def _g(r: dict, key: str) -> str:
    return "-" if r.get(key) is None else f"{r[key]:.2f}"


def report(p1: list[dict], p2: list[dict] | None, args, elapsed: float) -> str:
    from xastruct import inverse

    cmd = " ".join(sys.argv[1:])
    lines = [
        "# Measured vs simulated EXAFS of the same crystal, and the inverse models",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `.venv/bin/python "
        f"benchmarks/bench_sim_vs_measured.py{(' ' + cmd) if cmd else ''}` in {elapsed:.0f} s. Measured files, truth and "
        "twins: benchmarks/bench_measured.py (measured.md). FEFF chi: the dataset's feff8l run of the twin "
        "(S02 0.9, one SIG2 0.004 A^2 for every path), mean over its absorber sites. Measured chi: "
        "`xastruct predict structure`'s extraction (larch autobk, k origin = `inverse.measured_k_origin`: half-step "
        f"- {inverse.FEFF_FERMI_OFFSET_EV:g} + {inverse.MEASURED_EXAFS_E0_SHIFT_EV:g} eV).",
        "",
        "## Part 1: fitted differences (k = 3-11 1/A, k^2 weight)",
        "",
        "measured chi(k) = A exp(-2 k^2 ds2) chi_FEFF(sqrt(k^2 + dE/3.81)); R^2 raw = FEFF chi as it is. "
        "MNND columns: the shipped EXAFS-input models on the measured chi and on the twin's FEFF chi.",
        "",
        "| compound | file | T | A | ds2 (1e-3 A^2) | dE (eV) | R^2 raw | R^2 fit | path model: R^2 raw | R^2 fit | A | true MNND | MNND from measured | MNND from FEFF | neighbour measured / FEFF |"
        + (" candidate: MNND from measured / FEFF |" if p2 is not None else ""),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if p2 is not None else ""),
    ]
    for r in p1:
        lines.append(f"| {r['compound']} | {r['file']} | {r['T']} | {r['A']:.2f} | {r['ds2'] * 1e3:+.1f} | {r['dE']:+.1f} | "
                     f"{r['r2_raw']:.2f} | {r['r2_fit']:.2f} | {_g(r, 'model_r2_raw')} | {_g(r, 'model_r2_fit')} | "
                     f"{_g(r, 'model_A')} | {r['truth']:.3f} | {r['mnnd_meas']:.3f} | {r['mnnd_sim']:.3f} | "
                     f"{r['nb_meas']} / {r['nb_sim']} |"
                     + (f" {r['cand_meas']:.3f} / {r['cand_sim']:.3f} |" if "cand_meas" in r else ""))
    if p1:
        em = np.array([abs(r["mnnd_meas"] - r["truth"]) for r in p1])
        es = np.array([abs(r["mnnd_sim"] - r["truth"]) for r in p1])
        lines += ["", f"{len(p1)} files: MNND MAE from the measured chi {em.mean():.3f} A, from the same crystal's FEFF chi "
                  f"{es.mean():.3f} A"
                  + (f" (candidate: {np.mean([abs(r['cand_meas'] - r['truth']) for r in p1]):.3f} / "
                     f"{np.mean([abs(r['cand_sim'] - r['truth']) for r in p1]):.3f} A)" if p1 and "cand_meas" in p1[0] else "")
                  + f". Median fitted A {np.median([r['A'] for r in p1]):.2f}, ds2 "
                  f"{np.median([r['ds2'] for r in p1]) * 1e3:+.1f}e-3 A^2, dE {np.median([r['dE'] for r in p1]):+.1f} eV.",
                  *([f"The forward path model ({p1[0]['model']}) in FEFF's place, on the same sites of the same crystal: "
                     f"median R^2 raw {np.median([r['model_r2_raw'] for r in p1 if 'model_r2_raw' in r]):.2f} vs FEFF's "
                     f"{np.median([r['r2_raw'] for r in p1]):.2f}, after the same three-parameter fit "
                     f"{np.median([r['model_r2_fit'] for r in p1 if 'model_r2_fit' in r]):.2f} vs "
                     f"{np.median([r['r2_fit'] for r in p1]):.2f} (the model learned feff8l's chi, so FEFF bounds it)."]
                    if any("model_r2_fit" in r for r in p1) else []),
                  "", "![measured vs FEFF](sim_vs_measured.png)"]
    if p2 is not None:
        lines += ["", f"## Part 2: {args.shipped_label} ('shipped') vs {args.candidate_label} ('candidate')", "",
                  f"'shipped': the models registered in the work store (ingested by bench_measured.py); 'candidate': the "
                  f"newest model of each task in `{args.candidate}`. Columns: MNND MAE (A), CN accuracy, neighbour accuracy, "
                  "files. The measured files are a test set: report, do not tune on them.", "",
                  "| models | input | files | MNND MAE (median) | CN acc | neighbour acc | n |", "|---|---|---|---|---|---|---|"]
        for name in ("shipped", "candidate"):
            for inp_key, inp_name in ((name, "what the file gives"), (name + "_exafs", "EXAFS only")):
                for sel_name, sel in (("all", lambda r: True), ("twin in dataset", lambda r: r["twin"]),
                                      ("no twin", lambda r: not r["twin"])):
                    lines.append(f"| {name} | {inp_name} | {sel_name} | {summary([r for r in p2 if sel(r)], inp_key)} |")
        lines += ["", "| file | true MNND | shipped | candidate | shipped EXAFS only | candidate EXAFS only |", "|---|---|---|---|---|---|"]
        for r in p2:
            def g(key):
                v = (r.get(key) or {}).get("mnnd")
                return "-" if v is None else f"{v:.2f}"
            lines.append(f"| {r['file']} | {r['truth']['mnnd']:.3f} | {g('shipped')} | {g('candidate')} | "
                         f"{g('shipped_exafs')} | {g('candidate_exafs')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "scratch" / "bench_measured")
    ap.add_argument("--candidate", default=None, help="store URL whose newest inverse models are compared")
    ap.add_argument("--candidate-label", default="candidate")
    ap.add_argument("--shipped-label", default="the shipped models",
                    help="what the work store's models are (e.g. the previous shipped set)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows, shipped = load_work(args.work)
    from xastruct import store

    cand = store.get_engine(args.candidate) if args.candidate else None
    p1, curves = part1(rows, shipped, cand)
    plot(curves, args.out.with_suffix(".png"))
    p2 = part2(rows, shipped, cand) if cand is not None else None
    args.out.write_text(report(p1, p2, args, time.perf_counter() - t0))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
