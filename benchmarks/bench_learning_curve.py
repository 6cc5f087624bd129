"""Learning curves: how the held-out scores grow with the number of training materials.

    .venv/bin/python benchmarks/bench_learning_curve.py [--part forward,inverse]
        [--fractions 0.125,0.25,0.5,1] [--db URL] [--eta-db URL] [--out benchmarks/results/learning_curve.md]

The issues' targets the models miss (OmniXAS eta >= 10 on Cu K XANES; MNND / CN / neighbour on the
default dataset) are said to be data-limited; this measures it. Each row trains on a nested random
subset of the TRAINING materials (a material is kept when a hash of its id falls below the
fraction, so the 1/8 subset lies inside the 1/4 one, and so on) while the validation and test
materials stay exactly those of the full benchmarks, so every point is scored on the same spectra.

forward: the shipped Cu K XANES head of bench_eta.py (frozen CHGNet, absorber pooling, dropout 0.2,
  early stopping on the validation materials), ``--seeds`` seeds a fraction; eta of the seed
  ensemble on the filtered validation and test spectra. The baseline of eta is the FULL training
  set's mean spectrum at every fraction (so eta is 1 / the model's median MSE up to one constant).
inverse: the models `make pretrained` ships, on the default dataset (``--db``; or any store, e.g. the
  Cu K set with its feff8l EXAFS, ``--name`` says which): the universal MNND
  network (SGMLP-ReLU + element/edge) and the universal CN forest, one seed each; per-element MAE /
  macro-F1 and accuracy on the test materials of bench_inverse.py's split (by reduced formula, seed 0).

A log-log line through the points (least squares over the fractions) says how much more data the
target would take IF the trend held; a straight extrapolation, not a promise.
Resumable: every finished inverse cell goes to ``--state`` (benchmarks/state/learning_curve.jsonl),
every forward seed's held-out predictions to benchmarks/state/learning_curve/ (the full set's are
bench_eta.py's, read from benchmarks/state/eta).
Writes the markdown table and learning_curve.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

OUT = ROOT / "benchmarks" / "results" / "learning_curve.md"
STATE = ROOT / "benchmarks" / "state" / "learning_curve.jsonl"


def kept(ids, fraction: float) -> np.ndarray:
    """True for the materials a nested subset of this *fraction* keeps (hash of the id, salt 'lc')."""
    memo: dict = {}
    out = []
    for g in ids:
        g = str(g)
        if g not in memo:
            memo[g] = int(hashlib.sha256(f"lc:{g}".encode()).hexdigest()[:12], 16) / float(16**12) < fraction
        out.append(memo[g])
    return np.asarray(out, bool)


class State:
    """Finished cells, one JSON line each, keyed by what produced them."""

    def __init__(self, path: Path):
        self.path = path
        self.cells: dict[str, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    d = json.loads(line)
                    self.cells[d["key"]] = d["value"]

    @staticmethod
    def key(*parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def put(self, key: str, value: dict) -> dict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"key": key, "value": value}) + "\n")
        self.cells[key] = value
        return value


def loglog_fit(n: list[float], score: list[float]) -> tuple[float, float]:
    """(slope, intercept) of log(score) = intercept + slope * log(n)."""
    b, a = np.polyfit(np.log(n), np.log(score), 1)
    return float(b), float(a)


def needed(n: list[float], score: list[float], target: float) -> float | None:
    """Training size at which the log-log line reaches *target* (None when it moves away from it)."""
    slope, icpt = loglog_fit(n, score)
    if slope == 0:
        return None
    x = float(np.exp((np.log(target) - icpt) / slope))
    now = float(np.exp(icpt + slope * np.log(max(n))))
    toward = (target > now and slope > 0) or (target < now and slope < 0)
    return x if toward else None


# ------------------------------------------------------------------------------------ forward
def forward_curve(args, state: State) -> list[dict]:
    import torch

    import bench_eta as B
    from xastruct import train

    torch.set_num_threads(args.threads)
    cu = B.load_cu_eta(args.eta_db)
    data, y, cache, scale = cu["data"], cu["y"], cu["cache"], cu["scale"]
    tr, va, test_all, test_f = cu["train"], cu["val"], cu["test_all"], cu["test"]
    base = y[tr].mean(0)  # the full training set's mean at every fraction (module doc)
    sub_f = np.isin(test_all, test_f)
    fp = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (y, tr, va, test_all))).hexdigest()[:16]
    eta_fp = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (y, tr, va, test_all, test_f))).hexdigest()
    cfg = train.TrainConfig(arch="xastruct", seeds=1, epochs=2000, patience=50, lr=1e-4, device="cpu",
                            num_threads=args.threads, pool="absorber", dropout=0.2).resolved()
    mats = data.structure_ids
    rows = []
    for frac in args.fractions:
        sub = tr[kept(mats[tr], frac)]
        preds_t, preds_v = [], []
        for seed in range(args.seeds):
            key = State.key("forward", fp, frac, seed, cfg["epochs"], cfg["patience"])
            path = args.state.parent / "learning_curve" / f"{key}.npz"
            # the full set is bench_eta.py's first head: its finished seeds are read back from there
            eta_key = hashlib.sha256(json.dumps([eta_fp, "xastruct, pool absorber, dropout 0.2", seed, 2000, 50])
                                     .encode()).hexdigest()[:16]
            eta_path = ROOT / "benchmarks" / "state" / "eta" / f"{eta_key}.npz"
            if frac >= 1.0 and eta_path.exists():
                path = eta_path
            if not path.exists():
                t = time.perf_counter()
                model, fwd, groups = train._build(cfg, data, sub, cache_dir=cache, device="cpu", progress=None, seed=seed)
                fit = train._fit(model, fwd, torch.from_numpy(data.y), sub, va, seed=seed, epochs=cfg["epochs"],
                                 lr=cfg["lr"], weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"],
                                 patience=cfg["patience"], max_minutes=None, param_groups=groups)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npz")
                np.savez_compressed(tmp, test=(train._predict(model, fwd, test_all, 256) * scale).astype(np.float32),
                                    val=(train._predict(model, fwd, va, 256) * scale).astype(np.float32),
                                    fit=f"{fit['epochs_run']} ({fit['best_epoch']})", secs=time.perf_counter() - t)
                tmp.replace(path)
            got = np.load(path)
            preds_t.append(got["test"].astype(np.float64))
            preds_v.append(got["val"].astype(np.float64))
            print(f"forward {frac:g} seed {seed}: epochs {got['fit']} ({path.name})", flush=True)
        pt, pv = np.mean(preds_t, 0), np.mean(preds_v, 0)
        mse_t = ((pt - y[test_all]) ** 2).mean(1)[sub_f]
        mse_v = ((pv - y[va]) ** 2).mean(1)
        rows.append({"fraction": frac, "materials": int(len(set(mats[sub].tolist()))), "spectra": int(len(sub)),
                     "eta_val": B.eta(((base - y[va]) ** 2).mean(1), mse_v),
                     "eta_test": B.eta(((base - y[test_f]) ** 2).mean(1), mse_t),
                     "ci": B.bootstrap_eta(((base - y[test_f]) ** 2).mean(1), mse_t, mats[test_f])})
    return rows


# ------------------------------------------------------------------------------------ inverse
def inverse_curve(args, state: State) -> list[dict]:
    import torch

    from bench_inverse import pooled
    from xastruct import inverse as inv
    from xastruct import store

    torch.set_num_threads(1)
    eng = store.get_engine(args.db)
    data = inv.load_sites(eng)
    split = inv.split_by_material(data.group, seed=0)
    fp = hashlib.sha256("".join(sorted(k for ks in data.keys for k in ks)).encode()).hexdigest()[:16]
    plans = [("mnnd", "sgmlp_relu", "universal MNND network (SGMLP-ReLU + element/edge)"),
             ("cn", "rf", "universal CN forest (+ element/edge)")]
    rows = []
    for frac in args.fractions:
        keep = (split != "train") | kept(data.group, frac)
        sub = data.subset(keep)
        n_mat = len(set(data.group[keep & (split == "train")].tolist()))
        for task, arch, label in plans:
            key = State.key("inverse", fp, frac, task, arch, inv.DEFAULT_HP, inv.TASK_HP)
            if key not in state.cells:
                t = time.perf_counter()
                res = inv.train_inverse(eng, task=task, arch=arch, features="both", seeds=1, split_seed=0, device="cpu",
                                        use_element=True, hp={"epochs": None, "lr": 1e-4}, universal=True,
                                        register=False, data=sub)
                pm = pooled(task, res)
                metric = "mae" if task == "mnnd" else "macro_f1"
                groups = [g[metric][0] for g in pm["groups"].values() if g.get(metric) and g[metric][0] is not None]
                cell = {"per_element": float(np.nanmean(groups)), "val": pm["val_group_mean"],
                        "secs": time.perf_counter() - t}
                if task == "cn":
                    accs = [g["accuracy"][0] for g in pm["groups"].values() if g.get("accuracy")]
                    cell["per_element_acc"] = float(np.nanmean(accs))
                state.put(key, cell)
            cell = state.cells[key]
            print(f"inverse {frac:g} {task}: {cell}", flush=True)
            rows.append({"fraction": frac, "materials": n_mat, "sites": int((keep & (split == "train")).sum()),
                         "task": task, "label": label, **cell})
    return rows


# ------------------------------------------------------------------------------------ report
def plot(fwd: list[dict], inv_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = ([("forward", "Cu K XANES: OmniXAS eta (higher is better)", fwd, "materials",
                [("eta_val", "validation"), ("eta_test", "test")], 10.0)] if fwd else [])
    for task, title, target in (("mnnd", "MNND: per-element MAE (A)", 0.020), ("cn", "CN: per-element macro-F1", 0.75)):
        rows = [r for r in inv_rows if r["task"] == task]
        if rows:
            panels.append((task, title, rows, "materials", [("val", "validation"), ("per_element", "test")], target))
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8))
    for ax, (_, title, rows, xkey, series, target) in zip(np.atleast_1d(axes), panels):
        x = [r[xkey] for r in rows]
        for key, lab in series:
            ax.plot(x, [r[key] for r in rows], "o-", label=lab)
        ax.axhline(target, color="k", lw=0.8, ls="--", label=f"target {target:g}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(x)  # plain numbers at the measured sizes, no crowded 3x10^2 minor labels
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0)))
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training materials")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", default="forward,inverse")
    ap.add_argument("--fractions", default="0.125,0.25,0.5,1")
    ap.add_argument("--seeds", type=int, default=3, help="forward seeds a fraction (the ensemble is scored)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--db", default=os.environ.get("XASTRUCT_DB", "duckdb:///./xastruct.duckdb"),
                    help="the default dataset's store (as for bench_inverse.py)")
    ap.add_argument("--name", default="the default dataset", help="what --db holds, for the report")
    ap.add_argument("--eta-db", default="duckdb:////tmp/bench_eta/cu.duckdb", help="bench_eta.py's Cu store")
    ap.add_argument("--state", type=Path, default=STATE)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    args.fractions = sorted(float(f) for f in args.fractions.split(","))
    parts = set(args.part.split(","))
    t0 = time.perf_counter()
    state = State(args.state)
    fwd = forward_curve(args, state) if "forward" in parts else []
    inv_rows = inverse_curve(args, state) if "inverse" in parts else []
    png = args.out.with_suffix(".png")
    plot(fwd, inv_rows, png)
    lines = ["# Learning curves: held-out scores against the number of training materials", "",
             f"`.venv/bin/python benchmarks/bench_learning_curve.py {' '.join(sys.argv[1:])}` "
             f"({os.cpu_count()} cores; {time.perf_counter() - t0:.0f} s this run, finished cells read back from "
             f"{args.state.name}). Nested random subsets of the training materials; validation and test "
             "materials fixed (module doc). Plot: " + png.name + ".", ""]
    if fwd:
        lines += ["## Forward: Cu K XANES, OmniXAS eta (shipped head, frozen CHGNet, "
                  f"{args.seeds}-seed ensemble; baseline = the full training set's mean spectrum)", "",
                  "| training fraction | materials | spectra | eta, validation | eta, filtered test [95% CI] |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['fraction']:g} | {r['materials']} | {r['spectra']} | {r['eta_val']:.2f} | "
                  f"{r['eta_test']:.2f} [{r['ci'][0]:.2f}, {r['ci'][1]:.2f}] |" for r in fwd]
        if len(fwd) > 2:
            n = [r["materials"] for r in fwd]
            for key, lab in (("eta_val", "validation"), ("eta_test", "test")):
                slope, _ = loglog_fit(n, [r[key] for r in fwd])
                need = needed(n, [r[key] for r in fwd], 10.0)
                lines.append(f"- {lab}: eta grows as materials^{slope:.2f}; the line reaches eta 10 at "
                             + (f"~{need:,.0f} training materials ({need / max(n):.1f}x the {max(n):,} here)" if need
                                else "no size (it does not move toward 10)") + ".")
        lines.append("")
    if inv_rows:
        lines += [f"## Inverse: {args.name} (the shipped universal models' settings, 1 seed each)", "",
                  "| model | training fraction | materials | sites | per-element test | per-element validation | "
                  "test accuracy | s |", "|---|---|---|---|---|---|---|---|"]
        for r in inv_rows:
            acc = f"{r['per_element_acc']:.3f}" if "per_element_acc" in r else "-"
            lines.append(f"| {r['label']} | {r['fraction']:g} | {r['materials']} | {r['sites']} | "
                         f"{r['per_element']:.3f} | {r['val']:.3f} | {acc} | {r['secs']:.0f} |")
        lines.append("")
        lines.append("MNND: per-element MAE in A (lower is better; target 0.020); CN: per-element macro-F1 "
                     "(target 0.75) and accuracy (target 0.85).")
        for task, key, target in (("mnnd", "per_element", 0.020), ("cn", "per_element", 0.75), ("cn", "per_element_acc", 0.85)):
            rows = [r for r in inv_rows if r["task"] == task]
            if len(rows) > 2:
                n = [r["materials"] for r in rows]
                slope, _ = loglog_fit(n, [r[key] for r in rows])
                need = needed(n, [r[key] for r in rows], target)
                name = {"per_element": "MAE" if task == "mnnd" else "macro-F1", "per_element_acc": "accuracy"}[key]
                lines.append(f"- {task} {name} (test) scales as materials^{slope:.2f}; the line reaches {target:g} at "
                             + (f"~{need:,.0f} training materials ({need / max(n):.0f}x the {max(n):,} here)" if need
                                else "no size (it does not move toward the target)") + ".")
        lines.append("")
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
