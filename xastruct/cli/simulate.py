"""`xastruct simulate`: FEFF spectra for stored structures (resumable, on dask)."""

from __future__ import annotations

import json

import click

from .. import simulate as sim
from .. import store
from .common import console, db_option, is_tty, print_summary, progress_bar


@click.command("simulate")
@click.option("--elements", required=True, help="Absorbing elements, comma separated (e.g. Fe,Co).")
@click.option("--edge", default="K", show_default=True, type=click.Choice(["K", "L1", "L2", "L3"]))
@click.option("--kind", required=True, type=click.Choice(["EXAFS", "XANES"], case_sensitive=False))
@click.option("--code", default=None, type=click.Choice(["feff8l", "feff10"]),
              help="Default: feff8l for EXAFS, feff10 for XANES.")
@click.option("--radius", type=float, default=None, help="Cluster radius in A (default from the convergence study).")
@click.option("--params", "params_json", default=None, help='Extra FEFF parameters as JSON, e.g. \'{"sig2": 0.005}\'.')
@click.option("--workers", type=int, default=2, show_default=True, help="Local dask worker processes.")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (tcp://HOST:PORT).")
@click.option("--limit", type=int, default=None, help="At most N sites per element: those already simulated first, then a stable random "
                   "sample (a larger N later extends the same sample).")
@click.option("--timeout", type=float, default=None, help="Seconds per FEFF job before it is killed.")
@click.option("--retry-failed", is_flag=True, help="Run failed jobs again.")
@click.option("--where", default=None, help="Extra SQL filter on structures, e.g. \"structures.source = 'builtin'\".")
@click.option("--dominant-neighbor", default=None,
              help="Only sites whose dominant neighbour element is one of these, e.g. O or O,F (oxide/fluoride sites).")
@click.option("--commit-every", type=click.IntRange(min=1), default=8, show_default=True,
              help="Finished jobs per transaction (also committed every 3 s); a kill loses at most these.")
@db_option
def simulate(elements, edge, kind, code, radius, params_json, workers, scheduler, limit, timeout, retry_failed,
             where, dominant_neighbor, commit_every, db) -> None:
    """Compute EXAFS (feff8l) or XANES (FEFF10) for every inequivalent absorbing site of ELEMENTS."""
    eng = store.get_engine(db)
    params = json.loads(params_json) if params_json else None
    els = [e.strip() for e in elements.split(",") if e.strip()]
    res = sim.simulate(eng, elements=els, edge=edge, kind=kind.upper(), code=code, params=params, radius=radius,
                       workers=workers, scheduler=scheduler, limit=limit, timeout=timeout,
                       retry_failed=retry_failed, where=where,
                       dominant=[x.strip() for x in dominant_neighbor.split(",")] if dominant_neighbor else None,
                       scratch_root=sim.scratch_default(),
                       progress_factory=progress_bar, flush_every=commit_every,
                       # logs (no terminal) get a line per committed batch: what is safely stored
                       on_flush=None if is_tty() else lambda t: console.print(f"committed: {t}", highlight=False))
    print_summary(
        f"simulate {res['code']} {kind.upper()} {edge} {','.join(els)}",
        {"jobs planned": res["planned"], "jobs run": res["ran"], "spectra done": res["done"],
         "failed": res["failed"], "already done before": res["already_done"]},
        [f"{el} structure {sid} site {idx}: {why}" for el, sid, idx, why in sim.failures(eng)] if res["failed"] else [],
    )


COMMANDS = [simulate]
