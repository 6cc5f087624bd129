"""Simulate spectra with FEFF for stored structures: plan jobs, run them on dask, write results.

One job per symmetry-inequivalent absorbing site (element, edge, kind, code, parameters). Jobs live
in the `jobs` table keyed by a hash of (structure, site, edge, kind, code, parameters), so planning
twice adds nothing; a job is marked done in the same transaction that stores its spectrum, so a
kill -9 at any point leaves either both or neither, and a rerun picks up the pending ones.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from . import store
from .errors import InputError
from .ingest import label_sites, spectrum_key
from .schema import jobs as jobs_t
from .schema import sites as sites_t
from .schema import structures as structures_t

CODES = {"EXAFS": ("feff8l",), "XANES": ("feff10",)}


def job_key(content_hash: str, site_index: int, edge: str, kind: str, code: str, params: dict) -> str:
    blob = json.dumps([content_hash, site_index, edge, kind, code, params], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def ensure_sites(engine: sa.Engine, element: str, *, where: str | None = None) -> int:
    """Label the `element` sites of structures that have none yet. Returns sites added."""
    from pymatgen.core import Structure

    q = sa.select(structures_t.c.id, structures_t.c.chemsys)
    if where:
        q = q.where(sa.text(where))
    with engine.connect() as conn:
        with_el = {i for i, cs in conn.execute(q) if element in cs.split("-")}
        have = set(conn.execute(
            sa.select(sites_t.c.structure_id).where(sites_t.c.element == element).distinct()).scalars())
        todo = sorted(with_el - have)
        docs = conn.execute(sa.select(structures_t.c.id, structures_t.c.structure_json)
                            .where(structures_t.c.id.in_(todo))).all() if todo else []
    rows = []
    for sid, js in docs:
        for lab in label_sites(Structure.from_dict(json.loads(js)), [element]):
            rows.append({**{k: lab.get(k) for k in ("site_index", "element", "equivalent_to", "multiplicity",
                                                     "cn", "mnnd", "dominant_neighbor", "neighbors",
                                                     "label_method")}, "structure_id": sid})
    with engine.begin() as conn:
        return store.bulk_insert(conn, "sites", rows)


def plan(
    engine: sa.Engine,
    *,
    elements: Sequence[str],
    edge: str = "K",
    kind: str = "EXAFS",
    code: str | None = None,
    params: dict | None = None,
    radius: float | None = None,
    limit: int | None = None,
    where: str | None = None,
    dominant: Sequence[str] | None = None,
) -> dict:
    """Create pending jobs for every inequivalent site of `elements` (idempotent); *dominant* keeps
    only sites whose dominant neighbour element is one of these (e.g. ["O"]: oxide sites)."""
    from .feff import resolve_params

    kind = kind.upper()
    if kind not in CODES:
        raise InputError("--kind", f"unknown kind {kind!r}", "use EXAFS or XANES")
    code = code or CODES[kind][0]
    if code not in CODES[kind]:
        raise InputError("--code", f"{code} does not compute {kind}",
                         f"use {' or '.join(CODES[kind])} for {kind} (feff8l: EXAFS; feff10: XANES)")
    full = resolve_params(kind, params)
    if radius is not None:
        full["cluster_radius"] = float(radius)
    planned = 0
    keys: set[str] = set()  # every job of this plan, new or not (limit is per element)
    done: set[str] | None = None
    for el in elements:
        ensure_sites(engine, el, where=where)
        q = (
            sa.select(sites_t.c.structure_id, sites_t.c.site_index, structures_t.c.content_hash)
            .select_from(sites_t.join(structures_t, structures_t.c.id == sites_t.c.structure_id))
            .where(sites_t.c.element == el)
            .where(sa.or_(sites_t.c.equivalent_to.is_(None), sites_t.c.equivalent_to == sites_t.c.site_index))
            .order_by(sites_t.c.structure_id, sites_t.c.site_index)
        )
        if where:
            q = q.where(sa.text(where))
        if dominant:
            q = q.where(sites_t.c.dominant_neighbor.in_(list(dominant)))
        with engine.connect() as conn:
            reps = [(sid, idx, h, job_key(h, idx, edge, kind, code, full)) for sid, idx, h in conn.execute(q)]
            if limit:
                if done is None:  # job keys of the stored spectra, read once per plan
                    done = set(conn.execute(sa.text("SELECT provenance->>'job_key' FROM spectra WHERE source = :c"),
                                            {"c": code}).scalars())
                reps = _limited(reps, limit, done)
        rows = [
            dict(key=key, structure_id=sid, site_index=idx, absorber=el,
                 edge=edge, kind=kind, code=code, params=full, status="pending")
            for sid, idx, h, key in reps
        ]
        keys.update(r["key"] for r in rows)
        with engine.begin() as conn:
            planned += store.bulk_insert(conn, "jobs", rows)
    adopt_existing(engine, code)
    return {"planned": planned, "params": full, "code": code, "keys": keys}


def _limited(reps: list[tuple], limit: int, done: set[str]) -> list[tuple]:
    """`limit` sites of one element: those whose job key is in `done` (spectrum stored) first, so
    raising a limit keeps the earlier picks, then a stable pseudo-random sample (hash of structure
    and site), so every limit is a representative draw, not the first structures of the library."""

    def rank(r):
        return (r[3] not in done, hashlib.sha256(f"{r[2]}:{r[1]}".encode()).hexdigest())

    return sorted(reps, key=rank)[:limit]


def interleave(jobs: list[dict]) -> list[dict]:
    """Jobs round-robin over absorbers (stable within each): a run stopped part-way leaves every
    element with about the same share done instead of the first elements complete."""
    seen: dict[str, int] = {}
    ranked = []
    for i, j in enumerate(jobs):
        seen[j["absorber"]] = seen.get(j["absorber"], -1) + 1
        ranked.append((seen[j["absorber"]], i, j))
    return [j for _, _, j in sorted(ranked, key=lambda t: (t[0], t[1]))]


def adopt_existing(engine: sa.Engine, code: str) -> int:
    """Mark jobs done whose spectrum is already stored (e.g. loaded from an exported dataset).

    Spectra carry their job key in provenance, so a store rebuilt from parquet resumes instead of
    recomputing what it already has.
    """
    sql = sa.text(
        "UPDATE jobs SET status = 'done', reason = NULL, "
        "spectrum_id = (SELECT min(s.id) FROM spectra s WHERE s.provenance->>'job_key' = jobs.key) "
        "WHERE status <> 'done' AND code = :code AND key IN "
        "(SELECT provenance->>'job_key' FROM spectra WHERE source = :code)"
    )
    with engine.begin() as conn:
        return conn.execute(sql, {"code": code}).rowcount or 0


def pending_jobs(engine: sa.Engine, *, elements, edge, kind, code, retry_failed=False, limit=None,
                 keys: set[str] | None = None) -> list[dict]:
    """Jobs still to run; *keys* restricts them to one plan's jobs (its per-element --limit),
    *limit* caps the total."""
    statuses = ["pending", "failed"] if retry_failed else ["pending"]
    q = (
        sa.select(jobs_t.c.id, jobs_t.c.key, jobs_t.c.site_index, jobs_t.c.absorber, jobs_t.c.edge, jobs_t.c.kind,
                  jobs_t.c.code, jobs_t.c.params, structures_t.c.structure_json, structures_t.c.content_hash,
                  jobs_t.c.structure_id)
        .select_from(jobs_t.join(structures_t, structures_t.c.id == jobs_t.c.structure_id))
        .where(jobs_t.c.status.in_(statuses), jobs_t.c.absorber.in_(list(elements)), jobs_t.c.edge == edge,
               jobs_t.c.kind == kind, jobs_t.c.code == code)
        .order_by(jobs_t.c.id)
    )
    if limit and keys is None:
        q = q.limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(q).mappings().all()
    out = []
    for r in rows:
        if keys is not None and r["key"] not in keys:
            continue
        params = r["params"] if isinstance(r["params"], dict) else json.loads(r["params"])
        out.append(dict(job_id=r["id"], key=r["key"], site_index=r["site_index"], absorber=r["absorber"],
                        edge=r["edge"], kind=r["kind"], code=r["code"], params=params,
                        structure=json.loads(r["structure_json"]), content_hash=r["content_hash"],
                        structure_id=r["structure_id"]))
    return out


def _result_rows(job: dict, res: dict, site_ids: dict) -> dict | None:
    """Spectrum row for a finished job (None if FEFF failed)."""
    from .readers import normalize

    if res.get("status") != "ok":
        return None
    energies = np.asarray(res["energies"], float)
    mu = np.asarray(res["mu"], float)
    try:
        # calculated spectra: zero baseline by construction, no pre-edge fit (see readers.normalize)
        # FEFF's E0 (Fermi level) can print a few meV below its own first grid point
        e0_feff = None if res.get("e0") is None else max(float(res["e0"]), float(energies[0]))
        e0, step, mu_norm = normalize(energies, mu, e0=e0_feff, source=f"job {job['key'][:12]}",
                                      calculated=True)
        normalized = True
    except InputError:
        e0, step, mu_norm, normalized = res.get("e0"), None, mu, False
    prov = {
        "code": job["code"],
        "versions": res.get("versions"),
        "params": job["params"],
        "input_hash": res.get("input_hash"),
        "job_key": job["key"],
        "seconds": res.get("seconds", res.get("wall_seconds")),
        "scf_fallback": bool(res.get("scf_fallback", False)),
    }
    if res.get("scf_failure"):
        prov["scf_failure"] = str(res["scf_failure"])[:500]
    return dict(
        key=spectrum_key(job["code"], job["content_hash"], job["site_index"], job["edge"], job["kind"],
                         res.get("input_hash")),
        structure_id=job["structure_id"],
        site_id=site_ids.get((job["structure_id"], job["site_index"])),
        absorber=job["absorber"],
        edge=job["edge"],
        kind=job["kind"],
        source=job["code"],
        energies=energies.tolist(),
        mu=np.asarray(mu_norm, float).tolist(),
        mu_raw=mu.tolist(),
        k=None if res.get("k") is None else np.asarray(res["k"], float).tolist(),
        chi=None if res.get("chi") is None else np.asarray(res["chi"], float).tolist(),
        e0=None if e0 is None else float(e0),
        edge_step=None if step is None else float(step),
        normalized=normalized,
        provenance=prov,
    )


def write_results(engine: sa.Engine, done: list[tuple[dict, dict]], *, run_id: int | None) -> dict:
    """Store spectra and job statuses for a batch of (job, result) in ONE transaction."""
    counts = {"done": 0, "failed": 0}
    with engine.begin() as conn:
        sids = store.site_ids(conn, {j["structure_id"] for j, _ in done})
        rows, updates = [], []
        for job, res in done:
            row = _result_rows(job, res, sids)
            if row is not None:
                row["run_id"] = run_id
                rows.append(row)
            else:
                counts["failed"] += 1
            updates.append((job, res, row))
        store.bulk_insert(conn, "spectra", rows)
        keys = store.lookup_ids(conn, "spectra", "key", [r["key"] for r in rows])
        params = []
        for job, res, row in updates:
            ok = row is not None
            counts["done"] += ok
            params.append(dict(
                k=job["key"], status="done" if ok else "failed",
                reason=None if ok else str(res.get("reason", "unknown"))[:2000],
                seconds=res.get("seconds", res.get("wall_seconds")),
                spectrum_id=keys.get(row["key"]) if ok else None, run_id=run_id))
        conn.execute(
            sa.update(jobs_t).where(jobs_t.c.key == sa.bindparam("k")).values(
                status=sa.bindparam("status"), reason=sa.bindparam("reason"), seconds=sa.bindparam("seconds"),
                spectrum_id=sa.bindparam("spectrum_id"), run_id=sa.bindparam("run_id"),
                updated_at=sa.func.current_timestamp()),
            params,
        )
    return counts


def _run_one(job: dict) -> dict:
    """Worker-side: run FEFF for one job (runs inside a dask worker process)."""
    from .feff import run_job

    return run_job(dict(kind=job["kind"], structure=job["structure"], site_index=job["site_index"],
                        edge=job["edge"], params=job["params"], timeout=job.get("timeout"),
                        job_id=job["job_id"], scratch_root=job.get("scratch_root")))


def execute(
    engine: sa.Engine,
    jobs: list[dict],
    *,
    workers: int = 2,
    scheduler: str | None = None,
    timeout: float | None = None,
    scratch_root: str | None = None,
    run_id: int | None = None,
    flush_every: int = 8,
    flush_seconds: float = 3.0,
    progress: Callable[[int], None] | None = None,
    on_flush: Callable[[dict], None] | None = None,
) -> dict:
    """Run jobs on dask (LocalCluster with `workers` processes, or a scheduler address)."""
    from distributed import Client, LocalCluster, as_completed

    totals = {"done": 0, "failed": 0}
    if not jobs:
        return totals
    for j in jobs:
        j["timeout"] = timeout
        j["scratch_root"] = scratch_root
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        # one thread per process: FEFF is single-threaded and feff8l's runner changes directory
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=40)
        client = Client(cluster)
    try:
        by_key = {}
        futures = []
        for j in jobs:
            # pure=False: a retried job must run again, not return a cached failure
            f = client.submit(_run_one, j, pure=False, key=f"feff-{j['key'][:24]}-{time.time_ns()}")
            by_key[f.key] = j
            futures.append(f)
        pending: list[tuple[dict, dict]] = []
        last = time.monotonic()
        for fut in as_completed(futures):
            job = by_key[fut.key]
            try:
                res = fut.result()
            except Exception as exc:  # worker died (OOM, segfault): record it, keep going
                res = {"status": "failed", "reason": f"worker error: {type(exc).__name__}: {exc}"}
            pending.append((job, res))
            fut.release()
            if progress:
                progress(1)
            if len(pending) >= flush_every or time.monotonic() - last > flush_seconds:
                for k, v in write_results(engine, pending, run_id=run_id).items():
                    totals[k] += v
                pending, last = [], time.monotonic()
                if on_flush:
                    on_flush(dict(totals))
        if pending:
            for k, v in write_results(engine, pending, run_id=run_id).items():
                totals[k] += v
            if on_flush:
                on_flush(dict(totals))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return totals


def simulate(
    engine: sa.Engine,
    *,
    elements: Sequence[str],
    edge: str = "K",
    kind: str = "EXAFS",
    code: str | None = None,
    params: dict | None = None,
    radius: float | None = None,
    workers: int = 2,
    scheduler: str | None = None,
    limit: int | None = None,
    timeout: float | None = None,
    retry_failed: bool = False,
    where: str | None = None,
    dominant: Sequence[str] | None = None,
    scratch_root: str | None = None,
    progress_factory=None,
    on_flush: Callable[[dict], None] | None = None,
    flush_every: int = 8,
) -> dict:
    """Plan and run: the whole `xastruct simulate` command."""
    info = plan(engine, elements=elements, edge=edge, kind=kind, code=code, params=params, radius=radius,
                limit=limit, where=where, dominant=dominant)
    todo = interleave(pending_jobs(engine, elements=elements, edge=edge, kind=kind.upper(), code=info["code"],
                                   retry_failed=retry_failed, keys=info["keys"]))
    args = dict(elements=list(elements), edge=edge, kind=kind, code=info["code"], params=params, radius=radius,
                workers=workers, scheduler=scheduler, limit=limit,
                **({"dominant": list(dominant)} if dominant else {}))
    with store.run_record(engine, "simulate", args) as summary:
        if progress_factory and todo:
            with progress_factory(len(todo), f"{info['code']} {kind} {edge}") as adv:
                totals = execute(engine, todo, workers=workers, scheduler=scheduler, timeout=timeout,
                                 scratch_root=scratch_root, run_id=summary["run_id"], progress=adv,
                                 on_flush=on_flush, flush_every=flush_every)
        else:
            totals = execute(engine, todo, workers=workers, scheduler=scheduler, timeout=timeout,
                             scratch_root=scratch_root, run_id=summary["run_id"], on_flush=on_flush,
                             flush_every=flush_every)
        with engine.connect() as conn:
            skipped = conn.execute(
                sa.select(sa.func.count()).select_from(jobs_t).where(
                    jobs_t.c.absorber.in_(list(elements)), jobs_t.c.edge == edge, jobs_t.c.kind == kind.upper(),
                    jobs_t.c.code == info["code"], jobs_t.c.status == "done")).scalar() - totals["done"]
        summary.update(planned=info["planned"], ran=len(todo), **totals, already_done=skipped)
    return {"planned": info["planned"], "ran": len(todo), **totals, "already_done": skipped,
            "params": info["params"], "code": info["code"]}


def failures(engine: sa.Engine, limit: int = 20) -> list[tuple]:
    q = (sa.select(jobs_t.c.absorber, jobs_t.c.structure_id, jobs_t.c.site_index, jobs_t.c.reason)
         .where(jobs_t.c.status == "failed").limit(limit))
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(q)]


def scratch_default() -> str:
    p = Path.cwd() / "scratch" / "feff"
    p.mkdir(parents=True, exist_ok=True)
    return str(p)
