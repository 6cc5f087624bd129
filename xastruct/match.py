"""Spectrum matching: rank stored structures by how well their spectra match a query spectrum.

Query
    A file (XDI, FEFF xmu.dat, two columns) read by :func:`xastruct.readers.read_spectrum_file`
    and edge-step normalized by :func:`xastruct.readers.normalize` -- the very function stored
    spectra went through, so a stored spectrum written out and matched back scores 1 -- or a stored
    spectrum (``spectrum:<id>``), or arrays (:func:`query_from_arrays`).

Candidates (:func:`load_candidates`)
    ``reference``: stored XANES spectra of the absorber/edge that belong to a structure.
    ``predicted``: forward-model spectra (``latest_predictions``: task forward, kind XANES, target
    site; the newest model's row per site). Both are put on the forward models' grid
    (:data:`GRID` = ``xastruct.train.grid_spec(..., "XANES")``: normalized mu on E - E0,
    -3.5..66.5 eV, 0.5 eV), so one float32 matrix holds every candidate. Loaded through Arrow (DuckDB) and resampled in one
    vectorized :func:`numpy.interp` call; cached in-process per (store, element, edge, against,
    sources) until the underlying rows change.

Energy axis and shift
    Everything is compared on E - E0. E0 of FEFF spectra (stored, predicted, or a FEFF query file)
    is FEFF's Fermi level; E0 of a measured query is the edge inflection point (larch find_e0),
    which is not the same point of the edge (for the xaslib Cu spectra the best shifts against
    FEFF 9 run from about -1 eV for Cu metal to +6..+9 eV for Cu(II) oxides), and calibrations
    differ too. So a
    rigid shift ``s`` is searched in ``[-shift_range, +shift_range]`` (0.5 eV steps, refined by a
    parabola through the best step and its neighbours): the query's ``E - E0 + s`` is laid on the
    candidate's ``E - E0``. **Sign: ``shift`` is the eV added to the query's energies** (as the
    ``matches.shift`` column says); a query whose features sit 4 eV too high is matched with
    ``shift = -4``.

Window
    One window for every shift and candidate: the grid points the query covers at every shift
    tried (``[q_min + R, q_max - R]`` clipped to the grid). A window that changed with the shift
    would let the search pick the shift that drops the worst-matching points. It must span at
    least :data:`MIN_WINDOW_EV`, else the query is too short (InputError naming the fix).

Metrics (over the window; the best over shifts is the score)
    ``cosine`` of the normalized mu; ``pearson`` (cosine of mean-centred spectra: insensitive to an
    offset and a scale, e.g. an imperfect edge step); ``spearman`` (pearson of ranks, ties
    averaged). Each is one (N x n) @ (n x K) matrix product for N candidates and K shifts.

Results go to the ``matches`` table (top ``top`` candidates; key = hash of the query content,
element, edge, metric, against, shift range and candidate, so a rerun inserts nothing twice), in
one transaction.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from . import store
from .errors import InputError
from .readers import check_edge, check_element, normalize, read_spectrum_file

__all__ = [
    "AGAINST",
    "METRICS",
    "Candidates",
    "MatchResult",
    "compare",
    "compare_file",
    "Query",
    "load_candidates",
    "match",
    "query_from_arrays",
    "query_from_spectrum",
    "read_query",
    "score",
    "write_matches",
    "write_results",
]

METRICS = ("cosine", "pearson", "spearman")
AGAINST = ("reference", "predicted", "all")
DEFAULT_SHIFT_RANGE = 10.0
#: shift search step (eV); the grid step, since finer shifts only re-interpolate the same points
SHIFT_STEP = 0.5
#: the comparison window must cover at least this much of E - E0 (eV): edge + white line + a wiggle
MIN_WINDOW_EV = 25.0
#: candidate rows scored per matrix product (bounds memory at ~CHUNK x K floats)
CHUNK = 65536
_SPECTRUM_REF = re.compile(r"^spectrum:(\d+)$")


# ------------------------------------------------------------------------------------------ query


@dataclass(kw_only=True)
class Query:
    """A normalized query spectrum on its own E - E0 axis."""

    name: str  # file path, or spectrum:<id>
    sha256: str  # of the file bytes / the data: the identity used in the matches key
    element: str
    edge: str
    x: np.ndarray  # E - E0, eV, increasing
    mu: np.ndarray  # edge-step normalized mu
    e0: float  # absolute E0, eV
    e0_definition: str
    spectrum_id: int | None = None  # stored query: excluded from its own candidates
    calculated: bool = False  # a FEFF / MP spectrum: E0 is FEFF's Fermi level, as on the model grid


def _calculated(source: str | None) -> bool:
    # theory spectra have a zero baseline by construction (see readers.normalize)
    return bool(source) and (source.startswith("feff") or source == "mp")


def query_from_arrays(
    *, energies, mu, element: str, edge: str = "K", e0: float | None = None, calculated: bool = False,
    name: str = "spectrum", sha256: str | None = None, spectrum_id: int | None = None,
) -> Query:  # fmt: skip
    """A query from raw absolute energies (eV) and un-normalized mu, normalized like stored spectra."""
    element, edge = check_element(name, element), check_edge(name, edge)
    e = np.asarray(energies, dtype=float)
    m = np.asarray(mu, dtype=float)
    if m.size and not np.isfinite(m).any():
        raise InputError(name, "mu is NaN/inf everywhere", "check the mu column (or the detector channels) of the file")
    e0n, _, norm = normalize(e, m, e0=e0, source=name, calculated=calculated)
    if sha256 is None:
        sha256 = hashlib.sha256(e.tobytes() + m.tobytes()).hexdigest()
    how = "given" if e0 is not None else ("steepest point" if calculated else "edge inflection (larch find_e0)")
    return Query(name=name, sha256=sha256, element=element, edge=edge, x=e - e0n, mu=np.asarray(norm, float),
                 e0=float(e0n), e0_definition=how, spectrum_id=spectrum_id, calculated=calculated)  # fmt: skip


def read_query(path, *, element: str, edge: str | None = None, e0: float | None = None) -> Query:
    """Read and normalize a spectrum file for matching.

    *edge* None: the file's own edge (XDI/FEFF header), else K. *e0* (absolute eV) replaces the
    file's own E0 as the origin of the E - E0 axis; the normalization is left as the file's E0 gave it.
    """
    src = str(path)
    if not Path(src).is_file():
        raise InputError(src, "no such file", "give the path of an XDI, FEFF xmu.dat or two-column spectrum file")
    element = check_element(src, element)
    edge = check_edge(src, edge) if edge else None
    try:
        rec = read_spectrum_file(src, absorber=element, edge=edge)
    except InputError as exc:
        # XDI/FEFF headers name their absorber and edge: say which to ask for instead
        try:
            own = read_spectrum_file(src)
        except InputError:
            raise exc from None
        if own.absorber != element or (edge and own.edge != edge):
            raise InputError(
                src, f"the file holds a {own.absorber} {own.edge} spectrum, not {element} {edge or ''}".rstrip(),
                f"match it with --element {own.absorber} --edge {own.edge}, or pick the {element} file",
            ) from None  # fmt: skip
        raise
    if rec.mu_norm is None:
        why = rec.metadata.get("normalize_error") or "normalization failed"
        raise InputError(src, f"cannot normalize the spectrum: {why}",
                         "check that the file holds mu(E) across the edge, with points below and >= 20 eV above it")
    how = rec.metadata.get("e0_definition") or ("FEFF Fermi level" if _calculated(rec.source) else "edge inflection")
    sha, origin = rec.sha256, float(rec.e0)
    if e0 is not None:
        # only the axis origin moves: the edge step stays the one the file's own E0 gave
        origin, how = float(e0), f"given (the file's own: {rec.e0:.2f} eV, {how})"
        sha = hashlib.sha256(f"{rec.sha256}|e0={origin!r}".encode()).hexdigest()
    return Query(name=src, sha256=sha, element=rec.absorber, edge=rec.edge, x=rec.energies - origin,
                 mu=np.asarray(rec.mu_norm, float), e0=origin, e0_definition=how,
                 calculated=_calculated(rec.source) and e0 is None)  # fmt: skip


def query_from_spectrum(engine: sa.Engine, spectrum_id: int, *, e0: float | None = None) -> Query:
    """A stored spectrum as the query (``spectrum:<id>``): its raw mu, normalized again."""
    from .schema import spectra

    name = f"spectrum:{int(spectrum_id)}"
    with engine.connect() as conn:
        r = conn.execute(sa.select(spectra).where(spectra.c.id == int(spectrum_id))).mappings().first()
    if r is None:
        raise InputError(name, "no such spectrum in the store", "list ids with: xastruct sql \"SELECT id, absorber, "
                         "edge, kind, source FROM spectra\"")  # fmt: skip
    raw = r["mu_raw"] if r["mu_raw"] is not None else r["mu"]
    calc = _calculated(r["source"])
    q = query_from_arrays(energies=r["energies"], mu=raw, element=r["absorber"], edge=r["edge"],
                          e0=r["e0"] if calc else None, calculated=calc, name=name, sha256=f"spectrum:{r['key']}",
                          spectrum_id=int(r["id"]))  # fmt: skip
    if calc:
        q.e0_definition = f"stored E0 ({r['source']} Fermi level)"
    if e0 is not None:  # as for files: only the axis origin moves
        q.x = q.x + q.e0 - float(e0)
        q.e0, q.e0_definition = float(e0), f"given (own: {q.e0:.2f} eV, {q.e0_definition})"
        q.sha256 = f"{q.sha256}|e0={float(e0)!r}"
    return q


# ------------------------------------------------------------------------------------- candidates


@dataclass(kw_only=True)
class Candidates:
    """Candidate spectra of one element/edge on a common grid (row i = one candidate)."""

    element: str
    edge: str
    grid: dict
    x: np.ndarray  # grid points, E - E0 (eV)
    y: np.ndarray  # (N, G) float32 normalized mu
    candidate: np.ndarray  # (N,) "reference" | "predicted"
    spectrum_id: np.ndarray  # (N,) int64, -1 where none
    prediction_id: np.ndarray
    structure_id: np.ndarray
    site_id: np.ndarray
    site_index: np.ndarray
    formula: np.ndarray  # (N,) object
    source_id: np.ndarray  # (N,) object
    origin: np.ndarray  # (N,) object: spectrum source (feff9, ...) or model name
    skipped: dict = field(default_factory=dict)
    state: str = ""  # fingerprint of the candidate rows (count, max ids): part of the matches key
    _prepared: dict = field(default_factory=dict, repr=False)

    @property
    def n(self) -> int:
        return int(self.y.shape[0])

    def subset(self, mask: np.ndarray) -> Candidates:
        kw = {f: getattr(self, f) for f in ("element", "edge", "grid", "x", "skipped", "state")}
        for f in ("y", "candidate", "spectrum_id", "prediction_id", "structure_id", "site_id", "site_index",
                  "formula", "source_id", "origin"):
            kw[f] = getattr(self, f)[mask]
        return Candidates(**kw)

    @classmethod
    def concat(cls, parts: Sequence[Candidates]) -> Candidates:
        first = parts[0]
        kw = {f: getattr(first, f) for f in ("element", "edge", "grid", "x")}
        kw["skipped"] = {f"{k}": v for p in parts for k, v in p.skipped.items()}
        for f in ("y", "candidate", "spectrum_id", "prediction_id", "structure_id", "site_id", "site_index",
                  "formula", "source_id", "origin"):
            kw[f] = np.concatenate([getattr(p, f) for p in parts])
        return cls(**kw)


_CACHE: dict[tuple, tuple[tuple, Candidates]] = {}

_REFERENCE_SQL = """
SELECT sp.id AS spectrum_id, sp.structure_id, sp.site_id, si.site_index, sp.source AS origin,
       st.formula, st.source_id, sp.e0, sp.energies, sp.mu
