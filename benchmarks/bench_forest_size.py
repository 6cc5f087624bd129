"""Random-forest size vs accuracy: the shipped CN / neighbour forests against candidates trained with
other forest options (e.g. `xastruct train inverse ... --rf-min-samples-leaf 3`).

    python benchmarks/bench_forest_size.py --models shipped=xastruct/data/pretrained \\
        --models "leaf 3=scratch/leaf3/models" [--db duckdb:///./scratch/leaf3/store.duckdb] [--rows 20000]

Per forest: artifact size, tree nodes, load time (joblib, uncached), predict_proba time on --rows
rows of the store's labelled spectra (the model's own input design, rows repeated to that count;
n_jobs = all cores, as load_member sets it), and the registry metrics on the held-out validation
and test materials (accuracy / macro-F1, overall). Where the member has a forest.npz (what
prediction loads, xastruct/forest.py), the same for it, the resident memory each form adds when
loaded in a fresh process, and the largest difference between the two forms' probabilities.
Choose on validation; test is for information. Writes benchmarks/results/forest_size.md (or --out).
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
OUT = ROOT / "benchmarks" / "results" / "forest_size.md"


def forests(models_dir: Path) -> dict[str, tuple[dict, Path]]:
    """model name -> (meta.json, seed-0 member dir) of every random forest under *models_dir*."""
    out = {}
    for f in sorted(models_dir.glob("*/all/all/*/rf/v*/meta.json")):
        m = json.loads(f.read_text())
        out[m["name"]] = (m, f.parent / "seed0")
    return out


def rss_growth_mb(member: Path, form: str) -> float:
    """Resident memory (MB) loading one form of a member adds, in a fresh process (allocator state
    of this one would blur it)."""
    import subprocess

    load = ("import joblib; m = joblib.load(d / 'model.joblib')" if form == "joblib" else
            "from xastruct.forest import CompactForest; m = CompactForest.load(d / 'forest.npz')")
    code = ("import sys; from pathlib import Path; import numpy, scipy.sparse, sklearn.ensemble, joblib\n"
            f"sys.path.insert(0, {str(ROOT)!r}); import xastruct.forest\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096 / 1e6\n"
            f"d = Path({str(member)!r}); r0 = rss()\n{load}\nprint(rss() - r0)")
    try:
        return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout.split()[-1])
    except (subprocess.CalledProcessError, ValueError, IndexError, FileNotFoundError):
        return float("nan")  # e.g. no /proc: the column says nan


def metric(m: dict, split: str) -> str:
    t = m["metrics"].get(split, {}).get("overall")
    return f"{t['accuracy'][0]:.3f} / {t['macro_f1'][0]:.3f}" if t else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", action="append", required=True, metavar="LABEL=DIR",
                    help="a models directory (the shipped one: xastruct/data/pretrained); repeatable")
    ap.add_argument("--db", default="duckdb:///./scratch/pretrain-inverse.duckdb",
                    help="store with the embedded default's labelled spectra (input rows for the timing)")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    import joblib
    import sklearn.ensemble  # noqa: F401  (import time is not load time)

    from xastruct import inverse as inv
    from xastruct import store
    from xastruct.forest import FILE, CompactForest, digest

    data = inv.load_sites(store.get_engine(args.db))
    reps = int(np.ceil(args.rows / len(data)))
    lines = ["# Random-forest size vs accuracy", "",
             f"`python benchmarks/bench_forest_size.py {' '.join('--models ' + repr(m) for m in args.models)} "
             f"--rows {args.rows}` on {os.cpu_count()} cores (load average at the start "
             f"{os.getloadavg()[0]:.1f}); predict = predict_proba on {args.rows} rows (the store's {len(data)} labelled "
             "sites repeated), n_jobs = all cores. Metrics: accuracy / macro-F1 on the held-out validation and test "
             "materials (registry, split by reduced formula, seed 0).", "",
             "| model | forest | min_samples_leaf | MB on disk | nodes | load s | predict s | memory MB | "
             "compact: MB on disk | load s | predict s | memory MB | max prob diff | val acc / F1 | test acc / F1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for spec in args.models:
        label, _, d = spec.partition("=")
        for name, (meta, member) in forests(Path(d)).items():
            t = time.perf_counter()
            est = joblib.load(member / inv.SKLEARN_FILE)
            load = time.perf_counter() - t
            est.n_jobs = os.cpu_count() or 1
            cfg = meta["config"]
            X = inv._rf_design(data, inv.VARIANT_OF[meta["kind"]], cfg.get("input_norm"))
            X = np.tile(X, (reps, 1))[: args.rows]
            t = time.perf_counter()
            p_full = est.predict_proba(X)
            pred = time.perf_counter() - t
            nodes = sum(e.tree_.node_count for e in est.estimators_)
            mb = (member / inv.SKLEARN_FILE).stat().st_size / 1e6
            leaf = cfg["hyperparameters"].get("rf_min_samples_leaf")
            compact = "- | - | - | - | -"
            if (member / FILE).is_file():
                t = time.perf_counter()
                cf = CompactForest.load(member / FILE, source=digest(member / inv.SKLEARN_FILE))
                c_load = time.perf_counter() - t
                if cf is None:
                    compact = "stale | - | - | - | -"
                else:
                    t = time.perf_counter()
                    p_c = cf.predict_proba(X)
                    c_pred = time.perf_counter() - t
                    compact = (f"{(member / FILE).stat().st_size / 1e6:.1f} | {c_load:.2f} | {c_pred:.2f} | "
                               f"{rss_growth_mb(member, 'compact'):.0f} | {np.abs(p_c - p_full).max():.1e}")
            lines.append(f"| {name} | {label} | {leaf} | {mb:.1f} | {nodes:,} | {load:.2f} | {pred:.2f} | "
                         f"{rss_growth_mb(member, 'joblib'):.0f} | {compact} | "
                         f"{metric(meta, 'val')} | {metric(meta, 'test')} |")
            print(lines[-1], flush=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
