"""The path model for EXAFS (models.PathEXAFS): neighbour featurization, save/load, and one model over
several absorbers trained, registered, predicted and screened through the real CLI on a tiny store
whose EXAFS is a known single-scattering sum over each structure's real neighbours."""

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
from xastruct.models import PathEXAFS, load_model

from .conftest import XASLIB

K = np.round(np.arange(0.0, 14.0 + 1e-9, 0.05), 6)
SPECTATORS = ["Mg", "Ca", "Sr", "Ba", "Ni", "Co", "Fe", "Mn", "Cd"]


def run(args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _rocksalt(cation: str, anion: str, a: float):
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, anion], [[0, 0, 0], [0.5, 0.5, 0.5]])


def _toy_chi(structure, site: int) -> np.ndarray:
    """chi(k) = sum_j A_j sin(2 k R_j + 0.5) exp(-2 0.005 k^2 - 2 R_j / 8) / (k R_j^2) out to 5 A."""
    k = np.maximum(K, 0.05)
    chi = np.zeros_like(k)
    for n in structure.get_neighbors(structure[site], 5.0):
        r = n.nn_distance
        chi += (0.4 + 0.03 * n.specie.Z) * np.sin(2 * k * r + 0.5) * np.exp(-0.01 * k**2 - r / 4) / (k * r**2)
    return chi


