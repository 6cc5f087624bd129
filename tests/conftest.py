"""Shared fixtures: stores on DuckDB (always) and PostgreSQL (when .ci/run started one)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CU_FEFF9 = SHARED / "cu_k_feff9"
XASLIB = SHARED / "xaslib"
PG_URL = os.environ.get("XASTRUCT_TEST_PG_URL") or ""


def _pg_database():
    """A fresh PostgreSQL database per test (dropped afterwards)."""
    import sqlalchemy as sa

    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"xt_{uuid.uuid4().hex[:12]}"
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    return admin, name, url


@pytest.fixture(params=["duckdb", "postgresql"])
def db_url(request, tmp_path):
    """A store URL on each backend; the PostgreSQL case skips when no server was started."""
    from xastruct import store

    if request.param == "duckdb":
        yield f"duckdb:///{tmp_path / 'store.duckdb'}"
        store.dispose_engines()
        return
    if not PG_URL:
        pytest.skip("XASTRUCT_TEST_PG_URL not set (make test starts a throwaway PostgreSQL)")
    admin, name, url = _pg_database()
    yield url
    store.dispose_engines()
    with admin.connect() as c:
        c.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture
def duck_url(tmp_path):
    from xastruct import store

    yield f"duckdb:///{tmp_path / 'store.duckdb'}"
    store.dispose_engines()


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"shared data not found at {path}")
