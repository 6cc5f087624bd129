"""Alembic environment: run with xastruct.store.upgrade/downgrade or `xastruct db ...`."""

from alembic import context
from sqlalchemy import create_engine

import xastruct.store  # noqa: F401  (registers the DuckDB alembic impl)
from xastruct.schema import metadata

config = context.config


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        context.configure(connection=connection, target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()


run()
