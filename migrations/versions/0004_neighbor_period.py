"""neighbour period: predictions.neighbor_period / period_probability, and the views that show them

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""
from alembic import op
import sqlalchemy as sa

from xastruct.store import view_sql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Views in dependency order (later ones select from earlier ones); recreated with the new columns.
VIEWS = ["latest_predictions", "predictions_vs_truth", "per_element_metrics"]

COLUMNS = [
    sa.Column("neighbor_period", sa.Integer(), nullable=True),  # neighbour task: most probable period
    sa.Column("period_probability", sa.Double(), nullable=True),  # its summed class probability
]


def upgrade() -> None:
    for v in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {v}")
    for col in COLUMNS:
        op.add_column("predictions", col)
    for v in VIEWS:
        op.execute(view_sql(v, "0004"))  # as this migration made them (0006 changed two since)


def downgrade() -> None:
    for v in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {v}")
    for col in reversed(COLUMNS):
        op.drop_column("predictions", col.name)
    for v in VIEWS:
        op.execute(view_sql(v, "0003"))
