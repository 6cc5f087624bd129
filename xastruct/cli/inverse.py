"""`train inverse` (CN / MNND / neighbour models) and `predict structure` (a spectrum file -> structure).

Mounted by the lead into the `train` and `predict` groups via TRAIN_COMMANDS / PREDICT_COMMANDS.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .. import inverse as inv
from .. import store
from ..errors import InputError
from ..readers import check_edge, check_element
from .common import console, db_option, out, print_summary, progress_bar


def _fmt(v) -> str:
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) or x is None for x in v):
        if v[0] is None:
            return "-"
        return f"{v[0]:.3f} ± {v[1]:.3f}"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _results_table(task: str, results: list) -> Table:
    reg = task == "mnnd"
    cols = ["mae", "r2", "slope", "cov1", "cov2"] if reg else ["accuracy", "macro_f1", "ece"]
    tbl = Table(title=f"inverse {task}: held-out test materials (mean ± std over seeds)")
    for c in ["model", "group", "n test", *cols, "trivial " + ("mae" if reg else "acc / F1")]:
        tbl.add_column(c, justify="left" if c in ("model", "group") else "right")
    for r in results:
        name = r.entry.name if r.entry is not None else f"{task}/{r.element or 'all'}/{r.edge or 'all'}/{r.arch}"
        name = name.split("/", 1)[1]  # the table title already names the task
        items = list(r.metrics["test"].items())
        if len(items) == 2:  # one element: its row repeats the overall one
            items = [it for it in items if it[0] != "overall"]
        for group, m in items:
            triv = r.metrics["trivial_test"].get(group, {})
            tv = (f"{triv.get('mae', float('nan')):.3f}" if reg else
                  f"{triv.get('accuracy', float('nan')):.3f} / {triv.get('macro_f1', float('nan')):.3f}")
            tbl.add_row(name, group, str(m.get("n", 0)), *[_fmt(m.get(c, "-")) for c in cols], tv)
    return tbl


@click.command("inverse")
@click.option("--task", required=True, type=click.Choice(inv.TASKS), help="What to predict.")
@click.option("--element", "elements", default=None,
              help="Absorbing element(s), comma separated (e.g. Fe or Fe,Co). Default / --all: every element.")
@click.option("--all", "all_elements", is_flag=True, help="Every absorbing element in the store.")
@click.option("--edge", "edges", default=None, help="Edge(s), comma separated (default: every edge found).")
@click.option("--features", default="both", show_default=True, type=click.Choice(inv.FEATURES),
              help="Input spectra: XANES || EXAFS (missing kind masked), XANES only, or EXAFS only.")
@click.option("--arch", default=None, type=click.Choice(inv.ARCHS),
              help="Model family (default: rf for cn, sgmlp for neighbor, sgmlp_relu for mnnd -- ReLU for SwiGLU "
                   "beat the paper's sgmlp on validation).")
@click.option("--seeds", default=3, show_default=True, type=int, help="Members (initialisation seeds) per model.")
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the by-material split.")
@click.option("--target", default="site", show_default=True, type=click.Choice(inv.TARGETS),
              help="site: one example per simulated site; structure: multiplicity-weighted averages, "
                   "what a measured spectrum sees.")
@click.option("--source", "sources", multiple=True,
              help="Spectrum source(s) to train on, in order of preference (e.g. feff10, feff9, feff8l).")
@click.option("--universal/--per-element", default=None,
              help="One model for all absorbers (absorber and edge as inputs) or one per (element, edge) "
                   "[default: universal for the mnnd network, per element otherwise, as in the paper].")
@click.option("--use-element/--no-use-element", default=True, show_default=True,
              help="Give a universal model the absorber and edge.")
@click.option("--variance/--no-variance", default=True, show_default=True,
              help="mnnd: Gaussian variance head (NLL loss) for per-prediction uncertainty.")
@click.option("--likelihood", default=None, type=click.Choice(["gaussian", "laplace"]),
              help=f"mnnd: the variance head's training NLL [default: {inv.DEFAULT_HP['mnnd_likelihood']}]; laplace's "
                   "|error| term weighs odd materials less.")
@click.option("--exafs-repr", default=inv.DEFAULT_EXAFS_REPR, show_default=True, type=click.Choice(inv.EXAFS_REPRS),
              help="EXAFS input: k^2 chi(k) alone, or followed by |chi(R)| (its Fourier transform).")
@click.option("--augment", default=None, type=click.IntRange(0, 20),
              help="Train also on N measurement-like copies of each EXAFS row (amplitude, shell-dependent disorder, "
                   "E0 shift, noise; see inverse.augment_exafs); 0 = FEFF spectra only. Models with EXAFS input "
                   f"only [default: {inv.DEFAULT_HP['augment']}; why: README, benchmarks/bench_sim_vs_measured.py].")
@click.option("--augment-ranges", "augment_ranges_json", default=None, metavar="JSON",
              help="Ranges of those copies' perturbations, over the defaults (inverse.AUGMENT), e.g. "
                   "'{\"sigma2\": [-0.0035, 0.0075], \"e0_ev\": [-10, 0]}'; recorded with the model. "
                   "'{\"xanes_fwhm\": [0, 16]}' also broadens each copy's XANES by a Gaussian of that FWHM (eV) and "
                   "then copies rows with XANES too (XANES-only models included); off by default.")
@click.option("--epochs", default=None, type=int,
              help=f"Most epochs per seed [default: {inv.DEFAULT_HP['epochs']}, mnnd "
                   f"{inv.TASK_HP['mnnd']['epochs']}].")
@click.option("--patience", default=None, type=int,
              help=f"Early-stopping patience in epochs [default: {inv.DEFAULT_HP['patience']}, mnnd "
                   f"{inv.TASK_HP['mnnd']['patience']}].")
@click.option("--lr", default=inv.DEFAULT_HP["lr"], show_default=True, type=float, help="AdamW learning rate.")
@click.option("--weight-decay", default=inv.DEFAULT_HP["weight_decay"], show_default=True, type=float)
@click.option("--batch-size", default=inv.DEFAULT_HP["batch_size"], show_default=True, type=int)
@click.option("--n-estimators", default=None, type=click.IntRange(1, None),
              help=f"Trees per random forest (--arch rf) [default: {inv.DEFAULT_HP['n_estimators']}].")
@click.option("--rf-min-samples-leaf", default=None, type=click.IntRange(1, None),
              help="Fewest training rows in a forest leaf (--arch rf; larger = smaller, faster forests) "
                   f"[default: {inv.DEFAULT_HP['rf_min_samples_leaf']}, neighbor {inv.TASK_HP['neighbor']['rf_min_samples_leaf']}].")
@click.option("--min-sites", default=20, show_default=True, type=int,
              help="Skip (element, edge) pairs with fewer usable examples.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1 ...")
@click.option("--models-dir", default=None, type=click.Path(file_okay=False),
              help="Artifact directory (default: models/ next to a DuckDB store, else ./models).")
@db_option
def inverse(task, elements, all_elements, edges, features, arch, seeds, split_seed, target, sources, universal, use_element,
            variance, likelihood, exafs_repr, augment, augment_ranges_json, epochs, patience, lr, weight_decay, batch_size,
            n_estimators, rf_min_samples_leaf, min_sites, device, models_dir, db) -> None:
    """Train spectrum -> structure models (CN, MNND or neighbour type) and register them."""
    if elements and all_elements:
        raise click.UsageError("give --element or --all, not both")
    els = None if all_elements or not elements else [check_element("--element", e)
                                                     for e in elements.split(",") if e.strip()]
    eds = None if not edges else [check_edge("--edge", e) for e in edges.split(",") if e.strip()]
    ranges = None
    if augment_ranges_json:
        try:
            ranges = json.loads(augment_ranges_json)
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"not JSON ({exc})", param_hint="--augment-ranges") from None
        if not isinstance(ranges, dict):
            raise click.BadParameter('give an object, e.g. {"sigma2": [0, 0.006]}', param_hint="--augment-ranges")
        inv.augment_ranges(ranges, source="--augment-ranges")  # unknown names / bad pairs fail before any work
    eng = store.get_engine(db)
    hp = {"epochs": epochs, "patience": patience, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size,
          "augment": augment, "mnnd_likelihood": likelihood, "augment_ranges": ranges,
          "n_estimators": n_estimators, "rf_min_samples_leaf": rf_min_samples_leaf}
    skipped: list[str] = []

    def log(msg: str) -> None:
        console.print(msg, highlight=False)
        if msg.startswith("skip "):
            skipped.append(msg[5:])

    console.print(f"loading labelled spectra ({target} targets) ...")
    data = inv.load_sites(eng, elements=els, edges=eds, sources=list(sources) or None, target=target)
    console.print(f"{len(data)} examples: {int(data.has_xanes.sum())} with XANES, {int(data.has_exafs.sum())} with "
                  f"EXAFS; {data.skipped} spectra not usable (range/edge)")
    with store.run_record(eng, "train inverse", {"task": task, "elements": els, "edges": eds, "features": features,
                                                 "arch": arch, "seeds": seeds, "split_seed": split_seed,
                                                 "target": target, "sources": list(sources), "exafs_repr": exafs_repr,
                                                 "universal": universal,
                                                 **hp}) as summary:
        results = inv.train_inverse(eng, task=task, elements=els, edges=eds, features=features, arch=arch,
                                    seeds=seeds, split_seed=split_seed, device=device, target=target,
                                    sources=list(sources) or None, use_element=use_element, variance=variance,
                                    universal=universal,
                                    min_sites=min_sites, exafs_repr=exafs_repr, hp=hp, models_dir=models_dir, data=data, log=log)
        summary["models"] = [r.entry.name for r in results if r.entry is not None]
        summary["skipped"] = skipped
    if not results:
        raise click.ClickException("no model trained: every (element, edge) had too few examples (see above)")
    out.print(_results_table(task, results))
    for r in results:
        out.print(f"registered {r.entry.name} -> {r.entry.artifact}", highlight=False)
    print_summary(f"train inverse {task}", {"models": len(results)}, skipped)


@click.command("structure")
@click.argument("spectrum_files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--element", required=True, help="Absorbing element (checked against each file's header).")
@click.option("--edge", default=None, help="Edge (default: from the file header, else K).")
@click.option("--exafs", "exafs_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Separate EXAFS measurement (XDI/two-column mu(E), FEFF xmu.dat or chi.dat); one SPECTRUM_FILE only.")
@click.option("--device", default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (a list for several files).")
@db_option
def structure(spectrum_files, element, edge, exafs_file, device, as_json, db) -> None:
    """Predict CN, mean nearest-neighbour distance and neighbour type (with its period of the periodic
    table, which a spectrum determines better than the element) from SPECTRUM_FILE(s)
    (XDI, FEFF xmu.dat or two-column energy/mu). Several files: one row each; a file that cannot be
    read gets its error in its row and the exit status is 1."""
    if exafs_file and len(spectrum_files) > 1:
        raise click.UsageError("--exafs pairs one EXAFS file with one SPECTRUM_FILE; give a single SPECTRUM_FILE")
    eng = store.get_engine(db)
    results = []
    with progress_bar(len(spectrum_files), "predicting") as advance:
        for f in spectrum_files:
            if len(spectrum_files) == 1:  # one file: its error is the command's error, as before
                results.append(inv.predict_structure(eng, f, element=element, edge=edge, exafs_path=exafs_file,
                                                     device=device))
            else:
                try:
                    results.append({"file": f, **inv.predict_structure(eng, f, element=element, edge=edge,
                                                                        device=device)})
                except InputError as exc:
                    results.append({"file": f, "error": str(exc)})
            advance()
    if as_json:
        out.print_json(json.dumps(results[0] if len(results) == 1 else results))
    elif len(results) == 1:
        _print_one(results[0])
    else:
        _print_many(results)
    if any("error" in r for r in results):
        raise SystemExit(1)


def _print_one(res: dict) -> None:
    kinds = "+".join(k for k, v in (("XANES", res["xanes"]), ("EXAFS", res["exafs"])) if v)
    tbl = Table(title=f"{res['element']} {res['edge']}, input {kinds}")
    for c in ("quantity", "prediction", "uncertainty", "model"):
        tbl.add_column(c)
    p = res["predictions"]
    rows = []
    if "error" not in p.get("cn", {"error": 1}):
        c = p["cn"]
        rows.append(("coordination number", str(c["value"]),
                     f"p = {c['probability']:.2f}; expected {c['expected']:.2f} ± {c['sigma']:.2f}", c["model"]))
    if "error" not in p.get("mnnd", {"error": 1}):
        m = p["mnnd"]
        rows.append(("mean NN distance (A)", f"{m['value']:.3f}", f"± {m['sigma']:.3f} (1 sigma)", m["model"]))
    if "error" not in p.get("neighbor", {"error": 1}):
        n = p["neighbor"]
        alt = ", ".join(f"{k} {v:.2f}" for k, v in list(n["probabilities"].items())[1:3])
        rows.append(("neighbour type", n["label"], f"p = {n['probability']:.2f}" + (f" ({alt})" if alt else ""),
                     n["model"]))
        if n.get("period"):  # what the spectrum determines well: elements a few Z apart scatter alike
            per = n["period"]
            rows.append(("neighbour period", per["label"], f"p = {per['probability']:.2f} (summed over its elements)",
                         n["model"]))
    for r in rows:
        tbl.add_row(*r)
    out.print(tbl)
    for line in _task_notes(p):
        out.print(f"[yellow]{line}[/]", highlight=False)
    for note in res["notes"]:
        out.print(f"note: {note}", highlight=False)


def _task_notes(p: dict) -> list[str]:
    """Per task: why there is no prediction, warnings, and input kinds the model did not read."""
    lines = []
    for task, v in p.items():
        if "error" in v:
            lines.append(f"{task}: {v['error']}")
        if "warning" in v:
            lines.append(f"{task}: {v['warning']}")
        if v.get("ignored"):
            lines.append(f"{task}: input not read: {'; '.join(v['ignored'])}")
    return lines


def _print_many(results: list[dict]) -> None:
    tbl = Table(title=f"{len(results)} files", caption="per-file reading notes (E0, EXAFS reach): --json")
    tbl.add_column("file", overflow="fold")
    for c in ("input", "CN (p)", "MNND (A) ± 1 sigma", "neighbour (p)", "period (p)"):
        tbl.add_column(c, no_wrap=True)
    tbl.add_column("problems", overflow="fold")
    names = [Path(r["file"]).name for r in results]
    if len(set(names)) < len(names):  # the same name in two folders: the paths tell them apart
        names = [str(r["file"]) for r in results]
    for name, res in zip(names, results):
        if "error" in res:
            tbl.add_row(name, "-", "-", "-", "-", "-", f"[red]{res['error']}[/]")
            continue
        p = res["predictions"]
        ok = lambda t: "error" not in p.get(t, {"error": 1})  # noqa: E731
        tbl.add_row(
            name, "+".join(k for k, v in (("XANES", res["xanes"]), ("EXAFS", res["exafs"])) if v),
            f"{p['cn']['value']} ({p['cn']['probability']:.2f})" if ok("cn") else "-",
            f"{p['mnnd']['value']:.3f} ± {p['mnnd']['sigma']:.3f}" if ok("mnnd") else "-",
            f"{p['neighbor']['label']} ({p['neighbor']['probability']:.2f})" if ok("neighbor") else "-",
            f"{per['period']} ({per['probability']:.2f})" if ok("neighbor") and (per := p["neighbor"].get("period"))
            else "-",
            "; ".join(_task_notes(p)))
    out.print(tbl)


TRAIN_COMMANDS = [inverse]
PREDICT_COMMANDS = [structure]
