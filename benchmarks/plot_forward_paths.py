"""Figure: the shipped EXAFS path model against FEFF on its held-out materials.

    .venv/bin/python benchmarks/plot_forward_paths.py [--db duckdb:///scratch/plot.duckdb]

Builds (or reuses) a store from the embedded default (`xastruct ingest builtin`, shipped models
registered), takes the universal `paths` forward model's own test materials (its split.json), predicts
k^2 chi(k) for every test site and draws, for the sites at the 10th, 50th and 90th percentile of the
per-site MAE, predicted vs FEFF in k and |chi(R)| (the seed spread as a band). Writes
benchmarks/results/forward_paths_examples.png and prints the per-site MAE percentiles.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:///scratch/plot_paths.duckdb")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench_forward_default import default_store

    from xastruct import inverse, registry, train

    eng = default_store(args.db, models=True)
    entry = next(e for e in registry.list_models(eng, task="forward") if e.arch == "paths" and e.element is None)
    entry = registry.load(eng, entry.id, device="cpu")
    test = set(json.loads((Path(entry.artifact) / "split.json").read_text())["test"])
    data = train.load_universal_data(eng, kind="EXAFS")
    rows = [i for i, s in enumerate(data.structure_ids.tolist()) if data.hashes[s] in test]
    preds = []
    for i in rows:  # one site at a time: exactly what `predict spectrum` does
        s = data.structures[int(data.structure_ids[i])]
        preds.append(train.predict_sites(entry, s, [int(data.site_indices[i])], edge=data.row_edges[i], device="cpu")[:, 0])
    preds = np.stack(preds, axis=1)  # (members, sites, grid)
    mean, std = preds.mean(0), preds.std(0)
    true = data.y[rows]
    mae = np.abs(mean - true).mean(1)
    order = np.argsort(mae)
    picks = [order[int(q * (len(order) - 1))] for q in (0.1, 0.5, 0.9)]
    k = data.x
    fig, axes = plt.subplots(len(picks), 2, figsize=(10, 2.8 * len(picks)))
    for row, j in enumerate(picks):
        i = rows[j]
        name = f"{data.names[int(data.structure_ids[i])]} site {int(data.site_indices[i])}: {data.row_elements[i]} {data.row_edges[i]}"
        ax = axes[row, 0]
        ax.plot(k, true[j], "k", lw=1.2, label="FEFF (feff8l)")
        ax.plot(k, mean[j], "C3", lw=1.0, label=f"path model (MAE {mae[j]:.3f})")
        ax.fill_between(k, mean[j] - std[j], mean[j] + std[j], color="C3", alpha=0.25, lw=0)
        ax.set_xlabel("k (1/A)")
        ax.set_ylabel("k^2 chi(k)")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[row, 1]
        ax.plot(inverse.R_GRID, inverse.chir_magnitude(true[j:j + 1])[0], "k", lw=1.2, label="FEFF")
        ax.plot(inverse.R_GRID, inverse.chir_magnitude(mean[j:j + 1])[0], "C3", lw=1.0, label="path model")
        ax.set_xlabel("R (A, no phase correction)")
        ax.set_ylabel("|chi(R)|")
        ax.set_title(f"{int(100 * [0.1, 0.5, 0.9][row])}th percentile of per-site MAE", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"{entry.name}: held-out materials ({len(rows)} sites, {preds.shape[0]} seeds)", fontsize=10)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "forward_paths_examples.png"
    fig.savefig(out, dpi=110)
    print(f"{len(rows)} test sites; per-site MAE percentiles 10/50/90: "
          + " / ".join(f"{np.percentile(mae, q):.3f}" for q in (10, 50, 90)) + f"; wrote {out}")


if __name__ == "__main__":
    main()