FROM spectra sp
JOIN structures st ON st.id = sp.structure_id
LEFT JOIN sites si ON si.id = sp.site_id
WHERE sp.absorber = :element AND sp.edge = :edge AND sp.kind = 'XANES' AND sp.normalized
  AND sp.e0 IS NOT NULL {extra}
ORDER BY sp.id
"""

# latest_predictions: only the newest model's row per site (a retrained model supersedes the old).
# The view picks the ids; the arrays are joined on afterwards, because carrying them through the
# view's window function costs 3x the time (100k rows: 9 s vs 3 s on DuckDB). Only the length and
# ends of `energies` come back: predictions on the matching grid need nothing more.
_PREDICTED_SQL = """
SELECT lp.prediction_id, lp.structure_id, lp.site_id, lp.site_index, lp.model_name AS origin, lp.formula,
       lp.source_id, array_length(p.energies, 1) AS n_e, p.energies[1] AS e_first,
       p.energies[array_length(p.energies, 1)] AS e_last, {energies} p.mu
FROM (SELECT prediction_id, structure_id, site_id, site_index, model_name, formula, source_id
      FROM latest_predictions
      WHERE task = 'forward' AND kind = 'XANES' AND target = 'site' AND element = :element AND edge = :edge) lp
JOIN predictions p ON p.id = lp.prediction_id
WHERE p.mu IS NOT NULL AND p.energies IS NOT NULL
ORDER BY lp.prediction_id
"""


def _state(conn: sa.Connection, against: str, element: str, edge: str) -> tuple:
    """Cheap fingerprint of the candidate rows: the cache is reused while it is unchanged."""
    out = []
    if against in ("reference", "all"):
        out.append(tuple(conn.execute(sa.text(
            "SELECT count(*), max(id) FROM spectra WHERE absorber = :e AND edge = :d AND kind = 'XANES'"),
            {"e": element, "d": edge}).one()))  # fmt: skip
    if against in ("predicted", "all"):
        out.append(tuple(conn.execute(sa.text(
            "SELECT count(*), max(id), max(model_id) FROM predictions WHERE task = 'forward' AND element = :e "
            "AND edge = :d"), {"e": element, "d": edge}).one()))  # fmt: skip
    return tuple(out)


def resample_rows(offsets, x, y, grid_x: np.ndarray, tol: float, *, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Variable-length rows (x increasing within a row) on one grid, all rows in one np.interp.

    Rows are laid end to end on one axis (row r offset by r * span) so a single interp serves all
    of them; grid points beyond a row's ends take its end value (as train.resample does) and rows
    missing the grid by more than *tol* are dropped. Returns (kept mask, (n_kept, G) values).
    """
    n = len(offsets) - 1
    lengths = np.diff(offsets)
    ok = lengths >= 2
    if not ok.any():
        return ok, np.zeros((0, grid_x.size), dtype)
    row_of = np.repeat(np.arange(n), lengths)
    good_pts = np.isfinite(x) & np.isfinite(y)
    inc = np.ones_like(good_pts)
    inc[1:] = np.diff(x) > 0
    inc[offsets[:-1][lengths > 0]] = True  # row starts compare with the previous row: ignore
    bad = np.bincount(row_of, weights=(~(good_pts & inc)).astype(float), minlength=n) > 0
    ok &= ~bad
    safe = np.where(lengths > 0, offsets[:-1], 0)
    lo = x[np.minimum(safe, len(x) - 1)] if len(x) else np.zeros(n)
    hi = x[np.maximum(offsets[1:] - 1, 0)] if len(x) else np.zeros(n)
    ok &= (lo <= grid_x[0] + tol) & (hi >= grid_x[-1] - tol)
    if not ok.any():
        return ok, np.zeros((0, grid_x.size), dtype)
    keep_pts = ok[row_of]
    xs, ys, rows = x[keep_pts], y[keep_pts], row_of[keep_pts]
    span = float(np.max(hi[ok]) - np.min(lo[ok]) + (grid_x[-1] - grid_x[0]) + 10.0)
    kept = np.flatnonzero(ok)
    gx = np.clip(grid_x[None, :], lo[kept, None], hi[kept, None]) + (kept * span)[:, None]
    out = np.interp(gx.ravel(), xs + rows * span, ys).reshape(len(kept), grid_x.size)
    return ok, out.astype(dtype)


