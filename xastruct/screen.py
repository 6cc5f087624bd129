"""Screening: run the registered models over everything in the store and write `predictions`.

forward   every stored structure with the absorber (spectrum or not: that is the point) -> one
          predicted spectrum per (model, symmetry-inequivalent site), on the model's grid
          (XANES: normalized mu on E - E0 in eV; EXAFS: k^2 chi on k in 1/A). Where the site also
          has a stored spectrum of that edge/kind, its MAE and cosine against it are stored too.
inverse   every stored spectrum of the absorber (simulated or measured, with or without a
          structure) -> CN, MNND and neighbour type with probabilities/uncertainty, from the model
          that suits the spectrum's kind (see :func:`xastruct.inverse.find_model`).
closed    (``closed_loop``) forward-predicted spectra fed into the inverse models, to compare the
          recovered CN/MNND/neighbour with the structure's own labels.

One predictions row per (model, target); its ``key`` (model id + target) makes reruns insert only
what is missing and lets a newer model version add its own rows. Every batch is one transaction,
so a killed screen leaves complete batches only and a rerun finishes the rest.
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa

from . import registry, store
from .errors import InputError
from .schema import predictions as pred_t
from .schema import sites as sites_t
from .schema import spectra as spectra_t
from .schema import structures as structures_t

TASKS = ("forward", "inverse", "all")
INVERSE_TASKS = ("cn", "mnnd", "neighbor")
#: forward arch screened by default per kind (baselines/ablations are for benchmarks; pick them by
#: --model ID): the paper's CHGNet + SGMLP for XANES; for EXAFS the path model, which beats it and the
#: training-mean spectrum where the CHGNet head does not (benchmarks/results/forward_universal.md)
FORWARD_ARCHS = {"XANES": "xastruct", "EXAFS": "paths"}

__all__ = ["ScreenResult", "forward_models", "screen", "screen_forward", "screen_inverse"]


@dataclass(kw_only=True)
class ScreenResult:
    task: str
    models: list[str]
    targets: int = 0  # targets considered
    already: int = 0  # had a prediction from the same model before
    written: int = 0
    skipped: int = 0  # could not be predicted (reason counted in `reasons`)
    seconds: float = 0.0
    reasons: Counter | None = None

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("task", "models", "targets", "already", "written", "skipped")}
        d["seconds"] = round(self.seconds, 2)
        d["reasons"] = dict(self.reasons or {})
        return d


# ----------------------------------------------------------------------------------- helpers


def _progress(factory, total: int, label: str):
    return factory(total, label) if factory else nullcontext(lambda n=1: None)


def _existing_keys(conn: sa.Connection, model_ids: Sequence[int]) -> set[str]:
    if not model_ids:
        return set()
    q = sa.select(pred_t.c.key).where(pred_t.c.model_id.in_([int(m) for m in model_ids]))
    return set(conn.execute(q).scalars())


def _where(q, where: str | None):
    return q.where(sa.text(f"({where})")) if where else q


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def _model_choice(engine, element: str, model: str | int | None) -> list[tuple[registry.ModelEntry, str]]:
    """(model, edge) pairs to run for one absorber: an explicit id/name, or per (edge, kind) the newest
    model of the kind's preferred arch (:data:`FORWARD_ARCHS`), the other screened arch otherwise.
    Models over several absorbers (element None) count for the (element, edge) pairs they trained on."""
    from .train import serves

    if model not in (None, "", "latest"):
        with engine.connect() as conn:
            e = registry._entry(conn, model)
        if e.task != "forward":
            return []
        if e.element is not None:
            return [(e, e.edge)] if e.element == element else []
        return [(e, edge) for edge in _edges_of(e, element)]
    best: dict[tuple, tuple] = {}
    for e in registry.list_models(engine, task="forward"):  # oldest first: newer replaces older
        if e.arch not in FORWARD_ARCHS.values() or (e.element is not None and e.element != element):
            continue
        for edge in [e.edge] if e.element is not None else _edges_of(e, element):
            rank = 0 if e.arch == FORWARD_ARCHS.get(e.kind) else 1
            key = (edge, e.kind)
            if key not in best or rank <= best[key][0]:
                best[key] = (rank, e, edge)
    return [(e, edge) for _, e, edge in best.values() if serves(e, element, edge)]


def _edges_of(entry: registry.ModelEntry, element: str) -> list[str]:
    pairs = (entry.config or {}).get("pairs", [])
    return sorted({p.split(":", 1)[1] for p in pairs if p.split(":", 1)[0] == element})


def forward_models(engine: sa.Engine, elements: Sequence[str], model: str | int | None = "latest"):
    """(model, element, edge) of every forward prediction job for *elements*."""
    return [(e, el, edge) for el in elements for e, edge in _model_choice(engine, el, model)]


# ----------------------------------------------------------------------------------- forward


def _needs_chgnet(entry: registry.ModelEntry) -> bool:
    mode = entry.config.get("mode")
    return mode == "pooled" or (mode == "paths" and bool(entry.members[0].d_atom))


def _forward_targets(engine, element: str, where: str | None) -> list[tuple[int, int, int]]:
    """(structure_id, site_id, site_index) of every inequivalent `element` site."""
    from .simulate import ensure_sites

    ensure_sites(engine, element)  # label sites first: the filter may use sites columns
    q = (
        sa.select(sites_t.c.structure_id, sites_t.c.id, sites_t.c.site_index)
        .select_from(_FORWARD_FROM)
        .where(sites_t.c.element == element)
        .where(sa.or_(sites_t.c.equivalent_to.is_(None), sites_t.c.equivalent_to == sites_t.c.site_index))
        .order_by(sites_t.c.structure_id, sites_t.c.site_index)
    )
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(_where(q, where))]


def _references(conn, site_ids: Sequence[int], edge: str, kind: str) -> dict[int, dict]:
    """Newest stored spectrum per site for (edge, kind)."""
    if not site_ids:
        return {}
    sp = spectra_t.c
    # ids first, then the arrays of the chosen rows by id: DuckDB filtering on site_id while reading
    # the list columns took 3-4x longer (a tenth of a forward screen)
    newest = dict(conn.execute(sa.select(sp.site_id, sa.func.max(sp.id)).where(
        sp.site_id.in_([int(s) for s in site_ids]), sp.edge == edge, sp.kind == kind).group_by(sp.site_id)).all())
    if not newest:
        return {}
    cols = [sp.id, sp.site_id, sp.e0] + ([sp.energies, sp.mu] if kind == "XANES" else [sp.k, sp.chi])
    q = sa.select(*cols).where(sp.id.in_(list(newest.values())))
    return {r["site_id"]: r for r in store.arrow_rows(store.fetch_arrow(conn, q))}


def _structure(js: str):
    from pymatgen.core import Structure

    return Structure.from_dict(json.loads(js))


def screen_forward(
    engine: sa.Engine,
    *,
    elements: Sequence[str],
    model: str | int | None = "latest",
    where: str | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str = "auto",
    run_id: int | None = None,
    progress_factory: Callable | None = None,
    on_commit: Callable[[str], None] | None = None,
) -> ScreenResult:
    """Predicted spectra for every inequivalent absorber site of `elements` (module doc)."""
    import torch

    from .embed import chgnet_site_embeddings, pooled_embedding
    from .models import pick_device
    from .train import band_sigma, crystalnn_neighbors, default_cache_dir, grid_points, predict_sites, resample

    t0 = time.perf_counter()
    jobs = forward_models(engine, elements, model)  # (entry, element, edge)
    entries = list({e.id: e for e, _, _ in jobs}.values())
    res = ScreenResult(task="forward", models=[e.name for e in entries], reasons=Counter())
    if not entries:
        return res
    # work list: (job, structure_id, site_id, site_index) missing a prediction
    with engine.connect() as conn:
        have = _existing_keys(conn, [e.id for e in entries])
    todo: dict[int, list[tuple]] = defaultdict(list)  # structure_id -> [(job, site_id, site_index)]
    targets_by_el = {el: _forward_targets(engine, el, where) for el in {el for _, el, _ in jobs}}
    for job in jobs:
        e, el, _ = job
        for sid, site_id, idx in targets_by_el[el]:
            res.targets += 1
            if f"{e.id}:site:{site_id}" in have:
                res.already += 1
            else:
                todo[sid].append((job, site_id, idx))
    if not todo:
        res.seconds = time.perf_counter() - t0
        return res
    loaded = {e.id: registry.load(engine, e.id, device=device) for e in entries}
    dev = pick_device(device)
    for m in (m for e in loaded.values() for m in e.members):
        m.to(dev).eval()
    grids = {e.id: grid_points(e.grid).astype(float) for e in loaded.values()}
    cache = default_cache_dir(str(engine.url))
    threads = workers or torch.get_num_threads()
    struct_ids = list(todo)
    n_jobs = sum(len(v) for v in todo.values())
    with _progress(progress_factory, n_jobs, "forward predictions") as advance:
        for start in range(0, len(struct_ids), batch_size):
            batch = struct_ids[start:start + batch_size]
            with engine.connect() as conn:
                js = dict(conn.execute(sa.select(structures_t.c.id, structures_t.c.structure_json)
                                       .where(structures_t.c.id.in_(batch))).all())
            structs = {sid: _structure(js[sid]) for sid in batch}
            chgnet_needed = any(_needs_chgnet(loaded[j[0].id]) for sid in batch for j, _, _ in todo[sid])
            feas: dict[int, np.ndarray] = {}
            if chgnet_needed:
                ordered = [sid for sid in batch if structs[sid].is_ordered]
                for sid in batch:
                    if sid not in ordered:
                        res.reasons["disordered structure"] += len(todo[sid])
                got = chgnet_site_embeddings([structs[s] for s in ordered], device=dev, num_threads=threads,
                                             cache_dir=cache / "chgnet")
                feas = dict(zip(ordered, got))
            nbr_cache: dict[tuple, list[int]] = {}
            rows: list[dict] = []
            by_model: dict[tuple, list[tuple]] = defaultdict(list)
            for sid in batch:
                for (e, el, edge), site_id, idx in todo[sid]:
                    by_model[(e.id, el, edge)].append((sid, site_id, idx))
            for (mid, element, edge), items in by_model.items():
                entry = loaded[mid]
                mode = entry.config.get("mode")
                if mode == "pooled":
                    items = [it for it in items if it[0] in feas]
                    if not items:
                        continue
                    z = []
                    pool = entry.config.get("pool", "mean")
                    for sid, _site_id, idx in items:
                        if pool != "absorber" and (sid, idx) not in nbr_cache:  # absorber pooling needs no shell
                            nbr_cache[(sid, idx)] = crystalnn_neighbors(structs[sid], idx)[0]
                        z.append(pooled_embedding(feas[sid], None, idx, neighbors=nbr_cache.get((sid, idx)), pool=pool))
                    zt = torch.from_numpy(np.stack(z).astype(np.float32)).to(dev)
                    pairs = None if entry.element is not None else [f"{element}:{edge}"] * len(items)
                    with torch.no_grad():
                        out = np.stack([m(zt, pairs).cpu().numpy() for m in entry.members])  # (members, n, grid)
                elif mode == "paths":  # every site of the batch in one call per member
                    from .train import path_inputs

                    if entry.members[0].d_atom:  # CHGNet atom features: ordered structures only
                        items = [it for it in items if it[0] in feas]
                        if not items:
                            continue
                    x = path_inputs(entry, [(structs[sid], idx) for sid, _, idx in items], edge=edge, device=dev,
                                    atom_feas=[feas[sid] for sid, _, _ in items] if feas else None)
                    with torch.no_grad():
                        out = np.stack([m(*x).cpu().numpy() for m in entry.members])
                else:  # graph / finetune / mean models: one structure at a time
                    out_parts = []
                    for sid, _site_id, idx in items:
                        out_parts.append(predict_sites(entry, structs[sid], [idx], device=device, edge=edge)[:, 0])
                    out = np.stack(out_parts, axis=1)
                mean, sigma = out.mean(axis=0), band_sigma(entry.config, out)  # as `predict spectrum` draws it
                refs = {}
                with engine.connect() as conn:
                    refs = _references(conn, [it[1] for it in items], edge, entry.kind)
                for j, (sid, site_id, idx) in enumerate(items):
                    row = dict(key=f"{mid}:site:{site_id}", model_id=mid, structure_id=sid, site_id=site_id,
                               task="forward", element=element, edge=edge, kind=entry.kind,
                               target="site", energies=grids[mid], mu=mean[j].astype(float),
                               uncertainty=float(sigma[j].mean()) if out.shape[0] > 1 else None, run_id=run_id)
                    ref = refs.get(site_id)
                    if ref is not None:
                        y = resample(entry.grid, energies=ref.get("energies"), mu=ref.get("mu"), e0=ref.get("e0"),
                                     k=ref.get("k"), chi=ref.get("chi"))
                        if y is not None:
                            row.update(reference_spectrum_id=ref["id"],
                                       reference_mae=float(np.mean(np.abs(mean[j] - y))),
                                       reference_cosine=_cosine(mean[j].astype(float), y.astype(float)))
                    rows.append(row)
            with engine.begin() as conn:
                res.written += store.bulk_insert(conn, "predictions", rows) if rows else 0
            if on_commit:
                on_commit(f"forward {res.written}")
            advance(sum(len(todo[s]) for s in batch))
    res.skipped = sum(res.reasons.values())
    res.seconds = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------------- inverse


@dataclass(kw_only=True)
class _Inputs:
    """Featurized inputs: one row per stored spectrum (or forward prediction)."""

    ref: list  # spectrum id (or prediction id for closed loop)
    element: list
    edge: list
    kind: list  # input kind(s): XANES, EXAFS, XANES+EXAFS
    measured: list
    structure_id: list
    site_id: list
    xanes: list
    exafs: list
    _chir: np.ndarray | None = None
    _arrays: dict | None = None

    def arrays(self) -> dict:
        """The per-row lists as arrays (XANES / EXAFS features NaN where absent), built once: every
        (task, model) batch takes rows from them (stacking row by row per batch was ~6% of a screen)."""
        if self._arrays is None:
            from .inverse import EXAFS_GRID, XANES_GRID

            def mat(rows, width):
                out = np.full((len(rows), width), np.nan)
                have = [i for i, r in enumerate(rows) if r is not None]
                if have:
                    out[have] = np.stack([rows[i] for i in have])
                return out

            self._arrays = {
                "element": np.array(self.element, dtype=str), "edge": np.array(self.edge, dtype=str),
                "structure_id": np.array([v or -1 for v in self.structure_id], dtype=np.int64),
                "site_id": np.array([v or -1 for v in self.site_id], dtype=np.int64),
                "xanes": mat(self.xanes, len(XANES_GRID)), "exafs": mat(self.exafs, len(EXAFS_GRID))}
        return self._arrays

    def chir(self) -> np.ndarray:
        """|chi(R)| of every row's EXAFS (NaN where none): one Fourier transform per input row for all
        tasks and models (each would otherwise redo it per batch); computed on first use, the rows
        being complete by then."""
        if self._chir is None:
            from .inverse import R_GRID, chir_magnitude

            rows = [i for i, e in enumerate(self.exafs) if e is not None]
            self._chir = np.full((len(self.exafs), len(R_GRID)), np.nan)
            if rows:
                self._chir[rows] = chir_magnitude(self.arrays()["exafs"][rows])
        return self._chir


def is_calculated(source: str | None) -> bool:
    """Whether a spectrum source is a calculation (our FEFF runs, Materials Project's FEFF): its
    mu(E) has no measured background, so chi(k) is never extracted from it; it counts as simulated."""
    s = str(source or "")
    return s == "mp" or s.startswith("feff")


def _calculated_sql(col):
    """SQL form of :func:`is_calculated` on a ``spectra.source`` column."""
    return sa.or_(col.like("feff%"), col == "mp")


def _featurize_spectrum(r: dict) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Inverse-model features of one stored spectrum row (same rules as `predict structure`)."""
    from .inverse import EXAFS_GRID, GRID_TOL_K, exafs_features, exafs_reach, measured_chi, xanes_features

    src = f"spectrum {r['id']}"
    feff = is_calculated(r["source"])
    if r["kind"] == "EXAFS" and r.get("k") is not None and r.get("chi") is not None:
        return None, exafs_features(np.asarray(r["k"], float), np.asarray(r["chi"], float), source=src)
    if r.get("energies") is None or r.get("mu") is None:
        raise InputError(src, "no mu(E) stored")
    e, mu = np.asarray(r["energies"], float), np.asarray(r["mu"], float)
    if not r["normalized"]:
        raise InputError(src, "not edge-step normalized")
    xf, e0 = xanes_features(e, mu, source=src)
    ef = None
    if not feff and r.get("mu_raw") is not None and exafs_reach(e, e0) >= EXAFS_GRID[-1] - GRID_TOL_K:
        try:
            k, chi = measured_chi(e, np.asarray(r["mu_raw"], float), e0_half=e0, source=src)
            ef = exafs_features(k, chi, source=src)
        except InputError:
            ef = None
    return xf, ef


def _batch_exafs(tbl) -> dict[int, np.ndarray]:
    """Row index -> EXAFS features for the EXAFS rows with chi(k), resampled in vectorized passes
    (same rule as inverse.exafs_features; rows it cannot take are left to the per-row path, which
    names the problem). Rows sharing one k grid (every feff8l run with the same settings) reuse one
    set of interpolation weights; the rest go through match.resample_rows."""
    from .inverse import EXAFS_GRID, EXAFS_KWEIGHT, GRID_TOL_K
    from .match import resample_rows

    if tbl.num_rows == 0:
        return {}
    ko, k, knull = store.list_column(tbl, "k", allow_null=True)
    co, chi, cnull = store.list_column(tbl, "chi", allow_null=True)
    kind = np.asarray(tbl.column("kind").to_pylist(), dtype=object)
    lengths = np.diff(ko)
    use = (kind == "EXAFS") & ~knull & ~cnull & (lengths == np.diff(co)) & (lengths >= 2)
    out: dict[int, np.ndarray] = {}
    weight = EXAFS_GRID**EXAFS_KWEIGHT
    for n_pts in np.unique(lengths[use]):
        rows = np.flatnonzero(use & (lengths == n_pts))
        K = k[ko[rows][:, None] + np.arange(n_pts)]
        C = chi[co[rows][:, None] + np.arange(n_pts)]
        kx = K[0]
        shared = bool((K == kx).all()) and bool(np.isfinite(kx).all()) and bool((np.diff(kx) > 0).all())
        if shared:
            if kx[0] > EXAFS_GRID[0] + GRID_TOL_K or kx[-1] < EXAFS_GRID[-1] - GRID_TOL_K:
                continue  # too short a range: the per-row path says so
            good = np.isfinite(C).all(axis=1)
            j = np.clip(np.searchsorted(kx, EXAFS_GRID, side="right") - 1, 0, n_pts - 2)
            t = np.clip((EXAFS_GRID - kx[j]) / (kx[j + 1] - kx[j]), 0.0, 1.0)  # flat beyond the ends, as np.interp
            vals = (C[good][:, j] * (1.0 - t) + C[good][:, j + 1] * t) * weight
            out.update(zip(rows[good].tolist(), vals))
        else:
            offsets = np.arange(len(rows) + 1) * n_pts
            ok, vals = resample_rows(offsets, K.ravel(), C.ravel(), EXAFS_GRID, GRID_TOL_K, dtype=float)
            out.update(zip(rows[ok].tolist(), vals * weight))
    return out


def _batch_xanes(tbl) -> dict[int, np.ndarray]:
    """Row index -> XANES features of the calculated (FEFF / MP) normalized mu(E) rows, in vectorized
    passes (inverse.xanes_features_rows); measured scans, whose chi(k) is extracted row by row, and
    rows it cannot take are left to the per-row path."""
    from .inverse import xanes_features_rows

    if tbl.num_rows == 0:
        return {}
    eo, e, enull = store.list_column(tbl, "energies", allow_null=True)
    mo, mu, mnull = store.list_column(tbl, "mu", allow_null=True)
    calc = np.array([is_calculated(s) for s in tbl.column("source").to_pylist()], dtype=bool)
    norm = np.array([bool(v) for v in tbl.column("normalized").to_pylist()], dtype=bool)
    use = calc & norm & ~enull & ~mnull & (np.diff(eo) == np.diff(mo))
    rows = np.flatnonzero(use)
    if not len(rows):
        return {}
    lengths = np.diff(eo)[rows]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)  # position inside each row
    ok, feats = xanes_features_rows(offsets, e[np.repeat(eo[rows], lengths) + within],
                                    mu[np.repeat(mo[rows], lengths) + within])
    return dict(zip(rows[ok].tolist(), feats))


