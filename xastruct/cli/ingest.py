"""`xastruct ingest feff|xdi|structures|mp|builtin`."""

from __future__ import annotations

import os

import click

from .. import ingest as ing
from .. import store
from .common import db_option, print_summary, progress_bar


def _workers(n: int | None) -> int:
    return n if n else max(1, (os.cpu_count() or 1))


@click.group("ingest")
def ingest_group() -> None:
    """Load structures and spectra into the store (idempotent: a rerun adds nothing)."""


@ingest_group.command("feff")
@click.argument("path", type=click.Path(exists=True))
@click.option("--workers", type=int, default=None, help="Parser processes (default: all cores).")
@db_option
def feff(path: str, workers: int | None, db: str | None) -> None:
    """A tree of FEFF calculations: materials/<id>/POSCAR|*.cif with FEFF-XANES/<idx>_<El>/xmu.dat,
    or plain folders holding feff.inp + xmu.dat/chi.dat."""
    eng = store.get_engine(db)
    res = ing.ingest_feff(eng, path, workers=_workers(workers), progress_factory=progress_bar)
    print_summary(f"ingest feff {path}", res["added"], res["failed"], {"folders": res["items"]})


@ingest_group.command("xdi")
@click.argument("path", type=click.Path(exists=True))
@db_option
def xdi(path: str, db: str | None) -> None:
    """Measured spectra in XDI format (a file or a folder, searched recursively)."""
    eng = store.get_engine(db)
    res = ing.ingest_xdi(eng, path, progress_factory=progress_bar)
    print_summary(f"ingest xdi {path}", res["added"], res["failed"], {"files": res["items"]})


@ingest_group.command("structures")
@click.argument("path", type=click.Path(exists=True))
@click.option("--elements", default=None, help="Label only sites of these elements (comma list).")
@click.option("--workers", type=int, default=None)
@db_option
def structures(path: str, elements: str | None, workers: int | None, db: str | None) -> None:
    """CIF, POSCAR/CONTCAR, pymatgen JSON or extxyz files (a file or a folder)."""
    eng = store.get_engine(db)
    els = [e.strip() for e in elements.split(",")] if elements else None
    res = ing.ingest_structures(eng, path, elements=els, workers=_workers(workers), progress_factory=progress_bar)
    print_summary(f"ingest structures {path}", res["added"], res["failed"], {"structures read": res["items"]})


@ingest_group.command("mp")
@click.option("--elements", required=True, help="Absorbing elements, comma separated (e.g. Fe,Co).")
@click.option("--edge", default="K", show_default=True, type=click.Choice(["K", "L1", "L2", "L3", "L2,3"]))
@click.option("--kind", default="XANES", show_default=True, type=click.Choice(["XANES", "EXAFS"]))
@click.option("--api-key", envvar="MP_API_KEY", default=None, help="Materials Project API key (env MP_API_KEY).")
@click.option("--limit", type=int, default=None, help="At most this many spectra.")
@db_option
def mp(elements: str, edge: str, kind: str, api_key: str | None, limit: int | None, db: str | None) -> None:
    """Materials Project XAS spectra and their structures (needs MP_API_KEY and network)."""
    eng = store.get_engine(db)
    els = [e.strip() for e in elements.split(",") if e.strip()]
    res = ing.ingest_mp(eng, elements=els, edge=edge, kind=kind, api_key=api_key, limit=limit,
                        progress_factory=progress_bar)
    print_summary("ingest mp", res["added"], res["failed"], {"documents": res["items"]})


@ingest_group.command("builtin")
@click.option("--dataset", default="default", show_default=True,
              help="Spectra to load with the library: 'default' (shipped), a folder from `xastruct dataset export`, or 'none'.")
@click.option("--workers", type=int, default=None)
@click.option("--models/--no-models", default=True, show_default=True,
              help="Also register the small pretrained models shipped with the package.")
@db_option
def builtin(dataset: str, workers: int | None, models: bool, db: str | None) -> None:
    """The built-in structure library (made from pymatgen's prototypes), the embedded FEFF dataset and
    the shipped pretrained models."""
    eng = store.get_engine(db)
    res = ing.ingest_builtin(eng, dataset=dataset, workers=_workers(workers), progress_factory=progress_bar,
                             models=models)
    print_summary("ingest builtin", res["added"], res["failed"], {"library structures": res["items"]})


COMMANDS = [ingest_group]
