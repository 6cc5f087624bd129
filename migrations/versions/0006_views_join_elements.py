"""predictions_vs_truth takes the true neighbour's period from the elements table (was a CASE list)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""
from alembic import op

from xastruct.store import view_sql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# per_element_metrics selects from predictions_vs_truth: both are recreated, in dependency order
VIEWS = ["predictions_vs_truth", "per_element_metrics"]


def upgrade() -> None:
    for v in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {v}")
    for v in VIEWS:
        op.execute(view_sql(v))


def downgrade() -> None:
    for v in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {v}")
    for v in VIEWS:
        op.execute(view_sql(v, "0004"))