# the tables an inverse --where filter may use (sites/structures are NULL for measured spectra)
_INVERSE_FROM = (spectra_t.outerjoin(structures_t, structures_t.c.id == spectra_t.c.structure_id)
                 .outerjoin(sites_t, sites_t.c.id == spectra_t.c.site_id))
_FORWARD_FROM = sites_t.join(structures_t, structures_t.c.id == sites_t.c.structure_id)


def _stored_inputs(engine, elements, where, reasons: Counter, progress_factory) -> _Inputs:
    sp = spectra_t.c
    # fetch only the arrays the features use (they are most of the bytes): chi(k) rows need no mu(E);
    # raw mu only matters for measured scans (their chi(k) comes from autobk)
    has_chi = sa.and_(sp.kind == "EXAFS", sp.k.is_not(None), sp.chi.is_not(None))
    calculated = _calculated_sql(sp.source)
    cols = [sp.id, sp.absorber, sp.edge, sp.kind, sp.source, sp.normalized,
            sa.case((has_chi, sa.null()), else_=sp.energies).label("energies"),
            sa.case((has_chi, sa.null()), else_=sp.mu).label("mu"),
            sa.case((sa.or_(has_chi, calculated), sa.null()), else_=sp.mu_raw).label("mu_raw"),
            sa.case((has_chi, sp.k), else_=sa.null()).label("k"),
            sa.case((has_chi, sp.chi), else_=sa.null()).label("chi"),
            sp.structure_id, sp.site_id]  # fmt: skip
    q = (sa.select(*cols).select_from(_INVERSE_FROM)
         .where(spectra_t.c.absorber.in_(list(elements))).order_by(spectra_t.c.id))
    with engine.connect() as conn:
        tbl = store.fetch_arrow(conn, _where(q, where))
    # FEFF chi(k) and FEFF mu(E) rows featurized all at once; the rest (measured scans, rows a batch
    # cannot take) row by row, as dicts only for those rows
    # the two passes are large NumPy operations (the GIL is released): one in a thread, one here
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="xastruct-exafs") as pool:
        fut = pool.submit(_batch_exafs, tbl)
        batch_x = _batch_xanes(tbl)
        batch_e = fut.result()
    rest = [i for i in range(tbl.num_rows) if i not in batch_e and i not in batch_x]
    rest_rows = dict(zip(rest, store.arrow_rows(tbl.take(rest)))) if rest else {}
    meta = {c: tbl.column(c).to_pylist() for c in ("id", "absorber", "edge", "source", "structure_id", "site_id")}
    rows = [dict(zip(meta, vals)) for vals in zip(*meta.values())]
    inp = _Inputs(ref=[], element=[], edge=[], kind=[], measured=[], structure_id=[], site_id=[], xanes=[], exafs=[])
    with _progress(progress_factory, len(rows), "featurize spectra") as advance:
        for i, r in enumerate(rows):
            try:
                xf, ef = ((None, batch_e[i]) if i in batch_e else (batch_x[i], None) if i in batch_x
                          else _featurize_spectrum(rest_rows[i]))
            except InputError as exc:
                reasons[f"spectrum not usable: {exc.problem}"] += 1
                advance(1)
                continue
            inp.ref.append(r["id"])
            inp.element.append(r["absorber"])
            inp.edge.append(r["edge"])
            inp.kind.append("+".join(k for k, f in (("XANES", xf), ("EXAFS", ef)) if f is not None))
            inp.measured.append(r["structure_id"] is None or not is_calculated(r["source"]))
            inp.structure_id.append(r["structure_id"])
            inp.site_id.append(r["site_id"])
            inp.xanes.append(xf)
            inp.exafs.append(ef)
            advance(1)
    return inp


