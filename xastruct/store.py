"""The SQL store: engines, migrations, bulk Arrow writes, read-only queries.

DuckDB file by default, PostgreSQL by URL. The store migrates itself to head on first use.
Bulk writes go through Arrow (DuckDB scans a registered Arrow table; PostgreSQL gets COPY), never
row-by-row ORM; each batch runs inside the caller's transaction so nothing is half-written.
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from alembic.ddl.impl import DefaultImpl

from . import __version__
from .errors import ReadOnlyError, StoreError
from .schema import metadata

DEFAULT_URL = "duckdb:///./xastruct.duckdb"
ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = ROOT / "migrations"
SQL_DIR = ROOT / "sql"


class DuckDBImpl(DefaultImpl):
    """Alembic knows no 'duckdb' dialect; DuckDB speaks PostgreSQL-flavoured DDL."""

    __dialect__ = "duckdb"
    transactional_ddl = True


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get("XASTRUCT_DB") or DEFAULT_URL


def is_duckdb(engine_or_conn) -> bool:
    return engine_or_conn.dialect.name == "duckdb"


def _duckdb_path(url: str) -> Path | None:
    u = sa.engine.make_url(url)
    if u.get_backend_name() != "duckdb" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


_ENGINES: dict[tuple[str, bool], sa.Engine] = {}


def get_engine(url: str | None = None, *, migrate: bool = True) -> sa.Engine:
    """Engine for `url` (or $XASTRUCT_DB, or the default DuckDB file), migrated to head."""
    url = resolve_url(url)
    cache_key = (url, migrate)
    if cache_key in _ENGINES:
        return _ENGINES[cache_key]
    path = _duckdb_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        engine = sa.create_engine(url)
        with engine.connect():
            pass
    except Exception as exc:  # driver-specific errors: say which URL and what to check
        raise StoreError(
            f"cannot open the store at {url}: {exc} (fix: check --db / XASTRUCT_DB; a DuckDB file "
            "allows one writing process at a time, so close other xastruct commands on it)"
        ) from exc
    if migrate:
        from alembic.runtime.migration import MigrationContext

        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
        if current != head_revision():
            upgrade(engine, "head")
    _ENGINES[cache_key] = engine
    return engine


def dispose_engines() -> None:
    for eng in _ENGINES.values():
        eng.dispose()
    _ENGINES.clear()


# ------------------------------------------------------------------------------------- migrations
def alembic_config(engine: sa.Engine | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if engine is not None:
        cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _run_alembic(engine: sa.Engine, fn, revision: str) -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        fn(cfg, revision)


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    from alembic import command

    _run_alembic(engine, command.upgrade, revision)


def downgrade(engine: sa.Engine, revision: str = "base") -> None:
    from alembic import command

    _run_alembic(engine, command.downgrade, revision)


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def view_sql(name: str, revision: str | None = None) -> str:
    """SQL text of a view in sql/views (migrations create views from these files). *revision*: the
    view as that migration created it (sql/views/history/<name>.<revision>.sql), frozen so an old
    migration still runs on a fresh store after a later one changed the view."""
    if revision is not None:
        return (SQL_DIR / "views" / "history" / f"{name}.{revision}.sql").read_text()
    return (SQL_DIR / "views" / f"{name}.sql").read_text()


# ------------------------------------------------------------------------------------ bulk writes
def _jsonify(value: Any) -> Any:
    # a str is taken as JSON text already (e.g. read back from parquet), not re-encoded
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=float)


def to_arrow(rows: Sequence[dict], table: str) -> pa.Table:
    """Rows (dicts) -> Arrow table typed after the schema; JSON columns become JSON text."""
    # a column present in any row (rows may differ: e.g. only neighbour predictions carry a period)
    names = [c.name for c in metadata.tables[table].columns if any(c.name in r for r in rows)]
    return columns_to_arrow({n: [r.get(n) for r in rows] for n in names}, table)


def columns_to_arrow(columns: dict[str, Any], table: str) -> pa.Table:
    """Columns (name -> list or 1-D numpy array, all one length) -> Arrow table typed after the
    schema. Numeric numpy columns go to Arrow without a Python loop; JSON values that are str are
    taken as JSON text; array columns take lists or ndarrays (None = NULL)."""
    tbl = metadata.tables[table]
    arrays, fields = [], []
    for col in (c for c in tbl.columns if c.name in columns):
        values = columns[col.name]
        t = col.type
        if isinstance(t, sa.JSON):
            values = [_jsonify(v) for v in values]
            typ = pa.string()
        elif isinstance(t, sa.ARRAY):
            values = [None if v is None else np.asarray(v, dtype=float).tolist() for v in values]
            typ = pa.list_(pa.float64())
        elif isinstance(t, sa.Double):
            typ = pa.float64()
        elif isinstance(t, (sa.BigInteger, sa.Integer)):
            typ = pa.int64()
        elif isinstance(t, sa.Boolean):
            typ = pa.bool_()
        elif isinstance(t, sa.DateTime):
            typ = pa.timestamp("us")
        else:
            typ = pa.string()
        arrays.append(pa.array(values, type=typ))
        fields.append(pa.field(col.name, typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _unique_key(table: str) -> list[str] | None:
    """The columns of the table's (single) natural-key unique constraint, if it has one."""
    keys = [[c.name for c in k.columns] for k in metadata.tables[table].constraints
            if isinstance(k, sa.UniqueConstraint)]
    return keys[0] if len(keys) == 1 else None


