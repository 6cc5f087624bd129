"""Where the forward prediction time goes: CHGNet graph building vs its forward pass, by batch size.

    .venv/bin/python benchmarks/bench_chgnet_speed.py [--db duckdb:////tmp/bench_eta/cu.duckdb] [--n 200] [--threads 2]

On the first --n Cu K materials of cu_k_feff9 (the store bench_eta.py / bench_forward.py fill), nothing
cached: graph building alone (chgnet's CrystalGraphConverter), then xastruct.embed.chgnet_site_embeddings
(graphs + forward up to atom_fea) at several batch sizes. Graphs are built by
xastruct.embed.crystal_graph (the converter's graph with array operations); chgnet's own converter
is timed beside it. Writes benchmarks/results/chgnet_speed.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="duckdb:////tmp/bench_eta/cu.duckdb")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_forward import cu_feff9_store
    from xastruct import train
    from xastruct.embed import DEFAULT_MODEL, _frozen_chgnet, chgnet_site_embeddings, crystal_graph

    torch.set_num_threads(args.threads)
    data = train.load_forward_data(cu_feff9_store(args.db), element="Cu", edge="K", kind="XANES", source="feff9")
    structs = [data.structures[s] for s in sorted(set(data.structure_ids.tolist()))[: args.n]]
    n = len(structs)
    chgnet_site_embeddings(structs[:2], device="cpu", cache_dir=None)  # load CHGNet outside the timings
    model = _frozen_chgnet(DEFAULT_MODEL, "cpu")
    t = time.perf_counter()
    for s in structs:
        model.graph_converter(s)
    chgnet_graph_ms = 1e3 * (time.perf_counter() - t) / n
    t = time.perf_counter()
    for s in structs:
        crystal_graph(model.graph_converter, s)
    graph_ms = 1e3 * (time.perf_counter() - t) / n
    rows = []
    for bs in (16, 32, 64):
        t = time.perf_counter()
        chgnet_site_embeddings(structs, device="cpu", cache_dir=None, batch_size=bs)
        rows.append((bs, 1e3 * (time.perf_counter() - t) / n))
    atoms = sum(len(s) for s in structs) / n
    lines = [
        "# CHGNet cost per structure (graph building vs forward pass)",
        "",
        f"`.venv/bin/python benchmarks/bench_chgnet_speed.py --n {args.n} --threads {args.threads}` on {os.cpu_count()} "
        f"CPU cores (load average at the end {os.getloadavg()[0]:.1f}); {n} Cu K materials of cu_k_feff9, "
        f"{atoms:.0f} atoms on average, nothing cached.",
        "",
        f"Graph building alone (single-threaded): **{graph_ms:.1f} ms** per structure with "
        f"xastruct.embed.crystal_graph, {chgnet_graph_ms:.1f} ms with chgnet's CrystalGraphConverter (same graph).",
        "",
        "| batch size | graphs + forward to atom_fea (ms/structure) | of which forward (ms, by difference) |",
        "|---|---|---|",
        *[f"| {bs} | {ms:.1f} | {ms - graph_ms:.1f} |" for bs, ms in rows],
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chgnet_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
