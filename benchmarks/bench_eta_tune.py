"""Validation-only search over forward-head settings for Cu K XANES (OmniXAS eta), frozen CHGNet.

    .venv/bin/python benchmarks/bench_eta_tune.py [--db duckdb:////tmp/bench_eta/cu.duckdb]
        [--variants "layers=last,layers=all,patience=150,hidden=512"] [--seeds 2]

Same data, target, outlier filter and material split as bench_eta.py; every variant is an
absorber-pooled XAStruct head (dropout 0.2) trained on the train materials with early stopping on
the validation materials, and ONLY the validation eta is computed (per seed and for the seed
ensemble): this is where settings are chosen, so the test materials stay untouched.
Variant keys: layers = last (CHGNet atom_fea, what the product uses) | all (atom embedding + the
output of every atom convolution, 5 x 64) | c3c4 (atom_fea + the last convolution's output);
patience, hidden (head width), dropout, wd (weight decay);
desc = rdf | shell | rdf+shell: local geometry appended to the absorber embedding (rdf: Gaussian-smeared
neighbour distances 1.6-6 A weighted by 1, Z and electronegativity; shell: the neighbours' CHGNet
embeddings averaged with Gaussian weights around 2.0 / 2.75 / 3.5 / 4.5 A);
loss = mse | huber<delta> | l1 | rmse (mean per-spectrum RMSE) | log (mean log per-spectrum MSE):
the training loss (eta is a median, so losses that discount outlier spectra are candidates);
ema = decay: evaluate and keep an exponential moving average of the weights;
fit = filtered | all: train on the filtered training spectra (OmniXAS) or on every spectrum of the
training materials, outliers included (the baseline and the validation set stay filtered);
krr (alone, with gamma / alpha): kernel ridge regression (RBF) on the standardised absorber embedding,
one model; every NN variant also gets a row "+ krr": its seed ensemble averaged with that KRR as
one more member. Writes benchmarks/results/eta_tune.md.
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
    out = {"layers": "last", "patience": 50, "hidden": 256, "dropout": 0.2, "wd": 0.01, "desc": "", "loss": "mse",
           "ema": 0.0, "gamma": 0.02, "alpha": 0.01, "fit": "filtered"}
    for part in filter(None, spec.split(":")):
        k, _, v = part.partition("=")
        out[k] = v if k in ("layers", "desc", "loss", "krr", "fit") else float(v) if k in ("dropout", "wd", "ema", "gamma", "alpha") else int(v)
    return out


def local_descriptors(data, atom_feas: dict) -> dict[str, np.ndarray]:
    """Per site: 'rdf' (3 x 44 Gaussian-smeared distance channels) and 'shell' (4 x 64 distance-weighted
    neighbour embeddings), neighbours within 6 A."""
    from pymatgen.core import Element

    centers, shells = np.arange(1.6, 6.0, 0.1), np.array([2.0, 2.75, 3.5, 4.5])
    rdf, shell = [], []
    for s, i in zip(data.structure_ids.tolist(), data.site_indices.tolist()):
        st = data.structures[s]
        nb = st.get_neighbors(st[i], 6.0)
        r = np.array([n.nn_distance for n in nb])
        ch = np.array([[1.0, n.specie.Z / 30.0, Element(n.specie.symbol).X / 2.0] for n in nb])
        g = np.exp(-0.5 * ((r[:, None] - centers[None]) / 0.1) ** 2)
        rdf.append((g.T @ ch).T.ravel())
        w = np.exp(-0.5 * ((r[:, None] - shells[None]) / 0.4) ** 2)
        shell.append((w.T @ atom_feas[s][[n.index for n in nb]] / np.maximum(w.sum(0)[:, None], 1e-6)).ravel())
    return {"rdf": np.asarray(rdf, np.float32), "shell": np.asarray(shell, np.float32)}


def _loss_fn(name: str):
    import torch.nn.functional as F

    if name == "mse":
        return F.mse_loss
    if name == "l1":
        return F.l1_loss
    if name.startswith("huber"):
        return lambda p, t: F.huber_loss(p, t, delta=float(name[5:] or 0.1))
    if name == "rmse":
        return lambda p, t: torch.sqrt(((p - t) ** 2).mean(1) + 1e-8).mean()
    if name == "log":
        return lambda p, t: torch.log(((p - t) ** 2).mean(1) + 1e-4).mean()
    raise ValueError(f"unknown loss {name!r}")


def fit_variant(model, fwd, y, tr, va, *, seed: int, v: dict, cfg: dict) -> int:
    """AdamW with the variant's loss and optional weight EMA; early stopping on the val MSE of the
    weights that are kept (the EMA's when on). Returns the best epoch."""
    import copy

    loss_fn = _loss_fn(v["loss"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(v["ema"]))
           if v["ema"] else None)
    rng = np.random.default_rng(seed)
    best, best_epoch, state = np.inf, 0, None
    for epoch in range(1, 3001):
        model.train()
        for b in train._batches(rng.permutation(tr), cfg["batch_size"]):
            loss = loss_fn(fwd(model, b), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update_parameters(model)
        kept = ema.module if ema is not None else model
        val = float(np.mean((train._predict(kept, fwd, va, 256) - y[va].numpy()) ** 2))
        if val < best:
            best, best_epoch, state = val, epoch, copy.deepcopy(kept.state_dict())
        if epoch - best_epoch >= v["patience"]:
            break
    model.load_state_dict(state)
    return best_epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_eta/cu.duckdb")
    ap.add_argument("--variants", default="layers=last,desc=rdf,desc=shell,desc=rdf+shell,loss=huber0.1,loss=l1,loss=rmse,"
                    "loss=log,ema=0.999,krr,krr:layers=all:gamma=0.04:alpha=0.01")
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

    desc_path = Path(cache) / "local_desc.pkl"
    desc = None
    if any(parse(spec)["desc"] for spec in args.variants.split(",")):
        if desc_path.exists():
            desc = pickle.loads(desc_path.read_bytes())
        else:
            desc = local_descriptors(data, {s: f[:, LAYERS["last"]] for s, f in by_sid.items()})
            desc_path.write_bytes(pickle.dumps(desc))

    def features(v: dict) -> np.ndarray:
        parts = [z_all[:, LAYERS[v["layers"]]]] + [desc[k] for k in filter(None, v["desc"].split("+"))]
        return np.ascontiguousarray(np.hstack(parts).astype(np.float32))

    def krr_predict(x: np.ndarray, gamma: float, alpha: float) -> np.ndarray:
        from sklearn.kernel_ridge import KernelRidge

        x = (x - x[tr].mean(0)) / (x[tr].std(0) + 1e-6)
        ym = y[tr].mean(0)
        # gamma is given per 64 standardised features (the CHGNet embedding width)
        return KernelRidge(kernel="rbf", gamma=gamma * 64 / x.shape[1], alpha=alpha).fit(x[tr], y[tr] - ym).predict(x[va]) + ym

    krr_ref = None
    rows = []
    for spec in args.variants.split(","):
        v = parse(spec)
        t0 = time.perf_counter()
        if "krr" in v:
            p = krr_predict(features(v), v["gamma"], v["alpha"])
            e = B.eta(base_mse, ((p - y[va]) ** 2).mean(1))
            rows.append((spec, [e], e, ["-"], time.perf_counter() - t0))
            print(f"== {spec}: val eta {e:.2f}", flush=True)
            continue
        data.cache["chgnet_pooled:absorber"] = features(v)
        cfg = train.TrainConfig(arch="xastruct", seeds=1, epochs=3000, patience=v["patience"], lr=1e-4,
                                weight_decay=v["wd"], d_hidden=v["hidden"], device="cpu",
                                num_threads=args.threads, pool="absorber", dropout=v["dropout"]).resolved()
        preds, etas, epochs = [], [], []
        fit_rows = cu["train_all"] if v["fit"] == "all" else tr
        for seed in range(args.seeds):
            model, fwd, groups = train._build(cfg, data, fit_rows, cache_dir=cache, device="cpu", progress=None,
                                              seed=seed)
            if v["loss"] == "mse" and not v["ema"]:  # the product's training loop
                best_epoch = train._fit(model, fwd, torch.from_numpy(data.y), fit_rows, va, seed=seed, epochs=cfg["epochs"],
                                        lr=cfg["lr"], weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"],
                                        patience=cfg["patience"], max_minutes=None, param_groups=groups)["best_epoch"]
            else:
                best_epoch = fit_variant(model, fwd, torch.from_numpy(data.y), fit_rows, va, seed=seed, v=v, cfg=cfg)
            preds.append(train._predict(model, fwd, va, 256) * scale)
            etas.append(B.eta(base_mse, ((preds[-1] - y[va]) ** 2).mean(1)))
            epochs.append(best_epoch)
            print(f"{spec} seed {seed}: val eta {etas[-1]:.2f} (best epoch {epochs[-1]})", flush=True)
        ens = B.eta(base_mse, ((np.mean(preds, 0) - y[va]) ** 2).mean(1))
        rows.append((spec, etas, ens, epochs, time.perf_counter() - t0))
        print(f"== {spec}: {args.seeds}-seed ensemble val eta {ens:.2f}", flush=True)
        if krr_ref is None:
            krr_ref = krr_predict(z_all[:, LAYERS["last"]], 0.02, 0.01)
        mixed = B.eta(base_mse, ((np.mean(preds + [krr_ref], 0) - y[va]) ** 2).mean(1))
        rows.append((f"{spec} + krr", ["-"], mixed, ["-"], 0.0))
    lines = ["# Cu K XANES forward head settings: validation eta only", "",
             f"`.venv/bin/python benchmarks/bench_eta_tune.py --variants {args.variants} --seeds {args.seeds}` "
             f"({os.cpu_count()} cores, load average at the end {os.getloadavg()[0]:.1f}). Absorber pooling, "
             "dropout 0.2 unless the variant says otherwise; validation materials of bench_eta.py's split "
             f"({len(va)} filtered spectra); test materials not touched.", "",
             "| variant | val eta per seed | val eta, seed ensemble | best epochs | s |", "|---|---|---|---|---|"]
    lines += [f"| {s} | {', '.join(e if isinstance(e, str) else f'{e:.2f}' for e in etas)} | {ens:.2f} | "
              f"{', '.join(map(str, ep))} | {sec:.0f} |" for s, etas, ens, ep, sec in rows]
    lines += ["", "'+ krr' rows: the seed ensemble above it plus one kernel ridge model (RBF, gamma 0.02 per 64 "
              "standardised features, alpha 0.01, on the absorber embedding) as one more equal member."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