def _closed_loop_inputs(engine, elements, reasons: Counter) -> _Inputs:
    """Latest forward predictions as inverse inputs (XANES: mu on E - E0; EXAFS: k^2 chi -> chi)."""
    from .inverse import exafs_features, xanes_features

    q = sa.text("SELECT prediction_id, element, edge, kind, energies, mu, structure_id, site_id "
                "FROM latest_predictions WHERE task = 'forward' AND target = 'site'")
    inp = _Inputs(ref=[], element=[], edge=[], kind=[], measured=[], structure_id=[], site_id=[], xanes=[], exafs=[])
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings() if r["element"] in set(elements)]
    for r in rows:
        x = np.asarray(r["energies"], float)
        y = np.asarray(r["mu"], float)
        src = f"prediction {r['prediction_id']}"
        try:
            if r["kind"] == "XANES":
                xf, ef = xanes_features(x, y, source=src)[0], None
            else:
                xf, ef = None, exafs_features(x, y / np.maximum(x, 1e-6) ** 2, source=src)
        except InputError as exc:
            reasons[f"forward prediction not usable: {exc.problem}"] += 1
            continue
        inp.ref.append(r["prediction_id"])
        inp.element.append(r["element"])
        inp.edge.append(r["edge"])
        inp.kind.append(r["kind"])
        inp.measured.append(False)
        inp.structure_id.append(r["structure_id"])
        inp.site_id.append(r["site_id"])
        inp.xanes.append(xf)
        inp.exafs.append(ef)
    return inp


