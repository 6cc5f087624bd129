"""`xastruct train forward`, `xastruct models`, `xastruct predict spectrum`."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import registry, store
from ..errors import InputError
from .common import console, db_option, out, progress_bar

EDGES = ["K", "L1", "L2", "L3", "L2,3"]


@contextmanager
def epoch_bar(total: int, label: str):
    """One rich bar per training run: advances per epoch and shows the train/val MSE."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]train {task.fields[train]}  val {task.fields[val]}  best@{task.fields[best]}"),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    ) as prog:
        task = prog.add_task(label, total=total, train="-", val="-", best="-")

        def update(epoch: int, train_mse: float, val_mse: float, best_epoch: int) -> None:
            prog.update(task, completed=epoch, train=f"{train_mse:.3g}", val=f"{val_mse:.3g}", best=str(best_epoch))

        yield update


def _pm(summary: dict, split: str, metric: str, fmt: str = ".4f") -> str:
    # other tasks' registry rows may lay their metrics out differently: show "-" for those
    m = summary.get(split) if isinstance(summary, dict) else None
    m = m.get(metric) if isinstance(m, dict) else None
    if not isinstance(m, dict) or "mean" not in m:
        return "-"
    return f"{m['mean']:{fmt}} ± {m['std']:{fmt}}"


def _headline(entry, split: str) -> str:
    """The held-out figure of a registry row on *split* (val / test), mean +- std over seeds: forward
    MAE of the spectrum, MNND MAE (A), CN / neighbour accuracy and macro-F1 over every absorber."""
    m = entry.metrics or {}
    if entry.task == "forward":
        return f"MAE {_pm(m.get('summary', {}), split, 'mae')}"
    o = (m.get(split) or {}).get("overall") or {}

    def f(key: str, fmt: str) -> str:
        v = o.get(key)
        return "-" if not isinstance(v, list) or v[0] is None else f"{v[0]:{fmt}} ± {v[1]:{fmt}}"

    if entry.task == "mnnd":
        return f"MAE {f('mae', '.3f')} A"
    return f"acc {f('accuracy', '.3f')}, F1 {f('macro_f1', '.3f')}"


def _metrics_table(title: str, rows: list[tuple[str, dict, int]]) -> Table:
    tbl = Table(title=title)
    for c in ("model", "seeds", "test MAE", "test RMSE", "test cosine", "peak err"):
        tbl.add_column(c, justify="left" if c == "model" else "right", no_wrap=c == "model")
    for name, summary, n_seeds in rows:
        tbl.add_row(
            name, str(n_seeds), _pm(summary, "test", "mae"), _pm(summary, "test", "rmse"),
            _pm(summary, "test", "cosine"), _pm(summary, "test", "peak_error", ".2f"),
        )  # fmt: skip
    return tbl


@click.group("train")
def train_group() -> None:
    """Train models on the store's data and register them (see `xastruct models`)."""


@train_group.command("forward")
@click.option("--element", default=None, help="Absorbing element, e.g. Cu (or use --all).")
@click.option("--edge", default="K", show_default=True, type=click.Choice(EDGES))
@click.option("--kind", default="XANES", show_default=True, type=click.Choice(["XANES", "EXAFS"]))
@click.option("--source", default=None, help="Spectrum source (feff9, feff10, ...); needed when the store has several.")
@click.option("--arch", default="xastruct", show_default=True,
              type=click.Choice(["xastruct", "gcn", "gat", "mpnn", "mean", "sgmlp_relu", "sgmlp_linear", "mlp", "paths"]),
              help="xastruct: frozen CHGNet + SGMLP head; sgmlp_relu/sgmlp_linear/mlp: head ablations; "
                   "gcn/gat/mpnn: GNN baselines trained end to end; mean: training-mean spectrum; paths (EXAFS): "
                   "learned single-scattering path sum over the neighbours, best with --universal.")  # fmt: skip
