"""`xastruct db upgrade|downgrade|current`."""

from __future__ import annotations

import click

from .. import store
from .common import db_option, out


@click.group("db")
def db_group() -> None:
    """Migrate the store (Alembic): upgrade, downgrade, current."""


@db_group.command("upgrade")
@click.argument("revision", default="head")
@db_option
def upgrade(revision: str, db: str | None) -> None:
    """Upgrade the store to REVISION (default head)."""
    eng = store.get_engine(db, migrate=False)
    store.upgrade(eng, revision)
    out.print(f"store at revision {store.current_revision(eng)}")


@db_group.command("downgrade")
@click.argument("revision", default="base")
@db_option
def downgrade(revision: str, db: str | None) -> None:
    """Downgrade the store to REVISION (default base: drops every table)."""
    eng = store.get_engine(db, migrate=False)
    store.downgrade(eng, revision)
    out.print(f"store at revision {store.current_revision(eng) or 'base'}")


@db_group.command("current")
@db_option
def current(db: str | None) -> None:
    """Print the store's migration revision and the code's head."""
    eng = store.get_engine(db, migrate=False)
    out.print(f"current: {store.current_revision(eng) or 'base'}  head: {store.head_revision()}")


COMMANDS = [db_group]
