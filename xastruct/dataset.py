"""The embedded default dataset: structures + labelled sites + FEFF spectra as compressed parquet.

Made by the project's own commands (`xastruct ingest builtin`, `xastruct simulate ...`) and written
with `xastruct dataset export`; `xastruct ingest builtin` loads it back. Rows are linked by the
structure content hash and site index, never by database ids, so it loads into any store.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from . import store
from .errors import InputError
from .schema import jobs as jobs_t
from .schema import sites as sites_t
from .schema import spectra as spectra_t
from .schema import structures as structures_t

DEFAULT_DIR = Path(__file__).resolve().parent / "data" / "default"

# The recipe of the embedded default dataset, run in order by `xastruct dataset build` (each step
# is an ordinary resumable `simulate`). Element selectors: "all" = every element in the stored
# structures, filtered by min_z; or an explicit list. Extend the dataset by editing this table.
_3D = ["Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"]
_MAIN_K = ["Na", "Mg", "Al", "Si", "P", "S", "Cl", "K", "Ca", "Ga", "Ge", "As", "Se"]
_HEAVY_L3 = ["Zr", "Mo", "Ru", "Pd", "Ag", "Sn", "Sb", "I", "Ba", "La", "Ce", "Gd", "Hf", "W", "Pt", "Au", "Pb", "Bi"]
RECIPE: list[dict] = [
    {"kind": "EXAFS", "edge": "K", "elements": "all", "min_z": 3},
    {"kind": "EXAFS", "edge": "L3", "elements": "all", "min_z": 40},
    # limit = sites per element: those already computed, then a stable random sample (simulate._limited);
    # 40 gives the 3d metals enough XANES for per-element and XANES-only models (4 were too few)
    {"kind": "XANES", "edge": "K", "elements": _3D, "limit": 40},
    # most measured XAS is of metals, oxides and sulfides: XANES of every 3d site of the library's
    # reference compounds (library.SUPPLEMENT). "where" filters structures (SQL), "dominant_neighbor"
    # sites (e.g. ["O"]); both are optional
    {"kind": "XANES", "edge": "K", "elements": _3D, "label": "of reference compounds",
     "where": "structures.provenance->>'supplement' IS NOT NULL"},
    {"kind": "XANES", "edge": "K", "elements": _MAIN_K, "limit": 2},
    {"kind": "XANES", "edge": "L3", "elements": _HEAVY_L3, "limit": 1},
]


def recipe_elements(engine: sa.Engine, step: dict) -> list[str]:
    """The absorbing elements of one recipe step, in Z order."""
    from pymatgen.core import Element

    if step["elements"] == "all":
        with engine.connect() as conn:
            systems = conn.execute(sa.select(structures_t.c.chemsys).distinct()).scalars().all()
        els = {e for cs in systems for e in cs.split("-")}
    else:
        els = set(step["elements"])
    lo, hi = step.get("min_z", 1), step.get("max_z", 120)
    return sorted((e for e in els if lo <= Element(e).Z <= hi), key=lambda e: Element(e).Z)


def recipe_status(engine: sa.Engine) -> list[dict]:
    """Progress of each recipe step on the stored structures, one row per (step, element): labelled
    inequivalent sites, the step's target (sites, capped by its limit), spectra done, jobs failed,
    and the median FEFF seconds of the done ones (for the time the rest needs)."""
    from .simulate import CODES
    from .schema import jobs as jobs_t

    out = []
    with engine.connect() as conn:
        for n, step in enumerate(RECIPE, 1):
            kind, edge = step["kind"], step["edge"]
            code = CODES[kind][0]
            els = recipe_elements(engine, step)
            rep = sa.or_(sites_t.c.equivalent_to.is_(None), sites_t.c.equivalent_to == sites_t.c.site_index)
            dom = sites_t.c.dominant_neighbor.in_(step["dominant_neighbor"]) if step.get("dominant_neighbor") else sa.true()
            where = sa.text(step["where"]) if step.get("where") else sa.true()
            st = sites_t.join(structures_t, structures_t.c.id == sites_t.c.structure_id)
            n_sites = dict(conn.execute(sa.select(sites_t.c.element, sa.func.count()).select_from(st).where(
                sites_t.c.element.in_(els), rep, dom, where).group_by(sites_t.c.element)).all())
            done = dict(conn.execute(sa.select(spectra_t.c.absorber, sa.func.count(sa.distinct(spectra_t.c.site_id)))
                                     .select_from(spectra_t.join(st, sites_t.c.id == spectra_t.c.site_id))
                                     .where(spectra_t.c.absorber.in_(els), spectra_t.c.edge == edge,
                                            spectra_t.c.kind == kind, spectra_t.c.source == code, dom, where)
                                     .group_by(spectra_t.c.absorber)).all())
            failed = dict(conn.execute(sa.select(jobs_t.c.absorber, sa.func.count()).select_from(jobs_t.join(
                st, sa.and_(sites_t.c.structure_id == jobs_t.c.structure_id,
                            sites_t.c.site_index == jobs_t.c.site_index))).where(
                jobs_t.c.absorber.in_(els), jobs_t.c.edge == edge, jobs_t.c.kind == kind, jobs_t.c.code == code,
                jobs_t.c.status == "failed", dom, where).group_by(jobs_t.c.absorber)).all())
            secs = [float(x) for x in conn.execute(sa.text(
                "SELECT provenance->>'seconds' FROM spectra WHERE kind = :k AND edge = :e AND source = :c"),
                {"k": kind, "e": edge, "c": code}).scalars() if x is not None]
            med = float(np.median(secs)) if secs else None
            for el in els:
                target = min(n_sites.get(el, 0), step.get("limit") or 10**9)
                out.append(dict(step=n, kind=kind, edge=edge, code=code, element=el,
                                dominant_neighbor=",".join(step.get("dominant_neighbor") or []),
                                label=step.get("label") or "", sites=n_sites.get(el, 0),
                                target=target, done=done.get(el, 0), failed=failed.get(el, 0), median_seconds=med))
    return out


_SKIP = {"id", "created_at", "run_id", "structure_id", "site_id"}
_FLOAT_ARRAYS = ("energies", "mu", "mu_raw", "k", "chi")


def _json_text(v):
    if v is None or isinstance(v, str):
        return v
    return json.dumps(v, sort_keys=True)


def export_dataset(engine: sa.Engine, out_dir: str | Path = DEFAULT_DIR, *, sources=("builtin",),
                   spectrum_sources=("feff8l", "feff10")) -> dict:
    """Write structures/sites/spectra of the given structure sources to parquet files in out_dir, and
    the FEFF jobs that failed (failed_jobs.parquet: job key, site, edge, kind, code, params, reason), so a store loaded from the files
    does not run them again in `dataset build` (only with --retry-failed)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    with engine.connect() as conn:
        st = conn.execute(sa.select(structures_t).where(structures_t.c.source.in_(sources))
                          .order_by(structures_t.c.id)).mappings().all()
        id2hash = {r["id"]: r["content_hash"] for r in st}
        si = conn.execute(sa.select(sites_t).where(sites_t.c.structure_id.in_(list(id2hash)))
                          .order_by(sites_t.c.id)).mappings().all() if id2hash else []
        sid2idx = {r["id"]: r["site_index"] for r in si}
        sp = conn.execute(sa.select(spectra_t).where(spectra_t.c.structure_id.in_(list(id2hash)),
                                                     spectra_t.c.source.in_(spectrum_sources))
                          .order_by(spectra_t.c.id)).mappings().all() if id2hash else []
        fj = conn.execute(sa.select(jobs_t).where(jobs_t.c.structure_id.in_(list(id2hash)),
                                                  jobs_t.c.code.in_(spectrum_sources), jobs_t.c.status == "failed")
                          .order_by(jobs_t.c.id)).mappings().all() if id2hash else []
    for name, rows, table in (("structures", st, structures_t), ("sites", si, sites_t), ("spectra", sp, spectra_t)):
        cols = [c.name for c in table.columns if c.name not in _SKIP]
        data = {c: [_json_text(r[c]) if isinstance(table.c[c].type, sa.JSON) else r[c] for r in rows] for c in cols}
        if name in ("sites", "spectra"):
            data["content_hash"] = [id2hash[r["structure_id"]] for r in rows]
        if name == "spectra":
            data["site_index"] = [sid2idx.get(r["site_id"]) for r in rows]
            arrays = {}
            for c in _FLOAT_ARRAYS:
                # float32 halves the file; 7 significant digits exceed FEFF's own output precision
                arrays[c] = pa.array([None if v is None else np.asarray(v, np.float32) for v in data.pop(c)],
                                     type=pa.list_(pa.float32()))
            tbl = pa.table({**{c: data[c] for c in data}, **arrays})
        else:
            tbl = pa.table(data)
        pq.write_table(tbl, out_dir / f"{name}.parquet", compression="zstd", compression_level=19)
        counts[name] = tbl.num_rows
    cols = ("key", "site_index", "absorber", "edge", "kind", "code", "params", "reason")
    data = {c: [_json_text(r[c]) if c == "params" else r[c] for r in fj] for c in cols}
    data["content_hash"] = [id2hash[r["structure_id"]] for r in fj]
    schema = pa.schema([(c, pa.int64() if c == "site_index" else pa.string()) for c in (*cols, "content_hash")])
    pq.write_table(pa.table(data, schema=schema), out_dir / "failed_jobs.parquet", compression="zstd")
    counts["failed_jobs"] = len(fj)
    return counts


