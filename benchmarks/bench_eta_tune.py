"""Validation-only search over forward-head settings for Cu K XANES (OmniXAS eta), frozen CHGNet.

    .venv/bin/python benchmarks/bench_eta_tune.py [--db duckdb:////tmp/bench_eta/cu.duckdb]
        [--variants "layers=last,layers=all,patience=150,hidden=512"] [--seeds 2]

Same data, target, outlier filter and material split as bench_eta.py; every variant is an
absorber-pooled XAStruct head (dropout 0.2) trained on the train materials with early stopping on
the validation materials, and ONLY the validation eta is computed (per seed and for the seed
ensemble): this is where settings are chosen, so the test materials stay untouched.
Variant keys: layers = last (CHGNet atom_fea, what the product uses) | all (atom embedding + the
output of every atom convolution, 5 x 64) | c3c4 (atom_fea + the last convolution's output);
patience, hidden (head width), dropout, wd (weight decay). Writes benchmarks/results/eta_tune.md.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)), sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_eta as B  # noqa: E402

from xastruct import embed, train  # noqa: E402

LAYERS = {"last": slice(192, 256), "all": slice(0, 320), "c3c4": slice(192, 320)}


def every_layer(model, graphs) -> list[torch.Tensor]:
    """Atom embedding and the output of each atom convolution of CHGNet, concatenated (n_atoms, 320)."""
    from chgnet.model.model import BatchedGraph

    g = BatchedGraph.from_graphs(graphs, bond_basis_expansion=model.bond_basis_expansion,
                                 angle_basis_expansion=model.angle_basis_expansion, compute_stress=False)
    a = model.atom_embedding(g.atomic_numbers - 1)
    outs = [a]
    b = model.bond_embedding(g.bond_bases_ag)
    w_ag = model.bond_weights_ag(g.bond_bases_ag)
    w_bg = model.bond_weights_bg(g.bond_bases_bg)
    ang = model.angle_embedding(g.angle_bases)
    layers = zip(model.atom_conv_layers, list(model.bond_conv_layers) + [None], list(model.angle_layers) + [None])
    for atom_layer, bond_layer, angle_layer in layers:
        a = atom_layer(atom_feas=a, bond_feas=b, bond_weights=w_ag, atom_graph=g.batched_atom_graph,
                       directed2undirected=g.directed2undirected)
        outs.append(a)
        if bond_layer is not None and len(g.angle_bases):
            b = bond_layer(atom_feas=a, bond_feas=b, bond_weights=w_bg, angle_feas=ang, bond_graph=g.batched_bond_graph)
            if angle_layer is not None:
                ang = angle_layer(atom_feas=a, bond_feas=b, angle_feas=ang, bond_graph=g.batched_bond_graph)
    return list(torch.split(torch.cat(outs, 1), torch.bincount(g.atom_owners).tolist()))


def parse(spec: str) -> dict:
    out = {"layers": "last", "patience": 50, "hidden": 256, "dropout": 0.2, "wd": 0.01}
    for part in filter(None, spec.split(":")):
        k, v = part.split("=")
        out[k] = v if k == "layers" else float(v) if k in ("dropout", "wd") else int(v)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_eta/cu.duckdb")
    ap.add_argument("--variants", default="layers=last,layers=all,layers=c3c4")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eta_tune.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cu = B.load_cu_eta(args.db)
    data, y, cache, scale, tr, va = cu["data"], cu["y"], cu["cache"], cu["scale"], cu["train"], cu["val"]
    base_mse = ((y[tr].mean(0) - y[va]) ** 2).mean(1)

    feats_path = Path(cache) / "every_layer.pkl"
    if feats_path.exists():
        by_sid = pickle.loads(feats_path.read_bytes())
    else:
        model = embed._frozen_chgnet(embed.DEFAULT_MODEL, "cpu")
        sids = sorted(set(data.structure_ids.tolist()))
        by_sid = {}
        for j in range(0, len(sids), 32):
            graphs = [model.graph_converter(data.structures[s]) for s in sids[j:j + 32]]
            with torch.no_grad():
                for s, f in zip(sids[j:j + 32], every_layer(model, graphs)):
                    by_sid[s] = f.numpy().astype(np.float32)
        feats_path.write_bytes(pickle.dumps(by_sid))
    z_all = np.stack([by_sid[s][i] for s, i in zip(data.structure_ids.tolist(), data.site_indices.tolist())])
    # the "last" slice is exactly what the product embeds (embed.atom_features); check it
    ref = embed.chgnet_site_embeddings([data.structures[int(data.structure_ids[0])]], device="cpu")[0]
    assert np.allclose(ref[int(data.site_indices[0])], z_all[0, LAYERS["last"]], atol=1e-4)

    rows = []
    for spec in args.variants.split(","):
        v = parse(spec)
        data.cache["chgnet_pooled:absorber"] = np.ascontiguousarray(z_all[:, LAYERS[v["layers"]]])
        cfg = train.TrainConfig(arch="xastruct", seeds=1, epochs=3000, patience=v["patience"], lr=1e-4,
                                weight_decay=v["wd"], d_hidden=v["hidden"], device="cpu",
                                num_threads=args.threads, pool="absorber", dropout=v["dropout"]).resolved()
        preds, etas, epochs = [], [], []
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            model, fwd, groups = train._build(cfg, data, tr, cache_dir=cache, device="cpu", progress=None, seed=seed)
            fit = train._fit(model, fwd, torch.from_numpy(data.y), tr, va, seed=seed, epochs=cfg["epochs"],
                             lr=cfg["lr"], weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"],
                             patience=cfg["patience"], max_minutes=None, param_groups=groups)
            preds.append(train._predict(model, fwd, va, 256) * scale)
            etas.append(B.eta(base_mse, ((preds[-1] - y[va]) ** 2).mean(1)))
            epochs.append(fit["best_epoch"])
            print(f"{spec} seed {seed}: val eta {etas[-1]:.2f} (best epoch {epochs[-1]})", flush=True)
        ens = B.eta(base_mse, ((np.mean(preds, 0) - y[va]) ** 2).mean(1))
        rows.append((spec, etas, ens, epochs, time.perf_counter() - t0))
        print(f"== {spec}: {args.seeds}-seed ensemble val eta {ens:.2f}", flush=True)
    lines = ["# Cu K XANES forward head settings: validation eta only", "",
             f"`.venv/bin/python benchmarks/bench_eta_tune.py --variants {args.variants} --seeds {args.seeds}` "
             f"({os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}). Absorber pooling, "
             "dropout 0.2 unless the variant says otherwise; validation materials of bench_eta.py's split "
             f"({len(va)} filtered spectra); test materials not touched.", "",
             "| variant | val eta per seed | val eta, seed ensemble | best epochs | s |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {', '.join(f'{e:.2f}' for e in etas)} | {ens:.2f} | {', '.join(map(str, ep))} | {sec:.0f} |"
              for s, etas, ens, ep, sec in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
