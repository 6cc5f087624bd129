"""Simulator throughput from a store's jobs table (what `xastruct simulate` / `dataset build` did).

    .venv/bin/python benchmarks/bench_simulate.py --db URL

Per code/kind/edge: jobs done/failed, median and mean seconds per spectrum (wall time of the FEFF
run inside its worker), and spectra per core-hour (3600 / mean seconds: each job uses one core).
Writes benchmarks/results/simulate_throughput.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections import defaultdict
from pathlib import Path

import sqlalchemy as sa

from xastruct import store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", required=True)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "simulate_throughput.md"))
    a = ap.parse_args()
    eng = store.get_engine(a.db)
    with eng.connect() as c:
        # jobs run in this store (adopted ones, loaded from the parquet, carry no seconds); the spectrum's
        # provenance says whether FEFF10 had to drop SCF
        rows = c.execute(sa.text(
            "SELECT j.code, j.kind, j.edge, j.status, j.seconds, s.provenance->>'scf_fallback' "
            "FROM jobs j LEFT JOIN spectra s ON s.id = j.spectrum_id WHERE j.status <> 'pending'")).all()
    groups = defaultdict(list)
    for code, kind, edge, status, sec, fallback in rows:
        groups[(code, kind, edge)].append((status, sec, str(fallback).lower() == "true"))
    lines = [
        "# Simulator throughput",
        "",
        f"`.venv/bin/python benchmarks/bench_simulate.py --db <store>` over the jobs run in that store "
        f"({os.cpu_count()} cores; seconds = wall time of each FEFF run inside its worker, so they are as "
        "pessimistic as the machine was busy while the jobs ran).",
        "",
        "| code | kind | edge | done | failed | SCF fallback | median s/spectrum | mean s/spectrum | spectra per core-hour |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (code, kind, edge), items in sorted(groups.items()):
        secs = [s for st, s, _ in items if st == "done" and s is not None]
        failed = sum(st == "failed" for st, _, _ in items)
        fallback = sum(fb for st, s, fb in items if st == "done" and s is not None)
        if not secs:
            continue
        mean = statistics.fmean(secs)
        lines.append(f"| {code} | {kind} | {edge} | {len(secs)} | {failed} | {fallback} | {statistics.median(secs):.2f} | "
                     f"{mean:.2f} | {3600 / mean:.0f} |")
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