@click.option("--freeze/--finetune", default=True, show_default=True,
              help="Keep CHGNet frozen (embeddings computed once) or fine-tune it (slow on CPU).")
@click.option("--seeds", type=int, default=1, show_default=True, help="Train this many seeds; metrics are mean ± std.")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the by-material split.")
@click.option("--epochs", type=int, default=None, help="Max epochs (default: 2000 frozen heads, 100 GNNs, 30 fine-tuning).")
@click.option("--patience", type=int, default=None, help="Early-stopping patience in epochs (val MSE).")
@click.option("--lr", type=float, default=None, help="AdamW learning rate (default 1e-4; 1e-3 for GNN baselines).")
@click.option("--weight-decay", type=float, default=0.01, show_default=True)
@click.option("--batch-size", type=int, default=None)
@click.option("--dropout", type=float, default=0.0, show_default=True, help="Dropout in the head's hidden layers.")
@click.option("--hidden", type=int, default=None,
              help="Width of the hidden layers (head; paths: its per-neighbour network) [default: 256, paths 512].")
@click.option("--pool", type=click.Choice(["mean", "absorber", "concat"]), default="mean", show_default=True,
              help="Site pooling of the frozen CHGNet features: mean over absorber + first shell (the paper's), "
                   "the absorber's own row, or [absorber, first-shell mean]. README: which wins where.")
@click.option("--chgnet-atoms/--no-chgnet-atoms", default=True, show_default=True,
              help="paths: add frozen CHGNet atom features of absorber and neighbours to their element embeddings.")
@click.option("--focus/--no-focus", "path_focus", default=None,
              help="paths: give each neighbour's term the closer atom most in line with it (multiple-scattering "
                   "focusing); default: TrainConfig's.")
@click.option("--max-minutes", type=float, default=None, help="Training-time cap per seed, summed over resumed runs (keeps the best val epoch; "
                   "a rerun with a larger cap continues from the saved state).")
@click.option("--keep-last", is_flag=True, help="No early stopping: run all epochs, keep the last weights (tiny val sets).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine).")
@click.option("--all", "all_", is_flag=True,
              help="Every element/edge/kind/source with >= --min-spectra site spectra from >= --min-materials structures "
                   "(only the --kind / --edge / --source given explicitly, e.g. `--all --kind XANES`).")  # fmt: skip
@click.option("--universal", is_flag=True,
              help="One model over every (element, edge) of --kind in the store (so --all is implied), absorber and "
                   "edge as inputs (--arch paths, or the frozen-CHGNet heads: xastruct, ablations; "
                   "benchmarks/results/forward_universal.md: far better than per element).")
@click.option("--min-spectra", type=int, default=40, show_default=True,
              help="--all: per element/edge/kind; --universal: per absorber, and only when typed (else every absorber).")
@click.option("--min-materials", type=int, default=20, show_default=True, help="As --min-spectra, in structures.")
@click.option("--models-dir", type=click.Path(file_okay=False), default=None,
              help="Artifact directory (default: models/ next to the DuckDB file, else ./models).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Feature caches (default: xastruct_cache/ next to the DuckDB file).")
