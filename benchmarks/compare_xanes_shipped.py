"""The shipped forward XANES model now vs at an earlier commit: spectra and closed loop, same materials.

    .venv/bin/python benchmarks/compare_xanes_shipped.py --old-rev 89269f0 [--candidate DIR --candidate-label TEXT]

For each model (the one shipped now, the one shipped at --old-rev, read from git, and an optional
candidate artifact directory) a scratch store gets the embedded dataset, the shipped inverse models and
that forward XANES model alone; `screen` predicts the XANES of every Sc-Zn site and reads it back with
the inverse models (closed loop, as `make demo` does). Scored against FEFF10 and the sites' labels:
  * all sites with a FEFF10 XANES (the demo's view: mostly materials the models trained on);
  * the current model's validation and test materials that the old model did NOT train on (its
    split.json), so neither model saw them -- the only fair comparison when the data changed.
Forward: MAE of normalized mu vs FEFF10; closed loop: CN accuracy, MNND MAE (A), neighbour accuracy.
Writes benchmarks/results/xanes_shipped.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PRE = ROOT / "xastruct" / "data" / "pretrained"
ART = "forward/all/all/XANES/xastruct/v1"
EL = ["Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"]


def old_artifact(rev: str, dest: Path) -> Path:
    """The forward XANES artifact directory as committed at *rev*, copied out of git."""
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, f"xastruct/data/pretrained/{ART}"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        out = dest / Path(f).relative_to("xastruct/data/pretrained")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(subprocess.run(["git", "show", f"{rev}:{f}"], cwd=ROOT, capture_output=True, check=True).stdout)
    return dest / "forward"


def score(work: Path, forward_dir: Path, groups: dict[str, list[str]]) -> dict:
    from xastruct import ingest, screen, store
    from xastruct.registry import import_artifacts

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    eng = store.get_engine(f"duckdb:///{work / 'store.duckdb'}")
    ingest.ingest_builtin(eng, models=False)
    for task in ("cn", "mnnd", "neighbor"):
        import_artifacts(eng, PRE / task)
    import_artifacts(eng, forward_dir)
    screen.screen_forward(eng, elements=EL)
    screen.screen_inverse(eng, elements=EL, closed_loop=True)
    out = {}
    for name, hashes in groups.items():
        where = "" if hashes is None else "AND s.content_hash IN :hs"
        q = sa.text("SELECT task, count(*), avg(abs_error), avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) "
                    "FROM predictions_vs_truth p JOIN structures s ON s.id = p.structure_id "
                    "WHERE p.kind = 'XANES' AND (task = 'forward' OR closed_loop) AND p.site_id IN "
                    "(SELECT site_id FROM spectra WHERE kind = 'XANES' AND source = 'feff10') "
                    f"{where} GROUP BY task")
        if hashes is not None:
            q = q.bindparams(sa.bindparam("hs", expanding=True))
        with eng.connect() as c:
            rows = c.execute(q, {"hs": hashes} if hashes is not None else {}).all()
        out[name] = {t: {"n": n, "mae": m, "acc": a} for t, n, m, a in rows}
    store.dispose_engines()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-rev", required=True)
    ap.add_argument("--candidate", type=Path, default=None, help="an artifact root holding forward/all/all/XANES/...")
    ap.add_argument("--candidate-label", default="candidate")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "compare_xanes_shipped")
    args = ap.parse_args()
    t0 = time.perf_counter()
    new_split = json.loads((PRE / ART / "split.json").read_text())
    old_dir = old_artifact(args.old_rev, args.work / "old_artifact")
    old_train = set(json.loads((old_dir / "all/all/XANES/xastruct/v1/split.json").read_text())["train"])
    groups = {"all sites with a FEFF10 XANES": None}
    counts = {}
    for side in ("val", "test"):
        hs = [h for h in new_split[side] if h not in old_train]
        counts[side] = (len(new_split[side]), len(hs))
        groups[f"current model's {side} materials the old one did not train on"] = hs
    models = [("shipped now", PRE / "forward"), (f"shipped at {args.old_rev}", old_dir)]
    if args.candidate:
        models.append((args.candidate_label, args.candidate / "forward"))
    res = {label: score(args.work / f"store{i}", d, groups) for i, (label, d) in enumerate(models)}

    def cell(r: dict, task: str, key: str, fmt: str) -> str:
        v = r.get(task, {}).get(key)
        return "-" if v is None else f"{v:{fmt}}"

    lines = ["# Forward XANES model now vs before: spectra and closed loop on the same materials", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by `.venv/bin/python "
             f"benchmarks/compare_xanes_shipped.py --old-rev {args.old_rev}"
             + (f" --candidate {args.candidate} --candidate-label '{args.candidate_label}'" if args.candidate else "")
             + f"` in {time.perf_counter() - t0:.0f} s "
             "(module doc). Sites: Sc-Zn K-edge sites with a FEFF10 XANES in the embedded dataset. Forward: MAE of "
             "normalized mu vs FEFF10; closed loop: the shipped inverse models on the predicted XANES (CN / "
             "neighbour accuracy, MNND MAE in A).", "",
             f"Held-out groups: of the current model's {counts['val'][0]} validation / {counts['test'][0]} test materials, "
             f"{counts['val'][1]} / {counts['test'][1]} were not in the old model's training set.", "",
             "| sites | model | n | forward MAE | closed-loop CN acc | MNND MAE (A) | neighbour acc |",
             "|---|---|---|---|---|---|---|"]
    for g in groups:
        for label, _ in models:
            r = res[label][g]
            lines.append(f"| {g} | {label} | {r.get('forward', {}).get('n', 0)} | {cell(r, 'forward', 'mae', '.4f')} | "
                         f"{cell(r, 'cn', 'acc', '.2f')} | {cell(r, 'mnnd', 'mae', '.3f')} | {cell(r, 'neighbor', 'acc', '.2f')} |")
    (RESULTS / "xanes_shipped.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
