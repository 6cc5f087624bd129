"""The real CLI on small slices of the shared data: counts, idempotence, bad input, read-only sql."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from xastruct import store
from xastruct.cli import main

from .conftest import CU_FEFF9, XASLIB, needs_shared

pytestmark = needs_shared(CU_FEFF9)


def run(args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def count(url, table, where=""):
    with store.get_engine(url).connect() as c:
        return c.exec_driver_sql(f"SELECT count(*) FROM {table} {where}").scalar()


@pytest.fixture
def tiny_tree(tmp_path) -> Path:
    """Six materials of the shared FEFF 9 tree, copied to a scratch dir (never into the repo)."""
    mats = sorted(p for p in (CU_FEFF9 / "materials").iterdir())[:6]
    root = tmp_path / "tree" / "materials"
    for m in mats:
        shutil.copytree(m, root / m.name)
    return tmp_path / "tree"


def _expected(tree: Path) -> tuple[int, int]:
    mats = list((tree / "materials").iterdir())
    return len(mats), sum(len(list((m / "FEFF-XANES").iterdir())) for m in mats)


def test_ingest_feff_counts_and_rerun(db_url, tiny_tree):
    n_mat, n_spec = _expected(tiny_tree)
    run(["ingest", "feff", tiny_tree, "--db", db_url, "--workers", 1])
    assert count(db_url, "structures") == n_mat
    assert count(db_url, "spectra") == n_spec
    assert count(db_url, "spectra", "WHERE site_id IS NULL") == 0
    # every spectrum's site is a labelled Cu site with sensible geometry
    with store.get_engine(db_url).connect() as c:
        rows = c.exec_driver_sql(
            "SELECT element, cn, mnnd, dominant_neighbor, label_method FROM sites "
            "WHERE id IN (SELECT site_id FROM spectra)").fetchall()
    assert rows and all(r[0] == "Cu" and 1 <= r[1] <= 12 and 1.6 < r[2] < 3.2 and r[3] and r[4] for r in rows)
    before = {t: count(db_url, t) for t in ("structures", "sites", "spectra")}
    res = run(["ingest", "feff", tiny_tree, "--db", db_url, "--workers", 1])
    assert {t: count(db_url, t) for t in before} == before
    assert "spectra" in res.output


def test_ingest_feff_bad_site_index_is_reported_not_stored(duck_url, tiny_tree):
    mat = sorted((tiny_tree / "materials").iterdir())[0]
    site_dir = next((mat / "FEFF-XANES").iterdir())
    # rename to a non-Cu site index: the ingest must name the folder and skip only that spectrum
    from pymatgen.core import Structure

    s = Structure.from_file(mat / "POSCAR")
    bad_idx = next(i for i, site in enumerate(s) if site.specie.symbol != "Cu")
    site_dir.rename(site_dir.parent / f"{bad_idx:03d}_Cu")
    n_mat, n_spec = _expected(tiny_tree)
    res = run(["ingest", "feff", tiny_tree, "--db", duck_url, "--workers", 1])
    assert f"{bad_idx:03d}_Cu" in res.output and "not the absorber" in res.output
    assert count(duck_url, "spectra") == n_spec - 1


def test_ingest_feff_missing_path_is_clear(duck_url, tmp_path):
    (tmp_path / "empty").mkdir()
    res = run(["ingest", "feff", tmp_path / "empty", "--db", duck_url], ok=False)
    assert res.exit_code != 0 and "no FEFF calculations found" in res.output


@needs_shared(XASLIB)
def test_ingest_xdi_subset_and_stats(db_url, tmp_path):
    src = tmp_path / "xdi"
    src.mkdir()
    for f in sorted((XASLIB / "Cu").glob("*.xdi"))[:4] + sorted((XASLIB / "Fe").glob("*.xdi"))[:3]:
        shutil.copy(f, src / f.name)
    (src / "broken.xdi").write_text("# XDI/1.0\n# Element.symbol: Cu\n1 2 3\nnot numbers\n")
    res = run(["ingest", "xdi", src, "--db", db_url])
    assert "broken.xdi" in res.output
    assert count(db_url, "spectra", "WHERE source = 'xdi'") == 7
    assert count(db_url, "spectra", "WHERE structure_id IS NOT NULL") == 0
    run(["ingest", "xdi", src, "--db", db_url])
    assert count(db_url, "spectra") == 7
    res = run(["stats", "--db", db_url])
    assert "Cu" in res.output and "Fe" in res.output and "xdi" in res.output


def test_sql_command_formats_and_refusal(duck_url, tiny_tree, tmp_path):
    run(["ingest", "feff", tiny_tree, "--db", duck_url, "--workers", 1])
    out = tmp_path / "q.csv"
    run(["sql", "SELECT formula, cn, mnnd FROM spectra_with_labels ORDER BY spectrum_id", "--db", duck_url,
         "--format", "csv", "--out", out])
    lines = out.read_text().strip().splitlines()
    assert lines[0] == "formula,cn,mnnd" and len(lines) == 1 + count(duck_url, "spectra")
    js = tmp_path / "q.json"
    run(["sql", "SELECT count(*) AS n FROM structures", "--db", duck_url, "--format", "json", "--out", js])
    assert json.loads(js.read_text()) == [{"n": count(duck_url, "structures")}]
    res = run(["sql", "DELETE FROM spectra", "--db", duck_url], ok=False)
    assert res.exit_code != 0 and "read-only" in res.output
    assert count(duck_url, "spectra") > 0


def test_ingest_structures_labels_all_sites(duck_url, tmp_path):
    from pymatgen.core import Lattice, Structure

    nio = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.168), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    nio.to(filename=str(tmp_path / "NiO.cif"))
    (tmp_path / "junk.cif").write_text("data_x\n_cell_length_a nonsense\n")
    res = run(["ingest", "structures", tmp_path, "--db", duck_url])
    assert "junk.cif" in res.output
    with store.get_engine(duck_url).connect() as c:
        rows = c.execute(sa.text("SELECT element, cn, mnnd, dominant_neighbor, multiplicity FROM sites "
                                 "WHERE equivalent_to = site_index ORDER BY element")).all()
    assert [(r[0], r[1], r[3]) for r in rows] == [("Ni", 6, "O"), ("O", 6, "Ni")]
    assert abs(rows[0][2] - 2.084) < 0.01 and rows[0][4] == 4
    run(["ingest", "structures", tmp_path / "NiO.cif", "--db", duck_url])
    assert count(duck_url, "structures") == 1


def test_full_feff9_tree_loads_every_material_and_spectrum(tmp_path):
    """The whole shared tree: 2,303 materials (108 without spectra) and 4,831 spectra; rerun adds 0."""
    url = f"duckdb:///{tmp_path / 'full.duckdb'}"
    n_mat = sum(1 for _ in (CU_FEFF9 / "materials").iterdir())
    n_spec = sum(1 for _ in (CU_FEFF9 / "materials").glob("*/FEFF-XANES/*/xmu.dat"))
    res = run(["ingest", "feff", CU_FEFF9, "--db", url, "--workers", 2])
    assert (n_mat, n_spec) == (2303, 4831)
    assert count(url, "structures") == n_mat and count(url, "spectra") == n_spec, res.output
    assert count(url, "spectra", "WHERE normalized AND site_id IS NOT NULL AND absorber = 'Cu'") == n_spec
    res = run(["ingest", "feff", CU_FEFF9, "--db", url, "--workers", 2])
    assert count(url, "structures") == n_mat and count(url, "spectra") == n_spec
    store.dispose_engines()