def _meta(tbl, n: int, kind: str, mask: np.ndarray) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    def ints(name):
        if name not in tbl.column_names:
            return np.full(n, -1, np.int64)
        col = pc.fill_null(tbl.column(name).cast(pa.int64()), -1)
        return np.asarray(col.to_numpy(), dtype=np.int64)

    def objs(name):
        return np.asarray(tbl.column(name).to_pylist(), dtype=object)

    return dict(
        candidate=np.full(n, kind, dtype=object)[mask],
        spectrum_id=ints("spectrum_id")[mask],
        prediction_id=ints("prediction_id")[mask],
        structure_id=ints("structure_id")[mask],
        site_id=ints("site_id")[mask],
        site_index=ints("site_index")[mask],
        formula=objs("formula")[mask],
        source_id=objs("source_id")[mask],
        origin=objs("origin")[mask],
    )


def _load(conn, kind: str, element: str, edge: str, grid: dict, x: np.ndarray, sources) -> Candidates:
    tol = MAX_EXTRAPOLATE_EV
    skipped: dict[str, int] = {}
    if kind == "reference":
        extra, params = "", {"element": element, "edge": edge}
        if sources:
            extra = "AND sp.source IN (" + ", ".join(f":src{i}" for i in range(len(sources))) + ")"
            params.update({f"src{i}": s for i, s in enumerate(sources)})
        tbl = store.fetch_arrow(conn, _REFERENCE_SQL.format(extra=extra), params)
        n = tbl.num_rows
        offsets, e = store.list_column(tbl, "energies")
        moff, mu = store.list_column(tbl, "mu")
        e0 = tbl.column("e0").to_numpy(zero_copy_only=False).astype(float) if n else np.zeros(0)
        if not np.array_equal(offsets, moff):
            raise InputError(f"{element} {edge} spectra", "energies and mu arrays differ in length in some rows",
                             "re-ingest the affected spectra")  # fmt: skip
        rel = e - np.repeat(e0, np.diff(offsets))
        ok, y = resample_rows(offsets, rel, mu, x, tol)
        if n - ok.sum():
            skipped["reference spectra not covering the grid"] = int(n - ok.sum())
    else:
        params = {"element": element, "edge": edge}
        tbl = store.fetch_arrow(conn, _PREDICTED_SQL.format(energies=""), params)
        n = tbl.num_rows
        moff, mu = store.list_column(tbl, "mu")
        col = {c: tbl.column(c).to_numpy(zero_copy_only=False).astype(float) for c in ("n_e", "e_first", "e_last")}
        same_grid = (n == 0 or (np.all(col["n_e"] == x.size) and np.all(np.diff(moff) == x.size)
                                and np.allclose(col["e_first"], x[0], atol=1e-6)
                                and np.allclose(col["e_last"], x[-1], atol=1e-6)))  # fmt: skip
        if same_grid:  # written on this very grid (regular: its ends and length fix it)
            ok = np.ones(n, bool)
            y = mu.reshape(n, x.size).astype(np.float32)
        else:  # another grid (a future model): fetch the energies and resample like stored spectra
            tbl = store.fetch_arrow(conn, _PREDICTED_SQL.format(energies="p.energies,"), params)
            n = tbl.num_rows
            offsets, e = store.list_column(tbl, "energies")
            moff, mu = store.list_column(tbl, "mu")
            if not np.array_equal(offsets, moff):
                raise InputError(f"{element} {edge} predictions", "energies and mu differ in length in some rows",
                                 "rerun `xastruct screen` with a model whose rows are whole")  # fmt: skip
            ok, y = resample_rows(offsets, e, mu, x, tol)
        if n - ok.sum():
            skipped["predictions not covering the grid"] = int(n - ok.sum())
    meta = _meta(tbl, n, kind, ok)
    return Candidates(element=element, edge=edge, grid=grid, x=x, y=y, skipped=skipped, **meta)


