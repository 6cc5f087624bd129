"""Neighbour element vs neighbour period: what the shipped neighbour classifiers read off held-out FEFF spectra.

    .venv/bin/python benchmarks/bench_neighbor_period.py [--db URL] [--out benchmarks/results/neighbor_period.md]

Why: a backscatterer's amplitude and phase change slowly with Z, so neighbours a few Z apart scatter
almost alike; `predict structure` therefore also reports the neighbour's period (the classifier's
probabilities summed over each period of the periodic table, `inverse.neighbor_period`). This scores
both on the held-out (test) materials of each shipped neighbour model: the same store rows, target,
features and material split the model was trained with (so the element accuracy reproduces the
model's registered test metric), members averaged as `predict` does. Baselines from the training
rows of the same absorber: its majority neighbour element, and its majority neighbour period.
Without --db a scratch store is made with `xastruct ingest builtin` (embedded dataset + shipped models).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "neighbor_period.md"


def period_of(symbol) -> int | None:
    from xastruct.inverse import _Z, period_group

    z = _Z.get(str(symbol))
    return period_group(z)[0] if z else None


def score(entry, engine) -> dict:
    from xastruct import inverse as inv

    cfg = entry.config or {}
    variant = inv.VARIANT_OF[entry.kind]
    data = inv.load_sites(engine, sources=cfg.get("sources"), target=cfg.get("target") or "site")
    data = data.with_features(variant)
    data = data.subset(np.isin(data.element, cfg.get("elements") or sorted(set(data.element.tolist()))))
    split = inv.split_by_material(data.group, seed=entry.split_seed)
    train, test = data.subset(split == "train"), data.subset(split == "test")
    classes, norm = list(cfg["classes"]), cfg.get("input_norm")
    members = [inv.load_member(d, device="cpu") for d in entry.member_dirs()]
    proba = np.mean([inv._predict_classifier(m, test, variant, classes, norm, inv.member_temperature(cfg, i))
                     for i, m in enumerate(members)], axis=0)
    true_el = inv._label("neighbor", test).astype(str)
    pred_el = np.array(classes, dtype=object)[proba.argmax(axis=1)].astype(str)
    pred_per = []
    for row in proba:
        per = inv.neighbor_period(dict(zip(classes, row.tolist())))
        pred_per.append(per["period"] if per else None)
    true_per = np.array([period_of(e) for e in true_el], dtype=object)
    # per-absorber baselines from the training rows
    tr_el = inv._label("neighbor", train).astype(str)
    maj_el = {a: Counter(tr_el[train.element == a].tolist()).most_common(1)[0][0] for a in set(train.element.tolist())}
    maj_per = {a: Counter(period_of(e) for e in tr_el[train.element == a]).most_common(1)[0][0] for a in maj_el}
    base_el = np.array([maj_el.get(a, "-") for a in test.element], dtype=object)
    base_per = np.array([maj_per.get(a) for a in test.element], dtype=object)
    by_period = {}
    for p in sorted({p for p in true_per if p is not None}):
        sel = true_per == p
        by_period[p] = (int(sel.sum()), float(np.mean(pred_el[sel] == true_el[sel])),
                        float(np.mean(np.array(pred_per, dtype=object)[sel] == p)), float(np.mean(base_per[sel] == p)))
    return {"model": entry.name, "n_test": len(test), "n_absorbers": len(set(test.element.tolist())),
            "el_acc": float(np.mean(pred_el == true_el)), "per_acc": float(np.mean(np.array(pred_per, dtype=object) == true_per)),
            "base_el": float(np.mean(base_el == true_el)), "base_per": float(np.mean(base_per == true_per)),
            "by_period": by_period, "registered": ((entry.metrics or {}).get("test", {}).get("overall", {}) or {}).get("accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=None, help="a store with the embedded dataset and the shipped models")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    from xastruct import registry, store
    from xastruct.inverse import period_label

    url = args.db
    if url is None:
        work = ROOT / "scratch" / "bench_neighbor_period"
        work.mkdir(parents=True, exist_ok=True)
        url = f"duckdb:///{work / 'store.duckdb'}"
        if not (work / "store.duckdb").exists():
            subprocess.run([str(ROOT / ".venv" / "bin" / "xastruct"), "ingest", "builtin", "--db", url], check=True)
    engine = store.get_engine(url)
    rows = [score(e, engine) for e in registry.list_models(engine, task="neighbor")
            if e.element is None and e.artifact and "pretrained" in str(e.artifact)]
    lines = ["# Neighbour element vs neighbour period (held-out FEFF sites, shipped neighbour models)", "",
             f"`.venv/bin/python benchmarks/bench_neighbor_period.py{'' if args.db is None else ' --db ' + args.db}`. "
             "Each shipped neighbour model on the test materials of its own split (the rows it was trained "
             "with); prediction = its members' averaged class probabilities, as `predict structure`; "
             "period = the probabilities summed over each period of the periodic table "
             "(`inverse.neighbor_period`). Baselines: per absorber, the training rows' majority neighbour "
             "element / majority neighbour period.", "",
             "| model | test sites (absorbers) | element accuracy (registered*) | element baseline | period accuracy | period baseline |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        reg = r["registered"]
        reg = f" ({reg[0]:.3f})" if isinstance(reg, list) else ""
        lines.append(f"| {r['model']} | {r['n_test']} ({r['n_absorbers']}) | {r['el_acc']:.3f}{reg} | {r['base_el']:.3f} "
                     f"| {r['per_acc']:.3f} | {r['base_per']:.3f} |")
    lines += ["", "*the model's registered test accuracy, where a true neighbour of a class too rare to train on "
              "(merged into 'other') counts as right when the model says 'other'; here the true element must be named."]
    for r in rows:
        lines += ["", f"By the true neighbour's period, {r['model']}:", "",
                  "| true period | test sites | element accuracy | period accuracy | period baseline |", "|---|---|---|---|---|"]
        for p, (n, ea, pa, pb) in r["by_period"].items():
            lines.append(f"| {period_label(p)} | {n} | {ea:.3f} | {pa:.3f} | {pb:.3f} |")
    text = "\n".join(lines) + "\n"
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
