"""Table definitions: the public, SQL-queryable contract of the store.

Migrations (migrations/versions) create these; the code reads and writes them through SQLAlchemy Core.
Ids come from sequences with a server default so bulk inserts from Arrow need not supply them
(DuckDB has no SERIAL/IDENTITY). Every table has a natural unique key so that re-running any
ingest/simulate/screen step inserts nothing twice (INSERT ... ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

DoubleArray = sa.ARRAY(sa.Double)


def _id(table: str) -> sa.Column:
    seq = f"{table}_id_seq"
    return sa.Column(
        "id", sa.BigInteger, primary_key=True, server_default=sa.text(f"nextval('{seq}')")
    )


def _created() -> sa.Column:
    return sa.Column("created_at", sa.DateTime, server_default=sa.func.current_timestamp())


SEQUENCES = ["structures", "sites", "spectra", "models", "predictions", "runs", "jobs", "matches"]

structures = sa.Table(
    "structures",
    metadata,
    _id("structures"),
    sa.Column("source", sa.String, nullable=False),  # 'mp', 'builtin', 'file', 'feff-tree', ...
    sa.Column("source_id", sa.String),  # e.g. mp-1234, prototype name, file stem
    sa.Column("formula", sa.String, nullable=False),  # reduced formula, e.g. Cu2O
    sa.Column("chemsys", sa.String, nullable=False),  # sorted elements joined by '-', e.g. Cu-O
    sa.Column("n_sites", sa.Integer, nullable=False),
    sa.Column("volume", sa.Double),  # A^3 per cell
    sa.Column("density", sa.Double),  # g/cm^3
    sa.Column("spacegroup", sa.String),
    sa.Column("spacegroup_number", sa.Integer),
    sa.Column("content_hash", sa.String, nullable=False, unique=True),
    sa.Column("structure_json", sa.Text, nullable=False),  # pymatgen Structure.as_dict() as JSON
    sa.Column("provenance", sa.JSON),
    _created(),
)

sites = sa.Table(
    "sites",
    metadata,
    _id("sites"),
    sa.Column("structure_id", sa.BigInteger, sa.ForeignKey("structures.id"), nullable=False),
    sa.Column("site_index", sa.Integer, nullable=False),  # 0-based index into the structure
    sa.Column("element", sa.String, nullable=False),
    sa.Column("equivalent_to", sa.Integer),  # site_index of the symmetry representative
    sa.Column("multiplicity", sa.Integer),  # sites in this symmetry orbit
    sa.Column("cn", sa.Integer),
    sa.Column("mnnd", sa.Double),  # mean distance to the cn neighbours, angstrom
    sa.Column("dominant_neighbor", sa.String),
    sa.Column("neighbors", sa.JSON),  # {"O": 4, ...}
    sa.Column("label_method", sa.String),
    sa.UniqueConstraint("structure_id", "site_index", name="uq_sites_structure_site"),
)

spectra = sa.Table(
    "spectra",
    metadata,
    _id("spectra"),
    # Natural key (hash of source, structure, site, edge, kind, input/file hash): makes reruns no-ops.
    sa.Column("key", sa.String, nullable=False, unique=True),
    sa.Column("structure_id", sa.BigInteger, sa.ForeignKey("structures.id")),  # NULL if measured
    sa.Column("site_id", sa.BigInteger, sa.ForeignKey("sites.id")),  # NULL if averaged/measured
    sa.Column("absorber", sa.String, nullable=False),
    sa.Column("edge", sa.String, nullable=False),  # K, L1, L2, L3
    sa.Column("kind", sa.String, nullable=False),  # XANES, EXAFS
    sa.Column("source", sa.String, nullable=False),  # feff9, feff8l, feff10, mp, xdi, file
    sa.Column("energies", DoubleArray, nullable=False),  # absolute photon energy, eV
    sa.Column("mu", DoubleArray, nullable=False),  # edge-step normalized when normalized=true
    sa.Column("mu_raw", DoubleArray),  # as read/computed before normalization
    sa.Column("k", DoubleArray),  # EXAFS: photoelectron wavenumber, 1/A
    sa.Column("chi", DoubleArray),  # EXAFS: chi(k)
    sa.Column("e0", sa.Double),
    sa.Column("edge_step", sa.Double),
    sa.Column("normalized", sa.Boolean, nullable=False),
    sa.Column("sample_name", sa.String),
    sa.Column("provenance", sa.JSON),  # file path + sha256, code + version, parameters
    sa.Column("run_id", sa.BigInteger),
    _created(),
)

models = sa.Table(
    "models",
    metadata,
    _id("models"),
    sa.Column("name", sa.String, nullable=False, unique=True),  # e.g. forward/Cu/K/XANES/xastruct/v3
    sa.Column("task", sa.String, nullable=False),  # forward, cn, mnnd, neighbor
    sa.Column("element", sa.String),  # NULL for universal models (MNND)
    sa.Column("edge", sa.String),
    sa.Column("kind", sa.String),
    sa.Column("arch", sa.String, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("grid", sa.JSON),  # energy/k grid the model works on
    sa.Column("split_seed", sa.Integer),
    sa.Column("data_fingerprint", sa.String),
    sa.Column("metrics", sa.JSON),  # held-out metrics
    sa.Column("config", sa.JSON),
    sa.Column("artifact", sa.String),  # directory with weights + config JSON
    _created(),
)

predictions = sa.Table(
    "predictions",
    metadata,
    _id("predictions"),
    sa.Column("key", sa.String, nullable=False, unique=True),  # model + target: one row each
    sa.Column("model_id", sa.BigInteger, sa.ForeignKey("models.id"), nullable=False),
    sa.Column("structure_id", sa.BigInteger, sa.ForeignKey("structures.id")),
    sa.Column("site_id", sa.BigInteger, sa.ForeignKey("sites.id")),
    sa.Column("spectrum_id", sa.BigInteger, sa.ForeignKey("spectra.id")),
    sa.Column("task", sa.String, nullable=False),
    sa.Column("value", sa.Double),  # CN or MNND
    sa.Column("label", sa.String),  # neighbour element / CN class
    sa.Column("uncertainty", sa.Double),
    sa.Column("probabilities", sa.JSON),
    sa.Column("energies", DoubleArray),  # forward: predicted spectrum grid
    sa.Column("mu", DoubleArray),
    sa.Column("run_id", sa.BigInteger),
    _created(),
    # added in migration 0003 (screening)
    sa.Column("element", sa.String),  # absorbing element of the target
    sa.Column("edge", sa.String),
    sa.Column("kind", sa.String),  # forward: spectrum kind; inverse: XANES, EXAFS or XANES+EXAFS input
    sa.Column("target", sa.String),  # site (forward/closed loop input), spectrum, prediction (closed loop)
    sa.Column("input_prediction_id", sa.BigInteger),  # closed loop: the forward prediction used as input
    sa.Column("reference_spectrum_id", sa.BigInteger),  # forward: stored spectrum of the same site
    sa.Column("reference_mae", sa.Double),
    sa.Column("reference_cosine", sa.Double),
    # added in migration 0004: neighbour task, the period of the periodic table the class probabilities
    # sum highest over (a spectrum tells neighbours a few Z apart poorly, their period well)
    sa.Column("neighbor_period", sa.Integer),
    sa.Column("period_probability", sa.Double),
)

runs = sa.Table(
    "runs",
    metadata,
    _id("runs"),
    sa.Column("command", sa.String, nullable=False),
    sa.Column("args", sa.JSON),
    sa.Column("status", sa.String, nullable=False),  # running, done, failed
    sa.Column("summary", sa.JSON),
    sa.Column("version", sa.String),
    sa.Column("host", sa.String),
    sa.Column("started_at", sa.DateTime, server_default=sa.func.current_timestamp()),
    sa.Column("finished_at", sa.DateTime),
)

jobs = sa.Table(
    "jobs",
    metadata,
    _id("jobs"),
    # hash(structure content, site, edge, kind, code, params): identical work is one job
    sa.Column("key", sa.String, nullable=False, unique=True),
    sa.Column("structure_id", sa.BigInteger, sa.ForeignKey("structures.id"), nullable=False),
    sa.Column("site_index", sa.Integer, nullable=False),
    sa.Column("absorber", sa.String, nullable=False),
    sa.Column("edge", sa.String, nullable=False),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("code", sa.String, nullable=False),
    sa.Column("params", sa.JSON),
    sa.Column("status", sa.String, nullable=False),  # pending, done, failed
    sa.Column("reason", sa.Text),
    sa.Column("seconds", sa.Double),
    sa.Column("spectrum_id", sa.BigInteger),
    sa.Column("run_id", sa.BigInteger),
    sa.Column("updated_at", sa.DateTime, server_default=sa.func.current_timestamp()),
)

matches = sa.Table(
    "matches",
    metadata,
    _id("matches"),
    # hash(query spectrum, element, edge, metric, against, shift range, candidate): reruns add nothing
    sa.Column("key", sa.String, nullable=False, unique=True),
    sa.Column("query", sa.String, nullable=False),  # file path, or spectrum:<id> for stored spectra
    sa.Column("query_hash", sa.String, nullable=False),
    sa.Column("element", sa.String, nullable=False),
    sa.Column("edge", sa.String, nullable=False),
    sa.Column("metric", sa.String, nullable=False),  # cosine, pearson, spearman
    sa.Column("against", sa.String, nullable=False),  # reference, predicted, all
    sa.Column("rank", sa.Integer, nullable=False),
    sa.Column("candidate", sa.String, nullable=False),  # reference (stored spectrum) or predicted
    sa.Column("spectrum_id", sa.BigInteger),  # reference candidates
    sa.Column("prediction_id", sa.BigInteger),  # predicted candidates
    sa.Column("structure_id", sa.BigInteger),
    sa.Column("site_id", sa.BigInteger),
    sa.Column("score", sa.Double, nullable=False),
    sa.Column("shift", sa.Double),  # eV added to the query energies for the best overlap
    sa.Column("run_id", sa.BigInteger),
    _created(),
)

# A reference table, filled by migration 0005 (xastruct.periodic): join on a symbol column
# (absorber, element, dominant_neighbor, label) to select by period or group in SQL.
elements = sa.Table(
    "elements",
    metadata,
    sa.Column("symbol", sa.String, primary_key=True),
    sa.Column("z", sa.Integer, nullable=False, unique=True),
    sa.Column("period", sa.Integer, nullable=False),
    sa.Column("group_number", sa.Integer, nullable=False),  # 1-18; lanthanides / actinides 3 ("group" is SQL)
    sa.Column("period_label", sa.String, nullable=False),  # '4 (K-Kr)', as `predict structure` prints it
)
