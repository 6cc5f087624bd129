"""`xastruct report`: a static HTML page with figures of what the store holds."""

from __future__ import annotations

import click

from .. import report as rep
from .. import store
from .common import db_option, out, progress_bar


@click.command("report")
@click.option("--elements", default=None, help="Only these absorbing elements, comma separated (e.g. Fe,Co).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for index.html and figures/ (created if missing).")
@db_option
def report(elements: str | None, out_dir: str, db: str | None) -> None:
    """Write DIR/index.html: model map, per-element errors, MNND parity, confusion matrices, spectra overlays."""
    els = rep.parse_elements(elements)  # bad symbols fail before the store is opened
    eng = store.get_engine(db)
    res = rep.build_report(eng, out_dir=out_dir, elements=els, progress_factory=progress_bar)
    out.print(f"wrote {res.index} ({len(res.figures)} figure(s))", highlight=False, soft_wrap=True)
    for s in res.sections:
        if s.empty:
            out.print(f"  {s.title}: no data yet", highlight=False)
    out.print(f"open it: file://{res.index.resolve()}", highlight=False, soft_wrap=True)


COMMANDS = [report]
