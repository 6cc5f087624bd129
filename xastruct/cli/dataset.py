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
@click.option("--retry-failed", is_flag=True)
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
                           workers=workers, scheduler=scheduler, retry_failed=retry_failed,
                           scratch_root=sim.scratch_default(), progress_factory=progress_bar,
                           on_flush=None if is_tty() else lambda t: console.print(f"committed: {t}", highlight=False))
        print_summary(f"step {n}: {res['code']} {step['kind']} {step['edge']}",
                      {"jobs planned": res["planned"], "jobs run": res["ran"], "spectra done": res["done"],
                       "failed": res["failed"], "already done before": res["already_done"]}, [])


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
