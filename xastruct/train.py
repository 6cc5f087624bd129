"""Training of the forward models (structure -> site spectrum), their evaluation and prediction.

Data
    :func:`load_forward_data` selects the site spectra (rows of ``spectra`` with a ``site_id``) of one
    (element, edge, kind, source) and resamples each onto the fixed grid :func:`grid_spec` returns.
    Grids are data (:data:`GRIDS`), looked up most-specific first:

    * XANES: normalized mu on E - E0 from -3.5 to +66.5 eV in 0.5 eV steps (141 points). E0 is the
      spectrum row's e0, which the readers set to FEFF's Fermi level (the k = 0 energy); FEFF 9
      computes mu from E0 - 3.8 eV on, so a grid starting lower (e.g. -10 eV) would be partly
      invented in every spectrum. The 70 eV window covers the edge, the white line and the first
      EXAFS-like wiggles. 0.5 eV is below the ~1.7 eV core-hole broadening FEFF applies at the
      Cu K edge, so nothing is lost.
    * EXAFS: k^2 chi(k) on k = 2..12 1/A in 0.05 steps (201 points). chi(k) rather than mu(E): the
      normalized mu over ~800 eV is dominated by the trivial edge step (=1) and the oscillations
      that carry the structure are a few percent of it, so an MSE on mu would learn the step;
      k^2 weighting keeps the oscillation amplitude roughly constant so all of k counts. k < 2 is
      XANES territory, k > 12 is noise-dominated in measurements.

    Points outside a spectrum's range take its end value (np.interp); a spectrum that misses more
    than ``max_extrapolate`` grid units at either end is skipped and counted.

Split
    By material, deterministic from a seed and independent of database ids: structures that
    pymatgen's StructureMatcher (default tolerances) calls the same crystal are one group (only
    structures with the same reduced formula are compared, which keeps it to ~1 min for the 2,303
    Cu structures, cached per formula afterwards); groups are ordered by content hash, shuffled
    with the seed and dealt to test, then val, until each holds its fraction of the spectra; the
    rest is train. Early stopping watches the val MSE; headline metrics are on test.

Models (``arch``; mode in brackets)
    ``xastruct`` [pooled]: frozen CHGNet atom features (:func:`xastruct.embed.chgnet_site_embeddings`,
    disk-cached) averaged over the absorber and its CrystalNN first shell, standardized, an SGMLP
    :class:`~xastruct.models.SpectrumHead` predicting the residual from the training-mean spectrum
    (MSE, AdamW). ``sgmlp_relu`` / ``sgmlp_linear`` / ``mlp``: the same with the ablated heads.
    With ``finetune=True`` [graph] gradients flow into CHGNet (its lr scaled by
    ``encoder_lr_scale``). ``gcn`` / ``gat`` / ``mpnn`` [graph]: GNN baselines trained end to end on
    :func:`xastruct.embed.structure_to_pyg` graphs with the same pooling and head. ``mean``: the
    training-set mean spectrum. ``paths`` [paths, EXAFS only]: :class:`~xastruct.models.PathEXAFS`, a
    learned single-scattering sum over the site's neighbours within ``r_max`` (their exact distances
    set the oscillation frequencies; a small network gives amplitude, phase, disorder and mean free
    path per neighbour). With ``element=None`` it is one model over every (element, edge) of the
    kind (:func:`load_universal_data`; absorber and edge are inputs) -- the way it is trained and
    shipped, because the scattering physics it learns is shared between absorbers while each
    absorber alone has only 40-130 spectra here. ``seeds`` > 1 trains an ensemble; metrics are mean
    +/- std over seeds.

Metrics (:func:`spectrum_metrics`): MAE and RMSE of the gridded quantity, mean cosine similarity,
and the main-peak position error (grid unit: eV for XANES) between predicted and true argmax.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import pickle
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch
import torch.nn.functional as F
from torch import nn

from . import registry, store
from .errors import InputError
from .models import ModelIO, ForwardModel, SpectrumHead, make_encoder, pick_device
from .schema import sites as sites_t
from .schema import spectra as spectra_t
from .schema import structures as structures_t

__all__ = [
    "ARCHS",
    "GRIDS",
    "ForwardData",
    "GraphForward",
    "MeanSpectrum",
    "PooledForward",
    "TrainConfig",
    "TrainResult",
    "available_datasets",
    "default_cache_dir",
    "grid_points",
    "grid_spec",
    "load_forward_data",
    "load_universal_data",
    "path_inputs",
    "predict_sites",
    "pooled_pairs",
    "serves",
    "resample",
    "site_neighbors",
    "spectrum_metrics",
    "split_materials",
    "train_forward",
    "twin_groups",
]

# ------------------------------------------------------------------------------------------ grids

#: (element, edge, kind) -> grid; "*" matches anything. Most specific entry wins.
GRIDS: dict[tuple[str, str, str], dict] = {
    ("*", "*", "XANES"): {
        "quantity": "mu_norm", "axis": "E-E0", "unit": "eV",
        # 1.5 eV: FEFF10 XANES from `xastruct simulate` starts at E0 - 2.44 eV; the foot of the edge is flat
        "start": -3.5, "stop": 66.5, "step": 0.5, "max_extrapolate": 1.5,
    },
    ("*", "*", "EXAFS"): {
        "quantity": "k2chi", "axis": "k", "unit": "1/A",
        "start": 2.0, "stop": 12.0, "step": 0.05, "max_extrapolate": 0.5,
    },
}  # fmt: skip

#: Minimum data for ``--all``: a forward model on fewer spectra/materials is not worth registering.
MIN_SPECTRA = 40
MIN_MATERIALS = 20


def grid_spec(element: str, edge: str, kind: str) -> dict:
    """The grid for (element, edge, kind), with its point count ``n``."""
    for key in ((element, edge, kind), ("*", edge, kind), (element, "*", kind), ("*", "*", kind)):
        if key in GRIDS:
            g = dict(GRIDS[key])
            g["n"] = int(round((g["stop"] - g["start"]) / g["step"])) + 1
            return g
    raise InputError(f"{element} {edge} {kind}", "no grid defined for this kind", f"add an entry to xastruct.train.GRIDS (kinds: {sorted({k[2] for k in GRIDS})})")


def grid_points(grid: dict) -> np.ndarray:
    return grid["start"] + grid["step"] * np.arange(grid["n"])


def resample(grid: dict, *, energies=None, mu=None, e0=None, k=None, chi=None) -> np.ndarray | None:
    """One spectrum on *grid*, or None when its range misses the grid by more than allowed."""
    x = grid_points(grid)
    if grid["quantity"] == "mu_norm":
        if energies is None or mu is None or e0 is None:
            return None
        src_x, src_y = np.asarray(energies, float) - float(e0), np.asarray(mu, float)
    elif grid["quantity"] == "k2chi":
        if k is None or chi is None:
            return None
        src_x = np.asarray(k, float)
        src_y = np.asarray(chi, float) * src_x**2
    else:
        raise ValueError(f"unknown grid quantity {grid['quantity']!r}")
    if src_x.size < 2 or not (np.all(np.isfinite(src_x)) and np.all(np.isfinite(src_y))):
        return None
    order = np.argsort(src_x, kind="stable")
    src_x, src_y = src_x[order], src_y[order]
    tol = grid.get("max_extrapolate", 0.0)
    if src_x[0] > x[0] + tol or src_x[-1] < x[-1] - tol:
        return None
    return np.interp(x, src_x, src_y).astype(np.float32)


# ------------------------------------------------------------------------------------------- data


@dataclass(kw_only=True)
class ForwardData:
    """Site spectra of one (element, edge, kind, source) on a grid, with their structures.

    Row i: spectrum ``keys[i]`` of site ``site_indices[i]`` of structure ``structure_ids[i]``.
    ``cache`` holds per-sample features computed once and shared by every arch and seed.
    """

    element: str | None
    edge: str | None
    kind: str
    source: str
    grid: dict
    y: np.ndarray
    keys: list[str]
    spectrum_ids: np.ndarray
    structure_ids: np.ndarray
    site_indices: np.ndarray
    structures: dict[int, Any]
    hashes: dict[int, str]
    formulas: dict[int, str]
    names: dict[int, str]
    skipped: dict[str, int] = field(default_factory=dict)
    cache: dict = field(default_factory=dict)
    #: per-row absorber and edge; set for data over several (element, edge) pairs (element/edge None)
    row_elements: list[str] | None = None
    row_edges: list[str] | None = None

    @property
    def n(self) -> int:
        return len(self.keys)

    @property
    def universal(self) -> bool:
        return self.element is None

    def pairs(self) -> list[str]:
        """"El:edge" of every row."""
        if self.row_elements is None:
            return [f"{self.element}:{self.edge}"] * self.n
        return [f"{a}:{b}" for a, b in zip(self.row_elements, self.row_edges)]

    @property
    def x(self) -> np.ndarray:
        return grid_points(self.grid)

    def fingerprint(self) -> str:
        return registry.fingerprint(self.keys)


def available_datasets(engine: sa.Engine, *, min_spectra: int = MIN_SPECTRA, min_materials: int = MIN_MATERIALS) -> list[dict]:
    """(element, edge, kind, source) combinations with enough site spectra to train on."""
    sp = spectra_t
    q = (
        sa.select(sp.c.absorber, sp.c.edge, sp.c.kind, sp.c.source, sa.func.count().label("spectra"),
                  sa.func.count(sa.distinct(sp.c.structure_id)).label("materials"))
        .where(sp.c.site_id.is_not(None))
        .group_by(sp.c.absorber, sp.c.edge, sp.c.kind, sp.c.source)
        .order_by(sp.c.absorber, sp.c.edge, sp.c.kind, sp.c.source)
    )  # fmt: skip
    with engine.connect() as conn:
        rows = conn.execute(q).fetchall()
    return [
        dict(element=a, edge=e, kind=k, source=s, spectra=int(n), materials=int(m))
        for a, e, k, s, n, m in rows
        if n >= min_spectra and m >= min_materials
    ]


def load_forward_data(
    engine: sa.Engine, *, element: str, edge: str = "K", kind: str = "XANES", source: str | None = None,
    structure_ids: Sequence[int] | None = None,
) -> ForwardData:  # fmt: skip
    """Site spectra of (element, edge, kind[, source]) resampled on the grid, plus their structures.

    With *source* None the store must hold one source for this combination (mixing FEFF versions
    would give one site two different targets). *structure_ids* restricts to those structures.
    """
    from pymatgen.core import Structure

    sp, si, st = spectra_t, sites_t, structures_t
    where = [sp.c.absorber == element, sp.c.edge == edge, sp.c.kind == kind, sp.c.site_id.is_not(None)]
    what = f"{element} {edge} {kind}"
    with engine.connect() as conn:
        sources = [r[0] for r in conn.execute(sa.select(sp.c.source).where(*where).distinct().order_by(sp.c.source))]
        if source is None:
            if len(sources) > 1:
                raise InputError(what, f"site spectra from several sources {sources}", "pick one with --source")
            source = sources[0] if sources else None
        if source is None or source not in sources:
            raise InputError(
                what + (f" ({source})" if source else ""), "no site spectra in the store",
                "ingest/simulate some first; `xastruct stats` lists what the store holds",
            )  # fmt: skip
        where.append(sp.c.source == source)
        if structure_ids is not None:
            where.append(sp.c.structure_id.in_([int(i) for i in structure_ids]))
        q = (
            sa.select(sp.c.id, sp.c.key, sp.c.structure_id, si.c.site_index, sp.c.energies, sp.c.mu,
                      sp.c.e0, sp.c.k, sp.c.chi, sp.c.normalized)
            .join_from(sp, si, sp.c.site_id == si.c.id)
            .where(*where)
            .order_by(sp.c.key)
        )  # fmt: skip
        rows = conn.execute(q).fetchall()
        sids = sorted({int(r.structure_id) for r in rows})
        srows = []
        for i in range(0, len(sids), 5000):
            srows += conn.execute(
                sa.select(st.c.id, st.c.content_hash, st.c.formula, st.c.source_id, st.c.structure_json)
                .where(st.c.id.in_(sids[i : i + 5000]))
            ).fetchall()
    grid = grid_spec(element, edge, kind)
    skipped: dict[str, int] = defaultdict(int)
    keep, ys = [], []
    for r in rows:
        if grid["quantity"] == "mu_norm" and not r.normalized:
            skipped["not normalized"] += 1
            continue
        y = resample(grid, energies=r.energies, mu=r.mu, e0=r.e0, k=r.k, chi=r.chi)
        if y is None:
            skipped["does not cover the grid"] += 1
            continue
        keep.append(r)
        ys.append(y)
    if not keep:
        raise InputError(what, f"none of {len(rows)} site spectra could be put on the grid ({dict(skipped)})")
    structures = {int(r.id): Structure.from_dict(json.loads(r.structure_json)) for r in srows}
    return ForwardData(
        element=element, edge=edge, kind=kind, source=source, grid=grid,
        y=np.stack(ys).astype(np.float32),
        keys=[r.key for r in keep],
        spectrum_ids=np.array([r.id for r in keep], dtype=np.int64),
        structure_ids=np.array([r.structure_id for r in keep], dtype=np.int64),
        site_indices=np.array([r.site_index for r in keep], dtype=np.int64),
        structures=structures,
        hashes={int(r.id): r.content_hash for r in srows},
        formulas={int(r.id): r.formula for r in srows},
        names={int(r.id): r.source_id or r.content_hash[:12] for r in srows},
        skipped=dict(skipped),
    )  # fmt: skip


def load_universal_data(
    engine: sa.Engine, *, kind: str = "EXAFS", pairs: Sequence[tuple[str, str]] | None = None, source: str | None = None,
    min_spectra: int = 1, min_materials: int = 1,
) -> ForwardData:  # fmt: skip
    """Site spectra of every (element, edge) of *kind* (or of *pairs*) as one dataset, for models
    with the absorber as an input (element/edge None, per-row ``row_elements``/``row_edges``).
    All pairs must share one grid and one source."""
    if pairs is None:
        found = [d for d in available_datasets(engine, min_spectra=min_spectra, min_materials=min_materials)
                 if d["kind"] == kind and (source is None or d["source"] == source)]  # fmt: skip
        srcs = sorted({d["source"] for d in found})
        if len(srcs) > 1:
            raise InputError(f"{kind} site spectra", f"several sources {srcs}", "pick one with --source")
        source = source or (srcs[0] if srcs else None)
        pairs = sorted({(d["element"], d["edge"]) for d in found})
    if not pairs:
        raise InputError(f"{kind} site spectra", f"no (element, edge) with >= {min_spectra} site spectra from "
                         f">= {min_materials} structures", "ingest or simulate some first")  # fmt: skip
    parts = [load_forward_data(engine, element=el, edge=ed, kind=kind, source=source) for el, ed in pairs]
    grid = parts[0].grid
    for p in parts[1:]:
        if p.grid != grid:
            raise InputError(f"{p.element} {p.edge} {kind}", f"grid {p.grid} differs from {parts[0].element}'s {grid}",
                             "one model over several absorbers needs one grid: align xastruct.train.GRIDS")  # fmt: skip
    cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
    merged = lambda name: {k: v for p in parts for k, v in getattr(p, name).items()}  # noqa: E731
    skipped: dict[str, int] = defaultdict(int)
    for p in parts:
        for k, v in p.skipped.items():
            skipped[k] += v
    return ForwardData(
        element=None, edge=None, kind=kind, source=parts[0].source, grid=grid, y=cat("y"),
        keys=[k for p in parts for k in p.keys], spectrum_ids=cat("spectrum_ids"), structure_ids=cat("structure_ids"),
        site_indices=cat("site_indices"), structures=merged("structures"), hashes=merged("hashes"),
        formulas=merged("formulas"), names=merged("names"), skipped=dict(skipped),
        row_elements=[p.element for p in parts for _ in range(p.n)], row_edges=[p.edge for p in parts for _ in range(p.n)],
    )  # fmt: skip


def path_neighbours(data: ForwardData, r_max: float, focus: bool = False) -> list[np.ndarray]:
    """:meth:`PathEXAFS.neighbours` of every row (cached on *data*; shared by seeds)."""
    from .models import PathEXAFS

    key = ("path_neighbours", float(r_max), bool(focus))
    if key not in data.cache:
        data.cache[key] = [PathEXAFS.neighbours(data.structures[s], i, r_max, focus=focus)
                           for s, i in zip(data.structure_ids.tolist(), data.site_indices.tolist())]  # fmt: skip
    return data.cache[key]


def default_cache_dir(url: str | None) -> Path:
    """Feature caches (CHGNet embeddings, neighbour lists, twin groups): next to a DuckDB store
    file, else ~/.cache/xastruct."""
    from .store import _duckdb_path, resolve_url

    path = _duckdb_path(resolve_url(url))
    if path is not None:
        return path.resolve().parent / "xastruct_cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "xastruct"


def _write_json(path: Path, doc: Any) -> None:
    # write-then-rename: a concurrent reader never sees a half-written cache file
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------- twins and split

MATCHER = "StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell, scale) within reduced formula"


def twin_groups(
    structures: dict[int, Any], formulas: dict[int, str], *, hashes: dict[int, str] | None = None,
    cache_dir: str | Path | None = None,
) -> list[list[int]]:  # fmt: skip
    """Structure ids grouped so that StructureMatcher-identical crystals share a group.

    Only structures with the same reduced formula are compared. With *hashes* (content hashes)
    and *cache_dir*, each formula's grouping is cached under ``twins/``.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    by_formula: dict[str, list[int]] = defaultdict(list)
    for sid in sorted(structures):
        by_formula[formulas[sid]].append(sid)
    matcher = StructureMatcher()
    out: list[list[int]] = []
    for formula, ids in sorted(by_formula.items()):
        if len(ids) == 1:
            out.append(ids)
            continue
        path = None
        if hashes is not None and cache_dir is not None:
            key = registry.fingerprint([MATCHER, *(hashes[i] for i in ids)])
            path = Path(cache_dir) / "twins" / f"{key}.json"
            cached = _read_json(path)
            if cached is not None:
                pos = {hashes[i]: i for i in ids}
                out.extend([pos[h] for h in g] for g in cached)
                continue
        pos = {id(structures[i]): i for i in ids}
        groups = [sorted(pos[id(s)] for s in g) for g in matcher.group_structures([structures[i] for i in ids])]
        out.extend(groups)
        if path is not None:
            _write_json(path, [[hashes[i] for i in g] for g in groups])
    return out


