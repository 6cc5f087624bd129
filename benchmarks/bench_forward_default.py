"""Forward models for every element/edge/kind of the embedded default dataset (Table-1 style).

    .venv/bin/python benchmarks/bench_forward_default.py [--archs mean,xastruct,sgmlp_relu,sgmlp_linear,mlp]
                                                         [--seeds 3] [--threads 1]

Builds a scratch DuckDB store from the embedded default (`xastruct ingest builtin --no-models`),
then for every (element, edge, kind, source) that `xastruct train forward --all` would train
(>= 40 site spectra from >= 20 structures) trains each arch on the same material split (seed 0;
train/val/test 0.8/0.1/0.1, StructureMatcher twins together) and reports the held-out test MAE of
the spectrum on the model grid (mean +/- std over seeds) and, per arch, the mean over datasets and
how often it beats the training-mean spectrum. Resumable: finished (dataset, arch) cells are read
back from results/forward_default.jsonl when they were measured on the same spectra (data fingerprint;
cells of an older dataset are rerun). Writes benchmarks/results/forward_default.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_forward_default/store.duckdb")
    ap.add_argument("--archs", default="mean,xastruct,xastruct:pool=absorber:dropout=0.2,sgmlp_relu,sgmlp_linear,mlp",
                    help="comma list of arch[:pool=...][:dropout=...] (as bench_forward.py)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="at most this many datasets (smoke runs)")
    args = ap.parse_args()
    from bench_forward import _variants
    from xastruct import train

    torch.set_num_threads(args.threads)
    eng = default_store(args.db)
    cache = RESULTS / "forward_default.jsonl"
    done = read_cells(cache, ("element", "edge", "kind", "arch"))
    datasets = train.available_datasets(eng)[: args.limit]
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    spec = dict(zip(archs, _variants(args.archs)))
    t_all = time.perf_counter()
    for i, d in enumerate(datasets, 1):
        data = train.load_forward_data(eng, element=d["element"], edge=d["edge"], kind=d["kind"], source=d["source"])
        fp = data.fingerprint()
        for arch in archs:
            key = (d["element"], d["edge"], d["kind"], arch)
            # a cell counts only on the data it was measured on (the dataset grows between sessions)
            if key in done and done[key].get("data") == fp:
                continue
            done.pop(key, None)
            base_arch, dropout, pool, _finetune = spec[arch]
            cfg = train.TrainConfig(arch=base_arch, seeds=args.seeds, device="cpu", num_threads=args.threads,
                                    dropout=dropout, pool=pool)
            t = time.perf_counter()
            res = train.train_forward(eng, element=d["element"], edge=d["edge"], kind=d["kind"], source=d["source"],
                                      config=cfg, data=data, register=False)
            te = res.metrics["summary"]["test"]
            r = {"element": d["element"], "edge": d["edge"], "kind": d["kind"], "arch": arch, "spectra": data.n,
                 "materials": d["materials"], "test_n": te.get("n", 0), "mae": te["mae"]["mean"], "mae_std": te["mae"]["std"],
                 "cosine": te["cosine"]["mean"], "seconds": round(time.perf_counter() - t, 1), "seeds": args.seeds,
                 "data": fp}
            done[key] = r
            with cache.open("a") as fh:
                fh.write(json.dumps(r) + "\n")
            print(f"[{i}/{len(datasets)}] {key}: test MAE {r['mae']:.4f} +/- {r['mae_std']:.4f} ({r['seconds']} s)", flush=True)
    write_table(datasets, archs, done, args, time.perf_counter() - t_all)


def default_store(db: str, *, models: bool = False):
    """Engine on a scratch DuckDB store holding the embedded default dataset (ingested on first use;
    models=True registers the shipped models too)."""
    from xastruct import ingest, store

    Path(db[len("duckdb:///"):]).parent.mkdir(parents=True, exist_ok=True)
    eng = store.get_engine(db)
    with eng.connect() as c:
        if not c.exec_driver_sql("SELECT count(*) FROM spectra").scalar():
            ingest.ingest_builtin(eng, workers=2, models=models)
    return eng


def read_cells(path: Path, key: tuple[str, ...], data: str | None = None) -> dict:
    """Finished benchmark cells from a JSON-lines file, by the tuple of their *key* fields. With *data*
    (a data fingerprint) only cells recorded on that data count: a cell of an older dataset is rerun."""
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            if data is None or r.get("data") == data:
                done[tuple(r[k] for k in key)] = r
    return done


def write_table(datasets, archs, done, args, seconds) -> None:
    lines = [
        "# Forward models on the embedded default dataset (held-out materials)",
        "",
        f"`.venv/bin/python benchmarks/bench_forward_default.py --archs {args.archs} --seeds {args.seeds}` (cells "
        "already in results/forward_default.jsonl are read back with the seed count they were run with, column "
        "'seeds' below) on "
        f"{os.cpu_count()} CPU cores (load average at the end {os.getloadavg()[0]:.1f}). Every element/edge/kind with "
        ">= 40 site spectra from >= 20 structures (what `xastruct train forward --all` trains); one material split "
        "per dataset (seed 0, 0.8/0.1/0.1, StructureMatcher twins together), shared by all archs. Cells: test MAE "
        "of the spectrum on the model grid (EXAFS: k^2 chi on k = 2-12 1/A; XANES: normalized mu), mean +/- std over "
        "seeds. Frozen CHGNet features pooled by the mean over absorber + first shell (the default) unless the "
        "column says pool=absorber (the absorber's own row).",
        "",
        "| element | edge | kind | spectra | materials | test spectra | " + " | ".join(archs) + " |",
        "|---|---|---|---|---|---|" + "---|" * len(archs),
    ]
    wins = {a: 0 for a in archs}
    maes = {a: [] for a in archs}
    n_rows = 0
    for d in datasets:
        cells = [done.get((d["element"], d["edge"], d["kind"], a)) for a in archs]
        if not any(cells):
            continue
        n_rows += 1
        first = next(c for c in cells if c)
        base = done.get((d["element"], d["edge"], d["kind"], "mean"))
        for a, c in zip(archs, cells):
            if c:
                maes[a].append(c["mae"])
                if base and a != "mean" and c["mae"] < base["mae"]:
                    wins[a] += 1
        lines.append(f"| {d['element']} | {d['edge']} | {d['kind']} | {first['spectra']} | {d['materials']} | "
                     f"{first['test_n']} | " + " | ".join(f"{c['mae']:.4f} ± {c['mae_std']:.4f}" if c else "-" for c in cells)
                     + " |")
    lines += ["", "| arch | seeds | datasets | mean test MAE over datasets | beats the training-mean spectrum |",
              "|---|---|---|---|---|"]
    for a in archs:
        if maes[a]:
            # cells from before the seed count was recorded were run with 3
            seeds = sorted({c.get("seeds", 3) for (_, _, _, arch), c in done.items() if arch == a})
            lines.append(f"| {a} | {'/'.join(map(str, seeds))} | {len(maes[a])} | {np.mean(maes[a]):.4f} | "
                         + ("-" if a == "mean" else f"{wins[a]} of {len(maes[a])}") + " |")
    lines += ["", f"{n_rows} datasets; wall time of this invocation {seconds / 60:.1f} min. Test sets are small "
              "(5-15 spectra), so single cells are noisy; the summary rows are the readable part."]
    (RESULTS / "forward_default.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-8:]))


if __name__ == "__main__":
    main()
