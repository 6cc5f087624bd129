"""Spectrum matching: normalization parity, the shift search, bad input, idempotent writes, the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from xastruct import ingest, store
from xastruct import match as m
from xastruct.cli import main
from xastruct.errors import InputError

from .conftest import CU_FEFF9, XASLIB, needs_shared

K2E = 3.80998  # FEFF's hbar^2/2m in eV A^2 (xastruct.feff.K2E)
N_MATERIALS = 8


# ------------------------------------------------------------------------------------ helpers


def run(args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def count(url, table):
    with store.get_engine(url).connect() as c:
        return c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()


def stored_spectra(url) -> list[dict]:
    with store.get_engine(url).connect() as c:
        rows = c.execute(sa.text(
            "SELECT sp.id, sp.structure_id, sp.site_id, sp.energies, sp.mu, sp.mu_raw, sp.e0, "
            "sp.provenance FROM spectra sp WHERE sp.absorber = 'Cu' AND sp.kind = 'XANES' ORDER BY sp.id"
        )).mappings().all()  # fmt: skip
    out = []
    for r in rows:
        d = dict(r)
        if isinstance(d["provenance"], str):
            d["provenance"] = json.loads(d["provenance"])
        out.append(d)
    return out


def write_xmu(path: Path, energies, mu, e0: float, *, shift: float = 0.0) -> Path:
    """A stored FEFF spectrum written back out as a FEFF xmu.dat (k signed about E0, as FEFF writes it)."""
    e = np.asarray(energies, float)
    k = np.sign(e - e0) * np.sqrt(np.abs(e - e0) / K2E)
    head = ["# Cu K test spectrum                                  FEFF 9.9.1",
            "# Abs   Z=29 Rmt= 1.192 Rnm= 1.348 K  shell",
            "#  omega    e    k    mu    mu0     chi     @#"]  # fmt: skip
    rows = [f"{om:12.4f} {er:10.4f} {kk:8.4f} {mi:.8e} {mi:.8e} {0.0:.6e}"
            for om, er, kk, mi in zip(e + shift, e - e0, k, np.asarray(mu, float))]  # fmt: skip
    path.write_text("\n".join(head + rows) + "\n")
    return path


def add_predictions(url, *, perturb_structure: int | None = None, version: int = 1) -> int:
    """A forward `models` row plus one prediction per stored Cu XANES site spectrum, on the model grid,
    following the screen contract (energies = grid E - E0, mu = predicted normalized mu)."""
    eng = store.get_engine(url)
    x = m.grid_points()
    with eng.begin() as conn:
        model_id = conn.execute(sa.text(
            "INSERT INTO models (name, task, element, edge, kind, arch, version, grid) VALUES "
            "(:n, 'forward', 'Cu', 'K', 'XANES', 'xastruct', :v, :g) RETURNING id"
        ), {"g": json.dumps(m.GRID), "n": f"forward/Cu/K/XANES/xastruct/v{version}", "v": version}).scalar_one()  # fmt: skip
    rows = []
    for r in stored_spectra(url):
        y = np.interp(x, np.asarray(r["energies"]) - r["e0"], np.asarray(r["mu"]))
        if r["structure_id"] == perturb_structure:
            y = y + 0.05 * np.sin(x / 3.0)
        rows.append(dict(key=f"{model_id}:site:{r['site_id']}", model_id=model_id, structure_id=r["structure_id"],
                         site_id=r["site_id"], task="forward", element="Cu", edge="K", kind="XANES", target="site",
                         energies=x.tolist(), mu=y.tolist()))  # fmt: skip
    with eng.begin() as conn:
        store.bulk_insert(conn, "predictions", rows)
    return model_id


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A few materials of the shared FEFF 9 tree, copied to a scratch dir (never into the repo)."""
    if not CU_FEFF9.exists():
        pytest.skip(f"shared data not found at {CU_FEFF9}")
    root = tmp_path_factory.mktemp("match_tree")
    for d in sorted((CU_FEFF9 / "materials").iterdir())[:N_MATERIALS]:
        shutil.copytree(d, root / "materials" / d.name)
    return root


