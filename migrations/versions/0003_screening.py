"""screening and matching: prediction context columns, matches table, result views

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa

from xastruct.store import view_sql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Views in dependency order (later ones select from earlier ones).
VIEWS = ["latest_predictions", "predictions_vs_truth", "per_element_metrics"]

PREDICTION_COLUMNS = [
    sa.Column("element", sa.String(), nullable=True),  # absorbing element of the target
    sa.Column("edge", sa.String(), nullable=True),
    sa.Column("kind", sa.String(), nullable=True),  # forward: spectrum kind; inverse: input kind(s)
    sa.Column("target", sa.String(), nullable=True),  # site, spectrum, prediction (closed loop)
    sa.Column("input_prediction_id", sa.BigInteger(), nullable=True),  # closed loop: forward row used
    sa.Column("reference_spectrum_id", sa.BigInteger(), nullable=True),  # forward: stored spectrum compared
    sa.Column("reference_mae", sa.Double(), nullable=True),
    sa.Column("reference_cosine", sa.Double(), nullable=True),
]


def upgrade() -> None:
    for col in PREDICTION_COLUMNS:
        op.add_column("predictions", col)
    op.execute(sa.schema.CreateSequence(sa.Sequence("matches_id_seq")))
    op.create_table(
        "matches",
        sa.Column("id", sa.BigInteger(), server_default=sa.text("nextval('matches_id_seq')"), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("query", sa.String(), nullable=False),  # file path or spectrum:<id>
        sa.Column("query_hash", sa.String(), nullable=False),
        sa.Column("element", sa.String(), nullable=False),
        sa.Column("edge", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("against", sa.String(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("candidate", sa.String(), nullable=False),  # reference or predicted
        sa.Column("spectrum_id", sa.BigInteger(), nullable=True),
        sa.Column("prediction_id", sa.BigInteger(), nullable=True),
        sa.Column("structure_id", sa.BigInteger(), nullable=True),
        sa.Column("site_id", sa.BigInteger(), nullable=True),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("shift", sa.Double(), nullable=True),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_predictions_site", "predictions", ["site_id"])
        op.create_index("ix_predictions_spectrum", "predictions", ["spectrum_id"])
        op.create_index("ix_predictions_task", "predictions", ["task", "element"])
        op.create_index("ix_matches_query", "matches", ["query_hash"])
    for v in VIEWS:
        op.execute(view_sql(v, "0003"))


def downgrade() -> None:
    for v in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {v}")
    op.drop_table("matches")
    op.execute(sa.schema.DropSequence(sa.Sequence("matches_id_seq")))
    if op.get_bind().dialect.name == "postgresql":
        for ix in ("ix_predictions_site", "ix_predictions_spectrum", "ix_predictions_task"):
            op.drop_index(ix, table_name="predictions")
    for col in reversed(PREDICTION_COLUMNS):
        op.drop_column("predictions", col.name)