def split_materials(
    groups: Sequence[Sequence[int]], weights: dict[int, int], hashes: dict[int, str], *, seed: int,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[int, str]:  # fmt: skip
    """structure id -> "train" | "val" | "test", whole groups at a time.

    Groups are ordered by their smallest content hash (so the split does not depend on database
    ids), shuffled by *seed*, and dealt to test and then val until each reaches its fraction of
    the total weight (spectra); the rest is train.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    if len(groups) < 3:
        raise InputError("split", f"only {len(groups)} distinct material group(s)", "a train/val/test split needs at least 3")
    ordered = sorted((list(g) for g in groups), key=lambda g: min(hashes[i] for i in g))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    total = sum(weights.get(i, 0) for g in ordered for i in g)
    target = {"test": fractions[2] * total, "val": fractions[1] * total}
    filled = {"test": 0, "val": 0}
    out: dict[int, str] = {}
    for gi in perm:
        g = ordered[gi]
        side = "train"
        for name in ("test", "val"):
            if filled[name] < target[name]:
                side = name
                break
        filled[side] = filled.get(side, 0) + sum(weights.get(i, 0) for i in g)
        for i in g:
            out[i] = side
    if not any(v == "train" for v in out.values()):
        raise InputError("split", f"{len(groups)} material groups leave nothing for training", "add data or change --fractions")
    return out


# ------------------------------------------------------------------------------------- features


@functools.lru_cache(maxsize=4)
def _finder(method: str):
    from .labels import METHODS

    return METHODS[method].factory()


def crystalnn_neighbors(structure: Any, site_index: int) -> tuple[list[int], str]:
    """Site indices of the CrystalNN neighbours of one site (the project's fast CrystalNN, with the
    labels module's fallback chain; :func:`xastruct.embed.first_shell` when every finder fails)."""
    from .embed import first_shell
    from .labels import METHODS

    method: str | None = "crystalnn"
    while method is not None:
        try:
            found = _finder(method).find(structure, site_index)
        except Exception:  # odd geometry: the labels module falls back the same way
            found = []
        if found:
            return sorted({int(nb.site_index) for nb in found}), method
        method = METHODS[method].fallback
    return first_shell(structure, site_index), "first_shell"


def site_neighbors(data: ForwardData, *, cache_dir: str | Path | None = None) -> list[list[int]]:
    """First-shell neighbour indices of every sample's site (cached on disk per structure)."""
    if "neighbors" in data.cache:
        return data.cache["neighbors"]
    per_structure: dict[int, dict] = {}
    out = []
    for sid, site in zip(data.structure_ids.tolist(), data.site_indices.tolist()):
        if sid not in per_structure:
            # the finder is part of the path: a different neighbour method must not reuse these lists
            path = Path(cache_dir) / "neighbors" / "crystalnn" / f"{data.hashes[sid]}.json" if cache_dir else None
            per_structure[sid] = {"path": path, "sites": (_read_json(path) if path else None) or {}, "dirty": False}
        entry = per_structure[sid]
        key = str(site)
        if key not in entry["sites"]:
            entry["sites"][key] = crystalnn_neighbors(data.structures[sid], site)[0]
            entry["dirty"] = True
        out.append(entry["sites"][key])
    for entry in per_structure.values():
        if entry["dirty"] and entry["path"] is not None:
            _write_json(entry["path"], entry["sites"])
    data.cache["neighbors"] = out
    return out


def _unique_structures(data: ForwardData) -> list[int]:
    return list(dict.fromkeys(data.structure_ids.tolist()))


def chgnet_pooled(
    data: ForwardData, *, cache_dir: str | Path | None = None, device: str = "auto",
    progress: Callable[[int, int], Any] | None = None, num_threads: int | None = None, pool: str = "mean",
) -> np.ndarray:  # fmt: skip
    """Frozen CHGNet atom features pooled per site (embed.POOLS): (n, 64), or (n, 128) for concat."""
    from .embed import pooled_embedding

    key = "chgnet_pooled" if pool == "mean" else f"chgnet_pooled:{pool}"
    if key in data.cache:
        return data.cache[key]
    nbrs = site_neighbors(data, cache_dir=cache_dir)
    by_sid = chgnet_atom_features(data, cache_dir=cache_dir, device=device, progress=progress, num_threads=num_threads)
    z = np.stack([
        pooled_embedding(by_sid[s], None, i, neighbors=nb, pool=pool)
        for s, i, nb in zip(data.structure_ids.tolist(), data.site_indices.tolist(), nbrs)
    ]).astype(np.float32)  # fmt: skip
    data.cache[key] = z
    return z


def chgnet_atom_features(
    data: ForwardData, *, cache_dir: str | Path | None = None, device: str = "auto",
    progress: Callable[[int, int], Any] | None = None, num_threads: int | None = None,
) -> dict[int, np.ndarray]:  # fmt: skip
    """Frozen CHGNet atom features (n_atoms, 64) of every structure of *data*, by structure id
    (disk-cached per structure; kept on *data* for the other archs and seeds)."""
    from .embed import chgnet_site_embeddings

    if "chgnet_atoms" not in data.cache:
        sids = _unique_structures(data)
        feas = chgnet_site_embeddings(
            [data.structures[s] for s in sids], device=device, progress=progress, num_threads=num_threads,
            cache_dir=Path(cache_dir) / "chgnet" if cache_dir else None,
        )  # fmt: skip
        data.cache["chgnet_atoms"] = dict(zip(sids, feas))
    return data.cache["chgnet_atoms"]


def _graphs(data: ForwardData, encoder: nn.Module, tag: str) -> dict[int, Any]:
    key = ("graphs", tag)
    if key not in data.cache:
        data.cache[key] = {s: encoder.featurize(data.structures[s]) for s in _unique_structures(data)}
    return data.cache[key]


# --------------------------------------------------------------------------------------- models


class PooledForward(ModelIO, nn.Module):
    """Frozen-encoder forward model on precomputed pooled site embeddings:
    ``y_mean + head((z - x_mean) / x_std)``. Standardizing the input and predicting the residual
    from the training-mean spectrum are stored in the model, so a reload needs nothing else.

    With *pairs* ("El:edge" absorbers) it is one model over several absorbers: ``y_mean`` holds one
    training-mean spectrum per pair, the head also reads a one-hot of the pair, and ``forward`` needs
    each row's pair."""

    def __init__(self, *, head: SpectrumHead, x_mean: list[float], x_std: list[float], y_mean: list,
                 pairs: list[str] | None = None):  # fmt: skip
        super().__init__()
        self.head = head
        self.pairs = list(pairs) if pairs else None
        self.register_buffer("x_mean", torch.tensor(x_mean, dtype=torch.float32))
        self.register_buffer("x_std", torch.tensor(x_std, dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(y_mean, dtype=torch.float32))

    def forward(self, z: torch.Tensor, pairs: Sequence[str] | None = None) -> torch.Tensor:
        z = z.to(self.x_mean.device, torch.float32)
        x = (z - self.x_mean) / self.x_std
        if self.pairs is None:
            return self.y_mean + self.head(x)
        if pairs is None or len(pairs) != len(z):
            raise ValueError("a model over several absorbers needs each row's 'El:edge'")
        unknown = sorted(set(pairs) - set(self.pairs))
        if unknown:
            raise InputError(f"absorber {', '.join(unknown)}", f"not among the model's {self.pairs}",
                             "`xastruct models` lists what each model covers")  # fmt: skip
        i = torch.tensor([self.pairs.index(p) for p in pairs], device=z.device, dtype=torch.long)
        return self.y_mean[i] + self.head(torch.cat([x, F.one_hot(i, len(self.pairs)).float()], dim=1))


class GraphForward(ModelIO, nn.Module):
    """End-to-end forward model (GNN baselines, fine-tuned CHGNet): a :class:`ForwardModel` whose
    pooled embedding is optionally standardized, predicting the residual from ``y_mean``."""

    def __init__(
        self, *, model: ForwardModel, y_mean: list[float], x_mean: list[float] | None = None,
        x_std: list[float] | None = None,
    ):  # fmt: skip
        super().__init__()
        self.model = model
        self.register_buffer("y_mean", torch.tensor(y_mean, dtype=torch.float32))
        self.standardize = x_mean is not None
        d = model.head.d_embed
        self.register_buffer("x_mean", torch.tensor(x_mean if x_mean is not None else [0.0] * d, dtype=torch.float32))
        self.register_buffer("x_std", torch.tensor(x_std if x_std is not None else [1.0] * d, dtype=torch.float32))

    def featurize(self, structure) -> Any:
        return self.model.encoder.featurize(structure)

    def forward(self, graphs: Sequence, site_mask) -> torch.Tensor:
        z = self.model.embed_sites(graphs, site_mask)
        if self.standardize:
            z = (z - self.x_mean) / self.x_std
        return self.y_mean + self.model.head(z)


class MeanSpectrum(ModelIO, nn.Module):
    """Baseline: the training-set mean spectrum for every site."""

    def __init__(self, *, mean: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))

    def forward(self, n: int) -> torch.Tensor:
        return self.mean.expand(int(n), -1)


#: arch -> (mode, head MLP arch, encoder). "pooled" archs become "graph" with finetune=True.
ARCHS: dict[str, tuple[str, str | None, str | None]] = {
    "xastruct": ("pooled", "sgmlp", "chgnet"),
    "sgmlp_relu": ("pooled", "sgmlp_relu", "chgnet"),
    "sgmlp_linear": ("pooled", "sgmlp_linear", "chgnet"),
    "mlp": ("pooled", "mlp", "chgnet"),
    "gcn": ("graph", "sgmlp", "gcn"),
    "gat": ("graph", "sgmlp", "gat"),
    "mpnn": ("graph", "sgmlp", "mpnn"),
    "mean": ("mean", None, None),
    "paths": ("paths", None, None),  # EXAFS only: models.PathEXAFS, structure -> single-scattering paths
}

#: Training defaults per mode (override any with TrainConfig). Frozen heads are cheap, so they
#: get many epochs with patience; end-to-end graph models cost minutes per epoch on a CPU, and
#: from-scratch GNNs need a larger lr than the 1e-4 used for the head on pretrained features.
MODE_DEFAULTS: dict[str, dict] = {
    "pooled": {"lr": 1e-4, "epochs": 2000, "patience": 50, "batch_size": 64},
    "graph": {"lr": 1e-3, "epochs": 100, "patience": 10, "batch_size": 16},
    "finetune": {"lr": 1e-4, "epochs": 30, "patience": 5, "batch_size": 16},
    # trained from scratch like the GNNs (lr 1e-3); best epoch 30-95 over the default dataset's 3,700
    # training spectra; 512 wide: validation MSE 0.0673 vs 0.0730 at 256, 2 seeds each, at ~3x the
    # training time (benchmarks/results/paths_tune.md)
    "paths": {"lr": 1e-3, "epochs": 300, "patience": 30, "batch_size": 32, "d_hidden": 512},
}
#: settings every mode shares unless MODE_DEFAULTS says otherwise
COMMON_DEFAULTS = {"d_hidden": 256}


@dataclass(kw_only=True)
class TrainConfig:
    """Hyperparameters; None means the mode's default (:data:`MODE_DEFAULTS`)."""

    arch: str = "xastruct"
    finetune: bool = False
    seeds: int = 1
    split_seed: int = 0
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    epochs: int | None = None
    lr: float | None = None
    weight_decay: float = 0.01
    batch_size: int | None = None
    patience: int | None = None
    d_hidden: int | None = None  # 256; the path model 512 (MODE_DEFAULTS)
    n_layers: int = 3
    dropout: float = 0.0
    pool: str = "mean"  # frozen-encoder site pooling: mean | absorber | concat (embed.POOLS)
    # paths: neighbours (single-scattering paths) out to this distance, A. 6 = the RPATH of the feff8l
    # EXAFS it learns from; validation MSE 0.075 vs 0.084 at 5 A (benchmarks/results/paths_tune.md)
    r_max: float = 6.0
    # paths: add the frozen CHGNet atom features of absorber and neighbours to their element
    # embeddings; validation MSE 0.075 vs 0.082 without (paths_tune.md)
    chgnet_atoms: bool = True
    # paths: tell each neighbour's term about the closer atom most in line with it (forward focusing,
    # the multiple scattering that single-scattering terms miss). At width 512 validation MSE 0.0672 /
    # 0.0626 vs 0.0684 / 0.0663 without, each seed better (at 256 within the spread; paths_tune.md)
    path_focus: bool = True
    encoder_lr_scale: float = 0.1  # fine-tuning: pretrained CHGNet moves 10x slower than the head
    max_minutes: float | None = None  # wall-clock cap per seed (CPU runs of the graph models)
    keep_last: bool = False  # no early stopping: run all epochs, keep the last weights (tiny/noisy val sets)
    device: str = "auto"
    num_threads: int | None = None

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise InputError("--arch", f"unknown arch {self.arch!r}", f"choose from {', '.join(ARCHS)}")
        if self.seeds < 1:
            raise InputError("--seeds", f"must be >= 1, got {self.seeds}")
        from .embed import POOLS

        if self.pool not in POOLS:
            raise InputError("--pool", f"unknown pooling {self.pool!r}", f"choose from {', '.join(POOLS)}")
        if self.pool != "mean" and ARCHS[self.arch][0] != "pooled":
            raise InputError("--pool", f"{self.pool!r} applies to the CHGNet archs only",
                             "the GNN baselines pool by the mean over absorber + first shell")
        if self.pool == "concat" and self.finetune:
            raise InputError("--pool", "concat is for the frozen encoder", "fine-tune with --pool mean or absorber")
        if self.finetune and ARCHS[self.arch][0] != "pooled":
            raise InputError("--finetune", f"does not apply to --arch {self.arch}",
                             "it fine-tunes CHGNet: use it with xastruct/sgmlp_relu/sgmlp_linear/mlp")  # fmt: skip

    @property
    def mode(self) -> str:
        mode = ARCHS[self.arch][0]
        return "finetune" if self.finetune and mode == "pooled" else mode

    @property
    def registry_arch(self) -> str:
        return f"{self.arch}_finetune" if self.mode == "finetune" else self.arch

    def resolved(self) -> dict:
        d = asdict(self)
        for k, v in (COMMON_DEFAULTS | MODE_DEFAULTS.get(self.mode, {})).items():
            if d.get(k) is None:
                d[k] = v
        d["mode"] = self.mode
        return d


# ------------------------------------------------------------------------------------- metrics


#: share of the validation errors a calibrated +-1 sigma band holds (a Gaussian's +-1 sigma)
BAND_COVERAGE = 0.6827


def seed_spread(member_preds: np.ndarray) -> np.ndarray:
    """Spread across ensemble members (axis 0): the sample std, 0 for a single member."""
    if member_preds.shape[0] < 2:
        return np.zeros(member_preds.shape[1:])
    return member_preds.std(axis=0, ddof=1)


def band_sigma(config: dict | None, member_preds: np.ndarray) -> np.ndarray:
    """The +-1 sigma band of an ensemble's prediction: the seed spread times the model's
    ``band_scale`` (fitted on its validation materials at training; 1 for models trained before it)."""
    return seed_spread(member_preds) * float((config or {}).get("band_scale") or 1.0)


def band_calibration(member_preds: np.ndarray, truth: np.ndarray, scale: float | None = None) -> dict | None:
    """Why: seeds trained on the same data agree more than they are right (held-out Cu K: the raw
    spread's +-1 band holds ~30 % of the errors), so the spread is scaled to hold BAND_COVERAGE of the
    *validation* errors, as the MNND variance head is. Without *scale*, fits it on these rows (the
    validation split); with it, reports the coverage it gives (e.g. on the test split)."""
    if member_preds.shape[0] < 2 or truth.size == 0:
        return None
    mean, spread = member_preds.mean(0), seed_spread(member_preds)
    ratio = np.abs(mean - truth) / np.maximum(spread, 1e-12)
    if scale is None:
        scale = float(np.quantile(ratio, BAND_COVERAGE))
    return {"scale": float(scale), "within_1": float((ratio <= scale).mean()),
            "within_2": float((ratio <= 2 * scale).mean()), "raw_within_1": float((ratio <= 1).mean())}


def spectrum_metrics(pred: np.ndarray, true: np.ndarray, x: np.ndarray) -> dict:
    """MAE, RMSE (over all grid points), mean cosine similarity and mean |main-peak shift| (x units)."""
    pred, true = np.asarray(pred, float), np.asarray(true, float)
    if len(true) == 0:
        return {"n": 0}
    err = pred - true
    num = (pred * true).sum(1)
    den = np.linalg.norm(pred, axis=1) * np.linalg.norm(true, axis=1)
    cos = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    peak = np.abs(x[pred.argmax(1)] - x[true.argmax(1)])
    return {
        "n": int(len(true)),
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err**2).mean())),
        "cosine": float(cos.mean()),
        "peak_error": float(peak.mean()),
    }


