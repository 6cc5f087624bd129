"""Table-1-style forward-model comparison on the shared Cu K-edge FEFF 9 XANES data.

XAStruct (frozen CHGNet + SGMLP head) vs the GNN baselines (GCN, GAT, MPNN trained end to end),
the training-mean spectrum and the three head ablations, all on the same by-material split
(StructureMatcher twins kept together) and the same 141-point grid, ``--seeds`` seeds each.
Writes benchmarks/results/forward_cu.md (rewritten after every model, so a partial run leaves a
partial table) and registers every model in the benchmark's own store.

    nohup .venv/bin/python benchmarks/bench_forward.py > /tmp/bench_forward.log 2>&1 &

The store defaults to a scratch DuckDB file outside the repo; it is filled from the shared tree on
first use (`xastruct ingest feff`). GNN baselines cost minutes per epoch on a 2-core CPU: their
epochs and wall time per seed are capped (``--gnn-epochs``, ``--gnn-minutes``) and the table says so.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xastruct import ingest, store, train  # noqa: E402

DATA = Path("/work/shared/data/cu_k_feff9")
ALL_ARCHS = ["mean", "xastruct", "sgmlp_relu", "sgmlp_linear", "mlp", "gcn", "gat", "mpnn"]
LABELS = {
    "mean": ("training-set mean spectrum", "-", "-"),
    "xastruct": ("XAStruct", "CHGNet (frozen)", "SGMLP"),
    "sgmlp_relu": ("ablation: no SwiGLU", "CHGNet (frozen)", "SGMLP, ReLU"),
    "sgmlp_linear": ("ablation: no gated linear", "CHGNet (frozen)", "SGMLP, plain linear"),
    "mlp": ("ablation: plain MLP", "CHGNet (frozen)", "MLP"),
    "gcn": ("GCN baseline", "GCN (trained)", "SGMLP"),
    "gat": ("GAT baseline", "GAT (trained)", "SGMLP"),
    "mpnn": ("MPNN baseline", "MPNN (trained)", "SGMLP"),
}


def _pm(summary: dict, metric: str, fmt: str) -> str:
    m = summary["test"].get(metric)
    return "-" if m is None else f"{m['mean']:{fmt}} ± {m['std']:{fmt}}"


def write_table(path: Path, results: list[dict], header: dict) -> None:
    lines = [
        "# Forward models: Cu K-edge XANES (FEFF 9), held-out materials",
        "",
        f"Generated {header['when']} by `{header['command']}` ({header['host']}, torch {torch.__version__}, "
        f"{header['threads']} torch thread(s), device {header['device']}).",
        "",
        f"Data: {header['n_spectra']} site spectra of {header['n_structures']} structures from {DATA} "
        f"(store {header['db']}). Grid: normalized mu on E-E0 = {header['grid']['start']:g}..{header['grid']['stop']:g} eV, "
        f"step {header['grid']['step']:g} eV ({header['grid']['n']} points); E0 = FEFF Fermi level (k = 0).",
        "",
        f"Split (seed {header['split']['seed']}, by material; {header['split']['n_twin_groups']} StructureMatcher twin "
        f"groups kept on one side): " + ", ".join(
            f"{k} {v['materials']} materials / {v['spectra']} spectra" for k, v in header["split"]["counts"].items()
        ) + ".",
        "",
        "Metrics on the test materials, mean ± std (sample std) over seeds: MAE / RMSE of normalized mu over "
        "all grid points, cosine similarity per spectrum, |main-peak position error| in eV.",
        "",
        "| model | encoder | head | seeds | lr | epochs run (best) per seed | test MAE | test RMSE | cosine | peak err (eV) | s / seed |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in results:
        name, enc, head = LABELS[r["arch"]]
        fits = r["fits"]
        ep = ", ".join(f"{f['epochs_run']} ({f['best_epoch']}){'*' if f['stopped'] in ('time', 'epochs') and r['capped'] else ''}"
                       for f in fits) or "-"  # fmt: skip
        secs = f"{sum(f['seconds'] for f in fits) / len(fits):.0f}" if fits else "0"
        s = r["summary"]
        lines.append(
            f"| {name} | {enc} | {head} | {r['n_seeds']} | {r['lr'] if fits else '-'} | {ep} | {_pm(s, 'mae', '.4f')} | "
            f"{_pm(s, 'rmse', '.4f')} | {_pm(s, 'cosine', '.4f')} | {_pm(s, 'peak_error', '.2f')} | {secs} |"
        )
    lines += [
        "",
        "Training: AdamW (weight decay 0.01), MSE on the grid, the head predicts the residual from the training-mean "
        "spectrum, early stopping on the val MSE (best-val weights kept). Frozen-CHGNet heads: batch 64, patience "
        f"{header['pooled_patience']}, at most {header['pooled_epochs']} epochs. GNN baselines: batch 16, lr "
        f"{header['gnn_lr']}, patience 10.",
    ]
    if header.get("gnn_cap"):
        lines.append(
            f"**GNN baselines are capped** at {header['gnn_cap']['epochs']} epochs and {header['gnn_cap']['minutes']} "
            "min per seed on this shared 2-core CPU (`*` = stopped by the cap, not by early stopping), so they are "
            "under-trained relative to a GPU run; their numbers are a lower bound on what the architectures reach."
        )
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_forward/cu.duckdb", help="scratch store (filled on first use)")
    ap.add_argument("--archs", default=",".join(ALL_ARCHS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=None, help="frozen-head lr (default 1e-4)")
    ap.add_argument("--pooled-epochs", type=int, default=2000)
    ap.add_argument("--pooled-patience", type=int, default=50)
    ap.add_argument("--gnn-lr", type=float, default=1e-3)
    ap.add_argument("--gnn-epochs", type=int, default=15, help="cap on GNN epochs per seed (CPU)")
    ap.add_argument("--gnn-minutes", type=float, default=20.0, help="cap on GNN wall time per seed (CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "forward_cu.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    eng = store.get_engine(args.db)
    with eng.connect() as c:
        n = c.exec_driver_sql("SELECT count(*) FROM spectra WHERE absorber = 'Cu' AND source = 'feff9'").scalar()
    if not n:
        print(f"ingesting {DATA} into {args.db} ...", flush=True)
        ingest.ingest_feff(eng, DATA, workers=1)
    t0 = time.perf_counter()
    data = train.load_forward_data(eng, element="Cu", edge="K", kind="XANES", source="feff9")
    print(f"loaded {data.n} spectra in {time.perf_counter() - t0:.0f} s", flush=True)
    results: list[dict] = []
    header = {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python " + " ".join(["benchmarks/bench_forward.py", *sys.argv[1:]]),
        "host": f"{platform.node()} ({platform.processor() or platform.machine()})",
        "threads": args.threads, "device": str(train.pick_device(args.device)), "db": args.db,
        "n_spectra": data.n, "n_structures": len(set(data.structure_ids.tolist())), "grid": data.grid,
        "pooled_epochs": args.pooled_epochs, "pooled_patience": args.pooled_patience, "gnn_lr": args.gnn_lr,
    }  # fmt: skip
    for arch in [a.strip() for a in args.archs.split(",") if a.strip()]:
        mode = train.ARCHS[arch][0]
        gnn = mode == "graph"
        cfg = train.TrainConfig(
            arch=arch, seeds=args.seeds, split_seed=args.split_seed, device=args.device, num_threads=args.threads,
            lr=args.gnn_lr if gnn else args.lr,
            epochs=args.gnn_epochs if gnn else args.pooled_epochs,
            patience=None if gnn else args.pooled_patience,
            max_minutes=args.gnn_minutes if gnn else None,
        )  # fmt: skip
        if gnn:
            header["gnn_cap"] = {"epochs": args.gnn_epochs, "minutes": args.gnn_minutes}
        t = time.perf_counter()

        def epoch_log(total, label):
            import contextlib

            @contextlib.contextmanager
            def cm():
                def update(epoch, tr, va, best):
                    if gnn or epoch % 25 == 0:
                        print(f"  {label} epoch {epoch}/{total} train {tr:.5f} val {va:.5f} best@{best}", flush=True)

                yield update

            return cm()

        res = train.train_forward(eng, element="Cu", config=cfg, data=data, cache_dir=args.cache_dir,
                                  models_dir=args.models_dir, epoch_progress=epoch_log)  # fmt: skip
        header["split"] = res.config["split"]
        results.append({
            "arch": arch, "summary": res.metrics["summary"], "n_seeds": res.metrics["n_seeds"], "fits": res.config["fits"],
            "lr": res.config["lr"], "capped": gnn, "name": res.entry.name,
        })  # fmt: skip
        print(f"{arch}: {json.dumps(res.metrics['summary']['test'])} ({time.perf_counter() - t:.0f} s) -> {res.entry.name}",
              flush=True)  # fmt: skip
        write_table(Path(args.out), results, header)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
