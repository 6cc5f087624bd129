"""Benchmark: the measured-vs-FEFF gap on xaslib scans that the measured-spectra test never scores,
on which inverse.AUGMENT's ranges are now set (session 16: the 10th-90th percentiles of the fits
here; until then they came from the test files' fits); and the shipped inverse models on those scans.

    .venv/bin/python benchmarks/bench_gap_validation.py [--work scratch/bench_measured] [--workers 2] \
        [--candidate duckdb:///./scratch/cand/store.duckdb --candidate-label "..."]

--candidate: another store's inverse models (e.g. `xastruct train inverse ... --augment-ranges JSON`
with ranges read off this benchmark's fits) beside the shipped ones, on the same scans.

bench_sim_vs_measured.py (Part 1) fits the gap on 21 of bench_measured.py's 33 test files (the
source of inverse.AUGMENT's ranges until session 16). Here the same gap is fitted on :data:`FILES`:
scans of V, Sr, Cd, Se (K edge) and W, Pt, Au, Pb, Eu (L3 edge) compounds with simple, well-known
crystals, none of them a bench_measured.py file; :data:`FILES_ADDED` (session 23) adds six scans of 3d
compounds (V, Cr, Fe, Cu), whose XANES the models read, two of them XANES only (no gap fit). For each: the crystal is built with pymatgen from
its literature cell, feff8l runs with the dataset's defaults (`feff.run_job`, as `xastruct simulate`)
on every symmetry-inequivalent absorber site, chi(k) is the multiplicity-weighted mean; the measured
chi(k) is `xastruct predict structure`'s extraction (`inverse.spectrum_features`). Over k = 3-11 1/A
with k^2 weight, measured chi(k) is fitted with exactly the perturbation `inverse.augment_exafs`
applies to training copies: A * shell_damping(chi_FEFF; ds2, ds2_per_A)(sqrt(k^2 + dE/3.81)), and
with the 3-parameter form of bench_sim_vs_measured (ds2_per_A = 0). With --work (bench_measured.py's
store, shipped models; skipped when absent) the 4-parameter fit is also run on the test twins, and
the shipped models read CN / MNND / neighbour from each validation scan and, EXAFS only, from the
crystal's FEFF chi (truth: CrystalNN labels of the built crystal, multiplicity-weighted, as
bench_measured.structure_truth). inverse.MEASURED_EXAFS_E0_SHIFT_EV was set from these fits (their
median dE with the shift at 0, which each run refits); fitted dE is relative to the current extraction.

Writes benchmarks/results/gap_validation.md. FEFF results are cached in <work>/gap_validation/
(rerun = no FEFF).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_measured import XASLIB, structure_truth, xdi_temperature  # noqa: E402
from xastruct.match import EXAFS_FIT_DE_STARTS as DE_STARTS  # noqa: E402  (the fit window and E0 starts of
from xastruct.match import EXAFS_FIT_K as FIT_K  # noqa: E402  match.fit_exafs, as bench_sim_vs_measured uses)

OUT = ROOT / "benchmarks" / "results" / "gap_validation.md"


def structures() -> dict:
    """Literature cells of the validation compounds (room temperature unless noted)."""
    from pymatgen.core import Lattice, Structure

    sg = Structure.from_spacegroup
    rs = lambda a, m, x: sg("Fm-3m", Lattice.cubic(a), [m, x], [[0, 0, 0], [0.5, 0.5, 0.5]])  # noqa: E731
    zb = lambda a, m, x: sg("F-43m", Lattice.cubic(a), [m, x], [[0, 0, 0], [0.25, 0.25, 0.25]])  # noqa: E731
    return {
        "V": sg("Im-3m", Lattice.cubic(3.024), ["V"], [[0, 0, 0]]),
        "VO": rs(4.073, "V", "O"),  # VO_x is vacancy-rich; the ideal rock salt is the simple model
        # karelianite (corundum type): Dernier, J. Phys. Chem. Solids 31, 2569 (1970)
        "V2O3": sg("R-3c", Lattice.hexagonal(4.952, 14.003), ["V", "O"], [[0, 0, 0.3463], [0.3121, 0, 0.25]]),
        "CdO": rs(4.695, "Cd", "O"),
        # greenockite (wurtzite type)
        "CdS": sg("P6_3mc", Lattice.hexagonal(4.1367, 6.7161), ["Cd", "S"], [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.3770]]),
        "SrO": rs(5.160, "Sr", "O"),
        "SrTiO3": sg("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
        "W": sg("Im-3m", Lattice.cubic(3.1652), ["W"], [[0, 0, 0]]),
        "Pt": sg("Fm-3m", Lattice.cubic(3.9242), ["Pt"], [[0, 0, 0]]),
        "Au": sg("Fm-3m", Lattice.cubic(4.0782), ["Au"], [[0, 0, 0]]),
        "Pb": sg("Fm-3m", Lattice.cubic(4.9502), ["Pb"], [[0, 0, 0]]),
        "ZnSe": zb(5.6676, "Zn", "Se"),
        "HgSe": zb(6.085, "Hg", "Se"),
        # NiAs type
        "NiSe": sg("P6_3/mmc", Lattice.hexagonal(3.6613, 5.3562), ["Ni", "Se"], [[0, 0, 0], [1 / 3, 2 / 3, 0.25]]),
        "EuO": rs(5.144, "Eu", "O"),
        "EuSe": rs(6.185, "Eu", "Se"),
        # added in session 23 (3d absorbers, so their XANES is read; FILES_ADDED)
        # siderite (calcite type): Effenberger et al., Z. Kristallogr. 156, 233 (1981); Fe-O 2.148 A
        "FeCO3": sg("R-3c", Lattice.hexagonal(4.6916, 15.3796), ["Fe", "C", "O"], [[0, 0, 0], [0, 0, 0.25], [0.2726, 0, 0.25]]),
        # goethite, Pbnm setting: Yang et al., Am. Mineral. 91, 1299 (2006); Fe-O 3 x 1.95 + 3 x 2.10 A
        "FeOOH": sg("Pbnm", Lattice.orthorhombic(4.6158, 9.9550, 3.0232), ["Fe", "O", "O", "H"],
                    [[-0.04833, 0.14623, 0.25], [0.28937, -0.19963, 0.25], [-0.19467, -0.05246, 0.25], [-0.4115, -0.0872, 0.25]]),
        # monoclinic M1 (room temperature): Longo & Kierkegaard, Acta Chem. Scand. 24, 420 (1970); V-V 2.62 / 3.17 A
        "VO2": sg("P2_1/c", Lattice.monoclinic(5.7517, 4.5378, 5.3825, 122.646), ["V", "O", "O"],
                  [[0.23947, 0.97894, 0.02646], [0.10616, 0.21185, 0.20859], [0.40051, 0.70258, 0.29884]]),
        "K2CrO4": k2cro4(),
        **({"azurite": azurite} if (azurite := _azurite()) is not None else {}),
    }


def k2cro4():
    """K2CrO4 as a model: the beta-K2SO4 type (atom positions of K2SO4, McGinnety, Acta Cryst. B28, 2845
    (1972)) in K2CrO4's cell (a, b, c 7.662, 5.919, 10.391 A), each CrO4 tetrahedron scaled about its Cr to
    the chromate's Cr-O of 1.65 A. Truth (CN 4, MNND 1.65 A, O) is exact; shells beyond are approximate."""
    from pymatgen.core import Lattice, Structure

    s = Structure.from_spacegroup(
        "Pnma", Lattice.orthorhombic(7.662, 5.919, 10.391), ["K", "K", "Cr", "O", "O", "O"],
        [[0.6742, 0.25, 0.4106], [-0.0104, 0.25, 0.7005], [0.2329, 0.25, 0.4200], [0.0376, 0.25, 0.4160],
         [0.2985, 0.25, 0.5590], [0.3018, 0.0405, 0.3524]])  # fmt: skip
    for i, site in enumerate(s):
        if site.specie.symbol == "Cr":
            for nb in s.get_neighbors(site, 2.0):
                s.replace(nb.index, "O", site.coords + (nb.coords - site.coords) * 1.65 / nb.nn_distance,
                          coords_are_cartesian=True)  # fmt: skip
    return s


