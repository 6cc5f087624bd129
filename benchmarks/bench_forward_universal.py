"""Forward models: one model for every absorber vs per-element models, on one shared material split.

    .venv/bin/python benchmarks/bench_forward_universal.py [--kind EXAFS|XANES] [--seeds 3] [--archs mean,xastruct,...]

--kind XANES (FEFF10 XANES of the absorbers with >= 40 site spectra from >= 20 structures): the
universal rows are the frozen-CHGNet SGMLP head over all those absorbers (per-absorber training
mean + one-hot absorber input; `xastruct train forward --universal --kind XANES --arch xastruct`),
with absorber pooling + dropout 0.2 (the setting chosen on Cu K XANES validation, bench_eta.py) and
with the paper's mean pooling; cells in forward_universal_xanes.jsonl, table forward_universal_xanes.md,
no closed loop. The rest of this docstring describes --kind EXAFS (the default):

Builds (or reuses) the scratch store of bench_forward_default.py from the embedded default dataset,
splits ALL its EXAFS site spectra by material once (seed 0, 0.8/0.1/0.1, StructureMatcher twins
together: a crystal is on one side for every absorber in it), then trains on that split
  * `paths` universal: one models.PathEXAFS over every (element, edge) (`xastruct train forward
    --kind EXAFS --all --universal --arch paths`), and
  * per (element, edge) with >= 40 spectra from >= 20 structures (the `--all` datasets): the
    training-mean spectrum, the paper's frozen-CHGNet SGMLP head and the other --archs, each
    restricted to its pair's rows of the same split, and `paths` trained on that pair alone.
Reports test MAE of k^2 chi(k) on k = 2-12 1/A per pair (mean +/- std over seeds), the mean over
pairs and how many pairs beat the training-mean spectrum, and the universal model's score on every
pair it covers. Resumable: finished cells of the same data (fingerprint) are read back from
results/forward_universal.jsonl.
Writes benchmarks/results/forward_universal.md.
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
UNIVERSAL = "paths (one model, all absorbers)"
#: universal rows: label -> TrainConfig overrides (the first is the default model)
NO_FOCUS = "paths, all absorbers, no focusing input"
UNIVERSAL_ROWS = {UNIVERSAL: {},
                  # the shipped setting before paths_tune.md's focus512 (width 512, single scattering only)
                  NO_FOCUS: {"path_focus": False},
                  # the width before paths_tune.md chose 512, and the ablation measured at that width
                  "paths, all absorbers, width 256": {"d_hidden": 256, "path_focus": False},
                  "paths, all absorbers, no CHGNet atom features": {"chgnet_atoms": False, "d_hidden": 256,
                                                                    "path_focus": False}}
LOOP_FILES = {UNIVERSAL: "forward_universal_loop.json", NO_FOCUS: "forward_universal_loop_nofocus.json"}
UNIVERSAL_XANES = "xastruct (one model, all absorbers)"
#: per kind: universal rows (label -> TrainConfig; the first is the default model), per-pair archs,
#: result files, the minimum data a pair needs to be in the universal model
KINDS = {
    "EXAFS": dict(rows={k: {"arch": "paths", **v} for k, v in UNIVERSAL_ROWS.items()}, out="forward_universal",
                  archs="mean,xastruct,xastruct:pool=absorber:dropout=0.2,mlp,gcn,gat,mpnn,paths", min_spectra=1,
                  min_materials=1),
    "XANES": dict(rows={UNIVERSAL_XANES: {"arch": "xastruct", "pool": "absorber", "dropout": 0.2},
                        "xastruct, all absorbers, mean pooling (paper)": {"arch": "xastruct"}},
                  out="forward_universal_xanes", archs="mean,xastruct,xastruct:pool=absorber:dropout=0.2,mlp,gcn,gat,mpnn",
                  min_spectra=40, min_materials=20),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_forward_default/store.duckdb")
    ap.add_argument("--kind", default="EXAFS", choices=sorted(KINDS))
    ap.add_argument("--archs", default=None,
                    help="per-pair rows: comma list of arch[:pool=...][:dropout=...] (as bench_forward.py); "
                         "default per kind (KINDS)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dir", default="/tmp/bench_forward_default/xastruct_cache")
    args = ap.parse_args()
    from bench_forward import _variants
    from bench_forward_default import default_store, read_cells

    from xastruct import train

    torch.set_num_threads(args.threads)
    eng = default_store(args.db)
    spec_k = KINDS[args.kind]
    args.archs = args.archs or spec_k["archs"]
    rows_u = spec_k["rows"]
    cache = RESULTS / f"{spec_k['out']}.jsonl"
    t_all = time.perf_counter()
    uni = train.load_universal_data(eng, kind=args.kind, min_spectra=spec_k["min_spectra"],
                                    min_materials=spec_k["min_materials"])
    # cells of another dataset (e.g. before the store grew) are not read back: they are recomputed
    data_fp = uni.fingerprint()
    done = read_cells(cache, ("pair", "arch"), data=data_fp)

    def record(r):
        r["data"] = data_fp
        done[(r["pair"], r["arch"])] = r
        with cache.open("a") as fh:
            fh.write(json.dumps(r) + "\n")

    split, summary = train.prepare_split(uni, seed=0, cache_dir=args.cache_dir)
    print(f"{uni.n} {args.kind} site spectra, {len(set(uni.pairs()))} (element, edge) pairs; split {summary['counts']}")
    for label, overrides in rows_u.items():
        if any(a == label for _, a in done):
            continue
        cfg = train.TrainConfig(seeds=args.seeds, device="cpu", num_threads=args.threads, **overrides)
        t = time.perf_counter()
        res = train.train_forward(eng, element=None, kind=args.kind, config=cfg, data=uni, register=False, split=split,
                                  cache_dir=args.cache_dir)
        secs = round(time.perf_counter() - t, 1)
        for pair, m in res.metrics["per_pair"].items():
            if m["n_test"]:
                per_seed = m["test_mae_per_seed"]
                record({"pair": pair, "arch": label, "test_n": m["n_test"], "train_n": m["n_train"],
                        "mae": float(np.mean(per_seed)), "mae_std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                        "mae_ensemble": m["test"]["mae"], "cosine": m["test"]["cosine"],
                        "mean_baseline": m.get("mean_baseline_mae"), "seconds": secs, "seeds": args.seeds,
                        "epochs": [f["best_epoch"] for f in res.config["fits"]],
                        # what a variant is chosen by: the whole val split, ensemble vs each pair's training mean
                        "val_mae_ensemble": res.metrics["ensemble"]["val"]["mae"],
                        "val_mean_baseline": _val_mean_baseline(uni, res)})
        print(f"{label}: {secs} s; overall test MAE {res.metrics['summary']['test']['mae']['mean']:.4f}")
        if label in LOOP_FILES and args.kind == "EXAFS":
            loop = closed_loop(eng, uni, res)
            (RESULTS / LOOP_FILES[label]).write_text(json.dumps(loop, indent=1) + "\n")
    datasets = [d for d in train.available_datasets(eng) if d["kind"] == args.kind]
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    spec = {a: ("paths", 0.0, "mean", False) if a == "paths" else _variants(a)[0] for a in archs}
    for i, d in enumerate(datasets, 1):
        pair = f"{d['element']}:{d['edge']}"
        data = None
        for arch in archs:
            if (pair, arch) in done:
                continue
            if data is None:
                data = train.load_forward_data(eng, element=d["element"], edge=d["edge"], kind=args.kind, source=d["source"])
            base_arch, dropout, pool, _ = spec[arch]
            # the per-element path model stays at width 256, where it was measured (its cells are cached)
            cfg = train.TrainConfig(arch=base_arch, seeds=args.seeds, device="cpu", num_threads=args.threads,
                                    dropout=dropout, pool=pool, d_hidden=256 if base_arch == "paths" else None,
                                    path_focus=False)
            t = time.perf_counter()
            res = train.train_forward(eng, element=d["element"], edge=d["edge"], kind=args.kind, source=d["source"],
                                      config=cfg, data=data, register=False, split=split, cache_dir=args.cache_dir)
            te = res.metrics["summary"]["test"]
            record({"pair": pair, "arch": arch, "test_n": te.get("n", 0), "mae": te["mae"]["mean"],
                    "mae_std": te["mae"]["std"], "mae_ensemble": res.metrics["ensemble"]["test"].get("mae"),
                    "cosine": te["cosine"]["mean"], "seconds": round(time.perf_counter() - t, 1),
                    "seeds": res.metrics["n_seeds"]})
            print(f"[{i}/{len(datasets)}] {pair} {arch}: test MAE {te['mae']['mean']:.4f}", flush=True)
    write_table(datasets, list(rows_u) + archs, done, args, uni, summary, time.perf_counter() - t_all)


def _val_mean_baseline(uni, res) -> float:
    """MAE on the val split of each val row's pair's training-mean spectrum."""
    pairs = np.array(uni.pairs())
    tr, _ = res.predictions["train"]
    va, _ = res.predictions["val"]
    means = {p: uni.y[tr[pairs[tr] == p]].mean(0) for p in set(pairs[tr].tolist())}
    return float(np.mean([np.abs(means[p] - y).mean() for p, y in zip(pairs[va], uni.y[va])]))


def closed_loop(eng, uni, res) -> dict:
    """Structure -> predicted EXAFS -> structure on the held-out materials: random forests for MNND
    and CN (one for all absorbers; k^2 chi(k), |chi(R)| and the absorber/edge columns, as
    xastruct.inverse uses them) trained on the training materials' FEFF spectra, then fed the test
    sites' FEFF spectra, the universal model's predicted spectra, or each pair's training-mean
    spectrum (the input that carries no structure)."""
    import sqlalchemy as sa
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    from xastruct import inverse as inv

    with eng.connect() as c:
        lab = {(int(a), int(b)): (cn, mnnd) for a, b, cn, mnnd in c.execute(
            sa.text("SELECT structure_id, site_index, cn, mnnd FROM sites WHERE mnnd IS NOT NULL AND cn IS NOT NULL"))}
    keys = list(zip(uni.structure_ids.tolist(), uni.site_indices.tolist()))
    ok = np.array([k in lab for k in keys])
    cn = np.array([lab[k][0] if k in lab else -1 for k in keys])
    mnnd = np.array([lab[k][1] if k in lab else np.nan for k in keys], float)
    cols = inv.element_columns(uni.row_elements, uni.row_edges)

    def feats(y, rows):
        return np.concatenate([y, inv.chir_magnitude(y), cols[rows]], axis=1)

    tr_idx, _ = res.predictions["train"]
    te_idx, te_pred = res.predictions["test"]
    tr, te = tr_idx[ok[tr_idx]], ok[te_idx]
    pairs = np.array(uni.pairs())
    means = {p: uni.y[tr_idx[pairs[tr_idx] == p]].mean(0) for p in set(pairs[tr_idx].tolist())}
    inputs = {"FEFF spectrum (feff8l)": uni.y[te_idx][te],
              "path-model spectrum (predicted from the structure)": te_pred[te],
              "pair's training-mean spectrum (no structure)": np.stack([means.get(p, uni.y[tr].mean(0))
                                                                        for p in pairs[te_idx][te]])}
    rows_te = te_idx[te]
    reg = RandomForestRegressor(n_estimators=200, n_jobs=2, random_state=0).fit(feats(uni.y[tr], tr), mnnd[tr])
    clf = RandomForestClassifier(n_estimators=200, n_jobs=2, random_state=0).fit(feats(uni.y[tr], tr), cn[tr])
    out = {"n_train_sites": int(len(tr)), "n_test_sites": int(len(rows_te)), "inputs": {}}
    # no spectrum at all: each pair's mean MNND / majority CN over its training sites
    tp = pairs[tr]
    mean_m = {p: mnnd[tr][tp == p].mean() for p in set(tp.tolist())}
    major = {p: np.bincount(cn[tr][tp == p].astype(int)).argmax() for p in set(tp.tolist())}
    pt = pairs[rows_te]
    out["trivial"] = {
        "mnnd_mae": float(np.abs(np.array([mean_m.get(p, np.nanmean(mnnd[tr])) for p in pt]) - mnnd[rows_te]).mean()),
        "cn_accuracy": float((np.array([major.get(p, -1) for p in pt]) == cn[rows_te]).mean())}
    for name, y in inputs.items():
        f = feats(y, rows_te)
        out["inputs"][name] = {"mnnd_mae": float(np.abs(reg.predict(f) - mnnd[rows_te]).mean()),
                               "cn_accuracy": float((clf.predict(f) == cn[rows_te]).mean())}
    return out


def write_table(datasets, archs, done, args, uni, summary, seconds) -> None:
    pairs = [f"{d['element']}:{d['edge']}" for d in datasets]
    c = summary["counts"]
    spec_k = KINDS[args.kind]
    first = next(iter(spec_k["rows"]))
    if args.kind == "EXAFS":
        lines = [
            "# Forward EXAFS: one path model for all absorbers vs per-element models (shared material split)",
            "",
            f"`.venv/bin/python benchmarks/bench_forward_universal.py --seeds {args.seeds} --archs {args.archs}` on "
            f"{os.cpu_count()} CPU cores, torch threads {args.threads} (cells already in results/forward_universal.jsonl "
            "are read back). Data: the embedded default dataset's feff8l EXAFS, "
            f"{uni.n} site spectra of {len(set(uni.pairs()))} (element, edge) pairs, split ONCE by material for all "
            f"absorbers (seed 0, StructureMatcher twins together): train {c['train']['spectra']} / val "
            f"{c['val']['spectra']} / test {c['test']['spectra']} spectra. Cells: test MAE of k^2 chi(k) on k = 2-12 "
            "1/A (201 points), mean +/- std over seeds; per-pair rows use only that pair's rows of the same split. "
            f"'{UNIVERSAL}' = models.PathEXAFS as shipped (neighbours to 6 A; element embeddings + frozen CHGNet atom "
            "features; network width 512; forward-focusing input) trained once on every pair (absorber and edge as "
            "inputs); the next three columns: the same without the focusing input (single scattering only; shipped "
            "before), at width 256 without it (the setting before bench_paths_tune.py), and at 256 without the CHGNet "
            "features; 'paths' = the width-256 model without focusing trained on one pair alone; 'mean' = the pair's training-mean spectrum; "
            "'xastruct' = the paper's "
            "frozen CHGNet + SGMLP head; gcn/gat/mpnn = GNN baselines; mlp = plain-MLP head ablation.",
            "",
        ]
    else:
        lines = [
            "# Forward XANES: one CHGNet + SGMLP model for all absorbers vs per-element models (shared material split)",
            "",
            f"`.venv/bin/python benchmarks/bench_forward_universal.py --kind XANES --seeds {args.seeds} --archs {args.archs}` "
            f"on {os.cpu_count()} CPU cores, torch threads {args.threads} (cells already in "
            f"results/{spec_k['out']}.jsonl are read back). Data: the embedded default dataset's FEFF10 K-edge XANES of "
            f"the absorbers with >= {spec_k['min_spectra']} site spectra from >= {spec_k['min_materials']} structures, "
            f"{uni.n} site spectra of {len(set(uni.pairs()))} absorbers, split ONCE by material (seed 0, StructureMatcher "
            f"twins together): train {c['train']['spectra']} / val {c['val']['spectra']} / test {c['test']['spectra']} "
            "spectra. Cells: test MAE of edge-step-normalized mu on E - E0 = -3.5..66.5 eV (141 points), mean +/- std "
            "over seeds; per-pair rows use only that pair's rows of the same split. "
            f"'{first}' = frozen CHGNet absorber features (absorber pooling, dropout 0.2: the Cu K XANES validation "
            "choice, eta_cu.md) + a one-hot of the absorber into one SGMLP head, predicting the residual from each "
            "absorber's training-mean spectrum (`xastruct train forward --universal --kind XANES --arch xastruct "
            "--pool absorber --dropout 0.2 --min-spectra 40`); the next column: the same with the paper's mean "
            "pooling over absorber + first shell, no dropout (`make pretrained-forward` ships the one that wins on "
            "validation, below); 'mean' = the pair's "
            "training-mean spectrum; 'xastruct' = the paper's head per element; gcn/gat/mpnn = GNN baselines; mlp = "
            "plain-MLP head ablation.",
            "",
        ]
    lines += ["| pair | test spectra | " + " | ".join(archs) + " |", "|---|---|" + "---|" * len(archs)]
    maes = {a: [] for a in archs}
    wins = {a: 0 for a in archs}
    for p in pairs:
        cells = [done.get((p, a)) for a in archs]
        base = done.get((p, "mean"))
        if not any(cells):
            continue
        for a, cell in zip(archs, cells):
            if cell:
                maes[a].append(cell["mae"])
                wins[a] += bool(base and a != "mean" and cell["mae"] < base["mae"])
        n = next(x for x in cells if x)["test_n"]
        lines.append(f"| {p} | {n} | " + " | ".join(f"{x['mae']:.4f} ± {x['mae_std']:.4f}" if x else "-" for x in cells) + " |")
    lines += ["", "| model | pairs | mean test MAE over pairs | MAE / mean-spectrum MAE (mean over pairs) | beats the training-mean spectrum |",
              "|---|---|---|---|---|"]
    for a in archs:
        if not maes[a]:
            continue
        ratios = [done[(p, a)]["mae"] / done[(p, "mean")]["mae"] for p in pairs if (p, a) in done and (p, "mean") in done]
        lines.append(f"| {a} | {len(maes[a])} | {np.mean(maes[a]):.4f} | {np.mean(ratios):.3f} | "
                     + ("-" if a == "mean" else f"{wins[a]} of {len(maes[a])}") + " |")
    every = [r for (p, a), r in done.items() if a == first and r.get("mean_baseline")]
    if every:
        ratio = [r["mae"] / r["mean_baseline"] for r in every]
        lines += ["", f"Every pair the universal model covers (incl. the {len(every) - len(maes[first])} with fewer "
                  f"than 40 spectra that get no per-element model): {len(every)} pairs with test spectra, mean MAE "
                  f"{np.mean([r['mae'] for r in every]):.4f} vs their training-mean spectra "
                  f"{np.mean([r['mean_baseline'] for r in every]):.4f} (ratio {np.mean(ratio):.3f}; beats the mean on "
                  f"{sum(x < 1 for x in ratio)} of {len(ratio)}); ensemble of the seeds "
                  f"{np.mean([r['mae_ensemble'] for r in every]):.4f}. Training: "
                  f"{every[0]['seconds']:.0f} s for {every[0]['seeds']} seeds (best epochs {every[0].get('epochs')})."]
    for label in spec_k["rows"]:  # validation: what the universal variants are compared by
        r = next((r for (p, a), r in done.items() if a == label and "val_mae_ensemble" in r), None)
        if r:
            lines += ["", f"Validation (all val spectra, seed ensemble): '{label}' MAE {r['val_mae_ensemble']:.4f} vs "
                      f"each pair's training-mean spectrum {r['val_mean_baseline']:.4f}."]
    loop_file = RESULTS / LOOP_FILES[UNIVERSAL]
    if loop_file.exists() and args.kind == "EXAFS":
        loop = json.loads(loop_file.read_text())
        nofocus = RESULTS / LOOP_FILES[NO_FOCUS]
        if nofocus.exists():
            name = "path-model spectrum (predicted from the structure)"
            extra = {name.replace("predicted", "no focusing input, predicted"): json.loads(
                nofocus.read_text())["inputs"][name]}
            # the no-focusing row right under the default's
            loop["inputs"] = {k: v for n, vv in loop["inputs"].items()
                              for k, v in ([(n, vv)] + (list(extra.items()) if n == name else []))}
        lines += ["", "## Closed loop on the held-out materials: structure -> predicted EXAFS -> structure", "",
                  "Random forests for MNND and CN (one each for all absorbers, on k^2 chi(k), |chi(R)| and absorber/edge "
                  f"columns like xastruct.inverse) trained on the {loop['n_train_sites']} training sites' FEFF spectra, "
                  f"applied to the {loop['n_test_sites']} test sites with each input:", "",
                  "| input spectrum | MNND MAE (A) | CN accuracy |", "|---|---|---|"]
        lines += [f"| {name} | {v['mnnd_mae']:.3f} | {v['cn_accuracy']:.3f} |" for name, v in loop["inputs"].items()]
        t = loop["trivial"]
        lines += [f"| none: each pair's training-mean MNND / majority CN | {t['mnnd_mae']:.3f} | {t['cn_accuracy']:.3f} |"]
    cell_s = sum(r["seconds"] for (p, a), r in done.items() if a not in spec_k["rows"]) + sum(
        {a: r["seconds"] for (p, a), r in done.items() if a in spec_k["rows"]}.values())
    ns = [r["test_n"] for (p, a), r in done.items() if a in archs and r.get("test_n")]
    lines += ["", f"Wall time of this invocation {seconds / 60:.1f} min; training time recorded in the cells "
              f"{cell_s / 60:.1f} min. Test sets per pair are small ({min(ns)}-{max(ns)} "
              "spectra), so single cells are noisy; the summary rows are the readable part."]
    (RESULTS / f"{spec_k['out']}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-14:]))


if __name__ == "__main__":
    main()