@pytest.fixture(scope="module")
def duck_store(tree, tmp_path_factory) -> str:
    """One DuckDB store with the tree and predictions for every site, shared by the read-only tests."""
    url = f"duckdb:///{tmp_path_factory.mktemp('match_db') / 'store.duckdb'}"
    ingest.ingest_feff(store.get_engine(url), tree)
    add_predictions(url)
    yield url
    store.dispose_engines()


# --------------------------------------------------------------------------------- unit level


def test_grid_is_the_forward_models_grid():
    from xastruct.train import grid_points, grid_spec

    assert m.GRID == grid_spec("Cu", "K", "XANES")
    assert np.allclose(m.grid_points(), grid_points(grid_spec("Fe", "K", "XANES")))


def test_rank_rows_matches_scipy():
    from scipy.stats import rankdata

    a = np.random.default_rng(0).random((300, 50)).astype(np.float32)
    a[:100, :4] = 0.25  # ties, as the flat extrapolated ends of a resampled spectrum give
    a[50:60, 30:33] = 0.5
    assert np.allclose(m._rank_rows(a), rankdata(a, axis=1))


@pytest.mark.parametrize("metric", m.METRICS)
def test_scores_equal_the_textbook_metric_at_the_best_shift(metric):
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(1)
    x = m.grid_points()
    base = 1 / (1 + np.exp(-(x - 2) / 1.5)) + 0.2 * np.sin(x / 4)
    y = (base[None, :] + 0.05 * rng.standard_normal((6, x.size))).astype(np.float32)
    cands = m.Candidates(element="Cu", edge="K", grid=m.GRID, x=x, y=y, candidate=np.array(["reference"] * 6, object),
                         **{f: np.arange(6) for f in ("spectrum_id", "prediction_id", "structure_id", "site_id",
                                                      "site_index")},
                         **{f: np.array(["f"] * 6, object) for f in ("formula", "source_id", "origin")})  # fmt: skip
    qx = np.arange(-30.0, 120.0, 0.3)
    q = m.Query(name="q", sha256="0", element="Cu", edge="K", x=qx,
                mu=np.interp(qx, x, base) + 0.01 * np.cos(qx), e0=8979.0, e0_definition="given")  # fmt: skip
    best, shift, _ = m.score(cands, q, metric=metric, shift_range=0.0)
    qv = np.interp(x, q.x, q.mu)
    for i in range(6):
        if metric == "cosine":
            ref = float(y[i] @ qv / np.linalg.norm(y[i]) / np.linalg.norm(qv))
        elif metric == "pearson":
            ref = pearsonr(y[i], qv)[0]
        else:
            ref = spearmanr(y[i], qv)[0]
        assert best[i] == pytest.approx(ref, abs=2e-5)
    assert np.all(shift == 0)


# --------------------------------------------------------------------------- against the store