@db_option
def forward(element, edge, kind, source, arch, freeze, seeds, split_seed, epochs, patience, lr, weight_decay, batch_size,
            dropout, hidden, pool, chgnet_atoms, path_focus, max_minutes, keep_last, device, threads, all_, universal, min_spectra, min_materials,
            models_dir, cache_dir, db):  # fmt: skip
    """Structure -> site spectrum model for one element/edge/kind, evaluated on held-out materials."""
    from .. import train as tr

    if not all_ and not element and not universal:
        raise InputError("train forward", "no --element given", "pass --element Cu (or --all, or --universal)")
    if universal and element:
        raise InputError("train forward", "--universal trains on every element", "drop --element (or --universal)")
    eng = store.get_engine(db)
    config = tr.TrainConfig(
        arch=arch, finetune=not freeze, seeds=seeds, split_seed=split_seed, epochs=epochs, patience=patience, lr=lr,
        weight_decay=weight_decay, batch_size=batch_size, dropout=dropout, d_hidden=hidden, max_minutes=max_minutes, keep_last=keep_last,
        device=device, num_threads=threads, pool=pool, chgnet_atoms=chgnet_atoms,
        **({} if path_focus is None else {"path_focus": path_focus}),
    )  # fmt: skip
    # --kind/--edge/--min-* have defaults; some choices below hinge on whether they were typed
    typed = lambda name: click.get_current_context().get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE  # noqa: E731
    if universal:
        targets = [dict(element=None, edge=None, kind=kind, source=source)]
    elif all_:
        targets = tr.available_datasets(eng, min_spectra=min_spectra, min_materials=min_materials)
        # with --all, --kind/--edge/--source filter only when typed, so plain --all stays "everything"
        given = {k: v for k, v in (("kind", kind), ("edge", edge), ("source", source)) if typed(k)}
        targets = [t for t in targets if all(t[k] == v for k, v in given.items())]
        if not targets:
            raise InputError("train forward --all", f"no element/edge/kind with >= {min_spectra} site spectra "
                             f"from >= {min_materials} structures"
                             + "".join(f", {k} {v}" for k, v in given.items()), "ingest or simulate more data")  # fmt: skip
    else:
        targets = [dict(element=element, edge=edge, kind=kind, source=source)]
    # a model over all absorbers takes every pair with data unless a minimum is typed
    mins = dict(min_spectra=min_spectra if typed("min_spectra") else 1,
                min_materials=min_materials if typed("min_materials") else 1) if universal else {}
    rows = []
    args = dict(targets=targets, config={k: v for k, v in vars(config).items()}, **mins)
    with store.run_record(eng, "train forward", json.loads(json.dumps(args, default=str))) as summary:
        for t in targets:
            res = tr.train_forward(
                eng, element=t["element"], edge=t["edge"], kind=t["kind"], source=t["source"], config=config,
                models_dir=models_dir, cache_dir=cache_dir, progress_factory=progress_bar, epoch_progress=epoch_bar,
                **mins,
            )  # fmt: skip
            e = res.entry
            rows.append((e.name, res.metrics["summary"], res.metrics["n_seeds"]))
            sp = res.config["split"]["counts"]
            out.print(
                f"registered [bold]{e.name}[/] (id {e.id}) at {e.artifact}\n"
                f"  split (seed {split_seed}, by material, {res.config['split']['n_twin_groups']} StructureMatcher "
                f"twin groups kept together): " + ", ".join(f"{k} {v['materials']} materials / {v['spectra']} spectra"
                                                             for k, v in sp.items()),
                highlight=False,
            )  # fmt: skip
            if res.data.skipped:
                out.print(f"  skipped spectra: {res.data.skipped}")
            pp = [m for m in res.metrics.get("per_pair", {}).values() if m.get("n_test") and "mean_baseline_mae" in m]
            if pp:
                wins = sum(m["test"]["mae"] < m["mean_baseline_mae"] for m in pp)
                out.print(f"  {len(res.metrics['per_pair'])} absorber/edge pairs; on the {len(pp)} with test spectra "
                          f"the model's MAE beats each pair's training-mean spectrum on {wins} "
                          f"(mean MAE {sum(m['test']['mae'] for m in pp) / len(pp):.4f} vs "
                          f"{sum(m['mean_baseline_mae'] for m in pp) / len(pp):.4f})", highlight=False)
            summary.setdefault("models", []).append({"name": e.name, "id": e.id, "test": res.metrics["summary"]["test"]})
    out.print(_metrics_table("held-out materials (test split)", rows))


