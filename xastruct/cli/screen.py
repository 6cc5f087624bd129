"""`xastruct screen`: registered models over the whole store -> `predictions` (idempotent)."""

from __future__ import annotations

from collections import Counter

import click
from rich.table import Table

from .. import screen as scr
from .. import store
from .common import console, db_option, is_tty, out, progress_bar


@click.command("screen")
@click.option("--elements", required=True, help="Absorbing elements, comma separated (e.g. Fe,Co).")
@click.option("--task", default="all", show_default=True, type=click.Choice(scr.TASKS),
              help="forward: structures -> spectra; inverse: spectra -> CN/MNND/neighbour.")
@click.option("--model", default="latest", show_default=True,
              help="'latest' (newest default-arch model per element/edge/kind) or a model id/name from `xastruct models`.")
@click.option("--where", default=None,
              help="SQL filter on the targets, e.g. \"structures.spacegroup_number = 225\" or \"sites.cn = 4\".")
@click.option("--batch-size", type=int, default=None, help="Structures per forward batch (64) / spectra per inverse batch (4096).")
@click.option("--workers", type=int, default=None, help="CPU threads for the forward encoder (default: torch's).")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--closed-loop", is_flag=True, help="Also feed forward-predicted spectra into the inverse models.")
@db_option
def screen(elements, task, model, where, batch_size, workers, device, closed_loop, db) -> None:
    """Predict for everything in the store with those absorbers; rerun = only what is missing."""
    eng = store.get_engine(db)
    results = scr.screen(eng, elements=elements.split(","), task=task, model=model, where=where,
                         batch_size=batch_size, workers=workers, device=device, closed_loop=closed_loop,
                         progress_factory=progress_bar,
                         # logs (no terminal) get a line per committed batch: what is safely stored
                         on_commit=None if is_tty() else lambda t: console.print(f"committed: {t}", highlight=False))
    tbl = Table(title="screen")
    for col in ("task", "models", "targets", "predicted before", "rows written", "skipped", "seconds", "rate /s"):
        tbl.add_column(col, justify="left" if col in ("task", "models") else "right")
    for r in results:
        rate = f"{r.written / r.seconds:.0f}" if r.seconds > 0 and r.written else "-"
        tbl.add_row(r.task, str(len(r.models)), str(r.targets), str(r.already), str(r.written), str(r.skipped),
                    f"{r.seconds:.1f}", rate)
    out.print(tbl)
    for r in results:
        for why, n in Counter(r.reasons or {}).most_common(8):
            out.print(f"  {r.task}: {n} skipped: {why}", highlight=False)
        if not r.models:
            out.print(f"  {r.task}: no registered model for {elements}: train one (`xastruct train ...`) "
                      "or load the shipped ones (`xastruct ingest builtin`)", highlight=False)
    out.print("query them: xastruct sql \"SELECT task, element, count(*) FROM latest_predictions GROUP BY 1, 2\"")


COMMANDS = [screen]
