"""Table-1-style forward-model comparison on a Materials Project FEFF 9 K-edge XANES tree (default:
the shared Cu set; ``--data DIR`` takes any tree of the same layout, materials/<id>/POSCAR +
FEFF-XANES/<idx>_<El>/xmu.dat, and ``--element`` picks the absorber when it holds several).

XAStruct (frozen CHGNet + SGMLP head) vs the GNN baselines (GCN, GAT, MPNN trained end to end),
the training-mean spectrum and the three head ablations, all on the same by-material split
(StructureMatcher twins kept together) and the same 141-point grid, ``--seeds`` seeds each.

Every model is registered in the benchmark's own store, and benchmarks/results/forward_<el>.md is
rendered from that registry after each model (the newest model per row wins, each row names its
registry entry). A rerun skips rows the registry already holds with the same data, split and
settings, so an interrupted run resumes where it stopped.

    nohup .venv/bin/python benchmarks/bench_forward.py > /tmp/bench_forward.log 2>&1 &

The store defaults to a scratch DuckDB file outside the repo; it is filled from the shared tree on
first use. A GNN run longer than one working session can keep its training state in the repo:
`--cache-dir benchmarks/state/cu` keeps only the per-seed checkpoints there under git (the caches
beside them are ignored), so a fresh machine resumes the run where the last session committed it.
The uncapped MPNN row started that way (forward_cu_mpnn.md):

    python benchmarks/bench_forward.py --db duckdb:///./scratch/cu.duckdb --archs mpnn --seeds 1 \
        --gnn-epochs 400 --gnn-minutes 600 --threads 1 --cache-dir benchmarks/state/cu \
        --models-dir scratch/cu_models --out benchmarks/results/forward_cu_mpnn.md

(the store: `xastruct ingest feff ../shared/data/cu_k_feff9 --db duckdb:///./scratch/cu.duckdb`). GNN baselines cost minutes per epoch on a 2-core CPU: their epochs and wall time per
seed are capped (``--gnn-epochs``, ``--gnn-minutes``) and the table says so.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from xastruct import ingest, registry, store, train  # noqa: E402
from xastruct.schema import runs as runs_t  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cu_k_feff9"  # beside the project root
ALL_ARCHS = ["mean", "xastruct", "sgmlp_relu", "sgmlp_linear", "mlp", "gcn", "gat", "mpnn"]
DEFAULT_ROWS = "mean,xastruct,xastruct:dropout=0.2,sgmlp_relu,sgmlp_linear,mlp,gcn,gat,mpnn"
LABELS = {
    "mean": ("training-set mean spectrum", "-", "-"),
    "xastruct": ("XAStruct", "CHGNet (frozen)", "SGMLP"),
    "sgmlp_relu": ("ablation: no SwiGLU", "CHGNet (frozen)", "SGMLP, ReLU"),
    "sgmlp_linear": ("ablation: no gated linear", "CHGNet (frozen)", "SGMLP, plain linear"),
    "mlp": ("ablation: plain MLP", "CHGNet (frozen)", "MLP"),
    "gcn": ("GCN baseline", "GCN (trained)", "SGMLP"),
    "gat": ("GAT baseline", "GAT (trained)", "SGMLP"),
    "mpnn": ("MPNN baseline", "MPNN (trained)", "SGMLP"),
    "xastruct_finetune": ("XAStruct, fine-tuned encoder", "CHGNet (fine-tuned)", "SGMLP"),
}


def _pm(summary: dict, metric: str, fmt: str) -> str:
    m = summary["test"].get(metric)
    return "-" if not m or m.get("mean") is None else f"{m['mean']:{fmt}} ± {m['std']:{fmt}}"


def _key(arch: str, cfg: dict) -> tuple:
    """What makes two registered models the same benchmark row."""
    return (arch, float(cfg.get("dropout") or 0.0), cfg.get("lr"), cfg.get("epochs"), cfg.get("patience"),
            cfg.get("max_minutes"), cfg.get("seeds") if cfg.get("mode") != "mean" else 1,
            cfg.get("pool", "mean"))  # fmt: skip


def _rows(eng, fingerprint: str, split_seed: int, element: str = "Cu") -> list:
    """Newest registered model per row key, trained on exactly this data and split."""
    best: dict = {}
    for e in registry.list_models(eng, task="forward", element=element):
        if (e.edge, e.kind, e.data_fingerprint, e.split_seed) != ("K", "XANES", fingerprint, split_seed):
            continue
        best[_key(e.arch, e.config or {})] = e  # list_models is oldest first: the newest wins
    order = {a: i for i, a in enumerate(ALL_ARCHS)}
    return sorted(best.values(), key=lambda e: (order.get(e.arch, 99), e.config.get("dropout") or 0.0, e.id))


def render(eng, path: Path, data, split_seed: int, element: str = "Cu", source: Path = DATA) -> None:
    """Rewrite the markdown table from the registry (every row traceable to a model name)."""
    entries = _rows(eng, data.fingerprint(), split_seed, element)
    if not entries:
        return
    with eng.connect() as c:
        runs = c.execute(sa.select(runs_t.c.id, runs_t.c.args, runs_t.c.status, runs_t.c.summary)
                         .where(runs_t.c.command == "bench forward").order_by(runs_t.c.id)).fetchall()  # fmt: skip
    trained_by = {}
    for rid, args, status, summary in runs:
        for name in (summary or {}).get("models", []):
            trained_by[name] = rid
    cfg0 = entries[0].config
    split = cfg0["split"]
    grid = entries[0].grid
    lines = [
        f"# Forward models: {element} K-edge XANES (FEFF 9), held-out materials",
        "",
        f"Rendered {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} from the model registry of the benchmark "
        f"store ({platform.node()}, torch {torch.__version__}, device {cfg0.get('device_used')}, "
        f"{cfg0.get('torch_threads')} torch thread(s); load average {os.getloadavg()[0]:.1f} when rendered; "
        "each row's own seconds are in the table).",
        "",
        f"Data: {data.n} site spectra of {len(set(data.structure_ids.tolist()))} structures from {source} "
        f"(data fingerprint {data.fingerprint()[:12]}). Grid: normalized mu on E-E0 = {grid['start']:g}..{grid['stop']:g} eV, "
        f"step {grid['step']:g} eV ({grid['n']} points); E0 = FEFF Fermi level (k = 0).",
        "",
        f"Split (seed {split['seed']}, by material; {split['n_twin_groups']} StructureMatcher twin groups kept on one "
        "side): " + ", ".join(f"{k} {v['materials']} materials / {v['spectra']} spectra" for k, v in split["counts"].items())
        + ".",
        "",
        "Metrics on the test materials, mean ± std (sample std) over seeds: MAE / RMSE of normalized mu over "
        "all grid points, cosine similarity per spectrum, |main-peak position error| in eV.",
        "",
        "| model | encoder | pool | head | dropout | seeds | lr | epochs run (best) per seed | test MAE | test RMSE | cosine "
        "| peak err (eV) | s / seed | registry name |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    capped = False
    for e in entries:
        cfg = e.config
        name, enc, head = LABELS[e.arch]
        fits = cfg.get("fits") or []
        marks = []
        for f in fits:
            cap = f["stopped"] in ("time", "epochs") and cfg.get("mode") in ("graph", "finetune")
            capped |= cap
            marks.append(f"{f['epochs_run']} ({f['best_epoch']}){'*' if cap else ''}")
        secs = f"{sum(f['seconds'] for f in fits) / len(fits):.0f}" if fits else "0"
        s = e.metrics["summary"]
        run = trained_by.get(e.name)
        lines.append(
            f"| {name} | {enc} | {cfg.get('pool', 'mean') if cfg.get('mode') == 'pooled' else '-'} | {head} | {cfg.get('dropout') or 0:g} | {e.metrics['n_seeds']} | "
            f"{cfg['lr'] if fits else '-'} | {', '.join(marks) or '-'} | {_pm(s, 'mae', '.4f')} | {_pm(s, 'rmse', '.4f')} | "
            f"{_pm(s, 'cosine', '.4f')} | {_pm(s, 'peak_error', '.2f')} | {secs} | {e.name}{f' (run {run})' if run else ''} |"
        )  # fmt: skip
    pooled = next((e.config for e in entries if e.config.get("mode") == "pooled"), None)
    gnn = next((e.config for e in entries if e.config.get("mode") in ("graph", "finetune")), None)
    lines += [
        "",
        "Training: AdamW (weight decay 0.01), MSE on the grid, the head predicts the residual from the training-mean "
        "spectrum, early stopping on the val MSE with the best-val weights kept."
        + (f" Frozen-CHGNet heads: batch {pooled['batch_size']}, patience {pooled['patience']}, at most "
           f"{pooled['epochs']} epochs." if pooled else "")
        + (f" GNN baselines: batch {gnn['batch_size']}, lr {gnn['lr']}, patience {gnn['patience']}." if gnn else ""),
    ]  # fmt: skip
    if gnn and capped:
        lines.append(
            f"\n**GNN baselines are capped** at {gnn['epochs']} epochs and {gnn['max_minutes']:g} min per seed on this "
            "shared 2-core CPU (`*` = stopped by the cap, not by early stopping), so they are under-trained relative "
            "to a GPU run: their numbers are an upper bound on the error those architectures reach."
        )
    if runs:
        lines += ["", "Benchmark invocations recorded in the store's `runs` table (run id: command):", ""]
        lines += [f"- {rid}: `python benchmarks/bench_forward.py {' '.join(args.get('argv', []))}` ({status})"
                  for rid, args, status, _ in runs]  # fmt: skip
    untracked = [e.name for e in entries if e.name not in trained_by]
    if untracked:
        lines += ["", "Rows without a run id were trained by an earlier version of this script (same data, split and "
                  "settings; their full config is in the registry): " + ", ".join(untracked) + "."]  # fmt: skip
    lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def tree_absorbers(data: Path) -> list[str]:
    """The absorbing elements of a FEFF 9 tree (its FEFF-XANES/<idx>_<El> folder names)."""
    els = {d.name.split("_", 1)[1] for d in data.glob("materials/*/FEFF-XANES/*_*") if d.is_dir()}
    return sorted(e for e in els if e)


def tree_element(data: Path, element: str | None = None) -> str:
    """The absorber a benchmark runs on: *element*, checked against the tree, or the tree's only one."""
    found = tree_absorbers(data)
    if not found:
        raise SystemExit(f"{data}: no materials/<id>/FEFF-XANES/<idx>_<El> folders; pass a Materials Project "
                         "FEFF 9 tree (e.g. ../shared/data/cu_k_feff9)")
    if element is None:
        if len(found) > 1:
            raise SystemExit(f"{data} holds several absorbers ({', '.join(found)}): choose one with --element")
        return found[0]
    if element not in found:
        raise SystemExit(f"{data} has no {element} sites (it has {', '.join(found)}): fix --element")
    return element


