"""Validation-only settings of the EXAFS path model (one model over every absorber of the default dataset).

    .venv/bin/python benchmarks/bench_paths_tune.py [--variants width256,rmax5,...] [--db duckdb:///...]

Trains `xastruct train forward --universal --kind EXAFS --arch paths` with each variant on the default
dataset's one material split (seed 0) and records every seed's best VALIDATION MSE of k^2 chi(k) --
the only basis for the choices in xastruct.train.TrainConfig; test numbers are bench_forward_universal's.
Resumable (results/paths_tune.jsonl); run two invocations with different --variants side by side on
two cores. Writes benchmarks/results/paths_tune.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"
#: variant -> (TrainConfig overrides, seeds)
VARIANTS = {
    # explored at width 256 without the focusing input, the settings before; 512 (hidden512) won and
    # became the default, then focus512 beat hidden512 on both seeds and the focusing input became it too
    "width256": ({"d_hidden": 256, "path_focus": False}, 2),
    "rmax5": ({"r_max": 5.0, "d_hidden": 256, "path_focus": False}, 1),
    "no_chgnet_atoms": ({"chgnet_atoms": False, "d_hidden": 256, "path_focus": False}, 1),
    "lr3e-4_patience60": ({"lr": 3e-4, "patience": 60, "d_hidden": 256, "path_focus": False}, 1),
    "hidden512": ({"d_hidden": 512, "path_focus": False}, 2),
    "focus": ({"path_focus": True, "d_hidden": 256}, 2),
    "focus512": ({"path_focus": True}, 2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_paths_tune/store.duckdb")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cache-dir", default="/tmp/bench_paths_tune/xastruct_cache")
    args = ap.parse_args()
    from bench_forward_default import default_store, read_cells

    from xastruct import train

    torch.set_num_threads(1)
    eng = default_store(args.db)
    cache = RESULTS / "paths_tune.jsonl"
    data = train.load_universal_data(eng, kind="EXAFS")
    # cells count only on the data they were measured on (older cells, before the dataset grew, are rerun)
    fp = data.fingerprint()
    done = read_cells(cache, ("variant",), data=fp)
    for v in [x.strip() for x in args.variants.split(",") if x.strip()]:
        if (v,) in done:
            continue
        overrides, seeds = VARIANTS[v]
        t = time.perf_counter()
        cfg = train.TrainConfig(arch="paths", seeds=seeds, device="cpu", num_threads=1, **overrides)
        res = train.train_forward(eng, element=None, kind="EXAFS", config=cfg, data=data, register=False,
                                  cache_dir=args.cache_dir)
        fits = res.config["fits"]
        r = {"variant": v, "overrides": overrides, "val_mse": [f["best_val_mse"] for f in fits],
             "best_epoch": [f["best_epoch"] for f in fits], "seconds": round(time.perf_counter() - t, 1),
             "data": fp}
        with cache.open("a") as fh:
            fh.write(json.dumps(r) + "\n")
        done[(v,)] = r
        print(v, r["val_mse"], flush=True)
    lines = ["# EXAFS path model: validation-only settings", "",
             "`.venv/bin/python benchmarks/bench_paths_tune.py` (cells read back from results/paths_tune.jsonl): one "
             "universal path model over the default dataset's EXAFS, its material split (seed 0); best validation MSE "
             "of k^2 chi(k) per seed (seed 0 first). Every row is xastruct.train.TrainConfig (6 A, CHGNet atom "
             "features, lr 1e-3, patience 30) with the overrides shown; the search ran at width 256 without the "
             "focusing input; hidden512 won (both seeds below both of width256's), then focus512 beat hidden512 "
             "seed for seed, so width 512 with the focusing input is now the default.", "",
             "| variant | overrides | seeds | val MSE per seed | mean | best epochs | s |", "|---|---|---|---|---|---|---|"]
    for v in VARIANTS:
        r = done.get((v,))
        if r:
            lines.append(f"| {v} | `{json.dumps(r['overrides'])}` | {len(r['val_mse'])} | "
                         f"{' / '.join(f'{x:.4f}' for x in r['val_mse'])} | {np.mean(r['val_mse']):.4f} | "
                         f"{r['best_epoch']} | {r['seconds']:.0f} |")
    (RESULTS / "paths_tune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
