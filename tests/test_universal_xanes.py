"""One frozen-CHGNet XANES model over several absorbers (train.PooledForward with pairs): trained,
registered, reloaded, predicted and screened through the real CLI on a tiny store whose XANES is a
known function of the absorber and of the first-shell distance."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from click.testing import CliRunner

from xastruct import registry, store, train
from xastruct import screen as scr
from xastruct.cli import main
from xastruct.errors import InputError

from .test_paths import SPECTATORS, _rocksalt

DE = np.round(np.arange(-10.0, 80.0 + 1e-9, 0.5), 6)  # E - E0, eV
E0 = {"Cu": 8979.0, "Zn": 9659.0}


def run(args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _toy_xanes(absorber: str, r: float) -> np.ndarray:
    """Edge step + one resonance whose position falls with the first-shell distance r (Natoli's
    rule, E ~ 1/r^2) and whose height depends on the absorber: per-absorber means differ, and
    within an absorber the spectrum carries the structure."""
    peak = 0.6 if absorber == "Cu" else 0.3
    pos = 30.0 * (2.1 / r) ** 2
    return 0.5 * (1 + np.tanh(DE / 2.0)) + peak * np.exp(-((DE - pos) ** 2) / (2 * 3.0**2))


@pytest.fixture(scope="module")
def uni(tmp_path_factory):
    from xastruct import ingest

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("unixanes")
    url = f"duckdb:///{root / 'store.duckdb'}"
    rng = np.random.default_rng(0)
    items, structs = [], []
    for i in range(36):
        cation, anion = ("Cu", "Zn")[i % 2], ("O", "S")[(i // 2) % 2]
        s = _rocksalt(cation, anion, float(rng.uniform(4.1, 4.5) + (0.6 if anion == "S" else 0.0)))
        s.replace(1, SPECTATORS[(i // 4) % len(SPECTATORS)])
        row = ingest.structure_row(s, source="synthetic", source_id=f"rs-{i}", provenance={})
        mu = _toy_xanes(cation, s.lattice.a / 2)
        spec = dict(key=f"rs-{i}-XANES", absorber=cation, edge="K", kind="XANES", source="synthetic",
                    energies=(E0[cation] + DE).tolist(), mu=mu.tolist(), e0=E0[cation], normalized=True,
                    _structure_hash=row["content_hash"], _site_index=0)  # fmt: skip
        lab = dict(site_index=0, element=cation, equivalent_to=0, multiplicity=4, cn=6, mnnd=s.lattice.a / 2,
                   dominant_neighbor=anion, neighbors={anion: 6}, label_method="synthetic")  # fmt: skip
        items.append(ingest.Parsed(name=f"rs-{i}", structure=row, sites=[lab], spectra=[spec]))
        structs.append(s)
    ingest.write_parsed(store.get_engine(url), items)
    common = ["--db", url, "--models-dir", root / "models", "--cache-dir", root / "cache", "--device", "cpu",
              "--threads", 1]  # fmt: skip
    out = run(["train", "forward", "--universal", "--kind", "XANES", "--arch", "xastruct", "--pool", "absorber",
               "--seeds", 2, "--epochs", 150, "--lr", 3e-3, "--hidden", 32, "--keep-last", "--min-spectra", 10,
               "--min-materials", 5, *common]).output  # fmt: skip
    eng = store.get_engine(url)
    yield {"url": url, "eng": eng, "structs": structs, "out": out, "common": common,
           "entry": registry.load(eng, "forward/all/all/XANES/xastruct/v1", device="cpu")}  # fmt: skip
    store.dispose_engines()


def test_one_xanes_model_keeps_each_absorbers_mean_and_beats_it(uni):
    e = uni["entry"]
    assert e.element is None and e.kind == "XANES" and e.config["pairs"] == ["Cu:K", "Zn:K"]
    m = e.members[0]
    assert m.pairs == ["Cu:K", "Zn:K"] and tuple(m.y_mean.shape) == (2, 141)
    # the stored means are the training spectra's: Cu's resonance (0.6) is taller than Zn's (0.3)
    assert float(m.y_mean[0].max()) > float(m.y_mean[1].max()) + 0.1
    pp = e.metrics["per_pair"]
    assert set(pp) == {"Cu:K", "Zn:K"} and all(v["n_train"] > 5 for v in pp.values())
    tested = [v for v in pp.values() if v["n_test"]]
    assert tested and all(v["test"]["mae"] < v["mean_baseline_mae"] for v in tested), pp
    assert "absorber/edge pairs; on the" in " ".join(uni["out"].split())


def test_universal_xanes_predictions_reload_identically_and_need_the_absorber(uni, tmp_path):
    e = uni["entry"]
    s = uni["structs"][1]  # a Zn crystal
    got = train.predict_sites(e, s, [0], device="cpu")  # (members, 1, grid)
    again = registry.load(uni["eng"], e.id, device="cpu")
    np.testing.assert_array_equal(got, train.predict_sites(again, s, [0], device="cpu"))
    # the same site read as Cu gets Cu's mean and one-hot: a different spectrum
    z = torch.zeros(1, e.members[0].x_mean.shape[0])
    with torch.no_grad():
        zn, cu = e.members[0](z, ["Zn:K"]), e.members[0](z, ["Cu:K"])
    assert not torch.allclose(zn, cu)
    with pytest.raises(InputError, match="Fe:K"):
        e.members[0](z, ["Fe:K"])
    with pytest.raises(ValueError, match="El:edge"):
        e.members[0](z)
    # through the CLI (the CIF writer reorders the sites: let it find the Zn site) -- the same spectrum
    out = run(["predict", "spectrum", str(_write(s, tmp_path)), "--element", "Zn", "--format", "json", "--db",
               uni["url"], "--device", "cpu"]).output  # fmt: skip
    doc = json.loads(out[out.index("{"):])
    assert doc["model"] == "forward/all/all/XANES/xastruct/v1" and len(doc["sites"]) == 1
    np.testing.assert_allclose(doc["sites"][0]["mean"], got.mean(0)[0], atol=1e-5)


def _write(s, tmp_path):
    path = tmp_path / "zn.cif"
    s.to(filename=str(path))
    return path


def test_screen_runs_the_universal_xanes_model_for_each_absorber(uni):
    eng = uni["eng"]
    res = scr.screen_forward(eng, elements=["Cu", "Zn"], device="cpu")
    assert res.written == 36 and res.models == ["forward/all/all/XANES/xastruct/v1"]
    with eng.connect() as c:
        rows = c.execute(sa.text("SELECT element, structure_id, mu FROM predictions WHERE task = 'forward'")).all()
        ids = dict(c.execute(sa.text("SELECT source_id, id FROM structures")).all())
    assert {r[0] for r in rows} == {"Cu", "Zn"}
    by_sid = {r[1]: np.asarray(r[2]) for r in rows}
    direct = train.predict_sites(uni["entry"], uni["structs"][3], [0], device="cpu").mean(0)[0]
    np.testing.assert_allclose(by_sid[ids["rs-3"]], direct, atol=1e-5)
    assert scr.screen_forward(eng, elements=["Cu", "Zn"], device="cpu").written == 0  # rerun: nothing new


def test_graph_archs_cannot_be_one_model_for_all_absorbers(uni):
    r = run(["train", "forward", "--universal", "--kind", "XANES", "--arch", "gcn", *uni["common"]], ok=False)
    assert r.exit_code == 1 and "cannot be one model for all" in r.output