@train_group.command("calibrate")
@click.argument("model")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@db_option
def calibrate(model, device, db) -> None:
    """Fit the uncertainty band of forward MODEL (name or id) on its validation materials: the factor
    on the seed spread that makes ± sigma hold 68% of their errors, as `train forward` does since the
    band was calibrated. For models trained before (e.g. the shipped ones); weights are untouched."""
    from .. import train as tr

    eng = store.get_engine(db)
    entry = registry.load(eng, model, device=device)
    res = tr.calibrate_band(eng, entry, device=device, progress_factory=progress_bar)
    v, t = res["val"], res["test"]
    out.print(f"{entry.name}: band_scale {v['scale']:.2f} (raw spread held {v['raw_within_1']:.0%} of "
              f"{res['n_val']} validation spectra's errors within ±1; scaled {v['within_1']:.0%} / {v['within_2']:.0%} "
              f"within ±1 / ±2 sigma)", highlight=False)
    if t:
        out.print(f"test materials ({res['n_test']} spectra): {t['within_1']:.0%} / {t['within_2']:.0%} within "
                  f"±1 / ±2 sigma (raw spread {t['raw_within_1']:.0%} within ±1)", highlight=False)


@click.command("models")
@click.option("--task", default=None, help="Only this task (forward, cn, mnnd, ...).")
@click.option("--element", default=None)
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@db_option
def models_cmd(task, element, as_json, db) -> None:
    """List the model registry with held-out metrics."""
    eng = store.get_engine(db)
    entries = registry.list_models(eng, task=task, element=element)
    if as_json:
        out.print_json(json.dumps([{k: v for k, v in vars(e).items() if k != "members"} for e in entries], default=str))
        return
    # forward: MAE of the spectrum; mnnd: MAE (A); cn / neighbor: accuracy and macro-F1 (all absorbers)
    rows = []
    for e in entries:
        summ = (e.metrics or {}).get("summary", {})
        split_doc = (e.config or {}).get("split")
        counts = split_doc.get("counts", {}) if isinstance(split_doc, dict) else {}
        n_rows = (e.metrics or {}).get("n")  # inverse models count sites (split by reduced formula)
        if counts:
            split = "/".join(str(counts.get(s, {}).get("materials", "?")) for s in ("train", "val", "test")) + " materials"
        elif isinstance(n_rows, dict):
            split = "/".join(str(n_rows.get(s, "?")) for s in ("train", "val", "test")) + " sites"
        else:
            split = "-"
        rows.append((str(e.id), e.name, str((e.metrics or {}).get("n_seeds", (e.metrics or {}).get("seeds", "-"))),
                     _headline(e, "val"), _headline(e, "test"), _pm(summ, "test", "cosine"), split,
                     str(e.created_at or "")[:19]))
    if out.width < 150:  # the eight columns need ~150; a narrow terminal gets a few short lines a model instead
        out.print(f"{len(entries)} registered model(s); held-out metrics: validation | test", highlight=False)
        for id_, name, seeds, val, test, cos, split, created in rows:
            out.print(f"[bold]{id_:>4}  {name}[/] ({seeds} seed(s))", highlight=False)
            out.print(f"      {val} | {test}", highlight=False)
            out.print(f"      split {split}" + (f", test cosine {cos}" if cos != "-" else "") + f", {created[:10]}",
                      highlight=False)
        return
    tbl = Table(title=f"{len(entries)} registered model(s)")
    for c in ("id", "name", "seeds", "validation", "test", "test cosine", "split", "created"):
        tbl.add_column(c, justify="right" if c in ("id", "seeds") else "left", no_wrap=c == "name")
    for r in rows:
        tbl.add_row(*r)
    out.print(tbl)


@click.group("predict")
def predict_group() -> None:
    """Apply registered models to new structures."""


@predict_group.command("spectrum")
@click.argument("structure_files", metavar="STRUCTURE...", nargs=-1, required=True)
@click.option("--element", required=True, help="Absorbing element, e.g. Cu.")
@click.option("--edge", default="K", show_default=True, type=click.Choice(EDGES))
@click.option("--kind", default="XANES", show_default=True, type=click.Choice(["XANES", "EXAFS"]))
@click.option("--site", "sites", type=int, multiple=True,
              help="0-based site index (repeatable; default: every symmetry-inequivalent site of the element).")