def feff9_store(url: str, data: Path = DATA, element: str = "Cu"):
    """Engine of a scratch store holding a FEFF 9 tree's spectra of *element* (ingested on first use)."""
    if url.startswith("duckdb:///"):
        Path(url[len("duckdb:///"):]).parent.mkdir(parents=True, exist_ok=True)
    eng = store.get_engine(url)
    with eng.connect() as c:
        n = c.execute(sa.text("SELECT count(*) FROM spectra WHERE absorber = :el AND source = 'feff9'"),
                      {"el": element}).scalar()
    if not n:
        print(f"ingesting {data} into {url} ...", flush=True)
        ingest.ingest_feff(eng, data, workers=1)
    return eng


def cu_feff9_store(url: str):
    """The shared Cu K FEFF 9 tree's store (kept for the Cu-only benchmarks)."""
    return feff9_store(url, DATA, "Cu")


def _variants(spec: str) -> list[tuple[str, float, str, bool]]:
    """"xastruct,xastruct:dropout=0.2:pool=absorber,xastruct:finetune=1,gcn" -> (arch, dropout, pool,
    finetune) tuples; pool defaults to "mean", finetune (CHGNet trained end to end) to off."""
    out = []
    for item in (a.strip() for a in spec.split(",")):
        if not item:
            continue
        arch, *opts = item.split(":")
        kv = dict(o.split("=", 1) for o in opts)
        if arch not in LABELS:
            raise SystemExit(f"unknown arch {arch!r}; choose from {ALL_ARCHS}")
        out.append((arch, float(kv.get("dropout", 0.0)), kv.get("pool", "mean"), kv.get("finetune", "0") in ("1", "true")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="FEFF 9 tree (materials/<id>/POSCAR + FEFF-XANES/<idx>_<El>)")
    ap.add_argument("--element", default=None, help="absorber (default: the tree's only one)")
    ap.add_argument("--db", default=None, help="scratch store, filled on first use (default /tmp/bench_forward/<el>.duckdb)")
    ap.add_argument("--archs", default=DEFAULT_ROWS, help="comma list; arch:dropout=0.2 adds a dropout variant")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-4, help="frozen-head lr")
    ap.add_argument("--pooled-epochs", type=int, default=2000)
    ap.add_argument("--pooled-patience", type=int, default=50)
    ap.add_argument("--gnn-lr", type=float, default=1e-3)
    ap.add_argument("--gnn-epochs", type=int, default=15, help="cap on GNN epochs per seed (CPU)")
    ap.add_argument("--gnn-minutes", type=float, default=20.0, help="cap on GNN wall time per seed (CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--retrain", action="store_true", help="train even when the registry has this exact row already")
    ap.add_argument("--out", default=None, help="default benchmarks/results/forward_<el>.md")
    args = ap.parse_args()
    element = tree_element(args.data, args.element)
    db = args.db or f"duckdb:////tmp/bench_forward/{element.lower()}.duckdb"
    torch.set_num_threads(args.threads)
    variants = _variants(args.archs)

    eng = feff9_store(db, args.data, element)
    t0 = time.perf_counter()
    data = train.load_forward_data(eng, element=element, edge="K", kind="XANES", source="feff9")
    print(f"loaded {data.n} spectra in {time.perf_counter() - t0:.0f} s", flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"forward_{element.lower()}.md")
    with store.run_record(eng, "bench forward", {"argv": sys.argv[1:]}) as summary:
        summary["models"] = []
        for arch, dropout, pool, finetune in variants:
            gnn = train.ARCHS[arch][0] == "graph" or finetune  # end-to-end graph training: capped on a CPU
            cfg = train.TrainConfig(
                arch=arch, seeds=args.seeds, split_seed=args.split_seed, device=args.device, num_threads=args.threads,
                lr=args.gnn_lr if gnn and not finetune else args.lr, dropout=dropout,
                epochs=args.gnn_epochs if gnn else args.pooled_epochs,
                patience=None if gnn else args.pooled_patience,
                max_minutes=args.gnn_minutes if gnn else None, pool=pool, finetune=finetune,
            )  # fmt: skip
            have = {_key(e.arch, e.config): e for e in _rows(eng, data.fingerprint(), args.split_seed, element)}
            if not args.retrain and _key(cfg.registry_arch, cfg.resolved()) in have:
                print(f"{arch} dropout {dropout} pool {pool}: already registered as "
                      f"{have[_key(cfg.registry_arch, cfg.resolved())].name}", flush=True)
                continue
            t = time.perf_counter()

            def epoch_log(total, label, gnn=gnn):
                @contextlib.contextmanager
                def cm():
                    def update(epoch, tr, va, best):
                        if gnn or epoch % 25 == 0:
                            print(f"  {label} epoch {epoch}/{total} train {tr:.5f} val {va:.5f} best@{best}", flush=True)

                    yield update

                return cm()

            res = train.train_forward(eng, element=element, config=cfg, data=data, cache_dir=args.cache_dir,
                                      models_dir=args.models_dir, epoch_progress=epoch_log)  # fmt: skip
            summary["models"].append(res.entry.name)
            # the run row is written at the end; keep the partial list visible to render() meanwhile
            with eng.begin() as c:
                c.execute(sa.update(runs_t).where(runs_t.c.id == summary["run_id"]).values(summary=dict(summary)))
            print(f"{arch} dropout {dropout}: {json.dumps(res.metrics['summary']['test'])} "
                  f"({time.perf_counter() - t:.0f} s) -> {res.entry.name}", flush=True)  # fmt: skip
            render(eng, out, data, args.split_seed, element, args.data)
    render(eng, out, data, args.split_seed, element, args.data)
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
