"""`xastruct screen`: forward + inverse + closed loop into `predictions`, idempotence, newer model
versions, the result views, kill -9 and resume; on DuckDB and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from xastruct import inverse as inv
from xastruct import screen as scr
from xastruct import store, train
from xastruct.cli import main

from .test_inverse import FAST_HP, build_synthetic_store


@pytest.fixture(autouse=True)
def _tiny_stores_read_every_kind(monkeypatch):
    # these stores hold ~25 sites: a model that saw any XANES may read XANES (the real minimum,
    # inverse.MIN_KIND_ROWS, is tested in test_inverse.py)
    monkeypatch.setattr(inv, "MIN_KIND_ROWS", 1)

N = 24  # synthetic Cu structures (+1 with two Cu orbits): 26 inequivalent Cu sites, 46 spectra


def _rows(url, q):
    eng = store.get_engine(url)
    with eng.connect() as c:
        return c.execute(sa.text(q)).all()


def _forward(eng, tmp, seeds=2):
    cfg = train.TrainConfig(seeds=seeds, epochs=15, d_hidden=32, keep_last=True, device="cpu", num_threads=1,
                            batch_size=16)
    return train.train_forward(eng, element="Cu", edge="K", kind="EXAFS", source="synthetic", config=cfg,
                               models_dir=tmp / "models", cache_dir=tmp / "cache")


def _setup(url, tmp):
    """Synthetic labelled Cu store + a forward EXAFS model + one model per inverse task."""
    import torch

    torch.set_num_threads(1)
    build_synthetic_store(url, n=N)
    eng = store.get_engine(url)
    _forward(eng, tmp)
    for task, arch in (("cn", "rf"), ("neighbor", "sgmlp"), ("mnnd", "sgmlp")):
        inv.train_inverse(eng, task=task, arch=arch, seeds=1, device="cpu", hp=FAST_HP,
                          models_dir=tmp / "models", min_sites=10)
    return eng


@pytest.fixture(scope="module")
def duck(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("screen")
    url = f"duckdb:///{tmp / 'store.duckdb'}"
    eng = _setup(url, tmp)
    yield url, eng, tmp
    store.dispose_engines()


def test_screen_everything_on_both_backends(db_url, tmp_path):
    eng = _setup(db_url, tmp_path)
    res = {r.task: r for r in scr.screen(eng, elements=["Cu"], closed_loop=True, device="cpu")}
    n_sites = 26
    assert res["forward"].written == n_sites and res["forward"].skipped == 0
    # every stored spectrum (49) gets a cn, mnnd and neighbor prediction
    n_spec = _rows(db_url, "SELECT count(*) FROM spectra")[0][0]
    assert res["inverse"].written == 3 * n_spec
    assert res["closed-loop"].written == 3 * n_sites
    counts = dict(((t, tg), n) for t, tg, n in
                  _rows(db_url, "SELECT task, target, count(*) FROM predictions GROUP BY task, target"))
    assert counts[("forward", "site")] == n_sites
    assert counts[("mnnd", "spectrum")] == n_spec and counts[("cn", "prediction")] == n_sites
    # forward rows: the grid, finite spectra, an ensemble spread, the reference comparison
    for e, mu, unc, ref, mae, cos in _rows(db_url, "SELECT energies, mu, uncertainty, reference_spectrum_id, "
                                                   "reference_mae, reference_cosine FROM predictions "
                                                   "WHERE task = 'forward'"):
        assert len(e) == len(mu) == train.grid_spec("Cu", "K", "EXAFS")["n"] and np.isfinite(mu).all()
        assert unc is not None and unc >= 0
        assert ref is not None and mae >= 0 and -1 <= cos <= 1  # every synthetic site has EXAFS
    # inverse rows carry values, labels, probabilities, uncertainties
    for task, value, label, unc, proba in _rows(db_url, "SELECT task, value, label, uncertainty, probabilities "
                                                        "FROM predictions WHERE task <> 'forward'"):
        assert unc is not None and unc >= 0
        if task == "mnnd":
            assert 1.5 < value < 3.0
        else:
            p = proba if isinstance(proba, dict) else json.loads(proba)
            assert label in p and abs(sum(p.values()) - 1) < 1e-2
            if task == "cn":
                assert value in (4.0, 6.0) and label == str(int(value))
    # neighbour rows: the period the probabilities sum highest over, as `predict structure` reports it
    for proba, per, per_p in _rows(db_url, "SELECT probabilities, neighbor_period, period_probability "
                                           "FROM predictions WHERE task = 'neighbor'"):
        p = proba if isinstance(proba, dict) else json.loads(proba)
        ref = inv.neighbor_period(p)
        assert per == ref["period"] and per_p == pytest.approx(ref["probability"], abs=1e-3)
    assert not _rows(db_url, "SELECT count(*) FROM predictions WHERE task <> 'neighbor' "
                             "AND neighbor_period IS NOT NULL")[0][0]
    # the views: truth beside predictions, metrics per element
    vt = _rows(db_url, "SELECT task, closed_loop, count(*), avg(abs_error) FROM predictions_vs_truth "
                       "GROUP BY task, closed_loop")
    got = {(t, bool(c)): (n, err) for t, c, n, err in vt}
    assert got[("mnnd", False)][0] == n_spec and got[("mnnd", True)][0] == n_sites
    assert got[("forward", False)][0] == n_sites
    assert got[("mnnd", False)][1] < 0.25  # the synthetic spectra encode the distance
    # per kind of input (XANES, EXAFS) and direct vs closed loop
    m = {(t, k, bool(c)): (n, acc) for t, k, c, n, acc in
         _rows(db_url, "SELECT task, kind, closed_loop, n, accuracy FROM per_element_metrics WHERE element = 'Cu'")}
    assert sum(n for (t, _, c), (n, _) in m.items() if t == "cn" and not c) == n_spec
    assert m[("cn", "EXAFS", False)][1] > 0.7 and m[("cn", "EXAFS", True)][0] == n_sites
    # the neighbour's period against the true neighbour's (O: period 2 for these synthetic sites)
    vp = _rows(db_url, "SELECT true_label, true_period, neighbor_period, kind, closed_loop FROM predictions_vs_truth "
                       "WHERE task = 'neighbor'")
    assert vp and all(tp == {"O": 2, "S": 3}[tl] and pp in (2, 3) for tl, tp, pp, _, _ in vp)
    pa = _rows(db_url, "SELECT period_accuracy, accuracy FROM per_element_metrics WHERE task = 'neighbor' "
                       "AND kind = 'EXAFS' AND NOT closed_loop")
    want = np.mean([tp == pp for _, tp, pp, k, c in vp if k == "EXAFS" and not c])
    assert float(pa[0][0]) == pytest.approx(want)  # PostgreSQL returns a Decimal
    # the synthetic classes O / S are one element per period, so period and element accuracy agree
    assert float(pa[0][0]) == pytest.approx(float(pa[0][1]))
    # a rerun predicts nothing new
    again = {r.task: r for r in scr.screen(eng, elements=["Cu"], closed_loop=True, device="cpu")}
    assert all(r.written == 0 for r in again.values())
    assert again["forward"].already == n_sites and again["inverse"].already == 3 * n_spec
    assert _rows(db_url, "SELECT count(*) FROM predictions")[0][0] == n_sites + 3 * n_spec + 3 * n_sites
    runs = _rows(db_url, "SELECT status FROM runs WHERE command = 'screen'")
    assert [r[0] for r in runs] == ["done", "done"]


def test_newer_model_version_adds_rows_and_latest_view_shows_it(duck):
    url, eng, tmp = duck
    scr.screen(eng, elements=["Cu"], task="forward", device="cpu")
    v1 = _rows(url, "SELECT count(*) FROM predictions WHERE task = 'forward'")[0][0]
    newer = _forward(eng, tmp, seeds=1).entry
    assert newer.name.endswith("/v2")
    r = scr.screen(eng, elements=["Cu"], task="forward", device="cpu")[0]
    assert r.written == v1 and r.models == [newer.name]  # single member: no spread
    assert _rows(url, "SELECT count(*) FROM predictions WHERE task = 'forward'")[0][0] == 2 * v1
    latest = _rows(url, "SELECT DISTINCT model_name FROM latest_predictions WHERE task = 'forward'")
    assert latest == [(newer.name,)]
    assert _rows(url, "SELECT count(*) FROM latest_predictions WHERE task = 'forward'")[0][0] == v1
    assert _rows(url, f"SELECT count(*) FROM predictions WHERE model_id = {newer.id} AND uncertainty IS NULL")[0][0] == v1
    # an explicit older model by id adds nothing (already screened)
    old = _rows(url, "SELECT id FROM models WHERE name LIKE 'forward/%/v1'")[0][0]
    assert scr.screen(eng, elements=["Cu"], task="forward", model=str(old), device="cpu")[0].written == 0


def test_where_filter_and_bad_input(duck):
    url, eng, _ = duck
    r = scr.screen(eng, elements=["Cu"], task="inverse", where="structures.source_id = 'syn-3'", device="cpu")[0]
    assert r.targets == 3 * 2  # one structure with XANES and EXAFS, three tasks
    with pytest.raises(Exception) as e:
        scr.screen(eng, elements=["Cu"], where="no_such_column = 1")
    assert "--where" in str(e.value) and "valid SQL filter" in str(e.value)
    res = CliRunner().invoke(main, ["screen", "--elements", "Xx", "--db", url])
    assert res.exit_code == 1 and "not an element symbol" in res.output
    res = CliRunner().invoke(main, ["screen", "--elements", "Zn", "--task", "forward", "--db", url])
    assert res.exit_code == 0 and "no registered model" in res.output


def test_measured_spectrum_without_structure_is_screened(duck, tmp_path):
    """An XDI-like measured file (no structure) gets inverse predictions, target = spectrum."""
    url, eng, _ = duck
    from .test_inverse import _xanes

    scr.screen(eng, elements=["Cu"], task="inverse", device="cpu")  # everything stored so far

    e, mu = _xanes(4, 1.95, "O", np.random.default_rng(3))
    f = tmp_path / "cu_measured.xdi"
    head = ["# XDI/1.0", "# Element.symbol: Cu", "# Element.edge: K", "# Column.1: energy eV",
            "# Column.2: mutrans", "# Sample.name: unknown Cu oxide", "#----", "# energy mutrans"]
    f.write_text("\n".join(head + [f"{a:.3f} {b:.6f}" for a, b in zip(e, mu * 2.0 + 0.1)]) + "\n")
    res = CliRunner().invoke(main, ["ingest", "xdi", str(f), "--db", url])
    assert res.exit_code == 0, res.output
    r = scr.screen(eng, elements=["Cu"], task="inverse", device="cpu")[0]
    assert r.written == 3
    rows = _rows(url, "SELECT p.task, p.structure_id, p.value, p.label FROM predictions p "
                      "JOIN spectra s ON s.id = p.spectrum_id WHERE s.structure_id IS NULL")
    assert len(rows) == 3 and all(sid is None for _, sid, _, _ in rows)


def test_screen_resumes_after_kill(db_url, tmp_path, request):
    """kill -9 after the first committed batches; the rerun completes with nothing duplicated."""
    import shutil

    if db_url.startswith("duckdb"):
        # a private copy of the module's store (with its models dir) so the fixture stays intact
        _, _, tmp = request.getfixturevalue("duck")
        store.dispose_engines()
        dst = tmp_path / "store.duckdb"
        shutil.copy(tmp / "store.duckdb", dst)
        url2 = f"duckdb:///{dst}"
        with store.get_engine(url2).begin() as c:
            c.execute(sa.text("DELETE FROM predictions"))
    else:  # PostgreSQL: a fresh database with the synthetic store and one forward model
        import torch

        torch.set_num_threads(1)
        url2 = db_url
        build_synthetic_store(url2, n=N)
        _forward(store.get_engine(url2), tmp_path, seeds=1)
    store.dispose_engines()
    cmd = [sys.executable, "-m", "xastruct.cli", "screen", "--elements", "Cu", "--task", "forward",
           "--batch-size", "1", "--device", "cpu", "--db", url2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    seen = 0
    for line in proc.stderr:
        if line.startswith("committed:"):
            seen += 1
            if seen >= 3:
                break
        if time.monotonic() > deadline:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    first = _rows(url2, "SELECT count(*), count(DISTINCT key) FROM predictions")[0]
    store.dispose_engines()
    n_models = _rows(url2, "SELECT count(*) FROM models WHERE task = 'forward' AND arch = 'xastruct'")[0][0]
    store.dispose_engines()
    total = 26  # the newest forward model x 26 sites
    assert 0 < first[0] < total and first[0] == first[1], (first, n_models)
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    n, distinct = _rows(url2, "SELECT count(*), count(DISTINCT key) FROM predictions")[0]
    assert n == distinct == total


def test_shipped_models_register_once_and_load(duck, tmp_path):
    """Artifact directories (as shipped in xastruct/data/pretrained) register in place, idempotently."""
    import shutil

    from xastruct import registry

    _, eng, tmp = duck
    src = next(p.parent for p in (tmp / "models").rglob("meta.json") if "/cn/" in str(p))
    shipped = tmp_path / "pretrained" / "cn" / "Cu" / "K" / src.parts[-3] / "rf" / "v1"
    shutil.copytree(src, shipped)
    url = f"duckdb:///{tmp_path / 'fresh.duckdb'}"
    fresh = store.get_engine(url)
    assert registry.import_artifacts(fresh, tmp_path / "pretrained") == {"found": 1, "added": 1}
    assert registry.import_artifacts(fresh, tmp_path / "pretrained")["added"] == 0
    entry = registry.list_models(fresh)[0]
    assert entry.artifact == str(shipped.resolve()) and entry.metrics
    assert inv.load_member(entry.member_dirs()[0], device="cpu") is not None
    # the models shipped with the package are complete artifacts
    metas = list(registry.PRETRAINED_DIR.rglob("meta.json"))
    assert metas, "xastruct/data/pretrained is empty: run `make pretrained`"
    other = store.get_engine(f"duckdb:///{tmp_path / 'other.duckdb'}")
    assert registry.import_artifacts(other, registry.PRETRAINED_DIR)["added"] == len(metas)
    tasks = {e.task for e in registry.list_models(other)}
    assert {"forward", "cn", "neighbor", "mnnd"} <= tasks
    # XANES-only variants for scans that stop before the EXAFS range, each read for some 3d metal
    xo = [e for e in registry.list_models(other) if e.task != "forward" and e.kind == "XANES"]
    assert {e.task for e in xo} == {"cn", "neighbor", "mnnd"}
    assert all(any(inv.saw_kind(e.config, "XANES", el) for el in ("Mn", "Fe", "Cu")) for e in xo)
    # forward: one XANES model over the 3d metals beside the EXAFS path model
    from xastruct.train import serves

    fx = [e for e in registry.list_models(other) if e.task == "forward" and e.kind == "XANES"]
    assert len(fx) == 1 and all(serves(fx[0], el, "K") for el in ("Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn"))
    # absorber pooling + dropout 0.2: the validation choice on the current dataset (Makefile pretrained-forward)
    assert fx[0].config["pool"] == "absorber" and fx[0].metrics["per_pair"]["Fe:K"]["n_train"] >= 25


def test_batched_exafs_features_equal_per_row_path():
    # screen featurizes FEFF chi(k) rows in one vectorized pass; it must match inverse.exafs_features
    import pyarrow as pa

    rng = np.random.default_rng(0)
    rows = []
    for i, (k0, k1, n) in enumerate([(0.0, 16.0, 321), (1.95, 12.02, 200), (0.5, 14.0, 90), (0.0, 10.0, 150)]):
        k = np.linspace(k0, k1, n)
        rows.append(dict(id=i, kind="EXAFS", k=list(k), chi=list(np.sin(2 * 2.5 * k) * np.exp(-k / 8) + rng.normal(0, 1e-3, n))))
    rows.append(dict(id=9, kind="EXAFS", k=None, chi=None))  # no chi(k): left to the per-row path
    rows.append(dict(id=10, kind="XANES", k=None, chi=None))
    tbl = pa.Table.from_pylist(rows, schema=pa.schema([("id", pa.int64()), ("kind", pa.string()),
                                                       ("k", pa.list_(pa.float64())), ("chi", pa.list_(pa.float64()))]))
    got = scr._batch_exafs(tbl)
    assert sorted(got) == [0, 1, 2]  # row 3 stops at k = 10 < 12: not batched (per-row path reports it)
    for i in got:
        want = inv.exafs_features(np.asarray(rows[i]["k"]), np.asarray(rows[i]["chi"]))
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-9)
    with pytest.raises(inv.InputError, match="EXAFS range too short"):
        inv.exafs_features(np.asarray(rows[3]["k"]), np.asarray(rows[3]["chi"]))


def test_probability_json_is_json_dumps_of_the_nonzero_classes():
    """The vectorized probabilities text equals the per-row json.dumps it replaced (sorted keys,
    zero classes left out, an all-zero row gives {})."""
    from xastruct.screen import _probability_json

    rng = np.random.default_rng(3)
    classes = ["O", "Cu", "S", "other", "Fe", "N"]
    p = np.round(rng.dirichlet(np.full(len(classes), 0.3), size=50), 4)
    p[rng.random(p.shape) < 0.4] = 0.0
    p[7] = 0.0
    want = [json.dumps({c: q for c, q in zip(classes, row) if q != 0}, sort_keys=True) for row in p.tolist()]
    got = _probability_json(p, classes)
    assert got == want and got[7] == "{}"
    assert all(json.loads(g) == json.loads(w) for g, w in zip(got, want))
    # every 4-decimal value (the table path) and unrounded values (the repr path) alike
    every = (np.arange(10_001) / 1e4).reshape(-1, 1)
    assert _probability_json(every, ["Cu"]) == [json.dumps({"Cu": v}) if v else "{}" for v in every[:, 0].tolist()]
    raw = rng.dirichlet(np.ones(len(classes)), size=5)
    assert _probability_json(raw, classes) == [json.dumps(dict(zip(classes, r)), sort_keys=True) for r in raw.tolist()]


def test_batched_xanes_features_equal_per_row_path():
    # screen featurizes calculated mu(E) rows in one pass; measured scans and NULL rows go row by row
    import pyarrow as pa

    e = np.arange(8950.0, 9100.0, 0.5)
    rows = []
    for i, (edge, source, normalized) in enumerate([(8990.0, "feff10", True), (8985.0, "mp", True),
                                                    (8992.0, "xdi", True), (8990.0, "feff10", False)]):
        mu = list(0.5 + np.arctan((e - edge) / 1.5) / np.pi)
        rows.append(dict(id=i, source=source, normalized=normalized, energies=list(e), mu=mu))
    rows.append(dict(id=9, source="feff8l", normalized=True, energies=None, mu=None))
    tbl = pa.Table.from_pylist(rows, schema=pa.schema([
        ("id", pa.int64()), ("source", pa.string()), ("normalized", pa.bool_()),
        ("energies", pa.list_(pa.float64())), ("mu", pa.list_(pa.float64()))]))
    got = scr._batch_xanes(tbl)
    assert sorted(got) == [0, 1]
    for i in got:
        want, _ = inv.xanes_features(np.asarray(rows[i]["energies"]), np.asarray(rows[i]["mu"]))
        np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-8)


def test_references_pick_the_newest_spectrum_per_site(duck):
    # the forward screen compares each prediction with the site's newest stored spectrum of that kind
    _url, eng, _tmp = duck
    with eng.connect() as c:
        site_id, old = c.execute(sa.text("SELECT site_id, max(id) FROM spectra WHERE kind = 'EXAFS' AND site_id IS NOT "
                                         "NULL GROUP BY site_id ORDER BY site_id LIMIT 1")).one()
    cols = ("absorber, edge, kind, source, energies, mu, mu_raw, k, chi, e0, edge_step, normalized, structure_id, "
            "site_id, provenance")
    with eng.begin() as c:
        c.execute(sa.text(f"INSERT INTO spectra (key, {cols}) SELECT key || '-newer', {cols} FROM spectra WHERE id = :i"),
                  {"i": old})
    try:
        with eng.connect() as c:
            newest = c.execute(sa.text("SELECT max(id) FROM spectra WHERE site_id = :s AND kind = 'EXAFS'"),
                               {"s": site_id}).scalar()
            refs = scr._references(c, [site_id, site_id, 10**9], "K", "EXAFS")
            xanes = scr._references(c, [site_id], "K", "XANES")  # the other kind: its own arrays
            assert scr._references(c, [], "K", "EXAFS") == {} and scr._references(c, [site_id], "L3", "EXAFS") == {}
        assert all(len(r["energies"]) == len(r["mu"]) > 0 and "k" not in r for r in xanes.values())
        assert newest > old and set(refs) == {site_id} and refs[site_id]["id"] == newest
        assert len(refs[site_id]["k"]) == len(refs[site_id]["chi"]) > 0
    finally:
        with eng.begin() as c:
            c.execute(sa.text("DELETE FROM spectra WHERE key LIKE '%-newer'"))


def test_inverse_batches_written_behind_are_whole_and_errors_surface(duck, tmp_path, monkeypatch):
    """Batches are written by a thread while the next is predicted: a failing write or a failing
    prediction stops the run with that error, every batch before it is committed whole, and a
    rerun completes with nothing duplicated."""
    import shutil

    _, _, tmp = duck
    store.dispose_engines()
    dst = tmp_path / "store.duckdb"
    shutil.copy(tmp / "store.duckdb", dst)
    url = f"duckdb:///{dst}"
    eng = store.get_engine(url)
    with eng.begin() as c:
        c.execute(sa.text("DELETE FROM predictions"))
    count = "SELECT count(*), count(DISTINCT key) FROM predictions"
    real_insert, calls = store.bulk_insert, []

    def failing_third_insert(conn, table, rows):
        calls.append(rows.num_rows)
        if len(calls) == 3:
            real_insert(conn, table, rows)  # written inside the transaction, then it fails: rolled back
            raise RuntimeError("disk full")
        return real_insert(conn, table, rows)

    monkeypatch.setattr(store, "bulk_insert", failing_third_insert)
    with pytest.raises(RuntimeError, match="disk full"):
        scr.screen_inverse(eng, elements=["Cu"], device="cpu", batch_size=7)
    n, distinct = _rows(url, count)[0]
    assert n == distinct == sum(calls[:2])  # the two batches before it, whole; none of the third

    # a prediction that fails: every batch predicted before it (the one in the writer's hands
    # included) is committed before the error surfaces (one member a model: a call is a batch)
    monkeypatch.setattr(store, "bulk_insert", real_insert)
    real_predict, real_mnnd, done = inv._predict_classifier, inv._predict_mnnd, []

    def failing_predict(member, table, *a, **k):
        if len(done) == 3:
            raise ValueError("bad member")
        out = real_predict(member, table, *a, **k)
        done.append(len(table.element))
        return out

    def counted_mnnd(member, table, *a, **k):
        out = real_mnnd(member, table, *a, **k)
        done.append(len(table.element))
        return out

    monkeypatch.setattr(inv, "_predict_classifier", failing_predict)
    monkeypatch.setattr(inv, "_predict_mnnd", counted_mnnd)
    with pytest.raises(ValueError, match="bad member"):
        scr.screen_inverse(eng, elements=["Cu"], device="cpu", batch_size=7)
    n2, distinct2 = _rows(url, count)[0]
    assert n2 == distinct2 == n + sum(done) and len(done) == 3
    monkeypatch.setattr(inv, "_predict_mnnd", real_mnnd)
    monkeypatch.setattr(inv, "_predict_classifier", real_predict)
    r = scr.screen_inverse(eng, elements=["Cu"], device="cpu", batch_size=7)
    n3, distinct3 = _rows(url, count)[0]
    assert r.written == n3 - n2 and n3 == distinct3 == r.targets - r.skipped
    store.dispose_engines()


def test_update_documents_rewrites_row_and_meta_on_both_backends(db_url, tmp_path, monkeypatch):
    """registry.update_documents (behind `train calibrate`): the row's JSON and meta.json both change."""
    import shutil

    from xastruct import registry

    src = next(p.parent for p in (registry.PRETRAINED_DIR / "forward").rglob("meta.json"))
    art = tmp_path / "pretrained" / src.relative_to(registry.PRETRAINED_DIR)
    shutil.copytree(src, art)
    eng = store.get_engine(db_url)
    assert registry.import_artifacts(eng, tmp_path / "pretrained")["added"] == 1
    entry = registry.list_models(eng)[0]
    registry.update_documents(eng, entry, config={**entry.config, "band_scale": 2.5},
                              metrics={**entry.metrics, "band": {"val": {"scale": 2.5}}})
    again = registry.list_models(eng)[0]
    assert again.config["band_scale"] == 2.5 and again.metrics["band"]["val"]["scale"] == 2.5
    assert again.config["arch"] == entry.config["arch"] and again.grid == entry.grid  # the rest untouched
    meta = json.loads((art / "meta.json").read_text())
    assert meta["config"]["band_scale"] == 2.5 and meta["name"] == entry.name
    assert not list(art.glob("*.tmp"))
    # an artifact folder that cannot be written (e.g. a read-only package install): a clear error, and
    # neither the row nor meta.json changes (simulated: the tests may run as root, who writes anyway)
    from pathlib import Path

    from xastruct.errors import InputError

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "replace", refuse)
    with pytest.raises(InputError, match="cannot be rewritten"):
        registry.update_documents(eng, again, config={**again.config, "band_scale": 9.0})
    monkeypatch.undo()
    assert registry.list_models(eng)[0].config["band_scale"] == 2.5 and not list(art.glob("*.tmp"))
    assert json.loads((art / "meta.json").read_text())["config"]["band_scale"] == 2.5
