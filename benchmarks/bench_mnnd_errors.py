"""Where the MNND test error comes from: one seed of the universal MNND model (default settings) on a
store, its held-out absolute errors as quantiles and the worst sites with their materials; and the
early-stopping rule before session 5 (val Gaussian NLL instead of val MAE) beside it, on validation
and test.

    .venv/bin/python benchmarks/bench_mnnd_errors.py --db duckdb:///cu.duckdb [--out ...] [--top 25]

Same data loading, split (by reduced formula, seed 0) and training as `xastruct train inverse
--task mnnd --all --seeds 1`. Writes benchmarks/results/mnnd_errors.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xastruct import inverse as inv  # noqa: E402
from xastruct import store  # noqa: E402


def coverage(res, *, raw: bool) -> str:
    """Share of test errors within 1 and 2 sigma; raw: with the variance head as trained, before the
    scale fitted on the validation materials (inverse._train_member)."""
    p = res.test_predictions[0]
    var = p["var"] / (res.metrics["fits"][0]["var_scale"] if raw else 1.0)
    z = np.abs(p["mean"] - p["y"]) / np.sqrt(var)
    return f"{np.mean(z <= 1):.2f} / {np.mean(z <= 2):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mnnd_errors.md")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = inv.load_sites(store.get_engine(args.db))
    rules = []
    for label, hp in (("val MAE (default)", {}), ("val Gaussian NLL (before session 5)", {"mnnd_stop": "loss"})):
        r = inv.train_task(data, task="mnnd", arch="sgmlp", features="both", seeds=1, device="cpu", hp=hp)
        rules.append((label, r))
    res = rules[0][1]
    p = res.test_predictions[0]
    test = data.with_features("both").subset(inv.split_by_material(data.with_features("both").group, seed=0) == "test")
    err = np.abs(p["mean"] - p["y"])
    srt = np.sort(err)
    lines = ["# MNND: where the held-out error comes from", "",
             f"`{' '.join(['.venv/bin/python', 'benchmarks/bench_mnnd_errors.py', *sys.argv[1:]])}` "
             f"({time.perf_counter() - t0:.0f} s): one seed, default settings ({res.metrics['fits'][0]['epochs_run']} "
             f"epochs), {len(data)} sites, {len(err)} test sites.", "",
             "| MAE | median | 90 % | 95 % | 99 % | max | MAE without the worst 1 % | without the worst 5 % |",
             "|---|---|---|---|---|---|---|---|",
             f"| {err.mean():.4f} | {np.median(err):.4f} | {np.quantile(err, 0.9):.4f} | {np.quantile(err, 0.95):.4f} | "
             f"{np.quantile(err, 0.99):.4f} | {err.max():.4f} | {srt[:int(0.99 * len(srt))].mean():.4f} | "
             f"{srt[:int(0.95 * len(srt))].mean():.4f} |", "",
             "Early stopping on (same seed, split and settings otherwise):", "",
             "| stopped on | epochs run | val MAE | test MAE | variance scale fitted on val | test within +-1 / 2 sigma, "
             "before that scale | after |", "|---|---|---|---|---|---|---|",
             *[f"| {label} | {r.metrics['fits'][0]['epochs_run']} | {r.metrics['val']['overall']['mae'][0]:.4f} | "
               f"{r.metrics['test']['overall']['mae'][0]:.4f} | {r.metrics['fits'][0]['var_scale']:.1f} | "
               f"{coverage(r, raw=True)} | {coverage(r, raw=False)} |" for label, r in rules], "",
             f"Worst {args.top} test sites (A):", "",
             "| material (reduced formula) | absorber | CN | true MNND | predicted | sigma |", "|---|---|---|---|---|---|"]
    for i in np.argsort(-err)[: args.top]:
        lines.append(f"| {test.group[i]} | {test.element[i]} {test.edge[i]} | {test.cn[i]} | {p['y'][i]:.3f} | "
                     f"{p['mean'][i]:.3f} | {np.sqrt(p['var'][i]):.3f} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