def _azurite():
    """Azurite Cu3(CO3)2(OH)2: Materials Project's relaxed cell (mp-23733, in the shared FEFF 9 Cu set) with
    its lattice set to the measured one (Belokoneva et al., Phys. Chem. Miner. 28, 498 (2001)); None without
    the shared data."""
    from pymatgen.core import Lattice, Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    path = ROOT.parent / "shared" / "data" / "cu_k_feff9" / "materials" / "mp-23733" / "POSCAR"
    if not path.exists():
        return None
    s = SpacegroupAnalyzer(Structure.from_file(path)).get_conventional_standard_structure()
    return Structure(Lattice.monoclinic(5.0109, 5.8485, 10.345, 92.43), s.species, s.frac_coords)


#: xaslib file -> (absorber, compound). One scan per compound and temperature; none is a
#: bench_measured.FILES entry (nor a repeat scan of one). Left out: VO2 / V2O5 / WO2 / WO3 / Cr2S3 /
#: CuSe / Cu2Se / CoSe (low-symmetry or disordered cells), CeO2 (scan ends at k = 10).
FILES = {
    "V/V_foil.xdi": ("V", "V"),
    "V/VO.xdi": ("V", "VO"),
    "V/V2O3.xdi": ("V", "V2O3"),
    "Cd/CdO_10K_01.xdi": ("Cd", "CdO"),
    "Cd/CdS_10K_01.xdi": ("Cd", "CdS"),
    "Sr/SrO_rt_01.xdi": ("Sr", "SrO"),
    "Sr/SrO_10K_01.xdi": ("Sr", "SrO"),
    "Sr/SrTiO3_rt_01.xdi": ("Sr", "SrTiO3"),
    "Sr/SrTiO3_10K_01.xdi": ("Sr", "SrTiO3"),
    "W/W_metal_rt_01.xdi": ("W", "W"),
    "Pt/pt_metal_rt.xdi": ("Pt", "Pt"),
    "Au/Au_Foil_L3_rt_2016Foils.xdi": ("Au", "Au"),
    "Pb/Pb_Foil_L3_rt_2016Foils.xdi": ("Pb", "Pb"),
    "Se/Se_ZnSe_rt_01.xdi": ("Se", "ZnSe"),
    "Se/Se_HgSe_rt_01.xdi": ("Se", "HgSe"),
    "Se/Se_NiSe_rt_01.xdi": ("Se", "NiSe"),
    "Eu/EuO_eu_l3_001.xdi": ("Eu", "EuO"),
    "Eu/EuSe_eu_l3_001.xdi": ("Eu", "EuSe"),
}
#: added in session 23: 3d absorbers whose XANES the shipped models read (of the 18 above, only the 3 V
#: scans), so XANES-side changes can be judged; not used to set inverse.AUGMENT or the E0 shift. Two
#: stop before the EXAFS range (no gap fit; the models read their XANES). Left out: Cr2S3, Na2CrO4,
#: K2Cr2O7, V2O5, Cu2S (no literature cell at hand), Fe3C (CrystalNN counts only its C neighbours).
FILES_ADDED = {
    "V/VO2.xdi": ("V", "VO2"),
    "Fe/Hansel2001_siderite_xanes_001.xdi": ("Fe", "FeCO3"),
    "Fe/Hansel2001_goethite_xanes_003.xdi": ("Fe", "FeOOH"),
    "Cr/k2cro4_rt_001.xdi": ("Cr", "K2CrO4"),
    "Cr/k2cro4_15K_001.xdi": ("Cr", "K2CrO4"),
    "Cu/Cu_azurite_13K_01.xdi": ("Cu", "azurite"),
}
PARAMS = ("A", "ds2", "ds2_per_A", "dE")
AUG_KEY = {"A": "amplitude", "ds2": "sigma2", "ds2_per_A": "sigma2_per_A", "dE": "e0_ev"}


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _feff(args) -> dict:
    from xastruct.feff import run_job

    struct, idx, edge = args
    r = run_job({"kind": "EXAFS", "structure": struct, "site_index": idx, "edge": edge})
    if r["status"] != "ok":
        return {"status": "failed", "reason": r.get("reason")}
    return {"status": "ok", "k": np.asarray(r["k"]).tolist(), "chi": np.asarray(r["chi"]).tolist(),
            "seconds": r["wall_seconds"]}