def bulk_insert(conn: sa.Connection, table: str, rows: Sequence[dict] | pa.Table) -> int:
    """Insert rows, skipping those whose unique key already exists. Returns rows inserted.

    Runs inside the caller's transaction (use ``with engine.begin() as conn``).
    """
    data = rows if isinstance(rows, pa.Table) else (to_arrow(rows, table) if rows else None)
    if data is None or data.num_rows == 0:
        return 0
    cols = data.column_names
    col_list = ", ".join(f'"{c}"' for c in cols)
    json_cols = {c.name for c in metadata.tables[table].columns if isinstance(c.type, sa.JSON)}
    if is_duckdb(conn):
        raw = conn.connection.driver_connection
        name = f"_xastruct_batch_{table}"
        raw.register(name, data)
        try:
            select = ", ".join(
                f'CAST("{c}" AS JSON)' if c in json_cols else f'"{c}"' for c in cols
            )
            # DuckDB's ON CONFLICT DO NOTHING costs ~0.1 ms a row (3 s for 26k predictions); an anti
            # join on the natural key plus in-batch de-duplication does the same in ~50 ms. Safe
            # because DuckDB has one writer and this runs inside its transaction.
            ukey = _unique_key(table)
            if ukey and set(ukey) <= set(cols):
                on = " AND ".join(f'b."{c}" = t."{c}"' for c in ukey)
                part = ", ".join(f'b."{c}"' for c in ukey)
                sql = (f"INSERT INTO {table} ({col_list}) SELECT {select} FROM {name} b "
                       f"WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE {on}) "
                       f"QUALIFY row_number() OVER (PARTITION BY {part}) = 1")
            else:
                sql = f"INSERT INTO {table} ({col_list}) SELECT {select} FROM {name} ON CONFLICT DO NOTHING"
            # DuckDB returns the number of rows actually inserted.
            inserted = conn.exec_driver_sql(sql).scalar()
        finally:
            raw.unregister(name)
        return int(inserted or 0)
    # PostgreSQL: COPY into a temp table, then one INSERT ... ON CONFLICT DO NOTHING.
    raw = conn.connection.driver_connection
    tmp = f"_xastruct_batch_{table}"
    with raw.cursor() as cur:
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {tmp} (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        cur.execute(f"TRUNCATE {tmp}")
        with cur.copy(f"COPY {tmp} ({col_list}) FROM STDIN") as copy:
            for row in data.to_pylist():
                copy.write_row([row[c] for c in cols])
        cur.execute(
            f"INSERT INTO {table} ({col_list}) SELECT {col_list} FROM {tmp} ON CONFLICT DO NOTHING"
        )
        n = cur.rowcount
        cur.execute(f"TRUNCATE {tmp}")
    return int(n)


def lookup_ids(conn: sa.Connection, table: str, key: str, values: Iterable) -> dict:
    """Map natural-key value -> id for existing rows (chunked IN queries)."""
    values = list(dict.fromkeys(values))
    out: dict = {}
    tbl = metadata.tables[table]
    for i in range(0, len(values), 5000):
        chunk = values[i : i + 5000]
        q = sa.select(tbl.c[key], tbl.c.id).where(tbl.c[key].in_(chunk))
        out.update({k: v for k, v in conn.execute(q)})
    return out


def site_ids(conn: sa.Connection, structure_ids: Iterable[int]) -> dict[tuple[int, int], int]:
    """(structure_id, site_index) -> site id for the given structures."""
    from .schema import sites

    ids = list(dict.fromkeys(structure_ids))
    out: dict[tuple[int, int], int] = {}
    for i in range(0, len(ids), 5000):
        q = sa.select(sites.c.structure_id, sites.c.site_index, sites.c.id).where(
            sites.c.structure_id.in_(ids[i : i + 5000])
        )
        out.update({(s, j): k for s, j, k in conn.execute(q)})
    return out


# ------------------------------------------------------------------------------------ Arrow reads
# :name parameters outside '...' literals (which may contain colons); '::' casts are not parameters
_PARAM = re.compile(r"'(?:[^']|'')*'|(?<!:):(\w+)")


#: how a stored structure is named where a structure file is expected (e.g. `predict spectrum`)
STRUCTURE_REF = "structure:"


def stored_structure(engine: sa.Engine, ref: str):
    """``structure:<id>`` or ``structure:<source_id>`` (e.g. ``structure:mp-361``,
    ``structure:aflow:AB_hP4_186_b_b:ZnO``) -> (name, pymatgen Structure) from the store."""
    from pymatgen.core import Structure

    from .errors import InputError
    from .schema import structures

    key = ref[len(STRUCTURE_REF):] if ref.startswith(STRUCTURE_REF) else ref
    q = sa.select(structures.c.id, structures.c.source_id, structures.c.formula, structures.c.structure_json)
    with engine.connect() as conn:
        rows = conn.execute(q.where(structures.c.id == int(key))).all() if key.isdigit() else []
        rows = rows or conn.execute(q.where(structures.c.source_id == key).order_by(structures.c.id)).all()
    if not rows:
        raise InputError(ref, "no stored structure with that id or source id",
                         "look one up: xastruct sql \"SELECT id, source_id, formula FROM structures WHERE formula = 'ZnO'\"")
    if len(rows) > 1:
        raise InputError(ref, f"{len(rows)} stored structures have that source id (ids {[r.id for r in rows][:5]})",
                         "name one by its id: structure:<id>")
    r = rows[0]
    doc = r.structure_json if isinstance(r.structure_json, dict) else json.loads(r.structure_json)
    return r.source_id or f"structure {r.id}", Structure.from_dict(doc)


def structures_with(engine: sa.Engine, element: str, *, source: str | None = None) -> list[str]:
    """``structure:<id>`` of every stored structure containing *element* (optionally of one source),
    oldest first: the candidate list `predict spectrum structure:all ...` ranks."""
    from .schema import structures

    q = sa.select(structures.c.id, structures.c.chemsys).order_by(structures.c.id)
    if source:
        q = q.where(structures.c.source == source)
    with engine.connect() as conn:
        return [f"{STRUCTURE_REF}{i}" for i, cs in conn.execute(q) if element in (cs or "").split("-")]


def fetch_arrow(conn: sa.Connection, query: str | sa.Executable, params: dict | None = None) -> pa.Table:
    """Query -> pyarrow Table. DuckDB hands Arrow over directly: array columns never become Python
    lists (9k spectra: 0.1 s instead of 3.7 s through rows); other drivers go through rows.

    `query` is SQL text with :name parameters or a SQLAlchemy select (rendered with literal values).
    """
    params = params or {}
    if is_duckdb(conn):
        raw = conn.connection.driver_connection
        if isinstance(query, str):
            names: list[str] = []

            def placeholder(m: re.Match) -> str:
                if m.group(1) is None:  # a quoted string literal: left as it is
                    return m.group(0)
                names.append(m.group(1))
                return f"${m.group(1)}"  # duckdb uses $name placeholders

            dsql = _PARAM.sub(placeholder, query)
            rel = raw.sql(dsql, params={k: params[k] for k in dict.fromkeys(names)})
        else:
            rel = raw.sql(str(query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})))
        # the method's name moved between duckdb releases (arrow -> to_arrow_table)
        fetch = getattr(rel, "to_arrow_table", None) or getattr(rel, "arrow")
        return fetch()
    if isinstance(query, str):  # sa.text binds :name even inside quotes unless the colon is escaped
        query = sa.text(_PARAM.sub(lambda m: m.group(0).replace(":", "\\:") if m.group(1) is None else m.group(0),
                                   query))
    res = conn.execute(query, params)
    cols = list(res.keys())
    rows = res.fetchall()
    return pa.table({c: [r[i] for r in rows] for i, c in enumerate(cols)})


