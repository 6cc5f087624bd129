"""Model registry: trained models as artifact directories plus one row each in the `models` table.

A registered model is an *ensemble of seeds*: ``<models_dir>/<name>/seed<i>/`` holds one
:class:`xastruct.models.ModelIO` save (config.json + weights.pt) per training seed, and
``meta.json`` repeats the row (grid, split, metrics, config) so an artifact directory is
self-describing even without the store. Predictions use the mean over members; their spread, times
the ``band_scale`` fitted on the validation materials (forward models), is the uncertainty band.

Names are ``<task>/<element>/<edge>/<kind>/<arch>/v<version>`` (``all`` for a missing element/edge/
kind, e.g. universal models); the version counts up per (task, element, edge, kind, arch).
The artifact directory defaults to ``models/`` next to a DuckDB store file, else ``./models``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .errors import InputError
from .schema import models as models_t
from .store import _duckdb_path

__all__ = [
    "ModelEntry",
    "PRETRAINED_DIR",
    "default_models_dir",
    "import_artifacts",
    "fingerprint",
    "latest",
    "list_models",
    "load",
    "register",
]

META_FILE = "meta.json"
#: Small models shipped with the package (made by `make pretrained`; loaded by `xastruct ingest builtin`).
PRETRAINED_DIR = Path(__file__).resolve().parent / "data" / "pretrained"


def default_models_dir(url: str | None) -> Path:
    """``models/`` next to a DuckDB store file; ``./models`` for PostgreSQL or in-memory stores."""
    from .store import resolve_url

    path = _duckdb_path(resolve_url(url))
    return (path.resolve().parent if path is not None else Path.cwd()) / "models"


def fingerprint(keys: Iterable[str]) -> str:
    """sha256 over the sorted spectrum keys a model was trained/evaluated on."""
    h = hashlib.sha256()
    for k in sorted(keys):
        h.update(k.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(kw_only=True)
class ModelEntry:
    """One `models` row; ``members`` holds the loaded seed models (empty until :func:`load`)."""

    id: int
    name: str
    task: str
    element: str | None
    edge: str | None
    kind: str | None
    arch: str
    version: int
    grid: dict | None
    split_seed: int | None
    data_fingerprint: str | None
    metrics: dict | None
    config: dict | None
    artifact: str | None
    created_at: Any = None
    members: list = field(default_factory=list)

    @classmethod
    def from_row(cls, row) -> ModelEntry:
        m = dict(row._mapping) if hasattr(row, "_mapping") else dict(row)
        for k in ("grid", "metrics", "config"):
            if isinstance(m.get(k), str):  # some drivers hand JSON back as text
                m[k] = json.loads(m[k])
        return cls(**{k: m.get(k) for k in cls.__dataclass_fields__ if k != "members"})

    def member_dirs(self) -> list[Path]:
        if not self.artifact:
            return []
        return sorted(Path(self.artifact).glob("seed*/"), key=lambda p: int(p.name[4:]))


def _part(v: str | None) -> str:
    return "all" if v in (None, "") else str(v)


def _next_version(conn: sa.Connection, task, element, edge, kind, arch) -> int:
    def eq(col, v):
        return col.is_(None) if v is None else col == v

    q = sa.select(sa.func.max(models_t.c.version)).where(
        models_t.c.task == task,
        eq(models_t.c.element, element),
        eq(models_t.c.edge, edge),
        eq(models_t.c.kind, kind),
        models_t.c.arch == arch,
    )
    return int(conn.execute(q).scalar() or 0) + 1


def register(
    engine: sa.Engine,
    *,
    task: str,
    element: str | None,
    edge: str | None,
    kind: str | None,
    arch: str,
    members: Sequence[Any],
    grid: dict | None,
    split_seed: int | None,
    data_fingerprint: str | None,
    metrics: dict | None,
    config: dict | None,
    models_dir: str | Path,
    files: dict[str, Any] | None = None,
) -> ModelEntry:
    """Save *members* (ModelIO models, one per seed) and insert the `models` row.

    *files*: extra JSON documents written into the artifact directory (e.g. the full split).
    The row is inserted only after every file is on disk, so a row never points at a partial
    artifact; a crash leaves at most an unreferenced directory, which the next version skips.
    """
    if not members:
        raise ValueError("register() needs at least one trained member model")
    models_dir = Path(models_dir).resolve()
    for _attempt in range(20):
        with engine.connect() as conn:
            version = _next_version(conn, task, element, edge, kind, arch)
        name = "/".join([task, _part(element), _part(edge), _part(kind), arch, f"v{version}"])
        art = models_dir / name
        while art.exists():  # left over by a crashed run or another store sharing the dir
            version += 1
            name = "/".join([task, _part(element), _part(edge), _part(kind), arch, f"v{version}"])
            art = models_dir / name
        try:
            art.mkdir(parents=True)
        except FileExistsError:
            continue  # a concurrent trainer took this version
        try:
            for i, m in enumerate(members):
                m.save(art / f"seed{i}")
            row = dict(
                name=name,
                task=task,
                element=element,
                edge=edge,
                kind=kind,
                arch=arch,
                version=version,
                grid=grid,
                split_seed=split_seed,
                data_fingerprint=data_fingerprint,
                metrics=metrics,
                config=config,
                artifact=str(art),
            )
            meta = json.loads(json.dumps(row, default=float))
            (art / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            for fname, doc in (files or {}).items():
                (art / fname).write_text(json.dumps(doc, default=float) + "\n")
            with engine.begin() as conn:
                new_id = conn.execute(sa.insert(models_t).values(**meta).returning(models_t.c.id)).scalar_one()
        except sa.exc.IntegrityError:
            shutil.rmtree(art, ignore_errors=True)
            continue  # the name was registered meanwhile (another process): take the next version
        except BaseException:
            shutil.rmtree(art, ignore_errors=True)
            raise
        return ModelEntry(id=int(new_id), **meta)
    raise RuntimeError(f"could not allocate a version for {task}/{element}/{edge}/{kind}/{arch}")


def update_documents(engine: sa.Engine, entry: ModelEntry, *, config: dict | None = None,
                     metrics: dict | None = None) -> None:
    """Replace a registered model's config / metrics JSON (e.g. a calibration fitted after training),
    in its row and in its artifact's meta.json. The meta file is replaced atomically first: a crash
    between the two leaves the row with the older documents, which a rerun overwrites."""
    changes = {k: v for k, v in (("config", config), ("metrics", metrics)) if v is not None}
    if not changes:
        return
    meta_path = Path(entry.artifact) / META_FILE
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        meta.update(json.loads(json.dumps(changes, default=float)))
        tmp = meta_path.with_name(META_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
            tmp.replace(meta_path)
        except OSError as exc:  # e.g. shipped models inside a read-only package install: change nothing
            tmp.unlink(missing_ok=True)
            raise InputError(str(meta_path), f"cannot be rewritten ({exc.strerror or exc})",
                             "make the model's artifact folder writable (or retrain the model)") from None
    with engine.begin() as conn:
        conn.execute(sa.update(models_t).where(models_t.c.id == entry.id).values(**changes))


def _entry(conn: sa.Connection, name_or_id: str | int) -> ModelEntry:
    s = str(name_or_id)
    if s.isdigit():
        row = conn.execute(sa.select(models_t).where(models_t.c.id == int(s))).first()
    else:
        row = conn.execute(sa.select(models_t).where(models_t.c.name == s)).first()
    if row is None:
        raise InputError(f"model {s}", "not in the registry", "list registered models with `xastruct models`")
    return ModelEntry.from_row(row)


def load(engine: sa.Engine, name_or_id: str | int, *, device: str | None = "auto") -> ModelEntry:
    """The registry row for a model name or id, with its member models loaded (eval mode)."""
    from . import train  # noqa: F401  (registers the forward model classes with ModelIO)
    from .models import load_model

    with engine.connect() as conn:
        entry = _entry(conn, name_or_id)
    dirs = entry.member_dirs()
    if not dirs:
        raise InputError(
            f"model {entry.name}",
            f"artifact directory {entry.artifact} holds no seed*/ model",
            "the files were moved or deleted; retrain the model (or restore the directory)",
        )
    entry.members = [load_model(d, device=device) for d in dirs]
    return entry


def latest(
    engine: sa.Engine,
    task: str,
    element: str | None,
    edge: str | None,
    kind: str | None,
    arch: str | None = None,
    *,
    load_members: bool = True,
    device: str | None = "auto",
) -> ModelEntry | None:
    """Newest registered model for (task, element, edge, kind[, arch]), or None."""
    q = sa.select(models_t).where(models_t.c.task == task)
    for col, v in ((models_t.c.element, element), (models_t.c.edge, edge), (models_t.c.kind, kind)):
        q = q.where(col.is_(None) if v is None else col == v)
    if arch is not None:
        q = q.where(models_t.c.arch == arch)
    with engine.connect() as conn:
        row = conn.execute(q.order_by(models_t.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    entry = ModelEntry.from_row(row)
    return load(engine, entry.id, device=device) if load_members else entry


def list_models(engine: sa.Engine, *, task: str | None = None, element: str | None = None) -> list[ModelEntry]:
    """Registry rows (members not loaded), oldest first."""
    q = sa.select(models_t).order_by(models_t.c.id)
    if task:
        q = q.where(models_t.c.task == task)
    if element:
        q = q.where(models_t.c.element == element)
    with engine.connect() as conn:
        return [ModelEntry.from_row(r) for r in conn.execute(q)]


def import_artifacts(engine: sa.Engine, root: str | Path = PRETRAINED_DIR) -> dict:
    """Register every artifact directory under *root* (found by its meta.json) in place.

    The row is the one meta.json repeats, with ``artifact`` pointing at where the directory is now;
    a name already in the registry is left alone, so a rerun adds nothing. Returns counts.
    """
    from . import store

    root = Path(root)
    metas = sorted(root.rglob(META_FILE)) if root.is_dir() else []
    rows = []
    for path in metas:
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(str(path), f"unreadable model metadata: {exc}", "re-export the model directory") from None
        missing = {"name", "task", "arch", "version"} - set(meta)
        if missing:
            raise InputError(str(path), f"model metadata lacks {sorted(missing)}", "re-export the model directory")
        if not sorted(path.parent.glob("seed*")):
            raise InputError(str(path.parent), "no seed*/ member directories next to meta.json",
                             "copy the whole artifact directory")
        row = {c.name: meta.get(c.name) for c in models_t.columns if c.name not in ("id", "created_at")}
        row["artifact"] = str(path.parent.resolve())
        rows.append(row)
    with engine.begin() as conn:
        added = store.bulk_insert(conn, "models", rows) if rows else 0
    return {"found": len(rows), "added": added}
