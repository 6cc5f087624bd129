"""`xastruct sql` (read-only queries) and `xastruct stats`."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import click
from rich.table import Table

from .. import store
from ..errors import InputError
from .common import db_option, out


@click.command("sql")
@click.argument("query")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None, help="Write here instead of stdout.")
@click.option("--max-rows", type=int, default=200, show_default=True, help="Rows shown in table format.")
@db_option
def sql(query: str, fmt: str, out_file: str | None, max_rows: int, db: str | None) -> None:
    """Run one read-only SQL QUERY (writes/DDL are refused by the database connection)."""
    names, rows = store.readonly_query(db, query)
    if fmt == "parquet" and not out_file:
        raise InputError("--out", "parquet output needs a file", "add --out result.parquet")
    if fmt == "table":
        tbl = Table(show_header=True, header_style="bold")
        for n in names:
            tbl.add_column(n)
        for r in rows[:max_rows]:
            tbl.add_row(*[_cell(v) for v in r])
        target = out if out_file is None else None
        if target is None:
            Path(out_file).write_text("\n".join("\t".join(map(_cell, r)) for r in [names, *rows]) + "\n")
        else:
            target.print(tbl)
            if len(rows) > max_rows:
                target.print(f"... {len(rows) - max_rows} more rows (use --format csv --out FILE for all)")
        return
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {n: [_plain(r[i]) for r in rows] for i, n in enumerate(names)}
        pq.write_table(pa.table(cols), out_file)
        return
    fh = open(out_file, "w", newline="") if out_file else sys.stdout
    try:
        if fmt == "csv":
            w = csv.writer(fh)
            w.writerow(names)
            for r in rows:
                w.writerow([_cell(v) for v in r])
        else:
            json.dump([dict(zip(names, map(_plain, r))) for r in rows], fh, default=str, indent=1)
            fh.write("\n")
    finally:
        if out_file:
            fh.close()


def _plain(v):
    if isinstance(v, (dict, list, str, int, float, bool)) or v is None:
        return v
    return str(v)


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        s = json.dumps(v)
        return s if len(s) < 80 else s[:77] + "..."
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


STATS_SQL = """
SELECT absorber, edge, kind, source, count(*) AS spectra,
       count(DISTINCT structure_id) AS structures
FROM spectra GROUP BY absorber, edge, kind, source ORDER BY absorber, edge, kind, source
"""


@click.command("stats")
@db_option
def stats(db: str | None) -> None:
    """Counts of structures, sites, spectra (by element, edge, kind, source), models, predictions."""
    eng = store.get_engine(db)
    with eng.connect() as conn:
        totals = {
            t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar()
            for t in ("structures", "sites", "spectra", "models", "predictions", "runs")
        }
        rows = conn.exec_driver_sql(STATS_SQL).fetchall()
        n_el = conn.exec_driver_sql("SELECT count(DISTINCT absorber) FROM spectra").scalar()
    t = Table(title="store totals")
    for k in totals:
        t.add_column(k, justify="right")
    t.add_row(*[str(v) for v in totals.values()])
    out.print(t)
    if rows:
        t2 = Table(title=f"spectra by absorber / edge / kind / source ({n_el} absorbing elements)")
        for c in ("absorber", "edge", "kind", "source", "spectra", "structures"):
            t2.add_column(c, justify="right" if c in ("spectra", "structures") else "left")
        for r in rows:
            t2.add_row(*[str(v) for v in r])
        out.print(t2)


COMMANDS = [sql, stats]
