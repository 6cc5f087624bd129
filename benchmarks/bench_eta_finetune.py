"""Cu K XANES, OmniXAS eta with CHGNet fine-tuned end to end (the paper's second training mode).

    nohup .venv/bin/python benchmarks/bench_eta_finetune.py [--seeds 1] [--epochs 40] > ft.log 2>&1 &

Same data, target, outlier filter and material split as bench_eta.py. Per seed:
  1. the frozen-encoder head of bench_eta.py's main row (absorber pooling, dropout 0.2, lr 1e-4,
     patience 50) -- identical to that row's member of the same seed;
  2. CHGNet and that head trained together from there (linear-probe-then-fine-tune: a random head's
     first gradients would otherwise wreck the pretrained features): head lr --lr, CHGNet 10x lower
     (train.TrainConfig.encoder_lr_scale), batch 16, early stopping on the validation MSE (--patience),
     best-validation weights kept.
Each fine-tuning epoch costs minutes on this CPU, so every epoch's full training state is
checkpointed (train._fit): kill it any time, rerun the same command, it continues. A finished seed's
predictions and record go to benchmarks/state/eta_ft/ (a few hundred kB, under git, keyed by a hash of the
targets and split; the weights, 8-14 MB a stage, stay in the cache), so on a fresh machine the rerun starts
at the first unfinished seed. Stage 2 starts
from exactly stage 1's predictions (checked before training). Writes benchmarks/results/eta_finetune.md
with the validation eta (the basis for any choice) and the test eta (filtered / all, bootstrap 95%
interval over held-out materials) after each stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_eta/cu.duckdb")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--patience", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "eta_finetune.md"))
    ap.add_argument("--checkpoint-dir", default=None,
                    help="where the per-seed training states go (default: the data cache's checkpoints/)")
    ap.add_argument("--state-dir", default=str(ROOT / "benchmarks" / "state" / "eta_ft"),
                    help="each finished seed's predictions + training record (small, kept under git): a run "
                         "spanning sessions resumes at the first unfinished seed on a fresh machine")
    args = ap.parse_args()
    import bench_eta as B

    from xastruct import train

    torch.set_num_threads(args.threads)
    cu = B.load_cu_eta(args.db)
    data, y, scale, cache = cu["data"], cu["y"], cu["scale"], Path(cu["cache"])
    tr, va, test_all, test_f = cu["train"], cu["val"], cu["test_all"], cu["test"]
    base = y[tr].mean(0)
    ck_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else cache / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    ys = torch.from_numpy(data.y)

    def mse(p, rows):
        return ((p - y[rows]) ** 2).mean(1)

    sub = np.isin(test_all, test_f)

    def scores(pv: np.ndarray, pt: np.ndarray) -> dict:
        m_all = mse(pt, test_all)
        g_f, g_a = data.structure_ids[test_f], data.structure_ids[test_all]
        return {"val": B.eta(mse(base[None], va), mse(pv, va)),
                "test_f": B.eta(mse(base[None], test_f), m_all[sub]),
                "ci_f": B.bootstrap_eta(mse(base[None], test_f), m_all[sub], g_f),
                "test_a": B.eta(mse(base[None], test_all), m_all),
                "ci_a": B.bootstrap_eta(mse(base[None], test_all), m_all, g_a)}

    cfg1 = train.TrainConfig(arch="xastruct", epochs=2000, patience=50, lr=1e-4, device="cpu",
                             num_threads=args.threads, pool="absorber", dropout=0.2).resolved()
    cfg2 = train.TrainConfig(arch="xastruct", finetune=True, epochs=args.epochs, patience=args.patience, lr=args.lr,
                             device="cpu", num_threads=args.threads, pool="absorber", dropout=0.2).resolved()
    tag = f"lr{args.lr:g}_p{args.patience}"
    # finished-seed files are keyed by the data too (targets, row order, split): other data, other file
    fp = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in (y, tr, va, test_all))).hexdigest()[:10]
    rows, preds = [], {"frozen": [], "fine-tuned": []}
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)

    def _train_seed(seed: int):
        """Stage 1 then stage 2 for *seed* (resumable from the checkpoints): predictions and record."""
        m1, f1, _ = train._build(cfg1, data, tr, cache_dir=cache, device="cpu", progress=None, seed=seed)
        fit1 = train._fit(m1, f1, ys, tr, va, seed=seed, epochs=cfg1["epochs"], lr=cfg1["lr"],
                          weight_decay=cfg1["weight_decay"], batch_size=cfg1["batch_size"], patience=cfg1["patience"],
                          max_minutes=None, checkpoint=ck_dir / f"eta_ft_stage1_s{seed}.pt")
        m1.eval()
        p1 = [train._predict(m1, f1, rows_, 256) * scale for rows_ in (va, test_all)]
        print(f"seed {seed} stage 1: val eta {scores(*p1)['val']:.2f}", flush=True)

        m2, f2, groups = train._build(cfg2, data, tr, cache_dir=cache, device="cpu", progress=None, seed=seed)
        m2.model.head.load_state_dict(m1.head.state_dict())
        for k in ("x_mean", "x_std", "y_mean"):
            assert torch.allclose(getattr(m2, k), getattr(m1, k), atol=1e-5), k
        m2.eval()
        start = train._predict(m2, f2, va[:64], 64) * scale
        gap = float(np.abs(start - p1[0][:64]).max())
        assert gap < 1e-3 * float(np.abs(y).max()), f"stage 2 does not start from stage 1 (max diff {gap})"

        def log(epoch, trn, val, best):
            print(f"  seed {seed} fine-tune epoch {epoch}/{cfg2['epochs']} train {trn:.5f} val {val:.5f} best@{best}",
                  flush=True)

        fit2 = train._fit(m2, f2, ys, tr, va, seed=seed, epochs=cfg2["epochs"], lr=cfg2["lr"],
                          weight_decay=cfg2["weight_decay"], batch_size=cfg2["batch_size"], patience=cfg2["patience"],
                          max_minutes=None, param_groups=groups, on_epoch=log, checkpoint_every=0.0,
                          checkpoint=ck_dir / f"eta_ft_stage2_s{seed}_{tag}.pt")
        m2.eval()
        p2 = [train._predict(m2, f2, rows_, 64) * scale for rows_ in (va, test_all)]
        info = {"epochs1": f"{fit1['epochs_run']} ({fit1['best_epoch']})", "seconds1": fit1["seconds"],
                "mse1": (fit1["best_epoch_train_mse"], fit1["best_val_mse"]),
                "epochs2": f"{fit2['epochs_run']} ({fit2['best_epoch']})", "seconds2": fit2["seconds"],
                "mse2": (fit2["best_epoch_train_mse"], fit2["best_val_mse"])}
        return p1, p2, info

    for seed in range(args.seeds):
        done = state / f"seed{seed}_{tag}_e{args.epochs}_{fp}.npz"
        if done.exists():  # a finished seed: its predictions and training record, not its weights
            z = np.load(done)
            info = json.loads(str(z["info"]))
            p1, p2 = [z["val1"], z["test1"]], [z["val2"], z["test2"]]
            assert len(p1[0]) == len(va) and len(p1[1]) == len(test_all), f"{done} does not match this data"
        else:
            p1, p2, info = _train_seed(seed)
            tmp = done.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, val1=p1[0], test1=p1[1], val2=p2[0], test2=p2[1], info=json.dumps(info))
            tmp.replace(done)
        s1, s2 = scores(*p1), scores(*p2)
        s1["mse"], s2["mse"] = info["mse1"], info["mse2"]
        rows.append(("frozen CHGNet + head", seed, info["epochs1"], s1, info["seconds1"]))
        rows.append((f"fine-tuned CHGNet + head (lr {args.lr:g}, CHGNet x{cfg2['encoder_lr_scale']:g})", seed,
                     info["epochs2"], s2, info["seconds2"]))
        preds["frozen"].append(p1)
        preds["fine-tuned"].append(p2)
        print(f"seed {seed}: stage 1 val eta {s1['val']:.2f}, test {s1['test_f']:.2f}; "
              f"stage 2 val eta {s2['val']:.2f}, test {s2['test_f']:.2f}", flush=True)
    if args.seeds > 1:
        for name, label in (("frozen", "frozen CHGNet + head"), ("fine-tuned", "fine-tuned CHGNet + head")):
            pv, pt = (np.mean([p[i] for p in preds[name]], 0) for i in (0, 1))
            rows.append((label, f"{args.seeds}-seed ensemble", "-", scores(pv, pt), 0.0))
        # both stages of every seed averaged: the two training modes err differently only if this beats both
        both = preds["frozen"] + preds["fine-tuned"]
        pv, pt = (np.mean([p[i] for p in both], 0) for i in (0, 1))
        rows.append(("frozen + fine-tuned", f"{len(both)}-member ensemble", "-", scores(pv, pt), 0.0))

    def ci(c):
        return f"[{c[0]:.2f}, {c[1]:.2f}]"

    lines = ["# Cu K XANES: eta with CHGNet fine-tuned end to end", "",
             f"`.venv/bin/python benchmarks/bench_eta_finetune.py --seeds {args.seeds} --epochs {args.epochs} "
             f"--patience {args.patience} --lr {args.lr:g}` (torch threads {args.threads}, CPU; resumable, the "
             "fine-tuning epochs may span several runs). Data, target, filter and split: bench_eta.py "
             f"({len(tr)} train / {len(va)} val spectra after the filter; test {len(test_all)}, {len(test_f)} "
             "filtered). Stage 1 = bench_eta.py's main row (absorber pooling, dropout 0.2); stage 2 starts from "
             "it and trains CHGNet too (batch 16, CHGNet lr 10x below the head's, early stopping on the val MSE).", "",
             "| model | seed | epochs run (best) | train / val MSE at the best epoch | eta, validation | "
             "eta, filtered test | eta, all test | s |",
             "|---|---|---|---|---|---|---|---|"]

    def mse_cell(sc):
        return f"{sc['mse'][0]:.4f} / {sc['mse'][1]:.4f}" if sc.get("mse") else "-"

    lines += [f"| {n} | {s} | {ep} | {mse_cell(sc)} | {sc['val']:.2f} | {sc['test_f']:.2f} {ci(sc['ci_f'])} | "
              f"{sc['test_a']:.2f} {ci(sc['ci_a'])} | {sec:.0f} |" for n, s, ep, sc, sec in rows]
    lines += ["", "MSE in units of the train std of the target (what the loop minimises); the train MSE is measured "
              "with dropout on."]
    lines += ["", "eta = median per-spectrum MSE of the training-mean spectrum / the model's (bench_eta.py); "
              "95% bootstrap intervals over held-out materials."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    (RESULTS / "eta_finetune.json").write_text(json.dumps(
        [{"model": n, "seed": s, "epochs": ep, **{k: v for k, v in sc.items()}, "seconds": sec}
         for n, s, ep, sc, sec in rows], indent=1, default=float))


if __name__ == "__main__":
    main()