#: The matching grid: the forward models' XANES grid (xastruct.train.GRIDS; a test keeps the two
#: equal), so predicted spectra need no resampling. Kept here because importing xastruct.train
#: loads torch (~6 s), which a CLI lookup should not pay.
GRID = {"quantity": "mu_norm", "axis": "E-E0", "unit": "eV", "start": -3.5, "stop": 66.5, "step": 0.5,
        "max_extrapolate": 1.5, "n": 141}  # fmt: skip


#: How far (eV) a stored spectrum may fall short of the grid ends; the grid points beyond take its
#: end value (FEFF10 XANES from `xastruct simulate` starts at E0 - 2.44 eV; the foot is flat).
MAX_EXTRAPOLATE_EV = GRID["max_extrapolate"]


def grid_points(grid: dict = GRID) -> np.ndarray:
    return grid["start"] + grid["step"] * np.arange(grid["n"])


def load_candidates(
    engine: sa.Engine, *, element: str, edge: str = "K", against: str = "all", sources: Sequence[str] | None = None,
    cache: bool = True,
) -> Candidates:  # fmt: skip
    """Reference and/or predicted XANES candidates of *element*/*edge* on the forward grid.

    *sources* restricts reference candidates to those spectrum sources (e.g. ``["feff9"]``).
    """
    if against not in AGAINST:
        raise InputError("--against", f"unknown candidate set {against!r}", f"use one of {', '.join(AGAINST)}")
    element, edge = check_element("--element", element), check_edge("--edge", edge)
    grid = dict(GRID)
    x = grid_points(grid).astype(float)
    key = (engine.url.render_as_string(hide_password=False), element, edge, against, tuple(sources or ()))
    with engine.connect() as conn:
        state = _state(conn, against, element, edge)
        if cache and key in _CACHE and _CACHE[key][0] == state:
            return _CACHE[key][1]
        kinds = ["reference", "predicted"] if against == "all" else [against]
        parts = [_load(conn, k, element, edge, grid, x, sources) for k in kinds]
    cands = Candidates.concat(parts)
    cands.state = json.dumps([list(map(str, t)) for t in state] + [sorted(sources or ())])
    if cache:
        _CACHE[key] = (state, cands)
    return cands


def clear_cache() -> None:
    _CACHE.clear()


# ---------------------------------------------------------------------------------------- scoring


def shifts_for(shift_range: float, step: float = SHIFT_STEP) -> np.ndarray:
    """Symmetric shifts -R..R, step <= *step*, always including 0."""
    if not (math.isfinite(shift_range) and shift_range >= 0):
        raise InputError("--shift-range", f"must be a non-negative number of eV, got {shift_range}")
    n = int(math.ceil(shift_range / step - 1e-9))
    return np.linspace(-shift_range, shift_range, 2 * n + 1) if n else np.zeros(1)


