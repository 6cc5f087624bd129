"""simulation jobs table (resumable FEFF runs)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.schema.CreateSequence(sa.Sequence("jobs_id_seq")))
    op.create_table('jobs',
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('jobs_id_seq')"), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('structure_id', sa.BigInteger(), nullable=False),
    sa.Column('site_index', sa.Integer(), nullable=False),
    sa.Column('absorber', sa.String(), nullable=False),
    sa.Column('edge', sa.String(), nullable=False),
    sa.Column('kind', sa.String(), nullable=False),
    sa.Column('code', sa.String(), nullable=False),
    sa.Column('params', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('seconds', sa.Double(), nullable=True),
    sa.Column('spectrum_id', sa.BigInteger(), nullable=True),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=True),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_jobs_status", "jobs", ["status", "code", "kind"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.execute(sa.schema.DropSequence(sa.Sequence("jobs_id_seq")))
