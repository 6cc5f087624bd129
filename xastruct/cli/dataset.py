"""`xastruct dataset build|export`: make and write the embedded default dataset."""

from __future__ import annotations

import click

from .. import dataset as ds
from .. import simulate as sim
from .. import store
from .common import console, db_option, is_tty, out, print_summary, progress_bar


@click.group("dataset")
def dataset_group() -> None:
    """The embedded default dataset: build it with FEFF, export it as parquet."""


@dataset_group.command("build")
@click.option("--steps", default=None, help="Recipe steps to run, e.g. 1,2 (default: all). See xastruct/dataset.py RECIPE.")
@click.option("--workers", type=int, default=2, show_default=True)
@click.option("--scheduler", default=None, help="Address of a running dask scheduler.")
@click.option("--retry-failed", is_flag=True,
              help="Run failed FEFF jobs again (a store loaded from the shipped dataset knows the ones that failed "
                   "when it was made: `xastruct dataset status`).")
@db_option
def build(steps: str | None, workers: int, scheduler: str | None, retry_failed: bool, db: str | None) -> None:
    """Run the default-dataset recipe (resumable: rerun to continue) on the stored structures.

    Start from `xastruct ingest builtin --dataset none` to compute it from the built-in library."""
    eng = store.get_engine(db)
    chosen = {int(x) for x in steps.split(",")} if steps else set(range(1, len(ds.RECIPE) + 1))
    for n, step in enumerate(ds.RECIPE, 1):
        if n not in chosen:
            continue
        els = ds.recipe_elements(eng, step)
        console.print(f"step {n}: {step['kind']} {step['edge']} for {len(els)} elements: {','.join(els)}")
        res = sim.simulate(eng, elements=els, edge=step["edge"], kind=step["kind"], limit=step.get("limit"),
                           dominant=step.get("dominant_neighbor"), where=step.get("where"), workers=workers,
                           scheduler=scheduler, retry_failed=retry_failed,
                           scratch_root=sim.scratch_default(), progress_factory=progress_bar,
                           on_flush=None if is_tty() else lambda t: console.print(f"committed: {t}", highlight=False))
        print_summary(f"step {n}: {res['code']} {step['kind']} {step['edge']}",
                      {"jobs planned": res["planned"], "jobs run": res["ran"], "spectra done": res["done"],
                       "failed": res["failed"], "already done before": res["already_done"]}, [])


@dataset_group.command("status")
@click.option("--all-elements", is_flag=True, help="List every element, not only those short of their target.")
@db_option
def status(all_elements: bool, db: str | None) -> None:
    """How far the recipe has got on this store: per step, spectra done of the target, and the FEFF
    time the rest needs (from the median of the done jobs).

    'done' counts sites with a spectrum of that kind/edge/code whatever its FEFF settings; 'failed'
    counts this store's failed jobs (a store loaded from the parquet has none recorded)."""
    from rich.table import Table

    rows = ds.recipe_status(store.get_engine(db))
    t = Table(title="default-dataset recipe (xastruct/dataset.py RECIPE)")
    for c in ("step", "kind / edge", "elements", "target", "done", "failed", "to run", "core-hours left"):
        t.add_column(c, justify="left" if c in ("kind / edge", "elements") else "right")
    short = []
    for n in sorted({r["step"] for r in rows}):
        rr = [r for r in rows if r["step"] == n]
        left = sum(max(r["target"] - r["done"] - r["failed"], 0) for r in rr)
        med = rr[0]["median_seconds"]
        t.add_row(str(n), f"{rr[0]['kind']} {rr[0]['edge']} ({rr[0]['code']})"
                  + (f" {rr[0]['dominant_neighbor']}-coordinated" if rr[0]["dominant_neighbor"] else "")
                  + (f" {rr[0]['label']}" if rr[0]["label"] else ""), str(len(rr)),
                  str(sum(r["target"] for r in rr)), str(sum(min(r["done"], r["target"]) for r in rr)),
                  str(sum(r["failed"] for r in rr)), str(left), "-" if med is None else f"{left * med / 3600:.1f}")
        short += [r for r in rr if all_elements or r["done"] + r["failed"] < r["target"]]
    out.print(t)
    if short:
        t2 = Table(title="per element" if all_elements else "elements short of their target")
        for c in ("step", "element", "labelled sites", "target", "done", "failed"):
            t2.add_column(c, justify="left" if c == "element" else "right")
        for r in short:
            t2.add_row(str(r["step"]), r["element"], str(r["sites"]), str(r["target"]), str(r["done"]),
                       str(r["failed"]))
        out.print(t2)


@dataset_group.command("export")
@click.option("--out", "out_dir", default=None, help="Folder (default: the package's embedded default dataset).")
@click.option("--sources", default="builtin", show_default=True, help="Structure sources to include.")
@db_option
def export(out_dir: str | None, sources: str, db: str | None) -> None:
    """Structures + labelled sites + FEFF spectra as compressed parquet (the embedded default format)."""
    eng = store.get_engine(db)
    counts = ds.export_dataset(eng, out_dir or ds.DEFAULT_DIR, sources=tuple(s.strip() for s in sources.split(",")))
    out.print(f"wrote {counts} to {out_dir or ds.DEFAULT_DIR}")


COMMANDS = [dataset_group]
