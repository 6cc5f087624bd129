"""The store on DuckDB and PostgreSQL: migrations both ways, idempotent bulk writes, read-only SQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from xastruct import store
from xastruct.errors import ReadOnlyError

TABLES = {"structures", "sites", "spectra", "models", "predictions", "runs", "jobs", "elements"}


def _tables(eng) -> set[str]:
    return set(sa.inspect(eng).get_table_names())


def _struct(h: str) -> dict:
    return dict(source="test", source_id=h, formula="Cu", chemsys="Cu", n_sites=1, content_hash=h,
                structure_json="{}", provenance={"made_by": "test"})


def test_upgrade_downgrade_roundtrip(db_url):
    eng = store.get_engine(db_url)
    assert store.current_revision(eng) == store.head_revision()
    assert TABLES <= _tables(eng)
    with eng.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM spectra_with_labels").scalar() == 0
    store.downgrade(eng, "base")
    assert store.current_revision(eng) is None
    assert not (TABLES & _tables(eng))
    store.upgrade(eng, "head")
    assert TABLES <= _tables(eng)
    # one step down removes only the jobs table
    store.downgrade(eng, "0001")
    assert "jobs" not in _tables(eng) and "spectra" in _tables(eng)
    store.upgrade(eng, "head")
    assert store.current_revision(eng) == store.head_revision()


def test_bulk_insert_is_idempotent_and_transactional(db_url):
    eng = store.get_engine(db_url)
    with eng.begin() as c:
        assert store.bulk_insert(c, "structures", [_struct("a"), _struct("b")]) == 2
    with eng.begin() as c:
        assert store.bulk_insert(c, "structures", [_struct("a"), _struct("c")]) == 1
        ids = store.lookup_ids(c, "structures", "content_hash", ["a", "b", "c"])
    assert len(ids) == 3 and len(set(ids.values())) == 3
    row = dict(key="k1", structure_id=ids["a"], absorber="Cu", edge="K", kind="XANES", source="feff9",
               energies=[8979.0, 8980.5, 8990.0], mu=[0.0, 0.5, 1.0], normalized=True,
               provenance={"path": "x", "params": {"fms": 9.0}})
    # a failing batch leaves nothing behind
    with pytest.raises(Exception):
        with eng.begin() as c:
            store.bulk_insert(c, "spectra", [row])
            c.exec_driver_sql("SELECT * FROM no_such_table")
    with eng.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM spectra").scalar() == 0
    with eng.begin() as c:
        assert store.bulk_insert(c, "spectra", [row]) == 1
        assert store.bulk_insert(c, "spectra", [row]) == 0
    with eng.connect() as c:
        e, mu, sid = c.execute(sa.text("SELECT energies, mu, structure_id FROM spectra")).one()
    assert list(e) == [8979.0, 8980.5, 8990.0] and list(mu) == [0.0, 0.5, 1.0] and sid == ids["a"]


def test_run_record(db_url):
    eng = store.get_engine(db_url)
    with store.run_record(eng, "unit", {"x": 1}) as summary:
        summary["n"] = 3
    with eng.connect() as c:
        status, summ = c.execute(sa.text("SELECT status, summary FROM runs")).one()
    assert status == "done"
    summ = summ if isinstance(summ, dict) else __import__("json").loads(summ)
    assert summ["n"] == 3


@pytest.mark.parametrize(
    "stmt",
    [
        "INSERT INTO structures (source, formula, chemsys, n_sites, content_hash, structure_json) "
        "VALUES ('x','Cu','Cu',1,'zz','{}')",
        "DROP TABLE spectra",
        "CREATE TABLE evil (x INT)",
        "UPDATE structures SET formula = 'X'",
        "DELETE FROM structures",
    ],
)
def test_sql_is_read_only(db_url, stmt):
    eng = store.get_engine(db_url)
    with eng.begin() as c:
        store.bulk_insert(c, "structures", [_struct("a")])
    with pytest.raises(ReadOnlyError, match="read-only"):
        store.readonly_query(db_url, stmt)
    names, rows = store.readonly_query(db_url, "SELECT formula, content_hash FROM structures")
    assert names == ["formula", "content_hash"] and rows == [("Cu", "a")]
    assert "evil" not in _tables(store.get_engine(db_url))


def test_sql_refuses_escapes(db_url, tmp_path):
    store.get_engine(db_url)
    if db_url.startswith("duckdb"):
        bad = f"COPY (SELECT 1) TO '{tmp_path / 'leak.csv'}'"
    else:
        bad = "COMMIT; DROP TABLE spectra"
    with pytest.raises(ReadOnlyError):
        store.readonly_query(db_url, bad)
    assert not (tmp_path / "leak.csv").exists()
    assert "spectra" in _tables(store.get_engine(db_url))


def test_fetch_arrow_binds_parameters_but_not_inside_string_literals(db_url):
    eng = store.get_engine(db_url)
    with eng.connect() as conn:
        # ':word' in a literal (and a '::' cast) must stay as written; :n is the one parameter
        tbl = store.fetch_arrow(conn, "SELECT 'at :n or it''s :x' AS s, CAST(:n AS INTEGER) + 1 AS v, '7'::int AS c",
                                {"n": 41})
    assert tbl.column("s").to_pylist() == ["at :n or it's :x"]
    assert tbl.column("v").to_pylist() == [42] and tbl.column("c").to_pylist() == [7]


def test_elements_table_joins_symbols_to_period_and_group(db_url):
    """Migration 0005's reference table: 118 elements, pymatgen's period / group, joinable."""
    from pymatgen.core import Element

    eng = store.get_engine(db_url)
    with eng.connect() as c:
        rows = c.execute(sa.text("SELECT symbol, z, period, group_number, period_label FROM elements ORDER BY z")).all()
    assert len(rows) == 118 and rows[0][:4] == ("H", 1, 1, 1) and rows[-1][0] == "Og"
    for sym, z, period, group, label in rows[:103]:  # pymatgen's rows/groups, lanthanides/actinides in group 3
        el = Element(sym)
        assert (z, period, group) == (el.Z, el.row, el.group), sym
    assert dict((r[0], r[4]) for r in rows)["Fe"] == "4 (K-Kr)"
    with eng.begin() as c:
        store.bulk_insert(c, "structures", [_struct("a")])
        sid = store.lookup_ids(c, "structures", "content_hash", ["a"])["a"]
        store.bulk_insert(c, "sites", [dict(structure_id=sid, site_index=i, element="Cu", dominant_neighbor=nb)
                                       for i, nb in enumerate(["O", "S", "Se", "O"])])
    with eng.connect() as c:
        got = c.execute(sa.text("SELECT e.period, count(*) FROM sites s JOIN elements e ON e.symbol = s.dominant_neighbor "
                                "GROUP BY e.period ORDER BY e.period")).all()
    assert [tuple(r) for r in got] == [(2, 2), (3, 1), (4, 1)]
    store.downgrade(eng, "0004")
    assert "elements" not in _tables(eng)
    store.upgrade(eng, "head")
    with eng.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM elements").scalar() == 118


def test_example_queries_run(duck_url):
    """Every statement of sql/examples/*.sql (DuckDB syntax, PostgreSQL differences noted in the file)
    parses and runs, here on an empty store."""
    db_url = duck_url
    eng = store.get_engine(db_url)
    files = sorted((store.SQL_DIR / "examples").glob("*.sql"))
    assert files
    n = 0
    for f in files:
        text = "\n".join(ln for ln in f.read_text().splitlines() if not ln.strip().startswith("--"))
        for stmt in (s.strip() for s in text.split(";")):
            if stmt:
                cols, _rows = store.readonly_query(db_url, stmt)
                assert cols, (f.name, stmt[:80])
                n += 1
    assert n >= 5
    eng.dispose()