def window(grid_x: np.ndarray, query: Query, shift_range: float) -> np.ndarray:
    """Grid points the query covers at every shift tried (module doc: Window)."""
    lo, hi = float(query.x[0]) + shift_range, float(query.x[-1]) - shift_range
    return (grid_x >= lo - 1e-9) & (grid_x <= hi + 1e-9)


def _rank_rows(a: np.ndarray) -> np.ndarray:
    """Row-wise ranks (1-based; ties get their average rank, as scipy's rankdata), vectorized.

    One argsort gives ordinal ranks; only rows that contain ties (e.g. the flat extrapolated ends
    of a resampled spectrum) then get each run of equal values set to its mean rank.
    """
    n, m = a.shape
    order = np.argsort(a, axis=1)
    ranks = np.empty((n, m), np.float32)
    flat = (order + (np.arange(n) * m)[:, None]).ravel()
    ranks.ravel()[flat] = np.tile(np.arange(1, m + 1, dtype=np.float32), n)
    v = np.take_along_axis(a, order, axis=1)
    tie = v[:, 1:] == v[:, :-1]
    rows = np.flatnonzero(tie.any(axis=1))
    if rows.size:
        o, t = order[rows], tie[rows]
        pos = np.broadcast_to(np.arange(m), t.shape[:1] + (m,))
        new = np.ones((len(rows), m), bool)
        new[:, 1:] = ~t
        first = np.maximum.accumulate(np.where(new, pos, 0), axis=1)
        end = np.ones((len(rows), m), bool)
        end[:, :-1] = ~t
        last = np.minimum.accumulate(np.where(end, pos, m - 1)[:, ::-1], axis=1)[:, ::-1]
        sub = np.empty((len(rows), m), np.float32)
        np.put_along_axis(sub, o, (0.5 * (first + last) + 1).astype(np.float32), axis=1)
        ranks[rows] = sub
    return ranks


def _standardize(a: np.ndarray, metric: str) -> np.ndarray:
    """Rows scaled so that a plain dot product is the metric (cosine / pearson / spearman)."""
    a = np.asarray(a, dtype=np.float32)
    if metric == "spearman":
        a = _rank_rows(a)
    if metric in ("pearson", "spearman"):
        a = a - a.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    # constant rows (zero variance) have no direction: they score 0, not NaN
    return np.divide(a, norm, out=np.zeros_like(a), where=norm > 0)


def _prepared(cands: Candidates, metric: str, w: np.ndarray) -> np.ndarray:
    key = (metric, w.tobytes())
    if key not in cands._prepared:
        if len(cands._prepared) >= 8:  # a few windows per session; drop the oldest
            cands._prepared.pop(next(iter(cands._prepared)))
        cands._prepared[key] = _standardize(cands.y[:, w], metric)
    return cands._prepared[key]


def score(
    cands: Candidates, query: Query, *, metric: str = "cosine", shift_range: float = DEFAULT_SHIFT_RANGE,
    shift_step: float = SHIFT_STEP,
) -> tuple[np.ndarray, np.ndarray, dict]:  # fmt: skip
    """Best score and shift (eV added to the query energies) of every candidate, plus a summary
    (window, shifts tried, which candidates found their best at the edge of the shift range)."""
    if metric not in METRICS:
        raise InputError("--metric", f"unknown metric {metric!r}", f"use one of {', '.join(METRICS)}")
    shifts = shifts_for(float(shift_range), shift_step)
    x = cands.x
    w = window(x, query, float(shift_range))
    span = float(x[w][-1] - x[w][0]) if w.any() else 0.0
    if span < MIN_WINDOW_EV:
        q0, q1 = float(query.x[0]), float(query.x[-1])
        raise InputError(
            query.name,
            f"too short an energy range to compare: the spectrum covers E - E0 = {q0:.1f}..{q1:.1f} eV, which "
            f"with a +-{shift_range:g} eV shift search leaves {span:.1f} eV of the {x[0]:g}..{x[-1]:g} eV "
            f"candidate grid (need >= {MIN_WINDOW_EV:g} eV)",
            f"use a scan from <= E0 {x[0] + shift_range:+g} eV to >= E0 {x[0] + MIN_WINDOW_EV + shift_range:+g} eV, "
            "or a smaller --shift-range",
        )  # fmt: skip
    xw = x[w]
    # row k: the query at candidate-axis points xw with shift s_k, i.e. the query's own x = xw - s_k
    q = np.interp(xw[None, :] - shifts[:, None], query.x, query.mu)
    qs = _standardize(q, metric)  # (K, n)
    if not np.any(np.linalg.norm(qs, axis=1) > 0):
        raise InputError(query.name, f"the normalized spectrum is constant over the comparison window "
                         f"(E - E0 = {xw[0]:g}..{xw[-1]:g} eV)", "check the file holds an absorption edge")  # fmt: skip
    c = _prepared(cands, metric, w)
    n = cands.n
    best = np.empty(n, np.float64)
    shift = np.empty(n, np.float64)
    at_limit = np.zeros(n, bool)
    qt = np.ascontiguousarray(qs.T)
    for start in range(0, n, CHUNK):
        s = c[start : start + CHUNK] @ qt  # (chunk, K): every candidate at every shift
        k = np.argmax(s, axis=1)
        rows = np.arange(len(k))
        b = s[rows, k]
        # parabola through the best shift and its neighbours: sub-step shift
        inner = (k > 0) & (k < len(shifts) - 1)
        km, kp = np.clip(k - 1, 0, None), np.clip(k + 1, None, len(shifts) - 1)
        sm, sp_ = s[rows, km], s[rows, kp]
        den = sm - 2 * b + sp_
        delta = np.where(inner & (den < 0), 0.5 * (sm - sp_) / np.where(den < 0, den, -1.0), 0.0)
        step = shifts[1] - shifts[0] if len(shifts) > 1 else 0.0
        best[start : start + len(k)] = b
        shift[start : start + len(k)] = shifts[k] + np.clip(delta, -0.5, 0.5) * step
        at_limit[start : start + len(k)] = (len(shifts) > 1) & ~inner
    info = {"window": [float(xw[0]), float(xw[-1])], "n_points": int(w.sum()), "n_shifts": int(len(shifts)),
            "at_limit": at_limit}  # fmt: skip
    return best, shift, info