METRICS = ("mae", "rmse", "cosine", "peak_error")


def summarize(per_seed: Sequence[dict]) -> dict:
    """{split: {metric: {"mean", "std"}}}; std is the sample std over seeds (0 for one seed)."""
    out: dict = {}
    for split in per_seed[0]:
        out[split] = {}
        for m in METRICS:
            vals = [s[split][m] for s in per_seed if m in s[split]]
            if vals:
                out[split][m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}
        out[split]["n"] = per_seed[0][split].get("n", 0)
    return out


# ------------------------------------------------------------------------------------ training


@dataclass(kw_only=True)
class TrainResult:
    entry: registry.ModelEntry | None
    members: list[nn.Module]
    metrics: dict
    split: dict[int, str]
    data: ForwardData
    config: dict
    #: split -> (row indices into data, seed-averaged predictions of those rows)
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def _batches(idx: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]


def _predict(model: nn.Module, forward: Callable, idx: np.ndarray, batch_size: int) -> np.ndarray:
    model.eval()
    outs = []
    with torch.no_grad():
        for b in _batches(idx, batch_size):
            outs.append(forward(model, b).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


def _fit(
    model: nn.Module, forward: Callable, y: torch.Tensor, train_idx: np.ndarray, val_idx: np.ndarray, *,
    seed: int, epochs: int, lr: float, weight_decay: float, batch_size: int, patience: int,
    max_minutes: float | None, param_groups: list[dict] | None = None, on_epoch: Callable | None = None,
    keep_last: bool = False, checkpoint: Path | None = None, checkpoint_every: float = 60.0,
) -> dict:  # fmt: skip
    """AdamW + MSE with early stopping on the val MSE, the best-val weights restored; with
    *keep_last* every epoch runs and the last weights are kept (val is then only reported).

    *checkpoint*: a file the whole training state (weights, optimizer, both RNGs, best weights,
    history, training seconds so far) is written to at most every *checkpoint_every* seconds and
    after the last epoch; if it exists, training resumes from it, so a killed run continues where it
    stopped and gives the same model as an uninterrupted one. *max_minutes* counts training time
    over all resumed runs; a run stopped by it continues when resumed with a larger cap."""
    opt = torch.optim.AdamW(param_groups or model.parameters(), lr=lr, weight_decay=weight_decay)
    rng = np.random.default_rng(seed)
    watch = val_idx if len(val_idx) else train_idx
    best, best_state, best_epoch, history = math.inf, None, 0, []
    stopped, start, spent = "epochs", 1, 0.0
    if checkpoint is not None and Path(checkpoint).exists():
        try:
            ck = torch.load(checkpoint, map_location="cpu", weights_only=False)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
        except (RuntimeError, KeyError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            # e.g. the model code changed since the run that left it: it cannot be continued
            raise InputError(str(checkpoint), f"saved training state does not fit this model ({exc.__class__.__name__})",
                             "delete the file to train this seed from scratch") from exc  # fmt: skip
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        best, best_epoch, history, spent = ck["best"], ck["best_epoch"], ck["history"], ck["seconds"]
        best_state = ck["best_state"]
        start = ck["epoch"] + 1
        if ck["stopped"] == "patience":  # finished: only the best weights are still to be restored
            start, stopped = epochs + 1, "patience"
    t0 = time.perf_counter() - spent
    last_save = time.perf_counter()

    def save(epoch: int, why: str) -> None:
        tmp = Path(checkpoint).with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(), "best": best, "best_epoch": best_epoch,
                    "best_state": best_state, "history": history, "epoch": epoch, "stopped": why,
                    "seconds": time.perf_counter() - t0}, tmp)  # fmt: skip
        os.replace(tmp, checkpoint)  # a kill mid-write leaves the previous checkpoint intact

    epoch = start - 1
    for epoch in range(start, epochs + 1):
        if epoch > start and max_minutes is not None and time.perf_counter() - t0 > 60 * max_minutes:
            stopped, epoch = "time", epoch - 1  # every call runs at least one epoch
            break
        model.train()
        total, count = 0.0, 0
        for b in _batches(rng.permutation(train_idx), batch_size):
            pred = forward(model, b)
            loss = F.mse_loss(pred, y[b].to(pred.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
            count += len(b)
        val = float(np.mean((_predict(model, forward, watch, batch_size) - y[watch].cpu().numpy()) ** 2))
        history.append((total / max(count, 1), val))
        if val < best:
            best, best_epoch = val, epoch
            if not keep_last:
                best_state = copy.deepcopy(model.state_dict())
        done = not keep_last and epoch - best_epoch >= patience
        if checkpoint is not None and (done or epoch == epochs or time.perf_counter() - last_save >= checkpoint_every):
            save(epoch, "patience" if done else "running")
            last_save = time.perf_counter()
        if on_epoch is not None:
            on_epoch(epoch, total / max(count, 1), val, best_epoch)
        if done:
            stopped = "patience"
            break
    if checkpoint is not None and stopped == "time":
        save(epoch, "time")
    if best_state is not None:
        model.load_state_dict(best_state)
    return {
        "epochs_run": len(history), "best_epoch": best_epoch, "best_val_mse": best, "stopped": stopped,
        "seconds": round(time.perf_counter() - t0, 2), "final_train_mse": history[-1][0] if history else None,
        "first_train_mse": history[0][0] if history else None,
        # the train loss of the kept weights' epoch (dropout on), beside best_val_mse: how much it overfits
        "best_epoch_train_mse": history[best_epoch - 1][0] if history and best_epoch else None,
        "weights": "last epoch" if keep_last else "best val epoch",
        "resumed_at_epoch": start if start > 1 and start <= epochs else None,
    }  # fmt: skip


#: TrainConfig fields only the path model reads
PATH_ONLY = {"r_max", "chgnet_atoms", "path_focus"}


def _checkpoint_path(cache_dir: Path, cfg: dict, data: ForwardData, idx: dict, seed: int) -> Path:
    """Where one seed's training state lives: keyed by everything that shapes the model (settings,
    data, split, seed) but not by caps, threads or device, so a rerun with a longer cap resumes, nor
    by settings its arch ignores (a new path-model default must not restart a GNN run)."""
    import hashlib

    free = {"num_threads", "device", "max_minutes", "epochs"} | (set() if cfg["mode"] == "paths" else PATH_ONLY)
    key = json.dumps({"cfg": {k: v for k, v in sorted(cfg.items()) if k not in free}, "data": data.fingerprint(),
                      "split": {s: hashlib.sha1(np.asarray(i).tobytes()).hexdigest() for s, i in idx.items()},
                      "seed": seed}, sort_keys=True, default=str)  # fmt: skip
    return Path(cache_dir) / "checkpoints" / f"{hashlib.sha1(key.encode()).hexdigest()[:20]}.pt"


def _masks(data: ForwardData, nbrs: list[list[int]]) -> list[np.ndarray]:
    from .embed import absorber_mask

    return [
        absorber_mask(len(data.structures[s]), i, neighbors=nb)
        for s, i, nb in zip(data.structure_ids.tolist(), data.site_indices.tolist(), nbrs)
    ]


def _build(cfg: dict, data: ForwardData, train_idx: np.ndarray, *, cache_dir, device, progress, seed: int):
    """(model, forward(model, idx) -> predictions, param_groups) for one seed."""
    mode, head_arch, enc_name = cfg["mode"], ARCHS[cfg["arch"]][1], ARCHS[cfg["arch"]][2]
    y_mean = data.y[train_idx].mean(0).astype(float).tolist()
    dev = pick_device(device)
    torch.manual_seed(seed)
    if mode == "mean":
        model = MeanSpectrum(mean=y_mean).to(dev)
        return model, (lambda m, b: m(len(b))), None
    if mode == "paths":
        from pymatgen.core import Element

        from .models import PathEXAFS

        if data.grid["quantity"] != "k2chi":
            raise InputError("--arch paths", f"predicts k^2 chi(k) (EXAFS), not {data.kind}", "use it with --kind EXAFS")
        g = data.grid
        feas = sids = None
        if cfg["chgnet_atoms"]:
            by_sid = chgnet_atom_features(data, cache_dir=cache_dir, device=device, progress=progress,
                                          num_threads=cfg["num_threads"])  # fmt: skip
            feas = [by_sid[s] for s in data.structure_ids.tolist()]
            sids = data.site_indices.tolist()
        model = PathEXAFS(k_start=g["start"], k_step=g["step"], n_k=g["n"], r_max=cfg["r_max"], d_hidden=cfg["d_hidden"],
                          d_atom=feas[0].shape[1] if feas else 0, focus=cfg["path_focus"]).to(dev)  # fmt: skip
        nbrs = path_neighbours(data, cfg["r_max"], cfg["path_focus"])
        els = data.row_elements or [data.element] * data.n
        za = [Element(e).Z for e in els]
        edges = data.row_edges or [data.edge] * data.n

        def forward(m, b):
            return m(*PathEXAFS.collate([za[i] for i in b], [edges[i] for i in b], [nbrs[i] for i in b], device=dev,
                                        atom_feas=[feas[i] for i in b] if feas else None,
                                        sites=[sids[i] for i in b] if feas else None))  # fmt: skip

        return model, forward, None
    head_kw = dict(n_out=data.grid["n"], d_hidden=cfg["d_hidden"], n_layers=cfg["n_layers"], arch=head_arch,
                   dropout=cfg["dropout"])  # fmt: skip
    if mode in ("pooled", "finetune"):
        z = chgnet_pooled(data, cache_dir=cache_dir, device=device, progress=progress, num_threads=cfg["num_threads"],
                          pool=cfg.get("pool", "mean"))
        x_mean = z[train_idx].mean(0)
        x_std = np.maximum(z[train_idx].std(0), 1e-6)  # constant features (tiny sets) stay finite
    if mode == "pooled" and data.universal:
        # one model over several absorbers: each pair's own training mean, the pair as a one-hot input
        row_pairs = data.pairs()
        pairs = sorted(set(row_pairs))
        tr_pairs = np.array(row_pairs)[train_idx]
        missing = [p for p in pairs if not (tr_pairs == p).any()]
        if missing:
            raise InputError(f"{', '.join(missing)} {data.kind}", "no training spectra in the split",
                             "simulate more sites of these absorbers, or train per element")  # fmt: skip
        y_means = [data.y[train_idx][tr_pairs == p].mean(0).astype(float).tolist() for p in pairs]
        model = PooledForward(head=SpectrumHead(d_embed=z.shape[1] + len(pairs), **head_kw), x_mean=x_mean.tolist(),
                              x_std=x_std.tolist(), y_mean=y_means, pairs=pairs).to(dev)  # fmt: skip
        zt = torch.from_numpy(z).to(dev)
        return model, (lambda m, b: m(zt[b], [row_pairs[i] for i in b])), None
    if mode == "pooled":
        model = PooledForward(head=SpectrumHead(d_embed=z.shape[1], **head_kw), x_mean=x_mean.tolist(),
                              x_std=x_std.tolist(), y_mean=y_mean).to(dev)  # fmt: skip
        zt = torch.from_numpy(z).to(dev)
        return model, (lambda m, b: m(zt[b])), None
    if mode == "finetune":
        encoder = make_encoder("chgnet", frozen=False)
        model = GraphForward(model=ForwardModel(encoder=encoder, head=SpectrumHead(d_embed=encoder.d_out, **head_kw)),
                             y_mean=y_mean, x_mean=x_mean.tolist(), x_std=x_std.tolist())  # fmt: skip
        graph_tag = "chgnet"
    else:
        encoder = make_encoder(enc_name)
        model = GraphForward(model=ForwardModel(encoder=encoder, head=SpectrumHead(d_embed=encoder.d_out, **head_kw)),
                             y_mean=y_mean)  # fmt: skip
        graph_tag = f"pyg:{encoder.cutoff}"
    model = model.to(dev)
    graphs = _graphs(data, encoder, graph_tag)
    if mode == "finetune" and cfg.get("pool") == "absorber":  # the absorber's own row, as frozen
        masks = _masks(data, [[] for _ in range(data.n)])
    else:
        masks = _masks(data, site_neighbors(data, cache_dir=cache_dir))
    sids = data.structure_ids.tolist()

    def forward(m, b):
        return m([graphs[sids[i]] for i in b], [masks[i] for i in b])

    groups = None
    if mode == "finetune":
        enc_params = list(model.model.encoder.parameters())
        enc_ids = {id(p) for p in enc_params}
        groups = [
            {"params": enc_params, "lr": cfg["lr"] * cfg["encoder_lr_scale"]},
            {"params": [p for p in model.parameters() if id(p) not in enc_ids]},
        ]
    return model, forward, groups


def prepare_split(data: ForwardData, *, seed: int, fractions=(0.8, 0.1, 0.1), cache_dir=None) -> tuple[dict[int, str], dict]:
    """Material split of *data* and a JSON summary of it (counts, twin groups, method)."""
    if "twin_groups" not in data.cache:
        data.cache["twin_groups"] = twin_groups(data.structures, data.formulas, hashes=data.hashes, cache_dir=cache_dir)
    groups = data.cache["twin_groups"]
    weights: dict[int, int] = defaultdict(int)
    for s in data.structure_ids.tolist():
        weights[s] += 1
    split = split_materials(groups, weights, data.hashes, seed=seed, fractions=tuple(fractions))
    counts = {s: {"materials": 0, "spectra": 0} for s in ("train", "val", "test")}
    for sid, side in split.items():
        counts[side]["materials"] += 1
        counts[side]["spectra"] += weights[sid]
    summary = {
        "seed": seed, "fractions": list(fractions), "by": "material", "grouping": MATCHER,
        "n_groups": len(groups), "n_twin_groups": sum(len(g) > 1 for g in groups), "counts": counts,
    }  # fmt: skip
    return split, summary


def train_forward(
    engine: sa.Engine, *, element: str | None, edge: str = "K", kind: str = "XANES", source: str | None = None,
    config: TrainConfig | None = None, models_dir: str | Path | None = None, cache_dir: str | Path | None = None,
    data: ForwardData | None = None, register: bool = True, split: dict[int, str] | None = None,
    progress_factory: Callable | None = None, epoch_progress: Callable | None = None,
    min_spectra: int = 1, min_materials: int = 1,
) -> TrainResult:  # fmt: skip
    """Train (``config.seeds`` seeds), evaluate on the held-out materials and register the model.

    *progress_factory(total, label)*: context manager yielding ``advance(n)`` (CHGNet embedding);
    *epoch_progress(total_epochs, label)*: context manager yielding
    ``update(epoch, train_mse, val_mse, best_epoch)``. *data* reuses an already loaded dataset
    (and its feature cache) across archs. Returns the registry entry (None with register=False).
    *element* None trains one model over every (element, edge) of *kind* in the store (absorber and
    edge are inputs; only ``paths`` has them) and adds per-pair test metrics. *split* (structure id ->
    train/val/test) replaces the seeded split, so models on different datasets share test materials.
    """
    config = config or TrainConfig()
    cfg = config.resolved()
    url = engine.url.render_as_string(hide_password=False)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(url)
    models_dir = Path(models_dir) if models_dir is not None else registry.default_models_dir(url)
    old_threads = torch.get_num_threads()
    if cfg["num_threads"]:
        torch.set_num_threads(cfg["num_threads"])
    try:
        if element is None and (ARCHS[config.arch][0] not in ("paths", "pooled") or cfg["mode"] == "finetune"):
            raise InputError(f"--arch {config.arch}", "has no absorber input, so it cannot be one model for all "
                             "elements", "train it per element, or use --arch paths / xastruct")  # fmt: skip
        if data is None:
            data = (load_universal_data(engine, kind=kind, source=source, min_spectra=min_spectra,
                                        min_materials=min_materials) if element is None else
                    load_forward_data(engine, element=element, edge=edge, kind=kind, source=source))  # fmt: skip
        if split is None:
            split, split_summary = prepare_split(data, seed=cfg["split_seed"], fractions=cfg["fractions"],
                                                 cache_dir=cache_dir)  # fmt: skip
        else:
            split = {s: split[s] for s in _unique_structures(data)}  # KeyError = a structure the split lacks
            split_summary = {"by": "material", "given": True, "counts": {
                side: {"materials": sum(v == side for v in split.values()),
                       "spectra": int(sum(split[s] == side for s in data.structure_ids.tolist()))}
                for side in ("train", "val", "test")}}  # fmt: skip
        side = np.array([split[s] for s in data.structure_ids.tolist()])
        idx = {s: np.flatnonzero(side == s) for s in ("train", "val", "test")}
        x = data.x
        embed_progress = None
        bar = contextlib.nullcontext()
        if progress_factory is not None and cfg["mode"] in ("pooled", "finetune") and "chgnet_pooled" not in data.cache:
            bar = progress_factory(len(_unique_structures(data)), "CHGNet embeddings")
        members, per_seed, fits, ckpts = [], [], [], []
        t0 = time.perf_counter()
        with bar as advance:
            if advance is not None:
                seen = [0]

                def embed_progress(done, total):
                    advance(done - seen[0])
                    seen[0] = done

            n_members = 1 if cfg["mode"] == "mean" else cfg["seeds"]
            for seed in range(n_members):
                model, forward, groups = _build(cfg, data, idx["train"], cache_dir=cache_dir, device=cfg["device"],
                                                progress=embed_progress, seed=seed)  # fmt: skip
                y = torch.from_numpy(data.y).to(pick_device(cfg["device"]))
                if cfg["mode"] != "mean":
                    label = f"{cfg['arch']}{'_finetune' if cfg['mode'] == 'finetune' else ''} seed {seed}"
                    ectx = epoch_progress(cfg["epochs"], label) if epoch_progress else contextlib.nullcontext()
                    ckpt = _checkpoint_path(cache_dir, cfg, data, idx, seed)
                    ckpt.parent.mkdir(parents=True, exist_ok=True)
                    ckpts.append(ckpt)
                    with ectx as on_epoch:
                        fits.append(_fit(
                            model, forward, y, idx["train"], idx["val"], seed=seed, epochs=cfg["epochs"], lr=cfg["lr"],
                            weight_decay=cfg["weight_decay"], batch_size=cfg["batch_size"], patience=cfg["patience"],
                            max_minutes=cfg["max_minutes"], param_groups=groups, on_epoch=on_epoch,
                            keep_last=cfg["keep_last"], checkpoint=ckpt,
                        ))  # fmt: skip
                bs = cfg["batch_size"] or 64
                preds = {s: _predict(model, forward, i, bs) for s, i in idx.items()}
                per_seed.append({s: spectrum_metrics(preds[s], data.y[i], x) for s, i in idx.items()})
                members.append((model.eval(), preds))
        ens = {s: np.mean([p[s] for _, p in members], axis=0) for s in idx}
        metrics = {
            "summary": summarize(per_seed),
            "per_seed": per_seed,
            "ensemble": {s: spectrum_metrics(ens[s], data.y[i], x) for s, i in idx.items()},
            "n_seeds": len(members),
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        # the uncertainty band: seed spread scaled on the validation materials, checked on the test ones
        band = band_calibration(np.stack([p["val"] for _, p in members]), data.y[idx["val"]])
        if band is not None:
            test_band = band_calibration(np.stack([p["test"] for _, p in members]), data.y[idx["test"]],
                                         scale=band["scale"])
            metrics["band"] = {"val": band, "test": test_band, "n_val": len(idx["val"]), "n_test": len(idx["test"])}
        if data.universal:
            metrics["per_pair"] = _per_pair_metrics(data, idx, ens, [p for _, p in members])
        models = [m.cpu() for m, _ in members]
        cfg_json = {
            **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()},
            "source": data.source, "split": split_summary, "fits": fits, "skipped_spectra": data.skipped,
            "features": _feature_doc(cfg), "device_used": str(pick_device(cfg["device"])),
            "torch_threads": torch.get_num_threads(),
        }  # fmt: skip
        if band is not None:
            cfg_json["band_scale"] = band["scale"]
        if data.universal:
            cfg_json["pairs"] = sorted(set(data.pairs()))
        entry = None
        if register:
            split_doc = {
                s: sorted([data.hashes[i] for i, v in split.items() if v == s]) for s in ("train", "val", "test")
            }
            split_doc["names"] = {data.hashes[i]: data.names[i] for i in split}
            entry = registry.register(
                engine, task="forward", element=data.element, edge=data.edge, kind=data.kind,
                arch=config.registry_arch, members=models, grid=data.grid, split_seed=cfg["split_seed"],
                data_fingerprint=data.fingerprint(), metrics=_json_safe(metrics), config=_json_safe(cfg_json),
                models_dir=models_dir,
                files={"split.json": split_doc},
            )  # fmt: skip
            entry.members = models
        for c, f in zip(ckpts, fits):
            # a finished seed's training state is no longer needed; one cut by the time cap is kept,
            # so a rerun with a longer cap continues it
            if f["stopped"] != "time":
                c.unlink(missing_ok=True)
        return TrainResult(entry=entry, members=models, metrics=metrics, split=split, data=data, config=cfg_json,
                           predictions={sd: (idx[sd], ens[sd]) for sd in idx})  # fmt: skip
    finally:
        torch.set_num_threads(old_threads)


def _per_pair_metrics(data: ForwardData, idx: dict, ens: dict, per_seed: list[dict]) -> dict:
    """{"El:edge": {"n_train", "n_test", "test" (ensemble), "test_mae_per_seed", "mean_baseline_mae"}}:
    a universal model's test scores per absorber, beside that absorber's training-mean spectrum."""
    pairs = np.array(data.pairs())
    out = {}
    for pair in sorted(set(pairs.tolist())):
        tr = idx["train"][pairs[idx["train"]] == pair]
        sel = pairs[idx["test"]] == pair
        te = idx["test"][sel]
        doc = {"n_train": int(len(tr)), "n_test": int(len(te))}
        if len(te):
            doc["test"] = spectrum_metrics(ens["test"][sel], data.y[te], data.x)
            doc["test_mae_per_seed"] = [float(np.abs(p["test"][sel] - data.y[te]).mean()) for p in per_seed]
            if len(tr):
                doc["mean_baseline_mae"] = float(np.abs(data.y[tr].mean(0) - data.y[te]).mean())
        out[pair] = doc
    return out


def _json_safe(x: Any) -> Any:
    """NaN/inf -> None (a diverged run must still register as valid JSON on every backend)."""
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _feature_doc(cfg: dict) -> dict:
    from .embed import DEFAULT_MODEL

    mode = cfg["mode"]
    if mode == "mean":
        return {"input": "none"}
    if mode == "paths":
        doc = {"input": "neighbours", "r_max": cfg["r_max"], "per_neighbour": "Z, distance (pymatgen get_neighbors)",
               "atoms": "element embedding"}
        if cfg.get("chgnet_atoms"):
            doc.update(atoms="element embedding + projected CHGNet atom_fea", chgnet_model=DEFAULT_MODEL)
        if cfg.get("path_focus"):
            doc["per_neighbour"] += ("; focusing: cosine, Z and relative distance of the closer atom most in "
                                     "line with it (within 45 degrees)")
        return doc
    shell = "mean over absorber + CrystalNN first shell (site indices, periodic images once)"
    pool = shell if mode == "graph" else {  # the GNN baselines always pool absorber + first shell
        "mean": shell, "absorber": "the absorber's own row",
        "concat": "[absorber row, mean over the CrystalNN first shell]"}[cfg.get("pool", "mean")]  # fmt: skip
    if mode == "pooled":
        return {"input": "pooled", "encoder": "chgnet", "chgnet_model": DEFAULT_MODEL, "layer": "atom_fea", "pool": pool}
    return {"input": "graph", "encoder": "chgnet" if mode == "finetune" else ARCHS[cfg["arch"]][2], "pool": pool}


# ------------------------------------------------------------------------------------ prediction


def predict_sites(
    entry: registry.ModelEntry, structure: Any, site_indices: Sequence[int], *, device: str = "auto",
    cache_dir: str | Path | None = None, num_threads: int | None = None, edge: str | None = None,
) -> np.ndarray:  # fmt: skip
    """Spectra of *site_indices* of *structure* from every member: (n_members, n_sites, n_grid).
    *edge*: for a model over several absorbers (element None), the edge to predict (default K)."""
    if not entry.members:
        raise ValueError(f"model {entry.name}: members not loaded (use registry.load)")
    sites = [int(i) for i in site_indices]
    for i in sites:
        if not 0 <= i < len(structure):
            raise InputError(f"site {i}", f"out of range for a {len(structure)}-site structure")
    mode = (entry.config or {}).get("mode")
    dev = pick_device(device)
    members = [m.to(dev).eval() for m in entry.members]
    with torch.no_grad():
        if mode == "mean":
            return np.stack([m(len(sites)).cpu().numpy() for m in members])
        if mode == "paths":
            x = path_inputs(entry, [(structure, i) for i in sites], edge=edge, device=dev, cache_dir=cache_dir)
            return np.stack([m(*x).cpu().numpy() for m in members])
        pool = entry.config.get("pool", "mean")  # models from before the option pooled by the mean
        nbrs = [[] if pool == "absorber" else crystalnn_neighbors(structure, i)[0] for i in sites]
        if mode == "pooled":
            from .embed import chgnet_site_embeddings, pooled_embedding

            model_name = entry.config.get("features", {}).get("chgnet_model")
            kw = {"model_name": model_name} if model_name else {}
            feas = chgnet_site_embeddings([structure], device=dev, num_threads=num_threads,
                                          cache_dir=Path(cache_dir) / "chgnet" if cache_dir else None, **kw)[0]  # fmt: skip
            z = torch.from_numpy(np.stack([pooled_embedding(feas, None, i, neighbors=nb, pool=pool)
                                           for i, nb in zip(sites, nbrs)]))
            pairs = pooled_pairs(entry, structure, sites, edge=edge)
            return np.stack([m(z, pairs).cpu().numpy() for m in members])
        if mode in ("graph", "finetune"):
            from .embed import absorber_mask

            masks = [absorber_mask(len(structure), i, neighbors=nb) for i, nb in zip(sites, nbrs)]
            out = []
            for m in members:
                g = m.featurize(structure)
                out.append(m([g] * len(sites), masks).cpu().numpy())
            return np.stack(out)
    raise ValueError(f"model {entry.name}: unknown mode {mode!r} in its config")


def calibrate_band(engine: sa.Engine, entry: registry.ModelEntry, *, device: str = "auto",
                   cache_dir: str | Path | None = None, progress_factory: Callable | None = None) -> dict:
    """Fit *entry*'s ``band_scale`` after the fact, on its own validation materials (its artifact's
    split.json) and the store's spectra of them, as `train forward` now does at the end of training;
    also reports the band's coverage on its test materials. Writes the scale and the ``band`` metrics
    into the registry row and the artifact's meta.json (the weights are untouched). For models
    trained before the band was calibrated, e.g. the shipped ones."""
    if entry.task != "forward":
        raise InputError(f"model {entry.name}", "is not a forward model", "calibrate a forward model's band")
    if len(entry.members or []) < 2:
        raise InputError(f"model {entry.name}", f"has {len(entry.members or [])} member(s)",
                         "a band needs several seeds: retrain with --seeds 3")
    split_file = Path(entry.artifact) / "split.json"
    if not split_file.exists():
        raise InputError(str(split_file), "missing: the model's split is unknown", "retrain the model")
    split = json.loads(split_file.read_text())
    cfg = entry.config or {}
    if entry.element is None:
        pairs = [tuple(p.split(":")) for p in cfg.get("pairs", [])]
        data = load_universal_data(engine, kind=entry.kind, pairs=pairs or None, source=cfg.get("source"))
    else:
        data = load_forward_data(engine, element=entry.element, edge=entry.edge, kind=entry.kind,
                                 source=cfg.get("source"))
    if data.grid != entry.grid:
        raise InputError(f"model {entry.name}", f"grid {entry.grid} differs from the store's {data.grid}",
                         "calibrate on a store whose spectra use the model's grid")
    side_of = {h: side for side in ("train", "val", "test") for h in split.get(side, [])}
    rows = {side: [i for i in range(data.n) if side_of.get(data.hashes[int(data.structure_ids[i])]) == side]
            for side in ("val", "test")}
    if not rows["val"]:
        raise InputError(f"model {entry.name}", "none of its validation materials has a spectrum in this store",
                         "calibrate on the store it was trained from")
    edges = data.pairs()
    preds: dict[int, np.ndarray] = {}
    todo = rows["val"] + rows["test"]
    by_struct: dict[tuple, list[int]] = defaultdict(list)
    for i in todo:
        by_struct[(int(data.structure_ids[i]), edges[i].split(":")[1])].append(i)
    bar = progress_factory(len(todo), "validation + test sites") if progress_factory else contextlib.nullcontext()
    with bar as advance:
        for (sid, edge), items in by_struct.items():
            out = predict_sites(entry, data.structures[sid], [int(data.site_indices[i]) for i in items],
                                device=device, cache_dir=cache_dir, edge=edge)  # (members, sites, grid)
            for j, i in enumerate(items):
                preds[i] = out[:, j]
            if advance:
                advance(len(items))
    stack = lambda side: np.stack([preds[i] for i in rows[side]], axis=1)  # noqa: E731
    band = band_calibration(stack("val"), data.y[rows["val"]])
    test = band_calibration(stack("test"), data.y[rows["test"]], scale=band["scale"]) if rows["test"] else None
    result = {"val": band, "test": test, "n_val": len(rows["val"]), "n_test": len(rows["test"])}
    config = {**cfg, "band_scale": band["scale"]}
    metrics = {**(entry.metrics or {}), "band": result}
    registry.update_documents(engine, entry, config=_json_safe(config), metrics=_json_safe(metrics))
    entry.config, entry.metrics = config, metrics
    return result


def resolve_structure(engine: sa.Engine, ref: str) -> tuple[str, Any]:
    """(name, Structure) of a structure file holding one structure, or of a stored structure named
    ``structure:<id>`` / ``structure:<source_id>``."""
    from .readers import read_structures

    if ref.startswith(store.STRUCTURE_REF):
        return store.stored_structure(engine, ref)
    if not Path(ref).is_file():
        raise InputError(ref, "no such file", "give a structure file (CIF, POSCAR, ...) or a stored one as structure:<id>")
    structs = read_structures(ref)
    if len(structs) != 1:
        raise InputError(ref, f"holds {len(structs)} structures", "pass a file with one structure")
    return structs[0]


def element_sites(structure: Any, element: str, sites: Sequence[int] = (), *, source: str = "structure"
                  ) -> tuple[list[int], np.ndarray]:  # fmt: skip
    """The *element* sites to predict -- *sites* as given, else one per symmetry orbit -- and each
    one's multiplicity in the cell (what a site-averaged, i.e. measured, spectrum weights it by)."""
    from .labels import equivalent_sites

    idx = [i for i, s in enumerate(structure) if site_element(structure, i) == element]
    if not idx:
        raise InputError(source, f"has no {element} site")
    reps = equivalent_sites(structure)
    if sites:
        bad = [i for i in sites if i not in idx]
        if bad:
            raise InputError(source, f"site(s) {bad} are not {element} sites", f"{element} sites are {idx}")
        return list(sites), np.ones(len(sites))
    chosen = sorted({reps[i] for i in idx})
    return chosen, np.array([sum(reps[i] == s for i in idx) for s in chosen], float)


def site_average(member_preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(members, sites, grid) -> (members, grid): each member's multiplicity-weighted site mean."""
    w = np.asarray(weights, float)
    return np.einsum("msg,s->mg", member_preds, w / w.sum())


def rank_structures(engine: sa.Engine, entry: registry.ModelEntry, refs: Sequence[str], compare_file, *,
                    element: str, edge: str = "K", broaden: float | str | None = None, device: str = "auto",
                    progress: Callable[[int], Any] | None = None) -> list[dict]:  # fmt: skip
    """Candidate structures (files or ``structure:<ref>``) ranked by how well *entry*'s predicted,
    multiplicity-averaged spectrum of their *element* sites explains the spectrum file: XANES by MAE
    after the best rigid shift (and broadening), EXAFS by R^2 after fitting amplitude, disorder and E0
    (:func:`xastruct.match.compare_file`). Best first; each row has the comparison and the curves."""
    from . import match

    rows = []
    for ref in refs:
        name, structure = resolve_structure(engine, ref)
        reps, weights = element_sites(structure, element, source=ref)
        avg = site_average(predict_sites(entry, structure, reps, device=device, edge=edge), weights)
        rows.append({"structure": ref, "name": name, "formula": structure.composition.reduced_formula,
                     "sites": len(reps), "prediction": avg.mean(0)})
        if progress:
            progress(1)
    # the file is read, normalized (and its chi(k) extracted) once, for every candidate at once
    cmp, about = match.compare_file(compare_file, grid_points(entry.grid), np.stack([r["prediction"] for r in rows]),
                                    kind=entry.kind, element=element, edge=edge, labels=[r["name"] for r in rows],
                                    broaden=broaden)
    rows = [{**r, **c, **about} for r, c in zip(rows, cmp)]
    key = (lambda r: -r["r2_fit"]) if entry.kind == "EXAFS" else (lambda r: r["mae"])
    return sorted(rows, key=key)


def pooled_pairs(entry: registry.ModelEntry, structure: Any, sites: Sequence[int], *, edge: str | None = None
                 ) -> list[str] | None:  # fmt: skip
    """Each site's "El:edge" for a pooled model over several absorbers (None for a per-element one)."""
    if entry.element is not None:
        return None
    return [f"{site_element(structure, i)}:{edge or 'K'}" for i in sites]


def site_element(structure: Any, i: int) -> str:
    """Symbol of the majority species on site *i* (a Species with an oxidation state -> its Element)."""
    el = max(structure[i].species.items(), key=lambda kv: kv[1])[0]
    return getattr(el, "element", el).symbol


def serves(entry: registry.ModelEntry, element: str, edge: str) -> bool:
    """Whether *entry* predicts (element, edge): its own pair, or one a universal model trained on."""
    if entry.element is not None:
        return entry.element == element and entry.edge == edge
    return f"{element}:{edge}" in set((entry.config or {}).get("pairs", []))


def path_inputs(entry: registry.ModelEntry, sites: Sequence[tuple[Any, int]], *, edge: str | None = None,
                device=None, atom_feas: Sequence[np.ndarray] | None = None,
                cache_dir: str | Path | None = None) -> tuple:  # fmt: skip
    """:meth:`PathEXAFS.collate` inputs of (structure, site index) pairs; refuses absorbers/edges the
    model never saw (its element embedding for them would be untrained). A model with CHGNet atom
    features gets them from *atom_feas* (one array per pair) or computes them here."""
    from pymatgen.core import Element

    from .models import PathEXAFS

    member = entry.members[0]
    edge = edge or entry.edge or "K"
    za, nbrs = [], []
    for structure, i in sites:
        el = Element(site_element(structure, i))
        if not serves(entry, el.symbol, edge):
            raise InputError(f"site {i} ({el.symbol} {edge})", f"model {entry.name} was not trained on this absorber/edge",
                             "`xastruct models` lists what each model covers")  # fmt: skip
        za.append(el.Z)
        nbrs.append(PathEXAFS.neighbours(structure, i, member.r_max, focus=member.focus))  # as it was trained
    if member.d_atom and atom_feas is None:
        from .embed import chgnet_site_embeddings

        kw = {"model_name": m} if (m := (entry.config or {}).get("features", {}).get("chgnet_model")) else {}
        uniq = {id(s): s for s, _ in sites}
        got = dict(zip(uniq, chgnet_site_embeddings(list(uniq.values()), device=device,
                                                    cache_dir=Path(cache_dir) / "chgnet" if cache_dir else None, **kw)))
        atom_feas = [got[id(s)] for s, _ in sites]
    return PathEXAFS.collate(za, [edge] * len(sites), nbrs, device=device,
                             atom_feas=atom_feas if member.d_atom else None, sites=[i for _, i in sites])  # fmt: skip