@click.option("--model", "model_name", default=None,
              help="Registered model name or id (default: what `screen` runs -- newest xastruct model for XANES, "
                   "paths for EXAFS, universal ones included -- else the newest forward model).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Save a plot (PNG/PDF/SVG) here.")
@click.option("--compare", "compare_file", type=click.Path(dir_okay=False), default=None,
              help="A measured or calculated spectrum file (XDI, FEFF xmu.dat, two columns) to score the prediction "
                   "against, drawn on the plot. XANES: cosine and MAE after the best rigid shift (as `xastruct "
                   "match`). EXAFS: R^2 of k^2 chi(k) after fitting amplitude, extra disorder and E0 (k 3-11).")
@click.option("--average", is_flag=True,
              help="Also the multiplicity-weighted mean over every ELEMENT site of the cell: what a measurement "
                   "sees (with --compare, the file is drawn against it).")
@click.option("--broaden", default=None, metavar="FWHM|auto",
              help="With --compare: a Gaussian broadening (FWHM, eV) applied to the prediction before it is scored "
                   "and drawn (the experimental broadening a calculated XANES lacks), or 'auto': the FWHM of 0-16 eV "
                   "that fits the file best.")
@click.option("--top", type=click.IntRange(min=1), default=None,
              help="With several STRUCTUREs (or structure:all): list only the best N candidates.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True)
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@db_option
def predict_spectrum(structure_files, element, edge, kind, sites, model_name, plot, compare_file, average, broaden,
                     top, fmt, device, db) -> None:
    """Predicted spectrum of the ELEMENT sites of STRUCTURE (a structure file: CIF, POSCAR, pymatgen
    JSON, extxyz; or a stored one: structure:<id> / structure:<source_id>); with a multi-seed model, ± sigma:
    the spread across seeds scaled to hold 68% of the validation errors (the model's band_scale;
    unscaled for models trained before it), printed and drawn as an uncertainty band. Several
    STRUCTUREs with --compare FILE: the candidates ranked by how well their site-averaged spectrum
    explains the file (structure:all = every stored structure with ELEMENT)."""

    import numpy as np

    from .. import match
    from .. import train as tr

    if average and sites:
        raise InputError("--average", "is the mean over every site of the element", "drop --site, or --average")
    if compare_file and not Path(compare_file).is_file():  # before any prediction (a ranking can take minutes)
        raise InputError(compare_file, "no such file", "check the --compare path")
    if broaden is not None:
        if not compare_file:
            raise InputError("--broaden", "only applies with --compare FILE", "add --compare measured.xdi, or drop --broaden")
        if broaden != "auto":
            try:
                broaden = float(broaden)
            except ValueError:
                raise InputError("--broaden", f"{broaden!r} is not a width", "give a FWHM in eV (e.g. 3) or 'auto'") from None
            if not 0 <= broaden <= 50:
                raise InputError("--broaden", f"FWHM {broaden} eV is out of range", "use 0-50 eV, or 'auto'")
    eng = store.get_engine(db)
    if "structure:all" in structure_files:  # every stored structure with the element is a candidate
        structure_files = [r for r in structure_files if r != "structure:all"] + store.structures_with(eng, element)
        if not structure_files:
            raise InputError("structure:all", f"the store holds no structure with {element}",
                             "ingest some first (xastruct ingest builtin / structures / mp)")
        if len(structure_files) == 1:
            structure_files = structure_files * 2  # still a ranking (of one)
    if len(structure_files) > 1 and (not compare_file or sites):
        raise InputError("STRUCTURE", f"{len(structure_files)} given", "several candidate structures are ranked "
                         "against one --compare FILE (without --site); or predict one structure at a time")
    if model_name:
        entry = registry.load(eng, model_name, device=device)
    else:
        entry = _latest_entry(eng, element, edge, kind, device)
    if not tr.serves(entry, element, edge) or entry.kind != kind:
        covers = f"{entry.element} {entry.edge}" if entry.element else f"{len(entry.config.get('pairs', []))} absorber/edge pairs"
        raise InputError(f"model {entry.name}", f"is for {covers} {entry.kind}, not {element} {edge} {kind}",
                         "pick a matching --model (see `xastruct models`)")  # fmt: skip
    if len(structure_files) > 1:
        refs = list(dict.fromkeys(structure_files))  # each candidate once
        with progress_bar(len(refs), "candidates") as advance:
            ranked = tr.rank_structures(eng, entry, refs, compare_file, element=element, edge=edge,
                                        broaden=broaden, device=device, progress=advance)
        _print_ranking(ranked[:top] if top else ranked, entry, compare_file, fmt)
        if plot:
            _plot_ranking(plot, tr.grid_points(entry.grid), ranked, entry, compare_file)
            console.print(f"plot written to {plot}")
        return
    structure_file = structure_files[0]
    name, structure = tr.resolve_structure(eng, structure_file)
    chosen, weights = tr.element_sites(structure, element, sites, source=structure_file)
    preds = tr.predict_sites(entry, structure, chosen, device=device, edge=edge)  # (members, sites, grid)
    labels = [f"site {s}" for s in chosen]
    if average:  # what a measurement sees: every site, weighted by its multiplicity
        preds = np.concatenate([preds, tr.site_average(preds, weights)[:, None]], axis=1)
        chosen, labels = [*chosen, "average"], [*labels, "average of all sites"]
    x = tr.grid_points(entry.grid)
    mean, std, sigma = preds.mean(0), tr.seed_spread(preds), tr.band_sigma(entry.config, preds)
    cmp, about = (match.compare_file(compare_file, x, mean, kind=entry.kind, element=element, edge=edge, labels=labels,
                                     broaden=broaden) if compare_file else (None, {}))
    band_scale = (entry.config or {}).get("band_scale")
    axis = f"{entry.grid['axis']} ({entry.grid['unit']})"
    qty = entry.grid["quantity"]
    if fmt == "json":
        doc = {"structure": name, "model": entry.name, "axis": axis, "quantity": qty, "x": x.tolist(),
               "band_scale": band_scale,
               "sites": [{"site": s, "mean": mean[j].tolist(), "sigma": sigma[j].tolist(), "std": std[j].tolist()}
                         for j, s in enumerate(chosen)]}  # fmt: skip
        if cmp is not None:
            doc["compare"] = {"file": str(compare_file), **about,
                              "sites": [{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in c.items()
                                         if k not in ("query_on_grid", "spectrum")} | {"site": s}
                                        for s, c in zip(chosen, cmp)]}  # fmt: skip
        click.echo(json.dumps(doc))
    elif fmt == "csv":
        click.echo(",".join([axis] + [f"{s if s == 'average' else f'site{s}'}_{c}" for s in chosen
                                      for c in ("mean", "sigma")]))
        for k, xv in enumerate(x):
            click.echo(",".join([f"{xv:g}"] + [f"{v:.6g}" for j in range(len(chosen)) for v in (mean[j, k], sigma[j, k])]))
    else:
        tbl = Table(title=f"{name}: predicted {element} {edge} {kind} ({qty}) by {entry.name}, {preds.shape[0]} seed(s)")
        tbl.add_column(axis, justify="right")
        for lab in labels:
            tbl.add_column(lab, justify="right")
        for k, xv in enumerate(x):
            tbl.add_row(f"{xv:g}", *[f"{mean[j, k]:.4f} ± {sigma[j, k]:.4f}" for j in range(len(chosen))])
        out.print(tbl)
        if preds.shape[0] > 1:
            out.print(_band_note(preds.shape[0], band_scale))
    if cmp is not None and entry.kind == "EXAFS" and fmt != "json":
        for c in cmp:
            console.print(f"{Path(compare_file).name} vs {c['label']}: R^2 {c['r2_fit']:.3f} after fitting amplitude "
                          f"A = {c['A']:.2f}, extra disorder ds2 = {c['ds2'] * 1e3:+.1f}e-3 A^2 and E0 shift dE = "
                          f"{c['dE']:+.1f} eV (k {c['k_range'][0]:g}-{c['k_range'][1]:g} 1/A, k^2 weight; "
                          f"R^2 {c['r2_raw']:.3f} as predicted)", highlight=False)
    elif cmp is not None and fmt != "json":
        for lab, c in zip(labels, cmp):
            console.print(f"{Path(compare_file).name} vs {lab}: cosine {c['cosine']:.4f}, MAE {c['mae']:.4f} "
                          f"(normalized mu, E - E0 {c['window'][0]:g}..{c['window'][1]:g} eV) at shift "
                          f"{c['shift']:+.1f} eV added to the file's energies (its E0: {about['e0_definition']})"
                          + (f", prediction broadened by a {c['fwhm']:g} eV FWHM Gaussian" if c["fwhm"] else "")
                          + (f" -- at the edge of the +-{c['shift_range']:g} eV search" if c["shift_at_limit"] else ""),
                          highlight=False)
    if plot:
        _plot(plot, x, mean, sigma, labels, axis=axis, quantity=qty, title=f"{name} — {entry.name}",
              band=_band_note(preds.shape[0], band_scale) if preds.shape[0] > 1 else None,
              compare=None if cmp is None else (Path(compare_file).name, cmp))
        console.print(f"plot written to {plot}")


def _print_ranking(ranked: list[dict], entry, compare_file, fmt: str) -> None:
    exafs = entry.kind == "EXAFS"
    if fmt == "json":
        keep = ("structure", "name", "formula", "sites", "cosine", "mae", "shift", "shift_at_limit", "fwhm", "A", "ds2",
                "dE", "r2_fit", "r2_raw", "window", "k_range")
        click.echo(json.dumps({"file": str(compare_file), "model": entry.name, "ranked_by": "R^2 after the fit" if exafs
                               else "MAE after the shift", "candidates": [{k: r[k] for k in keep if k in r} for r in ranked]}))
        return
    # short headers: the table has to fit a terminal (the JSON names the fields in full)
    cols = (("R2 fit", "A", "ds2 e-3", "dE eV", "R2 raw") if exafs else ("MAE", "cosine", "shift eV", "FWHM"))
    header = ("rank", "structure", "formula", *cols)
    lines = []
    for i, r in enumerate(ranked, start=1):
        vals = ((f"{r['r2_fit']:.3f}", f"{r['A']:.2f}", f"{r['ds2'] * 1e3:+.1f}", f"{r['dE']:+.1f}", f"{r['r2_raw']:.3f}")
                if exafs else (f"{r['mae']:.4f}", f"{r['cosine']:.4f}", f"{r['shift']:+.1f}", f"{r['fwhm']:g}"))
        lines.append((str(i), r["name"], r["formula"], *vals))
    if fmt == "csv":
        click.echo("\n".join(",".join(row) for row in [header, *lines]))
        return
    tbl = Table(title=f"{len(ranked)} candidates vs {Path(compare_file).name} ({entry.name}; site averages)")
    for c in header:
        tbl.add_column(c, overflow="fold", min_width=12) if c == "structure" else tbl.add_column(c, no_wrap=True)
    for row in lines:
        tbl.add_row(*row)
    out.print(tbl)


def _plot_ranking(path, x, ranked: list[dict], entry, compare_file) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, r in enumerate(ranked[:6]):
        score = f"R^2 {r['r2_fit']:.2f}" if "r2_fit" in r else f"MAE {r['mae']:.3f}"
        ax.plot(x, r["spectrum"], lw=1.8 if i == 0 else 1.0, label=f"{i + 1}. {r['name']} ({score})")
    best = ranked[0]
    ax.plot(x, best["query_on_grid"], color="k", lw=1.2, ls="--", label=f"{Path(compare_file).name} (as aligned to 1.)")
    ax.set_xlabel(f"{entry.grid['axis']} ({entry.grid['unit']})")
    ax.set_ylabel({"k2chi": "k²χ(k) (Å⁻²)", "mu_norm": "normalized μ(E)"}.get(entry.grid["quantity"], entry.grid["quantity"]))
    ax.set_title(f"candidates vs {Path(compare_file).name} -- {entry.name}\n"
                 + ("fitted: amplitude, disorder, E0" if "r2_fit" in best else "aligned: rigid shift"
                    + (", broadened" if best.get("fwhm") else "")), fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _latest_entry(eng, element, edge, kind, device):
    from ..screen import forward_models

    # what `screen` would run (a per-kind preferred arch, universal models included), else any arch
    chosen = [e for e, _, ed in forward_models(eng, [element]) if ed == edge and e.kind == kind]
    entry = registry.load(eng, chosen[0].id, device=device) if chosen else None
    entry = entry or registry.latest(eng, "forward", element, edge, kind, device=device)
    if entry is None:
        raise InputError(f"{element} {edge} {kind}", "no forward model registered",
                         f"train one: xastruct train forward --element {element} --edge {edge} --kind {kind}")  # fmt: skip
    return entry


def _band_note(n_members: int, band_scale: float | None) -> str:
    if band_scale:
        return f"band: ±1 sigma = spread over {n_members} seeds × {band_scale:.2f} (68% of validation errors)"
    return f"band: ±1 std over {n_members} seeds (not calibrated: a model trained before band_scale)"


def _plot(path, x, mean, sigma, sites, *, axis, quantity, title, band: str | None, compare=None) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for j, lab in enumerate(sites):
        (line,) = ax.plot(x, mean[j], label=lab, lw=2.0 if lab.startswith("average") else 1.5)
        if band:
            ax.fill_between(x, mean[j] - sigma[j], mean[j] + sigma[j], color=line.get_color(), alpha=0.25, lw=0)
    if compare is not None:  # the file at the shift that best fits the site average (else the first site)
        fname, cmp = compare
        c = cmp[-1] if sites[-1].startswith("average") else cmp[0]
        if "r2_fit" in c:  # EXAFS: the fitted prediction and the scan's k^2 chi(k)
            ax.plot(x, c["spectrum"], color="0.35", lw=1.2, ls="-.",
                    label=f"{c['label']} fitted (A {c['A']:.2f}, ds2 {c['ds2'] * 1e3:+.1f}e-3, dE {c['dE']:+.1f})")
            ax.plot(x, c["query_on_grid"], color="k", lw=1.2, ls="--", label=f"{fname} (R^2 {c['r2_fit']:.2f} fitted)")
        else:
            if c["fwhm"]:
                ax.plot(x, c["spectrum"], color="0.35", lw=1.2, ls="-.",
                        label=f"{c['label']} broadened ({c['fwhm']:g} eV FWHM)")
            ax.plot(x, c["query_on_grid"], color="k", lw=1.2, ls="--",
                    label=f"{fname} (shift {c['shift']:+.1f} eV; MAE {c['mae']:.3f})")
    ax.set_xlabel(axis)
    # the grid's quantity key, spelled as a physicist labels the axis
    ax.set_ylabel({"k2chi": "k²χ(k) (Å⁻²)", "mu_norm": "normalized μ(E)"}.get(quantity, quantity))
    ax.set_title(title + (f"\n{band}" if band else ""), fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _mount_other_tasks() -> None:
    """The inverse tasks (xastruct/cli/inverse.py) live in the same `train`/`predict` groups."""
    try:
        from . import inverse
    except ImportError:  # that module is optional for the forward commands
        return
    for cmd in getattr(inverse, "TRAIN_COMMANDS", []):
        train_group.add_command(cmd)
    for cmd in getattr(inverse, "PREDICT_COMMANDS", []):
        predict_group.add_command(cmd)


_mount_other_tasks()

COMMANDS = [train_group, models_cmd, predict_group]
