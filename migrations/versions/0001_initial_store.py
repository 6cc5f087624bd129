"""initial store

Revision ID: 0001
Revises: 
Create Date: 2026-11-25

Tables structures, sites, spectra, models, predictions, runs; id sequences (DuckDB has no
SERIAL); the spectra_with_labels view from sql/views.
"""
from alembic import op
import sqlalchemy as sa

from xastruct.store import view_sql

TABLES = ["structures", "sites", "spectra", "models", "predictions", "runs"]
VIEWS = ["spectra_with_labels"]


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    for t in TABLES:
        op.execute(sa.schema.CreateSequence(sa.Sequence(f"{t}_id_seq")))
    op.create_table('models',
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('models_id_seq')"), nullable=False),
    sa.Column('name', sa.String(), nullable=False),
    sa.Column('task', sa.String(), nullable=False),
    sa.Column('element', sa.String(), nullable=True),
    sa.Column('edge', sa.String(), nullable=True),
    sa.Column('kind', sa.String(), nullable=True),
    sa.Column('arch', sa.String(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('grid', sa.JSON(), nullable=True),
    sa.Column('split_seed', sa.Integer(), nullable=True),
    sa.Column('data_fingerprint', sa.String(), nullable=True),
    sa.Column('metrics', sa.JSON(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=True),
    sa.Column('artifact', sa.String(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('runs',
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('runs_id_seq')"), nullable=False),
    sa.Column('command', sa.String(), nullable=False),
    sa.Column('args', sa.JSON(), nullable=True),
    sa.Column('status', sa.String(), nullable=False),
    sa.Column('summary', sa.JSON(), nullable=True),
    sa.Column('version', sa.String(), nullable=True),
    sa.Column('host', sa.String(), nullable=True),
    sa.Column('started_at', sa.DateTime(), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=True),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('structures',
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('structures_id_seq')"), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('source_id', sa.String(), nullable=True),
    sa.Column('formula', sa.String(), nullable=False),
    sa.Column('chemsys', sa.String(), nullable=False),
    sa.Column('n_sites', sa.Integer(), nullable=False),
    sa.Column('volume', sa.Double(), nullable=True),
    sa.Column('density', sa.Double(), nullable=True),
    sa.Column('spacegroup', sa.String(), nullable=True),
    sa.Column('spacegroup_number', sa.Integer(), nullable=True),
    sa.Column('content_hash', sa.String(), nullable=False),
    sa.Column('structure_json', sa.Text(), nullable=False),
    sa.Column('provenance', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('content_hash')
    )
    op.create_table('sites',
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('sites_id_seq')"), nullable=False),
    sa.Column('structure_id', sa.BigInteger(), nullable=False),
    sa.Column('site_index', sa.Integer(), nullable=False),
    sa.Column('element', sa.String(), nullable=False),
    sa.Column('equivalent_to', sa.Integer(), nullable=True),
    sa.Column('multiplicity', sa.Integer(), nullable=True),
    sa.Column('cn', sa.Integer(), nullable=True),
    sa.Column('mnnd', sa.Double(), nullable=True),
    sa.Column('dominant_neighbor', sa.String(), nullable=True),
    sa.Column('neighbors', sa.JSON(), nullable=True),
    sa.Column('label_method', sa.String(), nullable=True),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('structure_id', 'site_index', name='uq_sites_structure_site')
    )
    op.create_table('spectra',
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('spectra_id_seq')"), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('structure_id', sa.BigInteger(), nullable=True),
    sa.Column('site_id', sa.BigInteger(), nullable=True),
    sa.Column('absorber', sa.String(), nullable=False),
    sa.Column('edge', sa.String(), nullable=False),
    sa.Column('kind', sa.String(), nullable=False),
    sa.Column('source', sa.String(), nullable=False),
    sa.Column('energies', sa.ARRAY(sa.Double()), nullable=False),
    sa.Column('mu', sa.ARRAY(sa.Double()), nullable=False),
    sa.Column('mu_raw', sa.ARRAY(sa.Double()), nullable=True),
    sa.Column('k', sa.ARRAY(sa.Double()), nullable=True),
    sa.Column('chi', sa.ARRAY(sa.Double()), nullable=True),
    sa.Column('e0', sa.Double(), nullable=True),
    sa.Column('edge_step', sa.Double(), nullable=True),
    sa.Column('normalized', sa.Boolean(), nullable=False),
    sa.Column('sample_name', sa.String(), nullable=True),
    sa.Column('provenance', sa.JSON(), nullable=True),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=True),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], ),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_table('predictions',
    sa.Column('id', sa.BigInteger(), server_default=sa.text("nextval('predictions_id_seq')"), nullable=False),
    sa.Column('key', sa.String(), nullable=False),
    sa.Column('model_id', sa.BigInteger(), nullable=False),
    sa.Column('structure_id', sa.BigInteger(), nullable=True),
    sa.Column('site_id', sa.BigInteger(), nullable=True),
    sa.Column('spectrum_id', sa.BigInteger(), nullable=True),
    sa.Column('task', sa.String(), nullable=False),
    sa.Column('value', sa.Double(), nullable=True),
    sa.Column('label', sa.String(), nullable=True),
    sa.Column('uncertainty', sa.Double(), nullable=True),
    sa.Column('probabilities', sa.JSON(), nullable=True),
    sa.Column('energies', sa.ARRAY(sa.Double()), nullable=True),
    sa.Column('mu', sa.ARRAY(sa.Double()), nullable=True),
    sa.Column('run_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(), server_default=sa.text('CURRENT_TIMESTAMP'), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], ),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], ),
    sa.ForeignKeyConstraint(['spectrum_id'], ['spectra.id'], ),
    sa.ForeignKeyConstraint(['structure_id'], ['structures.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )

    if op.get_bind().dialect.name == "postgresql":
        # DuckDB joins by hashing; PostgreSQL wants indexes on the foreign keys users join on.
        op.create_index("ix_sites_structure", "sites", ["structure_id"])
        op.create_index("ix_spectra_structure", "spectra", ["structure_id"])
        op.create_index("ix_spectra_site", "spectra", ["site_id"])
        op.create_index("ix_spectra_absorber", "spectra", ["absorber", "edge", "kind"])
        op.create_index("ix_predictions_model", "predictions", ["model_id"])
    for v in VIEWS:
        op.execute(view_sql(v))

def downgrade() -> None:
    for v in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {v}")
        op.drop_table('predictions')
    op.drop_table('spectra')
    op.drop_table('sites')
    op.drop_table('structures')
    op.drop_table('runs')
    op.drop_table('models')
    for t in TABLES:
        op.execute(sa.schema.DropSequence(sa.Sequence(f"{t}_id_seq")))