# ---------------------------------------------------------------------------------------- results


@dataclass(kw_only=True)
class MatchResult:
    query: Query
    metric: str
    against: str
    shift_range: float
    n_candidates: int
    rows: list[dict]  # top candidates, best first
    window: list[float]
    seconds: dict
    skipped: dict
    inserted: int = 0
    candidate_state: str = ""

    def as_dict(self) -> dict:
        q = self.query
        return {
            "query": q.name, "query_sha256": q.sha256, "element": q.element, "edge": q.edge, "e0": q.e0,
            "e0_definition": q.e0_definition, "metric": self.metric, "against": self.against,
            "shift_range": self.shift_range, "shift_sign": "eV added to the query energies",
            "window_e_minus_e0": self.window, "n_candidates": self.n_candidates, "skipped": self.skipped,
            "seconds": self.seconds, "inserted": self.inserted, "results": self.rows,
        }  # fmt: skip


#: shift search (eV each way) of :func:`compare` for a calculated query: its E0 is FEFF's Fermi level
#: like the grid's, so only SCF-level differences remain, and a narrow search keeps the edge itself
#: in the comparison window (the window loses the search range at each end)
CALCULATED_SHIFT_RANGE = 3.0
#: Gaussian FWHMs (eV) tried by ``compare(..., broaden="auto")``
BROADEN_FWHM = tuple(float(f) for f in np.arange(0.0, 16.5, 1.0))