@functools.lru_cache(maxsize=1)
def _rounded_reprs() -> list[str]:
    return [repr(k / 1e4) for k in range(10_001)]


def _probability_json(p: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Per row, ``json.dumps({class: p for the nonzero p}, sort_keys=True)``, built from the nonzero
    entries of the whole matrix at once (a universal forest has ~80 classes, a row ~20 nonzero; the
    per-row dict + encoder was a tenth of the inverse screen's time). Same text as json.dumps."""
    order = sorted(range(len(classes)), key=lambda j: classes[j])
    keys = [json.dumps(classes[j]) + ": " for j in order]
    q = p[:, order]
    rows, cols = np.nonzero(q)
    vals = q[rows, cols]
    # probabilities rounded to 4 decimals are k / 1e4 (np.round: rint(p * 1e4) / 1e4): their JSON
    # text comes from a table of the 10,001 values instead of one repr() per entry
    steps = np.rint(vals * 1e4)
    if len(vals) and steps.min() >= 0 and steps.max() <= 10_000 and np.array_equal(steps / 1e4, vals):
        table = _rounded_reprs()
        items = [keys[c] + table[k] for c, k in zip(cols.tolist(), steps.astype(np.int64).tolist())]
    else:  # not rounded to 4 decimals: repr() is the JSON number json.dumps writes
        items = [keys[c] + repr(v) for c, v in zip(cols.tolist(), vals.tolist())]
    ends = np.searchsorted(rows, np.arange(1, len(p) + 1)).tolist()
    out, start = [], 0
    for end in ends:
        out.append("{" + ", ".join(items[start:end]) + "}")
        start = end
    return out


def _table(inp: _Inputs, idx: Sequence[int]):
    from .inverse import SiteTable

    n, idx, a = len(idx), np.asarray(idx, dtype=np.int64), inp.arrays()
    return SiteTable(
        element=a["element"][idx], edge=a["edge"][idx], structure_id=a["structure_id"][idx], site_id=a["site_id"][idx],
        group=np.array([""] * n, dtype=str), cn=np.zeros(n, np.int64), mnnd=np.zeros(n), neighbor=np.array([""] * n, dtype=str),
        xanes=a["xanes"][idx], exafs=a["exafs"][idx], keys=[[] for _ in range(n)], exafs_r=inp.chir()[idx],
    )


def screen_inverse(
    engine: sa.Engine,
    *,
    elements: Sequence[str],
    model: str | int | None = "latest",
    where: str | None = None,
    batch_size: int = 4096,
    device: str = "auto",
    closed_loop: bool = False,
    run_id: int | None = None,
    progress_factory: Callable | None = None,
    on_commit: Callable[[str], None] | None = None,
) -> ScreenResult:
    """CN / MNND / neighbour for every stored spectrum of `elements` (or, with closed_loop, every
    latest forward prediction) with the model suited to its input kind."""
    from .inverse import (VARIANT_OF, _predict_classifier, _predict_mnnd, find_model, load_member,
                          member_temperature, period_argmax, without_unseen_kinds)

    t0 = time.perf_counter()
    reasons: Counter = Counter()
    res = ScreenResult(task="closed-loop" if closed_loop else "inverse", models=[], reasons=reasons)
    inp = (_closed_loop_inputs(engine, elements, reasons) if closed_loop
           else _stored_inputs(engine, elements, where, reasons, progress_factory))
    target = "prediction" if closed_loop else "spectrum"
    explicit = None
    if model not in (None, "", "latest"):
        with engine.connect() as conn:
            explicit = registry._entry(conn, model)
    # group rows by the model each task would use
    groups: dict[tuple, list[int]] = defaultdict(list)  # (task, model id) -> row indices
    entries: dict[int, Any] = {}
    choice_cache: dict[tuple, Any] = {}
    listing = None  # the registry, read once
    for i in range(len(inp.ref)):
        have_x, have_e = inp.xanes[i] is not None, inp.exafs[i] is not None
        for task in INVERSE_TASKS:
            if explicit is not None and explicit.task != task:
                continue
            ck = (task, inp.element[i], inp.edge[i], have_x, have_e, inp.measured[i])
            if ck not in choice_cache:
                if listing is None:
                    listing = registry.list_models(engine)
                choice_cache[ck] = explicit if explicit is not None else find_model(
                    engine, task, inp.element[i], inp.edge[i], have_xanes=have_x, have_exafs=have_e,
                    measured=inp.measured[i], entries=listing)
            e = choice_cache[ck]
            res.targets += 1
            if e is None:
                reasons[f"no {task} model for {inp.element[i]} {inp.edge[i]} {inp.kind[i]}"] += 1
                continue
            entries[e.id] = e
            groups[(task, e.id)].append(i)
    res.models = sorted(e.name for e in entries.values())
    with engine.connect() as conn:
        have = _existing_keys(conn, list(entries))
    total = sum(len(v) for v in groups.values())

    def write(cols: dict) -> int:  # one transaction a batch: a stopped run keeps whole batches only
        rows = store.columns_to_arrow(cols, "predictions")
        with engine.begin() as conn:
            return store.bulk_insert(conn, "predictions", rows)

    pending: list = []  # (future of the batch being written, its size)

    def settle() -> None:
        fut, n_rows = pending.pop()
        res.written += fut.result()
        if on_commit:
            on_commit(f"{res.task} {res.written}")
        advance(n_rows)

    # Why a writer thread: a batch's INSERT + COMMIT (a fifth of the run) then overlaps the next
    # batch's featurization and models (DuckDB / psycopg release the GIL). One writer, batches in
    # order and at most one in flight, so memory stays bounded and DuckDB still has one writer.
    with _progress(progress_factory, total, "inverse predictions") as advance, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="xastruct-write") as writer:
        for (task, mid), idx in groups.items():
            e = entries[mid]
            todo = [i for i in idx if f"{mid}:{target}:{inp.ref[i]}" not in have]
            res.already += len(idx) - len(todo)
            advance(len(idx) - len(todo))
            if not todo:
                continue
            members = [load_member(d, device=device) for d in e.member_dirs()]
            if not members:
                reasons[f"model {e.name}: artifact holds no members"] += len(todo)
                continue
            cfg = e.config or {}
            variant, norm = VARIANT_OF[e.kind], cfg.get("input_norm")
            for start in range(0, len(todo), batch_size):
                part = todo[start:start + batch_size]
                table, _ = without_unseen_kinds(_table(inp, part), cfg)
                n = len(part)
                # one column per field (no per-row dicts): this loop runs for every screened spectrum
                cols: dict[str, Any] = dict(
                    model_id=np.full(n, mid, dtype=np.int64), task=[task] * n, target=[target] * n,
                    element=[inp.element[i] for i in part], edge=[inp.edge[i] for i in part],
                    kind=[inp.kind[i] for i in part], structure_id=[inp.structure_id[i] for i in part],
                    site_id=[inp.site_id[i] for i in part],
                    spectrum_id=[None] * n if closed_loop else [inp.ref[i] for i in part],
                    input_prediction_id=[inp.ref[i] for i in part] if closed_loop else [None] * n,
                    key=[f"{mid}:{target}:{inp.ref[i]}" for i in part], run_id=[run_id] * n,
                )  # fmt: skip
                if task == "mnnd":
                    ms, vs = zip(*(_predict_mnnd(m, table, variant, norm) for m in members))
                    ms, vs = np.asarray(ms), np.asarray(vs)
                    cols["value"] = ms.mean(axis=0).astype(float)
                    cols["uncertainty"] = np.sqrt(np.maximum(vs.mean(axis=0) + ms.var(axis=0), 0.0))
                else:
                    classes = list(cfg.get("classes") or [])
                    proba = np.mean([_predict_classifier(m, table, variant, classes, norm, member_temperature(cfg, k))
                                     for k, m in enumerate(members)], axis=0)
                    best = proba.argmax(axis=1)
                    cols["label"] = [classes[b] for b in best.tolist()]
                    # classes whose probability rounds to 0 are left out (a forest for all absorbers has
                    # ~80 neighbour classes, most at exactly 0 for a given spectrum)
                    cols["probabilities"] = _probability_json(np.round(proba, 4), classes)
                    unc = 1.0 - proba[np.arange(n), best]
                    if task == "neighbor":  # the row of the periodic table, which spectra tell better
                        per, per_p = period_argmax(proba, classes)
                        cols["neighbor_period"] = [int(k) if k else None for k in per.tolist()]
                        cols["period_probability"] = [float(v) if k else None for k, v in zip(per.tolist(), per_p.tolist())]
                    if task == "cn":
                        vals = np.array([float(c) if c.isdigit() else np.nan for c in classes])
                        ok = np.isfinite(vals)
                        cols["value"] = [float(vals[b]) if ok[b] else None for b in best.tolist()]
                        if ok.any():  # spread of the CN distribution over the numeric classes
                            pm = proba[:, ok] / np.maximum(proba[:, ok].sum(axis=1, keepdims=True), 1e-12)
                            mu_cn = pm @ vals[ok]
                            unc = np.sqrt(np.maximum((pm * (vals[ok][None, :] - mu_cn[:, None]) ** 2).sum(axis=1), 0.0))
                    cols["uncertainty"] = unc.astype(float)
                if pending:
                    settle()
                pending.append((writer.submit(write, cols), len(part)))
        if pending:
            settle()
    res.skipped = sum(reasons.values())
    res.seconds = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------------- entry point


def screen(
    engine: sa.Engine,
    *,
    elements: Sequence[str],
    task: str = "all",
    model: str | int | None = "latest",
    where: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    closed_loop: bool = False,
    progress_factory: Callable | None = None,
    on_commit: Callable[[str], None] | None = None,
) -> list[ScreenResult]:
    """Run forward and/or inverse screening (and the closed loop) for `elements`; one runs row."""
    from pymatgen.core import Element

    if task not in TASKS:
        raise InputError("--task", f"unknown task {task!r}", f"use one of {', '.join(TASKS)}")
    els = []
    for el in elements:
        el = el.strip()
        if not el:
            continue
        try:
            Element(el)
        except ValueError:
            raise InputError("--elements", f"{el!r} is not an element symbol", "use symbols like Fe,Co") from None
        els.append(el)
    if not els:
        raise InputError("--elements", "no element given", "e.g. --elements Fe,Co")
    if where:
        _check_where(engine, where, task)
    out: list[ScreenResult] = []
    args = dict(elements=els, task=task, model=model, where=where, closed_loop=closed_loop)
    with store.run_record(engine, "screen", args) as summary:
        if task in ("forward", "all"):
            out.append(screen_forward(engine, elements=els, model=model if task == "forward" else "latest",
                                      where=where, batch_size=batch_size or 64, workers=workers, device=device,
                                      run_id=summary["run_id"], progress_factory=progress_factory,
                                      on_commit=on_commit))
        if task in ("inverse", "all"):
            out.append(screen_inverse(engine, elements=els, model=model if task == "inverse" else "latest",
                                      where=where, batch_size=batch_size or 4096, device=device,
                                      run_id=summary["run_id"], progress_factory=progress_factory,
                                      on_commit=on_commit))
        if closed_loop:
            out.append(screen_inverse(engine, elements=els, model="latest", device=device, closed_loop=True,
                                      run_id=summary["run_id"], progress_factory=progress_factory,
                                      on_commit=on_commit))
        summary["results"] = [r.as_dict() for r in out]
    return out


def _check_where(engine, where: str, task: str) -> None:
    """Fail early, naming the filter, when --where is not valid SQL for the targets screened."""
    probes = []
    if task in ("forward", "all"):
        probes.append(("forward (structures, sites)", _FORWARD_FROM))
    if task in ("inverse", "all"):
        probes.append(("inverse (spectra, structures, sites)", _INVERSE_FROM))
    with engine.connect() as conn:
        for name, frm in probes:
            try:
                conn.execute(_where(sa.select(sa.literal(1)).select_from(frm), where).limit(1)).all()
            except sa.exc.DBAPIError as exc:
                raise InputError(
                    "--where", f"not a valid SQL filter for {name}: {str(exc.orig).splitlines()[0]}",
                    "write a boolean SQL expression over those tables' columns, e.g. "
                    "--where \"structures.source = 'builtin'\" (a spectra column only works with --task inverse)",
                ) from None