def feff_chi(compound: str, structure, element: str, edge: str, cache: Path, pool) -> np.ndarray:
    """Multiplicity-weighted mean feff8l chi(k) on inverse.EXAFS_GRID over the absorber's orbits."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    from xastruct import inverse

    path = cache / f"{compound}_{element}_{edge}.json"
    if not path.exists():
        sym = SpacegroupAnalyzer(structure, symprec=0.01).get_symmetrized_structure()
        orbits = [(eq[0], len(eq)) for eq in sym.equivalent_indices if structure[eq[0]].specie.symbol == element]
        runs = list(pool.map(_feff, [(structure.as_dict(), i, edge) for i, _ in orbits]))
        bad = [r["reason"] for r in runs if r["status"] != "ok"]
        if bad:
            raise RuntimeError(f"feff8l failed for {compound} ({element} {edge}): {bad[0]}")
        path.write_text(json.dumps({"orbits": orbits, "runs": runs}))
    rec = json.loads(path.read_text())
    k = inverse.EXAFS_GRID
    w = np.array([m for _, m in rec["orbits"]], float)
    chis = np.array([np.interp(k, r["k"], r["chi"]) for r in rec["runs"]])
    return (w[:, None] * chis).sum(0) / w.sum()


def fit_gap(meas: np.ndarray, sim: np.ndarray, *, per_a: bool) -> dict:
    """Fit meas(k) = A * shell_damping(sim; ds2, ds2_per_A)(sqrt(k^2 + dE/3.81)) (chi, not k-weighted),
    the order inverse.augment_exafs applies them; per_a=False fixes ds2_per_A = 0."""
    from scipy.optimize import least_squares

    from xastruct import inverse

    k = inverse.EXAFS_GRID
    sel = (k >= FIT_K[0]) & (k <= FIT_K[1])

    def model(p):
        a, s, sa, de = p if per_a else (*p[:2], 0.0, p[2])
        damped = inverse.shell_damping(sim[None, :], np.array([[s]]), np.array([[sa]]))[0]
        kt = np.sqrt(np.maximum(k**2 + de / 3.8099821, 0.0))
        return a * np.interp(kt, k, damped)

    def resid(p):
        return (model(p) - meas)[sel] * k[sel] ** 2

    lo, hi = [0.1, -0.02, -0.01, -30], [3, 0.03, 0.02, 30]
    if not per_a:
        lo, hi = lo[:2] + lo[3:], hi[:2] + hi[3:]
    x0 = lambda d0: [0.9, 0.002, 0.001, d0] if per_a else [0.9, 0.002, d0]  # noqa: E731
    best = min((least_squares(resid, x0(d0), bounds=(lo, hi)) for d0 in DE_STARTS), key=lambda r: r.cost)
    p = best.x if per_a else (*best.x[:2], 0.0, best.x[2])
    tot = float(np.sum((meas * k**2)[sel] ** 2))
    return {"A": float(p[0]), "ds2": float(p[1]), "ds2_per_A": float(p[2]), "dE": float(p[3]),
            "r2_fit": 1 - 2 * float(best.cost) / tot,
            "r2_raw": 1 - float(np.sum(((sim - meas) * k**2)[sel] ** 2)) / tot}


def shipped_predictions(url: str, inp, sim: np.ndarray) -> dict:
    """The store's models on the scan (XANES+EXAFS, EXAFS only) and on the crystal's FEFF chi (*sim*;
    None for a XANES-only scan: the scan as given only)."""
    from dataclasses import replace

    from xastruct import inverse, store

    eng = store.get_engine(url)
    out = {}
    reads = [("both", {})]
    if sim is not None:
        reads += [("exafs", {"xanes": None}), ("feff", {"xanes": None, "exafs": sim * inverse.EXAFS_GRID**inverse.EXAFS_KWEIGHT})]
    for label, kinds in reads:
        p = inverse.predict_spectra(eng, replace(inp, **kinds), device="cpu")
        out[label] = {t: (v.get("value") if t != "neighbor" else v.get("label")) for t, v in p.items() if "error" not in v}
    return out


#: how a scan is read: (label, measured k-origin shift in eV or None = the current one, blank unseen kinds)
RULES = (("session 14: k origin half-step - 5 eV, every input kind read", 0.0, False),
         ("k origin moved only", None, False),
         ("current: k origin moved, kinds the model did not train on blanked", None, True))


@contextlib.contextmanager
def reading_rule(shift: float | None, blank_unseen: bool):
    """Temporarily read scans as an earlier version did (module constants / the kind filter)."""
    from xastruct import inverse

    saved = inverse.MEASURED_EXAFS_E0_SHIFT_EV, inverse.without_unseen_kinds
    if shift is not None:
        inverse.MEASURED_EXAFS_E0_SHIFT_EV = shift
    if not blank_unseen:
        inverse.without_unseen_kinds = lambda table, config: (table, [])
    try:
        yield
    finally:
        inverse.MEASURED_EXAFS_E0_SHIFT_EV, inverse.without_unseen_kinds = saved


def rule_summary(url: str, items: list[tuple], rules=RULES) -> list[str]:
    """MNND MAE / median, CN and neighbour accuracy of the store's models on (path, element, truth)
    items under each of *rules* (XANES+EXAFS as the file gives them)."""
    from xastruct import inverse, store

    eng = store.get_engine(url)
    out = []
    for label, shift, blank in rules:
        err, cn, nb = [], [], []
        with reading_rule(shift, blank):
            for path, el, t in items:
                p = inverse.predict_spectra(eng, inverse.spectrum_features(path, element=el), device="cpu")
                if "error" not in p.get("mnnd", {"error": 1}):
                    err.append(abs(p["mnnd"]["value"] - t["mnnd"]))
                if "error" not in p.get("cn", {"error": 1}):
                    cn.append(p["cn"]["value"] == t["cn"])
                if "error" not in p.get("neighbor", {"error": 1}):
                    nb.append(p["neighbor"]["label"] == t["neighbor"])
        acc = lambda v: f"{np.mean(v):.2f}" if v else "-"  # noqa: E731  (a store may hold an MNND model only)
        out.append(f"| {label} | {len(err)} | {np.mean(err):.3f} | {np.median(err):.3f} | {acc(cn)} | {acc(nb)} |")
    return out


def per_scan(stores: list[tuple[str, str]], items: list[tuple]) -> list[str]:
    """One row per validation scan: CN / MNND / neighbour from each (label, store URL) under the current
    reading rule, and whether the scan's XANES entered at all (it is blanked for an absorber the models
    trained on too few XANES of): what a change to the XANES training can affect."""
    from xastruct import inverse, store

    heads = " | ".join(label for label, _ in stores)
    out = ["", "Per validation scan, current reading rule (CN / MNND A / neighbour; truth first):", "",
           f"| scan | XANES read | truth | {heads} |", "|---|---|---|" + "---|" * len(stores)]
    read_scores = [{"mnnd": [], "cn": [], "neighbor": []} for _ in stores]
    for path, el, t in items:
        inp = inverse.spectrum_features(path, element=el)
        cells, read, preds = [], "-", []
        for _, url in stores:
            p = inverse.predict_spectra(store.get_engine(url), inp, device="cpu")
            if inp.xanes is not None and read == "-":
                read = "no" if any("XANES" in x for x in p.get("mnnd", {}).get("ignored", [])) else "yes"
            g = lambda task, key: p.get(task, {}).get(key)  # noqa: E731
            m = g("mnnd", "value")
            preds.append((g("cn", "value"), m, g("neighbor", "label")))
            cells.append(f"{g('cn', 'value')} / {'-' if m is None else f'{m:.2f}'} / {g('neighbor', 'label')}")
        if read == "yes":
            for sc, (cn, m, nb) in zip(read_scores, preds):
                if m is not None:
                    sc["mnnd"].append(abs(m - t["mnnd"]))
                if cn is not None:
                    sc["cn"].append(cn == t["cn"])
                if nb is not None:
                    sc["neighbor"].append(nb == t["neighbor"])
        out.append(f"| {path.name} | {read} | {t['cn']} / {t['mnnd']:.2f} / {t['neighbor']} | " + " | ".join(cells) + " |")
    out += ["", "Scans whose XANES was read (what a change to the XANES training can affect):", ""]
    for (label, _), sc in zip(stores, read_scores):
        n = len(sc["mnnd"])
        out.append(f"- {label}: MNND MAE {np.mean(sc['mnnd']) if n else float('nan'):.3f} A (n {n}); CN "
                   f"{sum(sc['cn'])} of {len(sc['cn'])} right; neighbour {sum(sc['neighbor'])} of {len(sc['neighbor'])} right")
    return out


def test_twins(work: Path) -> list[dict]:
    """The 4-parameter fit on bench_measured's test files with a simulated twin (as Part 1)."""
    from bench_sim_vs_measured import twin_pairs

    from xastruct import inverse, store

    rows = json.loads((work / "measured.json").read_text())
    eng = store.get_engine(f"duckdb:///{work / 'store.duckdb'}")
    return [{"file": r["file"], "compound": r["compound"], "T": r["T"],
             **fit_gap(inp.exafs / inverse.EXAFS_GRID**2, sim, per_a=True)} for r, inp, sim, _ in twin_pairs(rows, eng)]


