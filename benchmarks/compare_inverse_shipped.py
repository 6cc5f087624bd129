"""Shipped inverse models now vs at an earlier commit: held-out (test-split) metrics from their meta.json.

The split is by reduced formula and deterministic from the seed, so when the dataset only gains
spectra on existing sites (e.g. more FEFF10 XANES), both revisions are scored on the same test
materials. Rows: overall and the 3d-metal K edges (where the XANES grew); per task the model of
each feature variant (XANES+EXAFS, XANES-only) present at either revision.

    python benchmarks/compare_inverse_shipped.py --old-rev a708728   # -> results/inverse_shipped.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = "xastruct/data/pretrained"
GROUPS = ["overall"] + [f"{el}:K" for el in ("Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn")]


def metas(rev: str | None) -> dict[str, dict]:
    """model name -> meta.json of every shipped inverse model, from the working tree or a git revision."""
    out = {}
    if rev is None:
        for f in sorted((ROOT / SHIPPED).glob("*/all/all/*/*/v*/meta.json")):
            m = json.loads(f.read_text())
            out[m["name"]] = m
        return {k: v for k, v in out.items() if v["task"] != "forward"}
    try:
        files = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, SHIPPED], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        for f in files:
            if f.endswith("meta.json"):
                m = json.loads(subprocess.run(["git", "show", f"{rev}:{f}"], cwd=ROOT, check=True,
                                              capture_output=True, text=True).stdout)
                out[m["name"]] = m
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"--old-rev {rev}: cannot read {SHIPPED} from git ({exc}); run this in a git clone") from None
    return {k: v for k, v in out.items() if v["task"] != "forward"}


def cell(m: dict | None, group: str) -> str:
    if m is None:
        return "-"
    t = m["metrics"]["test"].get(group)
    if not t:
        return "-"
    if m["task"] == "mnnd":
        return f"{t['mae'][0]:.3f} (n {t['n']})"
    return f"{t['accuracy'][0]:.2f} / {t['macro_f1'][0]:.2f} (n {t['n']})"


def xanes_rows(m: dict | None, el: str) -> str:
    if m is None:
        return "-"
    return str((m["config"].get("train_kinds_by_element") or {}).get(el, {}).get("XANES", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old-rev", required=True, help="git revision whose shipped models to compare with")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "inverse_shipped.md")
    args = ap.parse_args()
    old, new = metas(args.old_rev), metas(None)
    lines = ["# Shipped inverse models: now vs " + args.old_rev, "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
             f"`python benchmarks/compare_inverse_shipped.py --old-rev {args.old_rev}` from the models' meta.json "
             "(registry metrics on the held-out test materials; split by reduced formula, seed 0). MNND: MAE (A); "
             "CN / neighbour: accuracy / macro-F1. 'XANES rows' = training rows with XANES for that absorber "
             f"(a model reads XANES for an absorber only from 20 rows on, `inverse.MIN_KIND_ROWS`).", ""]
    for name in sorted(set(old) | set(new), key=lambda n: (n.split("/")[0], n.split("/")[3])):
        o, n = old.get(name), new.get(name)
        lines += [f"## {name}", "", f"| group | {args.old_rev} | now | XANES rows {args.old_rev} / now |",
                  "|---|---|---|---|"]
        for g in GROUPS:
            if (o is None or g not in o["metrics"]["test"]) and (n is None or g not in n["metrics"]["test"]):
                continue
            el = g.split(":")[0]
            xr = "" if g == "overall" else f"{xanes_rows(o, el)} / {xanes_rows(n, el)}"
            lines.append(f"| {g} | {cell(o, g)} | {cell(n, g)} | {xr} |")
        lines.append("")
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
