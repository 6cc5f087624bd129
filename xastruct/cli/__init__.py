"""`xastruct` command line: each command is a small function that parses and calls a stage module."""

from __future__ import annotations

import click

from ..errors import XAStructError
from .common import console


class _Group(click.Group):
    """Shows XAStructError (bad input, store, remote) as one clear line and exits 1, no traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except XAStructError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise SystemExit(1) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="xastruct")
def main() -> None:
    """XAStruct: X-ray absorption spectra <-> crystal structure, in a SQL store.

    Every command takes --db URL (or env XASTRUCT_DB; default duckdb:///./xastruct.duckdb).
    """


#: Command modules in help order; each exposes COMMANDS (a list of click commands/groups).
COMMAND_MODULES = ["db", "ingest", "query", "simulate", "dataset", "train", "screen", "match", "report"]


def _register() -> None:
    import importlib

    for name in COMMAND_MODULES:
        mod = importlib.import_module(f"{__name__}.{name}")
        for cmd in mod.COMMANDS:
            main.add_command(cmd)


_register()
