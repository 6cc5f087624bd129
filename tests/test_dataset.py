"""Embedded-dataset format: export from one store, load into another (also PostgreSQL), idempotent."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from pymatgen.core import Lattice, Structure

from xastruct import dataset, ingest, store
from xastruct.cli import main


def _count(url, q):
    with store.get_engine(url).connect() as c:
        return c.execute(sa.text(q)).scalar()


@pytest.fixture
def source_store(tmp_path):
    """A small store: two structures from 'builtin' with fake-but-shaped FEFF spectra on their sites."""
    url = f"duckdb:///{tmp_path / 'src.duckdb'}"
    eng = store.get_engine(url)
    nio = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.168), ["Ni", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]])
    items = []
    for name, s in (("NiO", nio), ("Cu", cu)):
        row = ingest.structure_row(s, source="builtin", source_id=name, provenance={"made": "test"})
        p = ingest.Parsed(name=name, structure=row, sites=ingest.label_sites(s, None))
        for idx in sorted({lab["equivalent_to"] for lab in p.sites}):
            p.spectra.append(dict(key=f"{name}-{idx}", absorber=s[idx].specie.symbol, edge="K", kind="EXAFS",
                                  source="feff8l", energies=[1.0, 2.0, 3.0], mu=[0.1, 0.9, 1.0], k=[0.0, 1.0],
                                  chi=[0.2, -0.1], e0=1.5, normalized=True, provenance={"code": "feff8l"},
                                  _structure_hash=row["content_hash"], _site_index=idx))
        items.append(p)
    ingest.write_parsed(eng, items)
    yield url
    store.dispose_engines()


def _fail_one_job(url):
    """A feff8l job that failed on NiO's O site, as `simulate` records it."""
    sid = _count(url, "SELECT id FROM structures WHERE source_id = 'NiO'")
    with store.get_engine(url).begin() as c:
        store.bulk_insert(c, "jobs", [dict(key="job-o", structure_id=sid, site_index=1, absorber="O", edge="K",
                                           kind="EXAFS", code="feff8l", params={"radius": 6.0}, status="failed",
                                           reason="timeout: feff8l_pot killed")])


def test_export_then_load_roundtrip(source_store, db_url, tmp_path):
    _fail_one_job(source_store)
    out = tmp_path / "ds"
    counts = dataset.export_dataset(store.get_engine(source_store), out)
    assert counts == {"structures": 2, "sites": _count(source_store, "SELECT count(*) FROM sites"), "spectra": 3,
                      "failed_jobs": 1}
    eng = store.get_engine(db_url)
    added = dataset.load_dataset(eng, out)
    assert added == {"structures": 2, "sites": counts["sites"], "spectra": 3, "jobs": 1}
    assert dataset.load_dataset(eng, out) == {"structures": 0, "sites": 0, "spectra": 0, "jobs": 0}
    # the failed job comes back failed, on the right structure, so `dataset build` does not rerun it
    job = store.get_engine(db_url).connect().execute(sa.text(
        "SELECT j.status, j.reason, j.site_index, st.source_id FROM jobs j JOIN structures st ON st.id = j.structure_id"
    )).one()
    assert tuple(job) == ("failed", "timeout: feff8l_pot killed", 1, "NiO")
    # links survive: every spectrum sits on a labelled site of the right element
    rows = store.get_engine(db_url).connect().execute(sa.text(
        "SELECT sp.absorber, si.element, si.cn, st.formula, sp.chi FROM spectra sp "
        "JOIN sites si ON si.id = sp.site_id JOIN structures st ON st.id = sp.structure_id")).all()
    assert len(rows) == 3 and all(a == e for a, e, *_ in rows)
    assert {(r[1], r[2]) for r in rows} == {("Ni", 6), ("O", 6), ("Cu", 12)}
    assert [round(x, 5) for x in rows[0][4]] == [0.2, -0.1]


def test_failed_jobs_naming_an_unknown_structure_is_a_clear_error(source_store, tmp_path):
    import pyarrow.parquet as pq

    _fail_one_job(source_store)
    out = tmp_path / "ds"
    dataset.export_dataset(store.get_engine(source_store), out)
    tbl = pq.read_table(out / "failed_jobs.parquet").to_pylist()
    tbl[0]["content_hash"] = "f" * 64
    pq.write_table(__import__("pyarrow").Table.from_pylist(tbl), out / "failed_jobs.parquet")
    with pytest.raises(dataset.InputError, match="row 0 .*not in structures.parquet"):
        dataset.load_dataset(store.get_engine(f"duckdb:///{tmp_path / 'x.duckdb'}"), out)


def test_recipe_elements(source_store):
    eng = store.get_engine(source_store)
    assert dataset.recipe_elements(eng, {"elements": "all", "min_z": 3}) == ["O", "Ni", "Cu"]
    assert dataset.recipe_elements(eng, {"elements": "all", "min_z": 20}) == ["Ni", "Cu"]
    assert dataset.recipe_elements(eng, {"elements": ["Fe", "Cu"], "min_z": 1}) == ["Fe", "Cu"]


def test_ingest_builtin_missing_dataset_is_clear(tmp_path):
    res = CliRunner().invoke(main, ["ingest", "builtin", "--dataset", str(tmp_path / "nope"),
                                    "--db", f"duckdb:///{tmp_path / 'x.duckdb'}"])
    assert res.exit_code != 0 and "no dataset here" in res.output


def test_dataset_status_counts_done_and_remaining(source_store, monkeypatch):
    """`xastruct dataset status`: per recipe step, the target (sites capped by the limit), spectra done
    and what is left; elements short of their target are listed."""
    monkeypatch.setattr(dataset, "RECIPE", [{"kind": "EXAFS", "edge": "K", "elements": "all", "min_z": 3},
                                            {"kind": "XANES", "edge": "K", "elements": ["Ni", "Cu"], "limit": 1},
                                            {"kind": "EXAFS", "edge": "K", "elements": ["Ni", "Cu"],
                                             "dominant_neighbor": ["O"]},
                                            {"kind": "EXAFS", "edge": "K", "elements": ["Ni", "Cu"],
                                             "where": "structures.source_id = 'Cu'", "label": "of Cu"}])
    rows = {(r["step"], r["element"]): r for r in dataset.recipe_status(store.get_engine(source_store))}
    assert {k: (r["sites"], r["target"], r["done"]) for k, r in rows.items()} == {
        (1, "O"): (1, 1, 1), (1, "Ni"): (1, 1, 1), (1, "Cu"): (1, 1, 1),
        (2, "Ni"): (1, 1, 0), (2, "Cu"): (1, 1, 0),
        # an O-coordinated-only step: Cu metal has no such site, NiO's Ni has one and it is done
        (3, "Ni"): (1, 1, 1), (3, "Cu"): (0, 0, 0),
        # a step filtered by structure (SQL): only the Cu structure's site
        (4, "Ni"): (0, 0, 0), (4, "Cu"): (1, 1, 1)}
    store.dispose_engines()
    res = CliRunner().invoke(main, ["dataset", "status", "--db", source_store])
    assert res.exit_code == 0, res.output
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in res.output.splitlines() if line.startswith("│")]
    # recipe table (8 columns): step 2 targets 2 sites, 0 done, 0 failed, 2 to run
    assert [c[3:7] for c in cells if len(c) == 8 and c[0] == "2"] == [["2", "0", "0", "2"]]
    # elements short of their target (6 columns): both step-2 elements
    assert {c[1] for c in cells if len(c) == 6 and c[0] == "2"} == {"Ni", "Cu"}
