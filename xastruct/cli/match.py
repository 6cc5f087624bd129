"""`xastruct match`: rank stored structures by how well their spectra match a spectrum file."""

from __future__ import annotations

import click
from rich import box
from rich.table import Table

from .. import match as m
from .. import store
from .common import console, db_option, out


@click.command("match")
@click.argument("spectrum_file")
@click.option("--element", required=True, help="Absorbing element of the spectrum, e.g. Cu.")
@click.option("--edge", default=None, help="Edge (K, L1, L2, L3). Default: the file's own (XDI/FEFF header), else K.")
@click.option("--against", default="all", show_default=True, type=click.Choice(m.AGAINST),
              help="Candidates: stored XANES spectra (reference), forward-model predictions (predicted), or both.")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=1), help="Candidates to show and store.")
@click.option("--metric", default="cosine", show_default=True, type=click.Choice(m.METRICS),
              help="Similarity of normalized mu over the common window, maximized over the shift.")
@click.option("--shift-range", default=m.DEFAULT_SHIFT_RANGE, show_default=True, type=click.FloatRange(min=0),
              help="Search a rigid energy shift within +-this many eV (shift = eV added to the query energies).")
@click.option("--e0", type=float, default=None,
              help="E0 in eV for the E - E0 axis (default: the file's own: FEFF's Fermi level for FEFF files, "
                   "else the edge inflection). The normalization is not changed.")
@click.option("--source", "sources", multiple=True,
              help="Only reference spectra from this source (feff9, feff10, ...); repeat for several.")
@click.option("--out", "out_path", default=None, type=click.Path(dir_okay=False),
              help="Also write the ranked candidates to FILE.csv or FILE.json.")
@db_option
def match(spectrum_file, element, edge, against, top, metric, shift_range, e0, sources, out_path, db) -> None:
    """Rank stored structures by how well their XANES matches SPECTRUM_FILE.

    SPECTRUM_FILE: XDI, FEFF xmu.dat or two columns (energy eV, mu), or spectrum:<id> for a stored
    spectrum. It is normalized exactly like stored spectra, compared on E - E0 with every candidate
    of the element/edge, and the best candidates go to the `matches` table (reruns add nothing).
    """
    if out_path and not out_path.lower().endswith((".csv", ".json")):
        raise click.BadParameter("name the file *.csv or *.json", param_hint="--out")
    eng = store.get_engine(db)
    query = m.resolve_query(lambda: eng, spectrum_file, element=element, edge=edge, e0=e0)
    args = dict(query=query.name, element=query.element, edge=query.edge, against=against, top=top, metric=metric,
                shift_range=shift_range, e0=e0, sources=list(sources))  # fmt: skip
    with store.run_record(eng, "match", args) as summary:
        with console.status(f"matching against {query.element} {query.edge} {against} candidates"):
            res = m.match(eng, query, against=against, metric=metric, top=top, shift_range=shift_range,
                          sources=list(sources) or None, run_id=summary["run_id"])  # fmt: skip
        summary.update(n_candidates=res.n_candidates, inserted=res.inserted, best=res.rows[0] if res.rows else None)
    tbl = Table(title=f"{query.name}: {query.element} {query.edge}, {metric}, best of {res.n_candidates} "
                      f"{against} candidates", box=box.SIMPLE_HEAD, pad_edge=False)  # fmt: skip
    for c in ("rank", "id", "formula", "source id", "site", "score", "shift", "candidate"):
        tbl.add_column(c, justify="right" if c in ("rank", "id", "site", "score", "shift") else "left",
                       no_wrap=True, overflow="fold" if c == "formula" else "ellipsis")
    for r in res.rows:
        flag = "*" if r["shift_at_limit"] else ""
        tbl.add_row(str(r["rank"]), str(r["structure_id"]), str(r["formula"]), str(r["source_id"] or "-"),
                    "-" if r["site_index"] is None else str(r["site_index"]), f"{r['score']:.4f}",
                    f"{r['shift']:+.2f}{flag}", r["candidate"])  # fmt: skip
    out.print(tbl)
    w = res.window
    notes = [f"id = structures.id; E0 = {query.e0:.2f} eV ({query.e0_definition}); compared on E - E0 = {w[0]:g}..{w[1]:g} eV; "
             f"shift = eV added to the query energies, searched within +-{shift_range:g} eV"]  # fmt: skip
    if any(r["shift_at_limit"] for r in res.rows):
        notes.append("* best shift at the edge of the search range: try a larger --shift-range")
    if res.skipped:
        notes.append("candidates skipped: " + ", ".join(f"{k}: {v}" for k, v in res.skipped.items()))
    notes.append(f"matches table: {res.inserted} row(s) added; {res.seconds['load'] + res.seconds['score']:.2f} s")
    if out_path:
        notes.append(f"wrote {m.write_results(res, out_path)}")
    for n in notes:
        out.print(n, highlight=False, soft_wrap=True)


COMMANDS = [match]
