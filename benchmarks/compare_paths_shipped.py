"""Per-site comparison of the shipped EXAFS path model with an earlier shipped version (from git).

    .venv/bin/python benchmarks/compare_paths_shipped.py [--old-rev 0df9775] [--db duckdb:///scratch/plot_paths.duckdb]

Takes the universal `paths` model's held-out materials (its split.json; the split is the same for
both when data and seed are), predicts k^2 chi(k) of every test site with the model shipped now and
with the one shipped at --old-rev (0df9775: width 512 without the focusing input), and reports the
per-site MAE against FEFF: overall, on the tenth of sites the OLD model got worst (where single
scattering fails; selecting by the old model's error favours the new one a little) and on the rest.
The store is plot_forward_paths.py's. Writes benchmarks/results/paths_old_vs_new.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHIPPED = "xastruct/data/pretrained/forward/all/all/EXAFS/paths/v1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-rev", default="0df9775")
    ap.add_argument("--db", default="duckdb:///scratch/plot_paths.duckdb")
    args = ap.parse_args()
    import sqlalchemy as sa

    from bench_forward_default import default_store

    from xastruct import registry, store, train

    scratch = tempfile.TemporaryDirectory()  # the old artifact and a store copy, removed at exit
    old_dir = Path(scratch.name) / "v1"
    try:
        files = subprocess.run(["git", "ls-tree", "-r", "--name-only", args.old_rev, SHIPPED], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        for f in files:  # the old artifact directory, byte for byte
            out = old_dir / Path(f).relative_to(SHIPPED)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(subprocess.run(["git", "show", f"{args.old_rev}:{f}"], cwd=ROOT, check=True,
                                           capture_output=True).stdout)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"--old-rev {args.old_rev}: cannot read {SHIPPED} from git ({exc}); run this in a git "
                         "clone of the project and pass a commit that shipped the model") from None
    if not files:
        raise SystemExit(f"--old-rev {args.old_rev} has no {SHIPPED}: pass a commit that shipped the path model")
    default_store(args.db, models=True).dispose()
    tmp = Path(scratch.name) / "s.duckdb"  # a copy: the old model is registered only there
    shutil.copy(args.db[len("duckdb:///"):], tmp)
    eng = store.get_engine(f"duckdb:///{tmp}")
    eid = next(e for e in registry.list_models(eng, task="forward") if e.arch == "paths" and e.element is None).id
    models = {"now": registry.load(eng, eid, device="cpu")}
    with eng.begin() as c:
        c.execute(sa.text("UPDATE models SET artifact = :a WHERE id = :i"), {"a": str(old_dir), "i": eid})
    models[args.old_rev] = registry.load(eng, eid, device="cpu")
    data = train.load_universal_data(eng, kind="EXAFS")
    test = set(json.loads((Path(models["now"].artifact) / "split.json").read_text())["test"])
    rows = [i for i, s in enumerate(data.structure_ids.tolist()) if data.hashes[s] in test]
    mae = {}
    for name, m in models.items():
        pred = [train.predict_sites(m, data.structures[int(data.structure_ids[i])], [int(data.site_indices[i])],
                                    edge=data.row_edges[i], device="cpu")[:, 0].mean(0) for i in rows]
        mae[name] = np.abs(np.stack(pred) - data.y[rows]).mean(1)
    o, n = mae[args.old_rev], mae["now"]
    worst = np.argsort(-o)[: len(o) // 10]
    rest = np.setdiff1d(np.arange(len(o)), worst)

    def label(j: int) -> str:
        i = rows[j]
        return f"{data.names[int(data.structure_ids[i])]} site {int(data.site_indices[i])} ({data.row_elements[i]})"
    lines = ["# Shipped EXAFS path model now vs at " + args.old_rev, "",
             f"`.venv/bin/python benchmarks/compare_paths_shipped.py --old-rev {args.old_rev}`: {len(rows)} held-out "
             "sites of the shipped model's split; per-site MAE of k^2 chi(k) (seeds averaged) against feff8l.", "",
             "| sites | n | MAE at " + args.old_rev + " | MAE now | better now |", "|---|---|---|---|---|"]
    for what, idx in (("all", np.arange(len(o))), (f"worst tenth at {args.old_rev}", worst), ("the rest", rest)):
        lines.append(f"| {what} | {len(idx)} | {o[idx].mean():.3f} | {n[idx].mean():.3f} | {(n[idx] < o[idx]).sum()} |")
    lines += ["", f"The 10 worst sites at {args.old_rev}:", "", "| site | MAE at " + args.old_rev + " | MAE now |", "|---|---|---|"]
    lines += [f"| {label(j)} | {o[j]:.3f} | {n[j]:.3f} |" for j in worst[:10]]
    (RESULTS / "paths_old_vs_new.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