def gaussian_broaden(y: np.ndarray, x: np.ndarray, fwhm: float) -> np.ndarray:
    """Rows of *y* on the uniform grid *x* convolved with a unit-area Gaussian of *fwhm* eV (ends held
    flat): the experimental broadening (resolution, lifetime beyond FEFF's, disorder) a calculated
    spectrum lacks next to a measured one."""
    y = np.atleast_2d(np.asarray(y, dtype=float))
    if fwhm <= 0:
        return y
    step = float(x[1] - x[0])
    sd = fwhm / 2.3548 / step
    k = np.arange(-int(4 * sd) - 1, int(4 * sd) + 2)
    g = np.exp(-0.5 * (k / sd) ** 2)
    g /= g.sum()
    pad = np.pad(y, ((0, 0), (len(k) // 2, len(k) // 2)), mode="edge")
    return np.stack([np.convolve(r, g, mode="valid") for r in pad])


def compare(query: Query, x: np.ndarray, spectra: np.ndarray, *, shift_range: float | None = None,
            labels: Sequence[str] | None = None, broaden: float | str | None = None) -> list[dict]:
    """A query spectrum against given spectra on E - E0 grid *x* (e.g. a structure's predicted XANES,
    one row per site), with the same shift search and window as :func:`match`: per row the best
    cosine, its shift (eV added to the query energies), and the MAE of normalized mu over the window
    at that shift, plus the query laid on *x* at that shift (NaN outside what it covers).
    *broaden*: a Gaussian FWHM (eV) applied to the rows first, or "auto": per row the FWHM of
    :data:`BROADEN_FWHM` with the lowest MAE. Each result gives its ``fwhm`` and the (broadened) row
    as ``spectrum``. *shift_range* None: :data:`CALCULATED_SHIFT_RANGE` for a calculated query, else
    :data:`DEFAULT_SHIFT_RANGE` (a measured E0 is the edge inflection, several eV from FEFF's)."""
    if shift_range is None:
        shift_range = CALCULATED_SHIFT_RANGE if query.calculated else DEFAULT_SHIFT_RANGE
    rows = np.atleast_2d(np.asarray(spectra, dtype=float))
    labels = list(labels) if labels is not None else [str(i) for i in range(len(rows))]
    if broaden == "auto":
        tries = [_compare_rows(query, x, gaussian_broaden(rows, x, f), shift_range, labels, f) for f in BROADEN_FWHM]
        return [min((t[i] for t in tries), key=lambda r: r["mae"]) for i in range(len(rows))]
    fwhm = float(broaden or 0.0)
    return _compare_rows(query, x, gaussian_broaden(rows, x, fwhm), shift_range, labels, fwhm)


def _compare_rows(query: Query, x: np.ndarray, rows: np.ndarray, shift_range: float, labels: list[str],
                  fwhm: float) -> list[dict]:
    y = np.asarray(rows, dtype=np.float32)
    n = len(y)
    blank = np.full(n, -1, np.int64)
    cands = Candidates(element=query.element, edge=query.edge, grid={}, x=np.asarray(x, float), y=y,
                       candidate=np.array(["given"] * n), spectrum_id=blank, prediction_id=blank, structure_id=blank,
                       site_id=blank, site_index=blank, formula=np.array(labels, dtype=object),
                       source_id=np.array(labels, dtype=object), origin=np.array(labels, dtype=object))  # fmt: skip
    best, shift, info = score(cands, query, metric="cosine", shift_range=shift_range)
    lo, hi = info["window"]
    w = (cands.x >= lo) & (cands.x <= hi)
    out = []
    for i in range(n):
        laid = np.interp(cands.x, query.x + shift[i], query.mu, left=np.nan, right=np.nan)
        out.append({"label": labels[i], "cosine": float(best[i]), "shift": float(shift[i]),
                    "shift_at_limit": bool(info["at_limit"][i]),
                    "mae": float(np.mean(np.abs(laid[w] - y[i][w]))), "window": [float(lo), float(hi)],
                    "fwhm": fwhm, "shift_range": float(shift_range), "query_on_grid": laid,
                    "spectrum": y[i].astype(float)})
    return out


#: k range (1/A) and weight of :func:`fit_exafs`: where measured chi(k) is reliable and FEFF's too
EXAFS_FIT_K = (3.0, 11.0)
#: E0 has local minima one oscillation apart: the fit starts from each of these offsets (eV)
EXAFS_FIT_DE_STARTS = tuple(float(d) for d in range(-15, 16, 3))


def fit_exafs(k: np.ndarray, measured_chi: np.ndarray, calculated_chi: np.ndarray) -> dict:
    """The three numbers an EXAFS analyst fits between a calculated and a measured chi(k) of the same
    structure: measured = A exp(-2 k^2 ds2) calculated(sqrt(k^2 + dE / 3.81)), least squares of the
    k^2-weighted difference over :data:`EXAFS_FIT_K`. Returns A, ds2 (A^2), dE (eV), R^2 of the fit
    and of the calculated chi as it is (``r2_raw``), and the fitted curve as k^2 chi (``fitted``)."""
    from scipy.optimize import least_squares

    k = np.asarray(k, float)
    meas, calc = np.asarray(measured_chi, float), np.asarray(calculated_chi, float)
    sel = (k >= EXAFS_FIT_K[0]) & (k <= EXAFS_FIT_K[1])

    def model(p):
        a, s, de = p
        kt = np.sqrt(np.maximum(k**2 + de / 3.8099821, 0.0))
        return a * np.exp(-2 * k**2 * s) * np.interp(kt, k, calc)

    def resid(p):
        return (model(p) - meas)[sel] * k[sel] ** 2

    best = min((least_squares(resid, [0.9, 0.002, d0], bounds=([0.1, -0.02, -30], [3, 0.03, 30]))
                for d0 in EXAFS_FIT_DE_STARTS), key=lambda r: r.cost)
    tot = float(np.sum((meas * k**2)[sel] ** 2))
    a, s, de = (float(v) for v in best.x)
    return {"A": a, "ds2": s, "dE": de, "r2_fit": 1 - 2 * float(best.cost) / tot,
            "r2_raw": 1 - float(np.sum(((calc - meas) * k**2)[sel] ** 2)) / tot, "k_range": list(EXAFS_FIT_K),
            "fitted": model(best.x) * k**2}


def compare_file(path, x: np.ndarray, spectra: np.ndarray, *, kind: str, element: str, edge: str | None = None,
                 labels: Sequence[str] | None = None, broaden: float | str | None = None) -> tuple[list[dict], dict]:
    """A spectrum file against predicted rows on the model grid *x* (what `predict spectrum --compare`
    prints): XANES by :func:`compare` (rigid shift; cosine, MAE; optional broadening), EXAFS (rows =
    k^2 chi(k) on the inverse models' k grid) by :func:`fit_exafs` of each row to the file's chi(k) as
    `predict structure` extracts it. Returns the per-row results and what the numbers mean."""
    rows = np.atleast_2d(np.asarray(spectra, float))
    labels = list(labels) if labels is not None else [str(i) for i in range(len(rows))]
    if kind == "XANES":
        query = read_query(path, element=element, edge=edge)
        about = {"e0": query.e0, "e0_definition": query.e0_definition, "shift_sign": "eV added to the file's E - E0"}
        return compare(query, x, rows, labels=labels, broaden=broaden), about
    if broaden is not None:
        raise InputError("--broaden", "applies to XANES", "for EXAFS the fit's extra disorder plays its part: drop it")
    from .inverse import EXAFS_GRID, spectrum_features

    if len(x) != len(EXAFS_GRID) or not np.allclose(x, EXAFS_GRID):
        raise InputError(str(path), "the model's k grid is not the one measured chi(k) is extracted on",
                         "compare with a model on inverse.EXAFS_GRID (k 2-12 1/A, 0.05 steps)")
    measured = spectrum_features(path, element=element, edge=edge).exafs  # k^2 chi(k) on EXAFS_GRID
    if measured is None:
        raise InputError(str(path), f"gives no chi(k) up to k = {EXAFS_GRID[-1]:g} 1/A",
                         "compare an EXAFS prediction with a scan (or FEFF run) that reaches it")
    out = []
    for lab, row in zip(labels, rows):
        fit = fit_exafs(x, measured / x**2, row / x**2)
        out.append({"label": lab, **fit, "spectrum": fit.pop("fitted"), "query_on_grid": measured})
    return out, {"model": "measured = A exp(-2 k^2 ds2) predicted(sqrt(k^2 + dE/3.81))"}


def match_key(query: Query, *, metric: str, against: str, shift_range: float, candidate: str, cand_id: int,
              candidate_state: str = "") -> str:
    """Same query, settings and candidate set -> same key (a rerun adds nothing); once the candidate
    rows change (new spectra or predictions) the ranks differ, so the key does too."""
    blob = json.dumps([query.sha256, query.element, query.edge, metric, against, round(float(shift_range), 6),
                       candidate, int(cand_id)] + ([candidate_state] if candidate_state else []))  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()


def match(
    engine: sa.Engine, query: Query, *, against: str = "all", metric: str = "cosine", top: int = 10,
    shift_range: float = DEFAULT_SHIFT_RANGE, sources: Sequence[str] | None = None, write: bool = True,
    run_id: int | None = None, candidates: Candidates | None = None, exclude_spectrum_ids: Sequence[int] = (),
) -> MatchResult:  # fmt: skip
    """Rank the candidates of the query's element/edge; store the top *top* in ``matches`` (if *write*)."""
    if top < 1:
        raise InputError("--top", f"must be >= 1, got {top}")
    t0 = time.perf_counter()
    cands = candidates if candidates is not None else load_candidates(
        engine, element=query.element, edge=query.edge, against=against, sources=sources)  # fmt: skip
    t1 = time.perf_counter()
    excl = set(int(i) for i in exclude_spectrum_ids) | ({query.spectrum_id} if query.spectrum_id is not None else set())
    if excl:
        cands = cands.subset(~np.isin(cands.spectrum_id, list(excl)))
    if cands.n == 0:
        what = {"reference": "stored XANES spectra with a structure", "predicted": "forward predictions (XANES)",
                "all": "stored XANES spectra with a structure or forward predictions"}[against]  # fmt: skip
        fix = ("run `xastruct screen --elements {el} --task forward` after training a forward model"
               if against == "predicted" else
               "ingest/simulate some (`xastruct simulate --elements {el} --kind XANES`), or try --against predicted"
               if against == "reference" else "ingest/simulate spectra or screen a forward model first")
        raise InputError(query.name, f"no {query.element} {query.edge} candidates: the store holds no {what}"
                         + (f" ({cands.skipped})" if cands.skipped else ""), fix.format(el=query.element))  # fmt: skip
    best, shift, info = score(cands, query, metric=metric, shift_range=shift_range)
    top = min(int(top), cands.n)
    idx = np.argpartition(-best, top - 1)[:top] if top < cands.n else np.arange(cands.n)
    # ties broken by candidate identity so that reruns rank identically
    idx = idx[np.lexsort((cands.prediction_id[idx], cands.spectrum_id[idx], -best[idx]))]
    t2 = time.perf_counter()
    rows = []
    for rank, i in enumerate(idx.tolist(), start=1):
        rows.append({
            "rank": rank, "candidate": str(cands.candidate[i]),
            "structure_id": int(cands.structure_id[i]), "formula": cands.formula[i], "source_id": cands.source_id[i],
            "site_index": None if cands.site_index[i] < 0 else int(cands.site_index[i]),
            "site_id": None if cands.site_id[i] < 0 else int(cands.site_id[i]),
            "spectrum_id": None if cands.spectrum_id[i] < 0 else int(cands.spectrum_id[i]),
            "prediction_id": None if cands.prediction_id[i] < 0 else int(cands.prediction_id[i]),
            "origin": cands.origin[i], "score": round(float(best[i]), 6), "shift": round(float(shift[i]), 3),
            "shift_at_limit": bool(info["at_limit"][i]),
        })  # fmt: skip
    res = MatchResult(query=query, metric=metric, against=against, shift_range=float(shift_range),
                      n_candidates=cands.n, rows=rows, window=info["window"], skipped=dict(cands.skipped),
                      seconds={"load": round(t1 - t0, 4), "score": round(t2 - t1, 4)},
                      candidate_state=cands.state)  # fmt: skip
    if write:
        res.inserted = write_matches(engine, res, run_id=run_id)
    return res


def write_matches(engine: sa.Engine, res: MatchResult, *, run_id: int | None = None) -> int:
    """The result rows into ``matches`` in one transaction; rows already there are skipped."""
    q = res.query
    rows = []
    for r in res.rows:
        cid = r["spectrum_id"] if r["candidate"] == "reference" else r["prediction_id"]
        rows.append(dict(
            key=match_key(q, metric=res.metric, against=res.against, shift_range=res.shift_range,
                          candidate=r["candidate"], cand_id=cid, candidate_state=res.candidate_state),
            query=q.name, query_hash=q.sha256, element=q.element, edge=q.edge, metric=res.metric,
            against=res.against, rank=r["rank"], candidate=r["candidate"], spectrum_id=r["spectrum_id"],
            prediction_id=r["prediction_id"], structure_id=r["structure_id"], site_id=r["site_id"],
            score=r["score"], shift=r["shift"], run_id=run_id,
        ))  # fmt: skip
    with engine.begin() as conn:
        return store.bulk_insert(conn, "matches", rows)


def write_results(res: MatchResult, path) -> Path:
    """Results as .csv (one row per candidate) or .json (rows plus the query and settings)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InputError(str(p), f"unknown output format {p.suffix!r}", "name the file *.csv or *.json")
    p.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".json":
        p.write_text(json.dumps(res.as_dict(), indent=1, default=str) + "\n")
        return p
    cols = ["rank", "candidate", "structure_id", "formula", "source_id", "site_index", "score", "shift",
            "shift_at_limit", "spectrum_id", "prediction_id", "site_id", "origin"]  # fmt: skip
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in res.rows:
            w.writerow(r)
    return p


def resolve_query(engine_factory, spec: str, *, element: str, edge: str | None, e0: float | None) -> Query:
    """A CLI argument: a file path, or ``spectrum:<id>`` for a stored spectrum."""
    m = _SPECTRUM_REF.match(spec.strip())
    if m and not Path(spec).exists():
        q = query_from_spectrum(engine_factory(), int(m.group(1)), e0=e0)
        el = check_element(spec, element)
        if (q.element, q.edge) != (el, check_edge(spec, edge) if edge else q.edge):
            raise InputError(spec, f"is a {q.element} {q.edge} spectrum", f"use --element {q.element} --edge {q.edge}")
        return q
    return read_query(spec, element=element, edge=edge, e0=e0)