def list_column(tbl: pa.Table, name: str, *, allow_null: bool = False):
    """list<double> column -> (offsets, flat values) without a Python loop; with allow_null also a
    per-row null mask (NULL rows have zero length)."""
    col = tbl.column(name).combine_chunks()
    if isinstance(col, pa.ChunkedArray) or pa.types.is_null(col.type):  # no rows / all NULL through rows
        nulls = np.ones(len(col), bool)
        col = pa.array([[]] * len(col), type=pa.list_(pa.float64()))
    else:
        nulls = col.is_null().to_numpy(zero_copy_only=False)
    if nulls.any() and not allow_null:
        raise ValueError(f"{name}: unexpected NULL list")
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=float)
    values, offsets = values[offsets[0]:offsets[-1]], offsets - offsets[0]
    if allow_null:
        return offsets, values, nulls
    return offsets, values


def list_rows(tbl: pa.Table, name: str) -> list:
    """list<double> column -> one float ndarray (a view into one buffer) or None per row."""
    offsets, values, nulls = list_column(tbl, name, allow_null=True)
    return [None if nulls[i] else values[offsets[i]:offsets[i + 1]] for i in range(len(nulls))]


def arrow_rows(tbl: pa.Table) -> list[dict]:
    """Rows of a fetched table as dicts; list<double> columns become float ndarrays (or None)."""
    data = {}
    for c in tbl.column_names:
        t = tbl.schema.field(c).type
        is_list = (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_floating(t.value_type)
        data[c] = list_rows(tbl, c) if is_list else tbl.column(c).to_pylist()
    return [dict(zip(data, vals)) for vals in zip(*data.values())]


# ------------------------------------------------------------------------------------------- runs
@contextmanager
def run_record(engine: sa.Engine, command: str, args: dict):
    """Record a command run in `runs`; yields a dict the caller fills as its summary."""
    from .schema import runs

    with engine.begin() as conn:
        run_id = conn.execute(
            sa.insert(runs)
            .values(
                command=command,
                args=args,
                status="running",
                version=__version__,
                host=socket.gethostname(),
            )
            .returning(runs.c.id)
        ).scalar_one()
    summary: dict = {"run_id": run_id}
    status = "failed"
    try:
        yield summary
        status = "done"
    finally:
        with engine.begin() as conn:
            conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(
                    status=status,
                    summary=json.loads(json.dumps(summary, default=str)),
                    finished_at=sa.func.current_timestamp(),
                )
            )