def load_dataset(engine: sa.Engine, src: str | Path = DEFAULT_DIR, *, progress=None) -> dict:
    """Load a dataset written by export_dataset. Idempotent; one transaction per table."""
    src = Path(src)
    files = {n: src / f"{n}.parquet" for n in ("structures", "sites", "spectra")}
    missing = [str(p) for p in files.values() if not p.exists()]
    if missing:
        raise InputError(src, f"dataset files missing: {', '.join(missing)}",
                         "regenerate with `xastruct dataset export` or pass --dataset none")
    added = {}
    st = pq.read_table(files["structures"]).to_pylist()
    with engine.begin() as conn:
        added["structures"] = store.bulk_insert(conn, "structures", st)
        ids = store.lookup_ids(conn, "structures", "content_hash", [r["content_hash"] for r in st])
        si = pq.read_table(files["sites"]).to_pylist()
        for r in si:
            r["structure_id"] = ids[r.pop("content_hash")]
        added["sites"] = store.bulk_insert(conn, "sites", si)
        sids = store.site_ids(conn, ids.values())
    if progress:
        progress(1)
    spectra = pq.read_table(files["spectra"])
    for batch in spectra.to_batches(max_chunksize=2000):
        rows = batch.to_pylist()
        with engine.begin() as conn:
            for r in rows:
                sid = ids[r.pop("content_hash")]
                idx = r.pop("site_index")
                r["structure_id"] = sid
                r["site_id"] = sids.get((sid, idx)) if idx is not None else None
            added["spectra"] = added.get("spectra", 0) + store.bulk_insert(conn, "spectra", rows)
    if progress:
        progress(1)
    failed = src / "failed_jobs.parquet"  # absent in datasets exported before it existed
    if failed.exists():
        rows = pq.read_table(failed).to_pylist()
        for i, r in enumerate(rows):
            h = r.pop("content_hash")
            if h not in ids:
                raise InputError(failed, f"row {i} (job {r['key']}) names structure {h[:12]}, not in structures.parquet",
                                 "re-export the dataset with `xastruct dataset export` from its generation store")
            r["structure_id"] = ids[h]
            r["status"] = "failed"
        with engine.begin() as conn:
            added["jobs"] = store.bulk_insert(conn, "jobs", rows)  # the failed ones
    return added
