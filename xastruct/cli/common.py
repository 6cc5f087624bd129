"""Shared CLI pieces: the --db option, progress bars, summaries."""

from __future__ import annotations

import sys
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

console = Console(stderr=True)
out = Console()


def db_option(fn):
    return click.option(
        "--db",
        "db",
        envvar="XASTRUCT_DB",
        default=None,
        show_envvar=True,
        help="Store URL: duckdb:///path.duckdb (default ./xastruct.duckdb) or postgresql+psycopg://...",
    )(fn)


@contextmanager
def progress_bar(total: int, label: str):
    """Rich progress bar with rate and ETA; yields advance(n=1)."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=False,
        refresh_per_second=4,
    ) as prog:
        task = prog.add_task(label, total=total, rate="")

        def advance(n: int = 1) -> None:
            prog.advance(task, n)
            t = prog.tasks[task]
            if t.speed:
                prog.update(task, rate=f"{t.speed:.1f}/s")

        yield advance


def print_summary(title: str, added: dict, failed: list[str], extra: dict | None = None) -> None:
    tbl = Table(title=title, show_header=True)
    tbl.add_column("table")
    tbl.add_column("rows added", justify="right")
    for k, v in added.items():
        tbl.add_row(k, str(v))
    out.print(tbl)
    for k, v in (extra or {}).items():
        out.print(f"{k}: {v}")
    if failed:
        out.print(f"[yellow]{len(failed)} item(s) not ingested:[/]")
        for line in failed[:50]:
            out.print(f"  - {line}", highlight=False, soft_wrap=True)
        if len(failed) > 50:
            out.print(f"  ... and {len(failed) - 50} more (see the runs table summary)")


def is_tty() -> bool:
    return sys.stderr.isatty()