def _build(url: str, n: int = 36, seed: int = 0) -> list:
    """n rocksalt crystals (Cu or Zn with O or S and a spectator cation on one other site, random
    lattice constants; distinct formulas, so StructureMatcher keeps them apart), one EXAFS per crystal
    (site 0)."""
    from xastruct import ingest

    rng = np.random.default_rng(seed)
    items, structs = [], []
    for i in range(n):
        cation, anion = ("Cu", "Zn")[i % 2], ("O", "S")[(i // 2) % 2]
        s = _rocksalt(cation, anion, float(rng.uniform(4.1, 4.5) + (0.6 if anion == "S" else 0.0)))
        s.replace(1, SPECTATORS[(i // 4) % len(SPECTATORS)])
        row = ingest.structure_row(s, source="synthetic", source_id=f"rs-{i}", provenance={})
        chi = _toy_chi(s, 0)
        e = 8979.0 + K[1:] ** 2 * 3.81
        spec = dict(key=f"rs-{i}-EXAFS", absorber=cation, edge="K", kind="EXAFS", source="synthetic",
                    energies=e.tolist(), mu=(1.0 + 0 * e).tolist(), k=K.tolist(), chi=chi.tolist(), e0=8979.0,
                    normalized=True, _structure_hash=row["content_hash"], _site_index=0)  # fmt: skip
        lab = dict(site_index=0, element=cation, equivalent_to=0, multiplicity=4, cn=6, mnnd=s.lattice.a / 2,
                   dominant_neighbor=anion, neighbors={anion: 6}, label_method="synthetic")  # fmt: skip
        items.append(ingest.Parsed(name=f"rs-{i}", structure=row, sites=[lab], spectra=[spec]))
        structs.append(s)
    ingest.write_parsed(store.get_engine(url), items)
    return structs


@pytest.fixture(scope="module")
def universal(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("paths")
    url = f"duckdb:///{root / 'store.duckdb'}"
    structs = _build(url)
    common = ["--db", url, "--models-dir", root / "models", "--cache-dir", root / "cache", "--device", "cpu",
              "--threads", 1]  # fmt: skip
    out = run(["train", "forward", "--universal", "--kind", "EXAFS", "--arch", "paths", "--seeds", 2, "--epochs", 60,
               "--lr", 3e-3, "--hidden", 32, "--keep-last", *common]).output  # fmt: skip
    eng = store.get_engine(url)
    yield {"url": url, "root": root, "eng": eng, "structs": structs, "out": out, "common": common,
           "entry": registry.load(eng, "forward/all/all/EXAFS/paths/v1", device="cpu")}  # fmt: skip
    store.dispose_engines()


def test_neighbours_are_the_sites_real_shells_nearest_first():
    s = _rocksalt("Cu", "O", 4.2)
    assert PathEXAFS.neighbours(s, 0, 5.0).shape[1] == 3  # the focusing columns only on request
    nb = PathEXAFS.neighbours(s, 0, 5.0, focus=True)
    assert (np.diff(nb[:, 1]) >= 0).all() and nb[:, 1].max() <= 5.0
    np.testing.assert_allclose(nb[:6, 1], 2.1, atol=1e-6)  # 6 O at a/2
    assert set(nb[:6, 0].astype(int)) == {8}
    np.testing.assert_allclose(nb[6:18, 1], 4.2 / np.sqrt(2), atol=1e-6)  # 12 Cu at a/sqrt(2)
    assert set(nb[6:18, 0].astype(int)) == {29}
    # in-line atoms: the 6 Cu at a sit straight behind an O at a/2 (collinear, half-way)
    far = nb[np.isclose(nb[:, 1], 4.2)]
    assert len(far) == 6 and np.allclose(far[:, 3], 1.0) and set(far[:, 4].astype(int)) == {8}
    np.testing.assert_allclose(far[:, 5], 0.5, atol=1e-6)
    assert (nb[:6, 3:] == 0).all()  # the first shell has nothing in front of it
    za, edge, zn, rn, mask, ha, hn, geo = PathEXAFS.collate([29, 30], ["K", "L3"], [nb, nb[:3]])
    assert ha is None and hn is None and geo.shape == (2, len(nb), 3)
    assert zn.shape == rn.shape == mask.shape == (2, len(nb)) and mask[1].sum() == 3
    assert edge.tolist() == [0, 3] and za.tolist() == [29, 30]


def test_path_model_round_trips_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    m = PathEXAFS(k_start=2.0, k_step=0.05, n_k=201, d_hidden=16).eval()
    s = _rocksalt("Zn", "S", 5.4)
    x = PathEXAFS.collate([30], ["K"], [PathEXAFS.neighbours(s, 0, 5.0)])
    m.save(tmp_path / "m")
    m2 = load_model(tmp_path / "m", device="cpu")
    with torch.no_grad():
        a, b = m(*x), m2(*x)
    assert a.shape == (1, 201) and torch.equal(a, b) and a.abs().sum() > 0
    # a batch of sites with different neighbour counts (padded) gives each site its own spectrum
    s2 = _rocksalt("Cu", "O", 4.2)
    nb2 = PathEXAFS.neighbours(s2, 4, 3.5)  # an O site, fewer neighbours
    with torch.no_grad():
        both = m(*PathEXAFS.collate([30, 8], ["K", "K"], [PathEXAFS.neighbours(s, 0, 5.0), nb2]))
        one = m(*PathEXAFS.collate([8], ["K"], [nb2]))
    torch.testing.assert_close(both[0], a[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both[1], one[0], rtol=1e-5, atol=1e-6)


def test_universal_paths_model_registers_pairs_and_beats_the_mean(universal):
    e = universal["entry"]
    assert e.element is None and e.edge is None and e.kind == "EXAFS" and e.arch == "paths"
    assert e.config["pairs"] == ["Cu:K", "Zn:K"] and len(e.members) == 2
    # the default: CHGNet atom features beside the element embeddings, cut-off as the feff8l RPATH
    assert e.members[0].d_atom == 64 and e.config["features"]["chgnet_model"] and e.members[0].r_max == 6.0
    # ... and the forward-focusing input (paths_tune.md), documented with the model's features
    assert e.members[0].focus and e.config["path_focus"] and "focusing" in e.config["features"]["per_neighbour"]
    per_pair = e.metrics["per_pair"]
    assert set(per_pair) == {"Cu:K", "Zn:K"}
    for pair, m in per_pair.items():
        assert m["n_test"] > 0 and m["n_train"] > 0
        # the toy EXAFS is a path sum over the real neighbours: the model must learn it, not the mean
        assert m["test"]["mae"] < 0.6 * m["mean_baseline_mae"], (pair, m)
    fit = e.config["fits"][0]
    assert fit["final_train_mse"] < 0.5 * fit["first_train_mse"] and fit["epochs_run"] == 60
    assert "beats each pair's training-mean spectrum on 2" in " ".join(universal["out"].split())


def test_predict_spectrum_uses_the_universal_model_and_reloads_identically(universal, tmp_path):
    s = universal["structs"][1]  # a Zn crystal
    poscar = tmp_path / "POSCAR"
    s.to(filename=str(poscar), fmt="poscar")
    r = run(["predict", "spectrum", poscar, "--element", "Zn", "--kind", "EXAFS", "--format", "json",
             "--db", universal["url"], "--device", "cpu"])  # fmt: skip
    doc = json.loads(r.output)
    assert doc["model"] == "forward/all/all/EXAFS/paths/v1" and len(doc["x"]) == 201
    direct = train.predict_sites(universal["entry"], s, [0], device="cpu").mean(0)[0]
    np.testing.assert_allclose(doc["sites"][0]["mean"], direct, rtol=1e-5, atol=1e-6)
    # an absorber the model never saw: a clear error, not a prediction from an untrained embedding
    bad = _rocksalt("Ni", "O", 4.2)
    bad.to(filename=str(tmp_path / "NiO.vasp"), fmt="poscar")
    r = run(["predict", "spectrum", tmp_path / "NiO.vasp", "--element", "Ni", "--kind", "EXAFS", "--db",
             universal["url"], "--model", "forward/all/all/EXAFS/paths/v1"], ok=False)  # fmt: skip
    assert r.exit_code != 0 and "is for 2 absorber/edge pairs EXAFS, not Ni K EXAFS" in " ".join(r.output.split())
    # without --model: no model covers Ni K EXAFS, and the error says how to train one
    r = run(["predict", "spectrum", tmp_path / "NiO.vasp", "--element", "Ni", "--kind", "EXAFS", "--db",
             universal["url"]], ok=False)  # fmt: skip
    assert r.exit_code != 0 and "no forward model registered" in " ".join(r.output.split())


def test_screen_runs_the_universal_model_for_each_absorber_once(universal):
    eng = universal["eng"]
    jobs = scr.forward_models(eng, ["Cu", "Zn", "Ni"])
    assert sorted((el, edge) for _, el, edge in jobs) == [("Cu", "K"), ("Zn", "K")]
    res = scr.screen_forward(eng, elements=["Cu", "Zn"], device="cpu")
    assert res.written == 36 and res.skipped == 0
    with eng.connect() as c:
        rows = c.execute(sa.text("SELECT element, edge, count(*), avg(reference_mae) FROM predictions "
                                 "WHERE task = 'forward' GROUP BY element, edge ORDER BY element")).all()  # fmt: skip
    assert [(r[0], r[1], r[2]) for r in rows] == [("Cu", "K", 18), ("Zn", "K", 18)]
    assert all(r[3] is not None for r in rows)
    # the screened spectrum of a site equals predict_sites on it
    with eng.connect() as c:
        mu, sid = c.execute(sa.text("SELECT p.mu, s.site_index FROM predictions p JOIN sites s ON s.id = p.site_id "
                                    "JOIN structures t ON t.id = p.structure_id WHERE t.source_id = 'rs-3'")).one()
    direct = train.predict_sites(universal["entry"], universal["structs"][3], [sid], device="cpu").mean(0)[0]
    np.testing.assert_allclose(np.asarray(mu, float), direct, rtol=1e-4, atol=1e-5)
    assert scr.screen_forward(eng, elements=["Cu", "Zn"], device="cpu").written == 0


def test_report_map_shows_the_universal_model_per_absorber(universal):
    from xastruct.report import _model_cells

    e = universal["entry"]
    row = dict(id=e.id, name=e.name, task="forward", element=None, edge=None, kind="EXAFS", arch="paths",
               metrics=e.metrics, config=e.config)  # fmt: skip
    cells = _model_cells([row], None)[("forward", "EXAFS", "K")]
    assert set(cells) == {"Cu", "Zn"}
    for el in ("Cu", "Zn"):
        assert cells[el]["error"] == pytest.approx(e.metrics["per_pair"][f"{el}:K"]["test"]["mae"])
    assert set(_model_cells([row], ["Zn"])[("forward", "EXAFS", "K")]) == {"Zn"}


@pytest.mark.skipif(not (XASLIB / "Cu" / "CuO_tenorite_13K_01.xdi").exists(), reason="shared xaslib data not found")
def test_predict_spectrum_fits_an_exafs_prediction_to_a_measured_scan(universal, tmp_path):
    """predict spectrum --kind EXAFS --compare: amplitude, disorder and E0 fitted between the predicted
    and the measured k^2 chi(k) (match.fit_exafs), printed, in JSON and drawn."""
    cif = tmp_path / "cuo_rs.cif"
    _rocksalt("Cu", "O", 4.2).to(filename=str(cif))
    scan = XASLIB / "Cu" / "CuO_tenorite_13K_01.xdi"
    base = ["predict", "spectrum", cif, "--element", "Cu", "--kind", "EXAFS", "--compare", scan, "--db",
            universal["url"], "--device", "cpu"]
    doc = json.loads(run([*base, "--format", "json"]).stdout)
    c = doc["compare"]["sites"][0]
    assert 0.1 <= c["A"] <= 3 and c["r2_fit"] >= c["r2_raw"] - 1e-9 and c["k_range"] == [3.0, 11.0]
    png = tmp_path / "fit.png"
    out = run([*base, "--plot", png]).output
    assert "after fitting amplitude" in out and png.read_bytes()[:4] == b"\x89PNG"
    assert "applies to XANES" in run([*base, "--broaden", "2"], ok=False).output


@pytest.mark.skipif(not (XASLIB / "Cu" / "CuO_tenorite_13K_01.xdi").exists(), reason="shared xaslib data not found")
def test_predict_spectrum_ranks_candidate_structures_against_a_scan(universal, tmp_path):
    """Several STRUCTUREs + --compare: candidates ranked by R^2 of the fitted EXAFS (best first)."""
    files = []
    for name, (cat, an, a) in {"cuo": ("Cu", "O", 4.2), "cus": ("Cu", "S", 5.2), "cuo_big": ("Cu", "O", 4.6)}.items():
        f = tmp_path / f"{name}.cif"
        _rocksalt(cat, an, a).to(filename=str(f))
        files.append(f)
    scan = XASLIB / "Cu" / "CuO_tenorite_13K_01.xdi"
    base = ["predict", "spectrum", *files, "--element", "Cu", "--kind", "EXAFS", "--db", universal["url"], "--device", "cpu"]
    doc = json.loads(run([*base, "--compare", scan, "--format", "json"]).stdout)
    r2 = [c["r2_fit"] for c in doc["candidates"]]
    assert len(r2) == 3 and r2 == sorted(r2, reverse=True) and doc["ranked_by"].startswith("R^2")
    assert {c["name"] for c in doc["candidates"]} == {"cuo", "cus", "cuo_big"}
    csv_out = run([*base, "--compare", scan, "--format", "csv"]).stdout.strip().splitlines()
    assert csv_out[0].startswith("rank,structure") and len(csv_out) == 4
    png = tmp_path / "rank.png"
    run([*base, "--compare", scan, "--plot", png])
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "--compare FILE" in run(base, ok=False).output  # several structures need a file to rank against
    # a wrong --compare path is named before any candidate is predicted
    missing = run([*base, "--compare", tmp_path / "nope.xdi"], ok=False)
    assert missing.exit_code == 1 and "no such file" in missing.output and "candidates" not in missing.output
    # structure:all: every stored structure with the element is a candidate; --top keeps the best N
    every = ["predict", "spectrum", "structure:all", "--element", "Cu", "--kind", "EXAFS", "--compare", scan,
             "--top", 2, "--format", "json", "--db", universal["url"], "--device", "cpu"]
    doc = json.loads(run(every).stdout)
    assert len(doc["candidates"]) == 2 and all("Cu" in c["formula"] for c in doc["candidates"])
    assert doc["candidates"][0]["r2_fit"] >= doc["candidates"][1]["r2_fit"]