# ---------------------------------------------------------------------------------- read-only SQL
WRITE_REFUSED = (
    "the sql command is read-only: writes and DDL are refused by the database connection "
    "(fix: use the xastruct ingest/simulate/train/screen commands to change the store)"
)


def readonly_query(url: str | None, query: str) -> tuple[list[str], list[tuple]]:
    """Run one query on a connection the database itself makes read-only."""
    url = resolve_url(url)
    get_engine(url)  # make sure the store exists and is migrated before opening it read-only
    dispose_engines()  # DuckDB cannot open a file read-only while this process holds it writable
    path = _duckdb_path(url)
    if path is not None or sa.engine.make_url(url).get_backend_name() == "duckdb":
        import duckdb

        con = duckdb.connect(
            str(path) if path else ":memory:",
            read_only=path is not None,
            # no COPY TO / ATTACH / file writes: the file is read-only and so is the rest of the disk
            config={"enable_external_access": False},
        )
        try:
            cur = con.execute(query)
            names = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if cur.description else []
        except duckdb.Error as exc:
            if _is_write_refusal(str(exc)):
                raise ReadOnlyError(f"{WRITE_REFUSED}; database said: {exc}") from exc
            raise StoreError(f"query failed: {exc}") from exc
        finally:
            con.close()
        return names, rows
    import psycopg

    u = sa.engine.make_url(url)
    conninfo = dict(
        host=u.host or "localhost",
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        dbname=u.database,
        options="-c default_transaction_read_only=on",
    )
    with psycopg.connect(**{k: v for k, v in conninfo.items() if v is not None}) as con:
        con.read_only = True
        try:
            with con.cursor() as cur:
                # prepare=True uses the extended protocol: exactly one statement, no "COMMIT; DROP"
                cur.execute(query, prepare=True)
                names = [d.name for d in cur.description] if cur.description else []
                rows = cur.fetchall() if cur.description else []
        except psycopg.Error as exc:
            if _is_write_refusal(str(exc)):
                raise ReadOnlyError(f"{WRITE_REFUSED}; database said: {exc}") from exc
            raise StoreError(f"query failed: {exc}") from exc
    return names, rows


def _is_write_refusal(msg: str) -> bool:
    m = msg.lower()
    return any(
        s in m
        for s in (
            "read-only",
            "read only",
            "readonly",
            "cannot execute",
            "external access",
            "file system operations are disabled",
            "multiple commands",
            "cannot insert multiple commands",
        )
    )
