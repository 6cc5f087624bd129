"""elements: a periodic-table reference table (symbol, Z, period, group) to join on in SQL

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""
from alembic import op
import sqlalchemy as sa

from xastruct.periodic import table_rows

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "elements",
        sa.Column("symbol", sa.String(), nullable=False),
        sa.Column("z", sa.Integer(), nullable=False),
        sa.Column("period", sa.Integer(), nullable=False),
        sa.Column("group_number", sa.Integer(), nullable=False),
        sa.Column("period_label", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("symbol"),
        sa.UniqueConstraint("z"),
    )
    op.bulk_insert(table, table_rows())


def downgrade() -> None:
    op.drop_table("elements")