def spread(rows: list[dict], key: str) -> str:
    v = np.array([r[key] for r in rows])
    scale = 1e3 if key.startswith("ds2") else 1.0
    q = np.percentile(v, [0, 10, 50, 90, 100]) * scale
    return " | ".join(f"{x:.2f}" if scale == 1.0 or abs(x) < 100 else f"{x:.0f}" for x in q)


def _pred_summary(rows: list[dict]) -> str:
    """MNND MAE (scan as given / EXAFS only / FEFF chi), CN and neighbour accuracy of rows with "pred"."""
    def mae(read):
        e = [abs(r["pred"][read]["mnnd"] - r["truth"]["mnnd"]) for r in rows
             if r["pred"].get(read, {}).get("mnnd") is not None]
        return f"{np.mean(e):.3f} A (median {np.median(e):.3f}, n {len(e)})" if e else "-"

    def acc(task):
        v = [r["pred"]["both"].get(task) == r["truth"][task] for r in rows if r["pred"]["both"].get(task) is not None]
        return f"{np.mean(v):.2f} (n {len(v)})" if v else "-"

    return (f"MNND MAE {mae('both')}; EXAFS only {mae('exafs')}; from the crystals' FEFF chi {mae('feff')}; "
            f"CN accuracy {acc('cn')}; neighbour accuracy {acc('neighbor')}.")