def test_stored_feff_spectrum_written_out_matches_itself(duck_store, tmp_path):
    rows = stored_spectra(duck_store)
    target = rows[len(rows) // 2]
    f = write_xmu(tmp_path / "xmu.dat", target["energies"], target["mu_raw"], target["e0"])
    q = m.read_query(f, element="Cu")
    assert q.e0 == pytest.approx(target["e0"], abs=0.05)  # the same E0 definition as the stored row
    for metric in m.METRICS:
        res = m.match(store.get_engine(duck_store), q, against="reference", metric=metric, top=3, write=False)
        best = res.rows[0]
        assert best["spectrum_id"] == target["id"], (metric, res.rows)
        assert best["score"] == pytest.approx(1.0, abs=2e-3)
        assert abs(best["shift"]) <= 0.25
        assert res.rows[1]["score"] < best["score"]


def test_shift_search_recovers_a_rigid_shift(duck_store, tmp_path):
    """Sign convention: shift = eV added to the query energies. Features 4 eV too high -> shift -4."""
    rows = stored_spectra(duck_store)
    target = rows[0]
    e0 = target["e0"]
    f = write_xmu(tmp_path / "shifted.dat", target["energies"], target["mu_raw"], e0, shift=4.0)
    # the file's own E0 moves with it (FEFF's k = 0 point), so pin E0 to the unshifted value
    q = m.read_query(f, element="Cu", e0=e0)
    res = m.match(store.get_engine(duck_store), q, against="reference", top=1, write=False)
    assert res.rows[0]["spectrum_id"] == target["id"]
    assert res.rows[0]["shift"] == pytest.approx(-4.0, abs=0.15)
    assert res.rows[0]["score"] == pytest.approx(1.0, abs=2e-3)
    # and the other way, through the array API
    q2 = m.query_from_arrays(energies=np.asarray(target["energies"]) - 3.0, mu=target["mu_raw"], element="Cu",
                             e0=e0, calculated=True)  # fmt: skip
    r2 = m.match(store.get_engine(duck_store), q2, against="reference", top=1, write=False)
    assert r2.rows[0]["shift"] == pytest.approx(3.0, abs=0.15)
    # outside the search range the best is pinned at the limit and flagged
    r3 = m.match(store.get_engine(duck_store), q, against="reference", top=1, write=False, shift_range=2.0)
    assert r3.rows[0]["shift"] == pytest.approx(-2.0) and r3.rows[0]["shift_at_limit"]


def test_predicted_and_all_candidates(duck_store, tmp_path):
    rows = stored_spectra(duck_store)
    target = rows[-1]
    f = write_xmu(tmp_path / "xmu.dat", target["energies"], target["mu_raw"], target["e0"])
    q = m.read_query(f, element="Cu")
    eng = store.get_engine(duck_store)
    res = m.match(eng, q, against="predicted", top=3, write=False)
    assert res.rows[0]["candidate"] == "predicted"
    assert res.rows[0]["site_id"] == target["site_id"] and res.rows[0]["score"] > 0.999
    both = m.match(eng, q, against="all", top=2, write=False)
    assert {r["candidate"] for r in both.rows} == {"reference", "predicted"}
    assert {r["site_id"] for r in both.rows} == {target["site_id"]}
    assert both.n_candidates == res.n_candidates + len(rows)


def test_stored_spectrum_as_query_excludes_itself(duck_store):
    sid = stored_spectra(duck_store)[0]["id"]
    res = m.match(store.get_engine(duck_store), m.query_from_spectrum(store.get_engine(duck_store), sid),
                  against="reference", top=50, write=False)  # fmt: skip
    assert sid not in {r["spectrum_id"] for r in res.rows}


# --------------------------------------------------------------------------------- bad inputs


def two_column(path: Path, e, mu) -> Path:
    path.write_text("energy mu\n" + "\n".join(f"{a:.4f} {b:.6g}" for a, b in zip(e, mu)) + "\n")
    return path


def edge_like(e, e0=8979.0):
    return 0.1 + 1 / (1 + np.exp(-(e - e0) / 2.0)) + 0.05 * np.sin((e - e0) / 5.0) * (e > e0)


def test_wrong_element_for_the_file(tmp_path, duck_store):
    e = np.arange(8800.0, 9400.0, 1.0)
    f = two_column(tmp_path / "cu.txt", e, edge_like(e))
    with pytest.raises(InputError, match=r"cu.txt.*Fe K edge") as exc:
        m.read_query(f, element="Fe")
    assert exc.value.fix
    rows = stored_spectra(duck_store)
    x = write_xmu(tmp_path / "xmu.dat", rows[0]["energies"], rows[0]["mu_raw"], rows[0]["e0"])
    with pytest.raises(InputError, match=r"xmu.dat: the file holds a Cu K spectrum, not Ni") as exc:
        m.read_query(x, element="Ni")
    assert "--element Cu" in exc.value.fix
    with pytest.raises(InputError, match="holds a Cu K spectrum, not Cu L3"):
        m.read_query(x, element="Cu", edge="L3")


@needs_shared(XASLIB)
def test_wrong_element_for_an_xdi_file():
    xdi = XASLIB / "Cu" / "cu_metal_rt.xdi"
    with pytest.raises(InputError, match="cu_metal_rt.xdi: the file holds a Cu K spectrum, not Zn"):
        m.read_query(xdi, element="Zn")


def test_too_short_an_energy_range(tmp_path, duck_store):
    e = np.arange(8950.0, 9010.0, 0.5)  # normalizable, but ends ~30 eV above the edge
    f = two_column(tmp_path / "short.txt", e, edge_like(e))
    q = m.read_query(f, element="Cu")
    with pytest.raises(InputError, match=r"short.txt: too short an energy range") as exc:
        m.match(store.get_engine(duck_store), q, against="reference", write=False)
    assert "--shift-range" in exc.value.fix
    e = np.arange(8975.0, 8990.0, 0.5)
    with pytest.raises(InputError, match=r"tiny.txt"):
        m.read_query(two_column(tmp_path / "tiny.txt", e, edge_like(e)), element="Cu")


def test_all_nan(tmp_path):
    e = np.arange(8800.0, 9400.0, 1.0)
    f = two_column(tmp_path / "nan.txt", e, np.full(e.size, np.nan))
    with pytest.raises(InputError, match=r"nan.txt.*non-finite"):
        m.read_query(f, element="Cu")
    with pytest.raises(InputError, match="NaN/inf everywhere"):
        m.query_from_arrays(energies=e, mu=np.full(e.size, np.nan), element="Cu", name="arr")


def test_no_candidates_is_clear(db_url, tmp_path):
    e = np.arange(8800.0, 9400.0, 1.0)
    q = m.read_query(two_column(tmp_path / "cu.txt", e, edge_like(e)), element="Cu")
    with pytest.raises(InputError, match="no Cu K candidates") as exc:
        m.match(store.get_engine(db_url), q, against="predicted")
    assert "xastruct screen" in exc.value.fix


# ------------------------------------------------------------------------- writes and the CLI


def test_rerun_inserts_nothing_twice(db_url, tree, tmp_path):
    eng = store.get_engine(db_url)
    ingest.ingest_feff(eng, tree)
    add_predictions(db_url)
    rows = stored_spectra(db_url)
    f = write_xmu(tmp_path / "xmu.dat", rows[0]["energies"], rows[0]["mu_raw"], rows[0]["e0"])
    q = m.read_query(f, element="Cu")
    first = m.match(eng, q, against="all", top=5)
    assert first.inserted == 5 and count(db_url, "matches") == 5
    m.clear_cache()
    again = m.match(eng, q, against="all", top=5)
    assert again.inserted == 0 and count(db_url, "matches") == 5
    assert [r["rank"] for r in again.rows] == [1, 2, 3, 4, 5]
    assert [r["score"] for r in again.rows] == [r["score"] for r in first.rows]
    more = m.match(eng, q, against="all", top=7)  # only the two new candidates go in
    assert more.inserted == 2 and count(db_url, "matches") == 7
    m.match(eng, q, against="all", top=5, metric="pearson")  # another metric is another result
    assert count(db_url, "matches") == 12
    with eng.connect() as c:
        got = c.execute(sa.text("SELECT rank, candidate, score, shift, query FROM matches WHERE metric = 'cosine' "
                                "ORDER BY rank")).all()  # fmt: skip
    assert [g[0] for g in got] == list(range(1, 8)) and got[0][2] == pytest.approx(1.0, abs=2e-3)
    assert got[0][4] == str(f)
    # the candidate set changes (a newer model's predictions): the ranks are a new result, stored once
    add_predictions(db_url, version=2)
    changed = m.match(eng, q, against="all", top=5)
    assert changed.inserted == 5 and count(db_url, "matches") == 17
    assert m.match(eng, q, against="all", top=5).inserted == 0


def test_cli_end_to_end(tree, tmp_path):
    url = f"duckdb:///{tmp_path / 'cli.duckdb'}"
    run(["ingest", "feff", tree, "--workers", "1", "--db", url])
    rows = stored_spectra(url)
    target = rows[1]
    f = write_xmu(tmp_path / "xmu.dat", target["energies"], target["mu_raw"], target["e0"])
    out = tmp_path / "res.json"
    res = run(["match", f, "--element", "Cu", "--against", "reference", "--top", "3", "--out", out, "--db", url])
    assert "5 row(s) added" not in res.output and "3 row(s) added" in res.output
    doc = json.loads(out.read_text())
    assert doc["results"][0]["spectrum_id"] == target["id"] and doc["results"][0]["score"] > 0.998
    assert doc["shift_sign"] == "eV added to the query energies" and len(doc["results"]) == 3
    again = run(["match", f, "--element", "Cu", "--against", "reference", "--top", "3", "--out", tmp_path / "r.csv",
                 "--db", url])  # fmt: skip
    assert "0 row(s) added" in again.output
    assert (tmp_path / "r.csv").read_text().splitlines()[0].startswith("rank,candidate,structure_id,formula")
    assert count(url, "matches") == 3
    store.dispose_engines()
    # bad input: one clear line, exit 1, nothing written
    bad = run(["match", f, "--element", "Fe", "--db", url], ok=False)
    assert bad.exit_code == 1 and "the file holds a Cu K spectrum, not Fe" in bad.output
    assert "Traceback" not in bad.output
    missing = run(["match", tmp_path / "nope.xdi", "--element", "Cu", "--db", url], ok=False)
    assert missing.exit_code == 1 and "no such file" in missing.output
    pred = run(["match", f, "--element", "Cu", "--against", "predicted", "--db", url], ok=False)
    assert pred.exit_code == 1 and "xastruct screen" in pred.output
    store.dispose_engines()
    assert count(url, "matches") == 3


def test_predictions_on_another_grid_are_resampled(duck_url, tree, tmp_path):
    eng = store.get_engine(duck_url)
    ingest.ingest_feff(eng, tree)
    rows = stored_spectra(duck_url)
    with eng.begin() as conn:
        mid = conn.execute(sa.text(
            "INSERT INTO models (name, task, element, edge, kind, arch, version) VALUES "
            "('forward/Cu/K/XANES/other/v1', 'forward', 'Cu', 'K', 'XANES', 'other', 1) RETURNING id")).scalar_one()
    x = np.arange(-5.0, 80.0, 1.0)  # a coarser, wider grid than the matching grid
    preds = [dict(key=f"{mid}:site:{r['site_id']}", model_id=mid, structure_id=r["structure_id"], site_id=r["site_id"],
                  task="forward", element="Cu", edge="K", kind="XANES", target="site", energies=x.tolist(),
                  mu=np.interp(x, np.asarray(r["energies"]) - r["e0"], np.asarray(r["mu"])).tolist())
             for r in rows]  # fmt: skip
    with eng.begin() as conn:
        store.bulk_insert(conn, "predictions", preds)
    cands = m.load_candidates(eng, element="Cu", against="predicted")
    assert cands.n == len(rows) and cands.y.shape[1] == m.GRID["n"]
    f = write_xmu(tmp_path / "xmu.dat", rows[2]["energies"], rows[2]["mu_raw"], rows[2]["e0"])
    res = m.match(eng, m.read_query(f, element="Cu"), against="predicted", top=1, write=False)
    assert res.rows[0]["site_id"] == rows[2]["site_id"] and res.rows[0]["score"] > 0.999


def test_compare_given_spectra_recovers_shift_and_error():
    """match.compare (behind `predict spectrum --compare`): the query against given rows on the grid."""
    x = m.grid_points()
    edge = lambda e: 1 / (1 + np.exp(-(e - 2.0) / 1.5)) + 0.3 * np.exp(-((e - 12.0) / 3.0) ** 2)  # noqa: E731
    e = np.linspace(-30, 90, 1201)
    # the query's features sit 3 eV too high: shift -3 lays it on the rows
    q = m.Query(name="q", sha256="0", element="Cu", edge="K", x=e, mu=edge(e - 3.0), e0=8979.0, e0_definition="given")
    rows = np.stack([edge(x), edge(x) + 0.05])  # the same spectrum, and one offset by 0.05
    res = m.compare(q, x, rows, labels=["same", "offset"])
    assert [r["label"] for r in res] == ["same", "offset"]
    assert res[0]["shift"] == pytest.approx(-3.0, abs=0.1) and res[0]["cosine"] == pytest.approx(1.0, abs=1e-4)
    assert res[0]["mae"] < 0.005 and res[1]["mae"] == pytest.approx(0.05, abs=0.01)
    lo, hi = res[0]["window"]
    on = res[0]["query_on_grid"]
    inside = (x >= lo) & (x <= hi)
    assert np.isfinite(on[inside]).all() and np.abs(on[inside] - rows[0][inside]).max() < 0.02
    assert res[0]["shift_range"] == m.DEFAULT_SHIFT_RANGE  # a measured E0 (edge inflection) needs the wide search
    # a calculated query (FEFF's Fermi level, like the grid): a narrow search, so the window keeps the edge
    ec = e[e >= -5.0]  # a FEFF file that starts a few eV below E0
    calc = m.Query(name="c", sha256="2", element="Cu", edge="K", x=ec, mu=edge(ec - 1.0), e0=8979.0,
                   e0_definition="FEFF Fermi level", calculated=True)
    rc = m.compare(calc, x, rows[:1])[0]
    wide = m.compare(m.Query(**{**calc.__dict__, "calculated": False}), x, rows[:1])[0]
    assert rc["shift_range"] == m.CALCULATED_SHIFT_RANGE and wide["shift_range"] == m.DEFAULT_SHIFT_RANGE
    assert rc["window"][0] == pytest.approx(-2.0) and wide["window"][0] == pytest.approx(5.0)
    assert rc["shift"] == pytest.approx(-1.0, abs=0.1) and rc["mae"] < 0.005
    short = m.Query(name="short", sha256="1", element="Cu", edge="K", x=e[:300], mu=edge(e[:300]), e0=8979.0,
                    e0_definition="given")
    with pytest.raises(InputError, match="too short"):
        m.compare(short, x, rows)


def test_gaussian_broaden_and_auto_broadening_recovers_the_width():
    x = m.grid_points()
    delta = np.zeros_like(x)
    delta[len(x) // 2] = 1.0
    g = m.gaussian_broaden(delta, x, 4.0)[0]
    assert g.sum() == pytest.approx(1.0, abs=1e-6)  # unit area
    half = x[g >= g.max() / 2]
    assert half[-1] - half[0] == pytest.approx(4.0, abs=0.6)  # FWHM on the 0.5 eV grid
    step = (x > 5).astype(float)
    b = m.gaussian_broaden(step, x, 6.0)[0]
    assert b[0] == pytest.approx(0.0, abs=1e-3) and b[-1] == 1.0 and np.all(np.diff(b) >= -1e-12)  # ends held
    np.testing.assert_array_equal(m.gaussian_broaden(step, x, 0.0)[0], step)
    # a sharp calculated spectrum against a measured one broadened by 5 eV: auto picks ~5
    sharp = 1 / (1 + np.exp(-(x - 2.0) / 0.7)) + 0.6 * np.exp(-((x - 10.0) / 1.5) ** 2)
    e = x.copy()
    q = m.Query(name="q", sha256="0", element="Cu", edge="K", x=e, mu=m.gaussian_broaden(sharp, x, 5.0)[0],
                e0=8979.0, e0_definition="given")
    raw, auto = m.compare(q, x, sharp, shift_range=2.0)[0], m.compare(q, x, sharp, shift_range=2.0, broaden="auto")[0]
    assert raw["fwhm"] == 0.0 and auto["fwhm"] == pytest.approx(5.0, abs=1.0) and auto["mae"] < raw["mae"] / 3
    fixed = m.compare(q, x, sharp, shift_range=2.0, broaden=5.0)[0]
    assert fixed["fwhm"] == 5.0 and fixed["mae"] == pytest.approx(auto["mae"], abs=0.01)


def test_fit_exafs_recovers_amplitude_disorder_and_e0():
    k = np.round(np.arange(2.0, 12.0 + 1e-9, 0.05), 6)
    calc = np.sin(2 * k * 2.5 + 0.3) * np.exp(-0.1 * k) / k  # one shell at 2.5 A
    a, s, de = 0.8, 0.003, 4.0
    kt = np.sqrt(k**2 + de / 3.8099821)
    meas = a * np.exp(-2 * k**2 * s) * np.interp(kt, k, calc)
    fit = m.fit_exafs(k, meas, calc)
    assert fit["A"] == pytest.approx(a, abs=0.02) and fit["ds2"] == pytest.approx(s, abs=2e-4)
    assert fit["dE"] == pytest.approx(de, abs=0.3) and fit["r2_fit"] > 0.999 and fit["r2_fit"] > fit["r2_raw"]
    sel = (k >= 3) & (k <= 11)
    np.testing.assert_allclose(fit["fitted"][sel], (meas * k**2)[sel], atol=0.01)
