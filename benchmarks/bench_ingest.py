"""Ingest timing on the shared data: FEFF 9 Cu K tree (all of it) and the XDI library.

    .venv/bin/python benchmarks/bench_ingest.py [--workers 2] [--pg URL]

Writes benchmarks/results/ingest.md. Target (issue): the FEFF tree in under 60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from xastruct import ingest, store

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def counts(eng) -> dict:
    with eng.connect() as c:
        return {t: c.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in ("structures", "sites", "spectra")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--pg", default=None, help="also time a PostgreSQL store at this URL (emptied first)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "ingest.md"))
    a = ap.parse_args()
    rows = []
    urls = []
    tmp = tempfile.mkdtemp()
    urls.append(("DuckDB", f"duckdb:///{tmp}/bench.duckdb"))
    if a.pg:
        urls.append(("PostgreSQL", a.pg))
    for backend, url in urls:
        eng = store.get_engine(url)
        if backend == "PostgreSQL":
            store.downgrade(eng, "base")
            store.upgrade(eng, "head")
        for label, fn in (
            ("FEFF 9 Cu K tree (cu_k_feff9)", lambda: ingest.ingest_feff(eng, SHARED / "cu_k_feff9", workers=a.workers)),
            ("same again (rerun)", lambda: ingest.ingest_feff(eng, SHARED / "cu_k_feff9", workers=a.workers)),
            ("XDI library (xaslib)", lambda: ingest.ingest_xdi(eng, SHARED / "xaslib")),
            ("same again (rerun)", lambda: ingest.ingest_xdi(eng, SHARED / "xaslib")),
        ):
            t0 = time.perf_counter()
            res = fn()
            dt = time.perf_counter() - t0
            rows.append((backend, label, res["items"], res["added"]["structures"], res["added"]["sites"],
                         res["added"]["spectra"], len(res["failed"]), dt))
            print(rows[-1], flush=True)
        total = counts(eng)
        store.dispose_engines()
    load = os.getloadavg()[0]
    lines = [
        "# Ingest benchmark",
        "",
        f"`.venv/bin/python benchmarks/bench_ingest.py --workers {a.workers}` on {os.cpu_count()} cores "
        f"({platform.processor() or platform.machine()}), load average at the end {load:.1f}. "
        "Includes reading, validation, edge-step normalization, CrystalNN site labels and the DB writes.",
        "",
        "| store | source | items | structures added | sites added | spectra added | not ingested | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {b} | {l} | {n} | {s} | {si} | {sp} | {f} | {dt:.1f} |" for b, l, n, s, si, sp, f, dt in rows]
    lines += ["", f"Store totals after the runs (last backend): {total}", ""]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