def report(val: list[dict], tw: list[dict], elapsed: float, work: Path | None, rules: dict | None = None) -> str:
    from xastruct import inverse

    cmd = " ".join(sys.argv[1:])
    fitted = [r for r in val if "fit4" in r]
    orig = [r for r in fitted if not r.get("added")]
    fmt = lambda r, p: f"{r[p] * 1e3:+.1f}" if p.startswith("ds2") else f"{r[p]:.2f}" if p == "A" else f"{r[p]:+.1f}"  # noqa: E731
    lines = [
        "# The measured-vs-FEFF gap on validation scans (not in the measured test set)", "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `.venv/bin/python "
        f"benchmarks/bench_gap_validation.py{(' ' + cmd) if cmd else ''}` in {elapsed:.0f} s. "
        "FEFF: feff8l with the dataset's defaults (S02 0.9, SIG2 0.004 A^2, 7 A cluster, RPATH 6 A) on "
        "the literature crystal, multiplicity-weighted over the absorber's orbits. Measured chi: "
        "`xastruct predict structure`'s extraction (larch autobk, k origin = half-step - "
        f"{inverse.FEFF_FERMI_OFFSET_EV:g} + {inverse.MEASURED_EXAFS_E0_SHIFT_EV:g} eV, "
        "`inverse.measured_k_origin`). Fit over k = "
        f"{FIT_K[0]:g}-{FIT_K[1]:g} 1/A, k^2 weight, of measured chi(k) = A * shell_damping(chi_FEFF; ds2, "
        "ds2_per_A)(sqrt(k^2 + dE/3.81)) -- the perturbation `inverse.augment_exafs` gives training copies "
        "(ds2 extra disorder up to an apparent 1.5 A, growing by ds2_per_A per A beyond); '3-par' fixes "
        "ds2_per_A = 0 (bench_sim_vs_measured.py Part 1's form). ds2 in 1e-3 A^2, dE in eV. dE is relative to the "
        "current k origin. With the k origin of before (inverse.MEASURED_EXAFS_E0_SHIFT_EV = 0, refitted by this run) "
        f"the median fitted dE is {np.median([r['dE_shift0'] for r in orig]):.1f} eV on the {len(orig)} original scans"
        + (f" and {np.median([r['dE_shift0'] for r in tw]):.1f} eV on the test twins" if tw else "")
        + "; the shift was set from that validation median minus the centre of AUGMENT['e0_ev'] (module comment there).", "",
        "## Fits, validation scans", "",
        "| compound | file | T | R^2 raw | A | ds2 | ds2_per_A | dE | R^2 fit | 3-par: A | ds2 | dE | R^2 fit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in fitted:
        f4, f3 = r["fit4"], r["fit3"]
        lines.append(f"| {r['compound']}{' (added)' if r.get('added') else ''} | {r['file']} | {r['T']} | {f4['r2_raw']:.2f} | "
                     + " | ".join(fmt(f4, p) for p in PARAMS) + f" | {f4['r2_fit']:.2f} | "
                     + " | ".join(fmt(f3, p) for p in ("A", "ds2", "dE")) + f" | {f3['r2_fit']:.2f} |")
    lines += ["", "## Spread of the fitted parameters vs inverse.AUGMENT", "",
              "min | 10th | median | 90th | max percentile of the 4-parameter fits; AUGMENT = the uniform "
              "ranges the shipped inverse models were trained with (set from the original validation scans' fits, "
              "session 16; the scans added in session 23 set nothing).", "",
              "| parameter | set | n | min | p10 | median | p90 | max | AUGMENT range |", "|---|---|---|---|---|---|---|---|---|"]
    for p in PARAMS:
        lo, hi = inverse.AUGMENT[AUG_KEY[p]]
        sc = 1e3 if p.startswith("ds2") else 1.0
        for name, rows in (("validation", [r["fit4"] for r in orig]), ("added in session 23", [r["fit4"] for r in fitted if r.get("added")]),
                           ("test twins", tw)):
            if rows:
                lines.append(f"| {p} | {name} | {len(rows)} | {spread(rows, p)} | {lo * sc:g} to {hi * sc:g} |")
    if tw:
        lines += ["", "## 4-parameter fits, test twins (bench_measured.py files, for comparison)", "",
                  "| compound | file | T | R^2 raw | A | ds2 | ds2_per_A | dE | R^2 fit |", "|---|---|---|---|---|---|---|---|---|"]
        for r in tw:
            lines.append(f"| {r['compound']} | {r['file']} | {r['T']} | {r['r2_raw']:.2f} | "
                         + " | ".join(fmt(r, p) for p in PARAMS) + f" | {r['r2_fit']:.2f} |")
    pr = [r for r in val if r.get("pred")]
    if pr:
        lines += ["", "## Shipped inverse models on the validation scans", "",
                  f"Models of the store {work}/store.duckdb (bench_measured.py's: the shipped ones). Truth: CrystalNN "
                  "labels of the built crystal, multiplicity-weighted (bench_measured.structure_truth). These "
                  "scans are the validation set: inverse.AUGMENT's ranges are their fits' 10th-90th percentiles "
                  "and MEASURED_EXAFS_E0_SHIFT_EV their median E0 offset, so for the shipped models they are not "
                  "out of sample (bench_measured.py's 33 test files are); the scans marked '(added)' (session 23: 3d "
                  "absorbers, whose XANES the models read) set nothing. CN / neighbour models exist only for "
                  "some absorbers ('-' where none); XANES-only scans have no EXAFS or FEFF-chi column.", "",
                  "| compound | file | true CN | CN | true MNND | MNND (XANES+EXAFS) | MNND (EXAFS) | MNND (FEFF chi of the crystal) "
                  "| true neighbour | neighbour |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in pr:
            t, b, x, fe = r["truth"], r["pred"]["both"], r["pred"].get("exafs", {}), r["pred"].get("feff", {})
            f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"| {r['compound']}{' (added)' if r.get('added') else ''} | {r['file']} | {t['cn']} | {b.get('cn', '-')} | {t['mnnd']:.2f} | "
                         f"{f(b.get('mnnd'))} | {f(x.get('mnnd'))} | {f(fe.get('mnnd'))} | {t['neighbor']} | {b.get('neighbor', '-')} |")
        lines.append("")
        for name, group in (("original scans", [r for r in pr if not r.get("added")]),
                            ("added scans", [r for r in pr if r.get("added")]), ("all", pr)):
            if group:
                lines.append(f"{name}: " + _pred_summary(group) + "  ")
    if rules:
        lines += ["", "## Reading rules compared (same models, XANES + EXAFS as the file gives them)", "",
                  "How the scan is turned into model input: the measured chi(k) k origin "
                  f"(inverse.MEASURED_EXAFS_E0_SHIFT_EV, now {inverse.MEASURED_EXAFS_E0_SHIFT_EV:g} eV) and whether an input "
                  "kind the model trained on fewer than inverse.MIN_KIND_ROWS spectra of, for this absorber, is "
                  "blanked (inverse.without_unseen_kinds). The test files are bench_measured.py's 33 (3d absorbers).", "",
                  "| files | rule | n | MNND MAE (A) | median | CN acc | neighbour acc |", "|---|---|---|---|---|---|---|"]
        for name, rows in rules.items():
            lines += [f"| {name} " + r for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=ROOT / "scratch" / "bench_measured",
                    help="bench_measured.py's work dir (store with the shipped models); FEFF cache goes under it")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--candidate", action="append", help="store URL with other inverse models (e.g. trained with "
                    "--augment-ranges) to compare with the shipped ones on the same scans, current reading rule; repeatable")
    ap.add_argument("--candidate-label", action="append", help="a label per --candidate, in order")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    t0 = time.time()
    from xastruct import inverse

    cache = args.work / "gap_validation"
    cache.mkdir(parents=True, exist_ok=True)
    have_store = (args.work / "store.duckdb").exists() and (args.work / "measured.json").exists()
    structs = structures()
    val = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for rel, (el, comp) in {**FILES, **FILES_ADDED}.items():
            path = XASLIB / rel
            if not path.exists() or comp not in structs:
                log(f"missing {path if not path.exists() else comp + ' crystal (shared data)'}: skipped")
                continue
            inp = inverse.spectrum_features(path, element=el)
            rec = {"file": Path(rel).name, "compound": comp, "element": el, "edge": inp.edge,
                   "T": xdi_temperature(path), "added": rel in FILES_ADDED, "truth": structure_truth(structs[comp], el)}
            if inp.exafs is None:
                if rel not in FILES_ADDED:
                    log(f"{rel}: no EXAFS reach: skipped")
                    continue
                if have_store:  # XANES only: no gap fit, the models read what the file gives
                    rec["pred"] = shipped_predictions(f"duckdb:///{args.work / 'store.duckdb'}", inp, None)
                val.append(rec)
                log(f"{rel}: XANES only, no gap fit")
                continue
            sim = feff_chi(comp, structs[comp], el, inp.edge, cache, pool)
            meas = inp.exafs / inverse.EXAFS_GRID**2
            with reading_rule(0.0, True):  # the k origin before the shift: what the shift was set from
                meas0 = inverse.spectrum_features(path, element=el).exafs / inverse.EXAFS_GRID**2
            rec.update({"fit4": fit_gap(meas, sim, per_a=True), "fit3": fit_gap(meas, sim, per_a=False),
                        "dE_shift0": fit_gap(meas0, sim, per_a=True)["dE"]})
            if have_store:
                rec["pred"] = shipped_predictions(f"duckdb:///{args.work / 'store.duckdb'}", inp, sim)
            val.append(rec)
            f = rec["fit4"]
            log(f"{rel}: A {f['A']:.2f} ds2 {f['ds2'] * 1e3:+.1f}e-3 per A {f['ds2_per_A'] * 1e3:+.1f}e-3 "
                f"dE {f['dE']:+.1f} R2 {f['r2_raw']:.2f} -> {f['r2_fit']:.2f}")
    tw = test_twins(args.work) if have_store else []
    if have_store:
        with reading_rule(0.0, True):
            for r, r0 in zip(tw, test_twins(args.work)):
                r["dE_shift0"] = r0["dE"]
    rules = None
    if have_store:
        url = f"duckdb:///{args.work / 'store.duckdb'}"
        test = [(XASLIB / r["rel"], r["element"], r["truth"]) for r in json.loads((args.work / "measured.json").read_text())]
        items = lambda files: [(XASLIB / rel, el, structure_truth(structs[c], el)) for rel, (el, c) in files.items()  # noqa: E731
                               if (XASLIB / rel).exists() and c in structs]
        val_items, added_items = items(FILES), items(FILES_ADDED)
        sets = ((f"validation ({len(val_items)})", val_items), (f"validation added in session 23 ({len(added_items)})", added_items))
        rules = {name: rule_summary(url, its) for name, its in sets}
        rules[f"test ({len(test)})"] = rule_summary(url, test)
        if args.candidate:
            # a candidate store holds only models with EXAFS input: compare on the scans that have EXAFS
            test_x = [t for t in test if inverse.spectrum_features(t[0], element=t[1]).exafs is not None]
            now = RULES[-1:]
            labels = (args.candidate_label or []) + [f"candidate {i + 1}" for i in range(len(args.candidate))]
            for name, its in (*sets, (f"test with EXAFS ({len(test_x)})", test_x)):
                rules[name + ", shipped"] = rule_summary(url, its, now)
                for cand, label in zip(args.candidate, labels):
                    rules[name + f", {label}"] = rule_summary(cand, its, now)
    text = report(val, tw, time.time() - t0, args.work if have_store else None, rules)
    if have_store and args.candidate:
        text += "\n".join(per_scan([("shipped", url), *zip(labels, args.candidate)], val_items + added_items)) + "\n"
    args.out.write_text(text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
