"""Inverse pipeline: features, by-material splits, training + registry round trip, predict structure.

Most tests run on a synthetic store whose spectra are generated from the site labels (EXAFS as a
damped first-shell sine with amplitude ~ CN and frequency 2R; XANES with a white line growing with
CN and a resonance moving with 1/R^2), so the models have something real to learn in seconds.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import click
import numpy as np
import pytest
from click.testing import CliRunner

from xastruct import feff
from xastruct.errors import InputError
from xastruct import inverse as inv
from xastruct import registry, store
from xastruct.errors import InputError

from .conftest import CU_FEFF9, XASLIB, needs_shared

SPECTATORS = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba", "Sc", "Y", "La", "Ti", "Zr", "Hf", "V", "Nb",
              "Ta", "Cr", "Mo", "W", "Mn", "Fe", "Co", "Ni", "Zn", "Cd", "Al", "Ga", "In", "Si"]
FAST_HP = {"epochs": 40, "lr": 3e-3, "patience": 40, "batch_size": 16, "d_embed": 16, "d_hidden": 32}


def _xanes(cn: int, r: float, anion: str, rng) -> tuple[np.ndarray, np.ndarray]:
    e_edge = 8985.0 + (2.0 if anion == "O" else 0.0)
    e = np.arange(8960.0, 9120.0, 0.5)
    x = e - e_edge
    mu = 0.5 + np.arctan(x / 1.5) / np.pi
    mu += 0.08 * cn * np.exp(-0.5 * ((x - 6.0) / 3.0) ** 2)
    mu += 0.15 * np.exp(-0.5 * ((x - 150.0 / r**2) / 4.0) ** 2) * (x > 0)
    return e, mu + rng.normal(0, 0.003, e.size)


def _exafs(cn: int, r: float, anion: str, rng) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(0.0, 16.0 + 1e-9, 0.05)
    amp = 0.9 if anion == "O" else 1.3
    chi = amp * cn / (np.maximum(k, 0.5) * r**2) * np.sin(2 * k * r + 0.5) * np.exp(-2 * 0.004 * k**2)
    return k, chi * np.exp(-k / 15.0) + rng.normal(0, 0.002, k.size)


def build_synthetic_store(url: str, n: int = 60, seed: int = 0) -> None:
    """Cu sites in n structures Cu-M-X (distinct formulas), labels and spectra consistent with each
    other; plus one structure with two inequivalent Cu orbits (multiplicities 1 and 3)."""
    from pymatgen.core import Lattice, Structure

    from xastruct import ingest

    rng = np.random.default_rng(seed)
    eng = store.get_engine(url)
    items = []
    for i in range(n):
        anion = "O" if i % 2 == 0 else "S"
        cn = 4 if (i // 2) % 2 == 0 else 6
        r = float((1.95 if anion == "O" else 2.30) + (0.08 if cn == 6 else 0.0) + rng.uniform(-0.06, 0.06))
        m = SPECTATORS[i % len(SPECTATORS)]
        n_anion = 1 + i // len(SPECTATORS)  # keeps every formula distinct
        species = ["Cu", m] + [anion] * n_anion
        coords = [[0, 0, 0], [0.5, 0.5, 0.5]] + [[0.25, 0.1 * j, 0.25] for j in range(n_anion)]
        s = Structure(Lattice.cubic(5.0 + 0.01 * i), species, coords)
        row = ingest.structure_row(s, source="synthetic", source_id=f"syn-{i}", provenance={})
        lab = dict(site_index=0, element="Cu", equivalent_to=0, multiplicity=1, cn=cn, mnnd=r,
                   dominant_neighbor=anion, neighbors={anion: cn}, label_method="synthetic")
        specs = []
        for kind in ("XANES", "EXAFS"):
            if kind == "XANES" and i % 5 == 4:
                continue  # some sites lack XANES, as in the real store
            if kind == "XANES":
                e, mu = _xanes(cn, r, anion, rng)
                k = chi = None
            else:
                k, chi = _exafs(cn, r, anion, rng)
                e = 8979.0 + k[1:] ** 2 * 3.81
                mu = 1.0 + 0.0 * e
            specs.append(dict(key=f"syn-{i}-{kind}", absorber="Cu", edge="K", kind=kind, source="synthetic",
                              energies=e.tolist(), mu=mu.tolist(), k=None if k is None else k.tolist(),
                              chi=None if chi is None else chi.tolist(), e0=8985.0, normalized=True,
                              _structure_hash=row["content_hash"], _site_index=0))
        items.append(ingest.Parsed(name=f"syn-{i}", structure=row, sites=[lab], spectra=specs))
    # two orbits: site 0 (CN 4, 1.95 A, multiplicity 1) and site 1 (CN 6, 2.15 A, multiplicity 3)
    s = Structure(Lattice.cubic(7.0), ["Cu", "Cu", "Cu", "Cu", "O"],
                  [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.25, 0.25, 0.25]])
    row = ingest.structure_row(s, source="synthetic", source_id="syn-multi", provenance={})
    labs, specs = [], []
    for idx, (cn, r, mult) in enumerate([(4, 1.95, 1), (6, 2.15, 3)]):
        for j in ([0] if idx == 0 else [1, 2, 3]):
            labs.append(dict(site_index=j, element="Cu", equivalent_to=0 if idx == 0 else 1, multiplicity=mult,
                             cn=cn, mnnd=r, dominant_neighbor="O", neighbors={"O": cn}, label_method="synthetic"))
        k, chi = _exafs(cn, r, "O", rng)
        e = 8979.0 + k[1:] ** 2 * 3.81
        specs.append(dict(key=f"syn-multi-{idx}", absorber="Cu", edge="K", kind="EXAFS", source="synthetic",
                          energies=e.tolist(), mu=(1.0 + 0 * e).tolist(), k=k.tolist(), chi=chi.tolist(),
                          e0=8979.0, normalized=True, _structure_hash=row["content_hash"], _site_index=idx))
    items.append(ingest.Parsed(name="syn-multi", structure=row, sites=labs, spectra=specs))
    ingest.write_parsed(eng, items)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A synthetic store with one registered model per task (trained once for the module)."""
    import torch

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("inverse")
    url = f"duckdb:///{d / 'store.duckdb'}"
    build_synthetic_store(url)
    eng = store.get_engine(url)
    results = {}
    for task, arch in (("cn", "rf"), ("neighbor", "sgmlp"), ("mnnd", "sgmlp")):
        res = inv.train_inverse(eng, task=task, arch=arch, seeds=2, device="cpu", hp=FAST_HP,
                                models_dir=d / "models", min_sites=10)
        assert len(res) == 1
        results[task] = res[0]
    yield url, eng, results, d
    store.dispose_engines()


# ------------------------------------------------------------------------------------- features
def test_half_step_e0_ignores_pre_edge_peak_and_finds_the_edge():
    e = np.arange(8950.0, 9100.0, 0.25)
    mu = 0.5 + np.arctan((e - 8990.0) / 1.0) / np.pi
    mu += 0.6 * np.exp(-0.5 * ((e - 8975.0) / 0.8) ** 2)  # a pre-edge peak higher than half the step
    assert inv.half_step_e0(e, mu) == pytest.approx(8990.0, abs=0.3)
    feat, e0 = inv.xanes_features(e, mu)
    assert feat.shape == inv.XANES_GRID.shape
    assert feat[np.argmin(np.abs(inv.XANES_GRID))] == pytest.approx(0.5, abs=0.05)


def test_features_reject_bad_input():
    e = np.arange(8950.0, 9100.0, 0.25)
    mu = 0.5 + np.arctan((e - 8990.0) / 1.0) / np.pi
    with pytest.raises(InputError, match="too short"):
        inv.xanes_features(e[e < 9020], mu[e < 9020])
    bad = mu.copy()
    bad[100] = np.nan
    with pytest.raises(InputError, match="NaN"):
        inv.xanes_features(e, bad)
    with pytest.raises(InputError, match="no edge"):
        inv.half_step_e0(e, 0.1 * np.ones_like(e))
    k = np.arange(0, 10, 0.05)
    with pytest.raises(InputError, match="EXAFS range too short"):
        inv.exafs_features(k, np.sin(k))


def test_exafs_features_are_k2_weighted_on_the_grid():
    k = np.arange(0, 16, 0.05)
    f = inv.exafs_features(k, np.sin(2 * k))
    assert f.shape == inv.EXAFS_GRID.shape
    np.testing.assert_allclose(f, inv.EXAFS_GRID**2 * np.sin(2 * inv.EXAFS_GRID), atol=1e-3)



def test_chir_peaks_at_the_shell_distance_and_k_models_keep_their_input():
    # one shell at r (zero phase shift): |chi(R)| peaks at r; a second, weaker shell shows as its own peak
    k = inv.EXAFS_GRID
    rows = np.stack([k**2 * np.sin(2 * k * r) * np.exp(-0.01 * k**2) for r in (1.9, 2.6)])
    rows = np.vstack([rows, rows[0] + 0.3 * k**2 * np.sin(2 * k * 3.8), np.full(len(k), np.nan)])
    mag = inv.chir_magnitude(rows)
    assert mag.shape == (4, len(inv.R_GRID))
    peaks = inv.R_GRID[np.argmax(mag[:3], axis=1)]
    np.testing.assert_allclose(peaks, [1.9, 2.6, 1.9], atol=0.051)
    far = inv.R_GRID > 3.3
    assert abs(inv.R_GRID[far][np.argmax(mag[2][far])] - 3.8) <= 0.051
    assert np.isnan(mag[3]).all()  # a missing spectrum stays missing
    # "k+R" appends R space; "k" (models registered before it existed: no exafs_repr) is unchanged
    both = inv.exafs_vector(rows[:2], "k+R")
    assert both.shape == (2, len(k) + len(inv.R_GRID))
    np.testing.assert_array_equal(both[:, : len(k)], rows[:2])
    np.testing.assert_array_equal(inv.exafs_vector(rows[:2], inv.exafs_repr_of({"exafs_mean": []})), rows[:2])
    assert len(inv.exafs_axis("k+R")) == both.shape[1]
    with pytest.raises(ValueError, match="unknown EXAFS representation"):
        inv.exafs_vector(rows, "R")

# ---------------------------------------------------------------------------------------- splits
def test_split_by_material_is_stable_and_never_straddles():
    groups = [f"F{i % 50}" for i in range(500)]
    s = inv.split_by_material(groups, seed=3)
    for g in set(groups):
        assert len({s[i] for i, x in enumerate(groups) if x == g}) == 1
    # adding materials does not move the existing ones
    s2 = inv.split_by_material(groups + ["new1", "new2"], seed=3)
    assert list(s2[:500]) == list(s)
    frac = {k: float(np.mean(s == k)) for k in ("train", "val", "test")}
    assert 0.5 < frac["train"] < 0.9 and frac["val"] > 0.03 and frac["test"] > 0.03
    assert list(inv.split_by_material(groups, seed=4)) != list(s)


def test_temperature_scaling_fixes_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(0, 1, (400, 3))
    logits[np.arange(400), y] += 1.0
    t = inv.fit_temperature(8 * logits, y)  # 8x overconfident
    assert 5 < t < 12
    before = inv.expected_calibration_error(inv._softmax(8 * logits), y)
    after = inv.expected_calibration_error(inv._softmax(8 * logits / t), y)
    assert after < before / 2


def test_metrics():
    m = inv.regression_metrics([1.0, 2.0, 3.0], [1.1, 2.0, 2.9], var=[0.04, 0.01, 1e-6])
    assert m["mae"] == pytest.approx(0.2 / 3)
    assert m["slope"] == pytest.approx(0.9)
    assert m["cov1"] == pytest.approx(2 / 3)
    c = inv.classification_metrics(["a", "a", "b"], ["a", "b", "b"], np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]]),
                                   ["a", "b"])
    assert c["accuracy"] == pytest.approx(2 / 3)
    assert c["ece"] == pytest.approx((abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.8)) / 3)


# ------------------------------------------------------------------------------- store + targets
def test_load_sites_site_and_structure_targets(trained):
    url, eng, _, _ = trained
    site = inv.load_sites(eng)
    assert len(site) == 62  # 60 single-orbit structures + 2 orbits of the multi-site one
    assert site.has_exafs.all() and 0 < site.has_xanes.sum() < len(site)
    st = inv.load_sites(eng, target="structure")
    multi = st.subset(st.group == "Cu4O")
    assert len(multi) == 1
    assert multi.mnnd[0] == pytest.approx((1 * 1.95 + 3 * 2.15) / 4)
    assert multi.cn[0] == round((4 + 3 * 6) / 4)
    # the averaged chi is the multiplicity-weighted mean of the two sites' features
    both = site.subset(site.group == "Cu4O")
    w = np.where(both.cn == 4, 0.25, 0.75)
    np.testing.assert_allclose(multi.exafs[0], (w[:, None] * both.exafs).sum(0), atol=1e-9)


# --------------------------------------------------------------------------- training + registry
def test_models_learn_and_beat_trivial_baselines(trained):
    _, _, res, _ = trained
    cn = res["cn"].metrics
    assert cn["test"]["overall"]["accuracy"][0] >= 0.8
    nb = res["neighbor"].metrics
    assert nb["test"]["overall"]["accuracy"][0] >= nb["trivial_test"]["overall"]["accuracy"]
    mn = res["mnnd"].metrics
    assert mn["test"]["overall"]["mae"][0] < mn["trivial_test"]["overall"]["mae"]
    assert {"cov1", "cov2", "r2", "slope"} <= set(mn["test"]["overall"])


def test_models_listing_shows_each_inverse_task_held_out_figure(trained):
    # `xastruct models` prints, per row, what the task is judged by: MNND MAE, CN / neighbour accuracy + F1
    from xastruct.cli.train import _headline, models_cmd

    url, _, res, _ = trained
    cn = res["cn"].metrics["test"]["overall"]
    assert _headline(res["cn"].entry, "test") == (f"acc {cn['accuracy'][0]:.3f} ± {cn['accuracy'][1]:.3f}, "
                                                  f"F1 {cn['macro_f1'][0]:.3f} ± {cn['macro_f1'][1]:.3f}")
    mn = res["mnnd"].metrics["val"]["overall"]
    assert _headline(res["mnnd"].entry, "val") == f"MAE {mn['mae'][0]:.3f} ± {mn['mae'][1]:.3f} A"
    r = CliRunner().invoke(models_cmd, ["--db", url])  # not a terminal: 80 columns, the few-lines-a-model listing
    assert r.exit_code == 0 and "registered model(s)" in r.output, r.output
    for task in ("cn", "mnnd"):  # whole names and whole figures, nothing cut to fit a column
        e = res[task].entry
        assert e.name in r.output and f"{_headline(e, 'val')} | {_headline(e, 'test')}" in r.output, r.output
    assert max(len(line) for line in r.output.splitlines()) <= 80


def test_registered_rows_and_reload_reproduce_predictions(trained):
    url, eng, res, d = trained
    rows = {e.task: e for e in registry.list_models(eng)}
    assert set(rows) == {"cn", "neighbor", "mnnd"}
    assert rows["mnnd"].element is None and rows["cn"].element == "Cu" and rows["cn"].edge == "K"
    assert rows["cn"].arch == "rf" and rows["neighbor"].arch == "sgmlp"
    for task, r in res.items():
        e = rows[task]
        assert e.split_seed == 0 and e.data_fingerprint == r.fingerprint and len(e.data_fingerprint) == 64
        assert e.grid["exafs"]["start"] == 2.0 and e.metrics["test"]["overall"]["n"] > 0
        # split by material: no formula in two splits, and the test formulas are really held out
        split = json.loads((d / "models" / e.name / "split.json").read_text())
        assert not set(split["train"]) & set(split["test"])
        assert not set(split["train"]) & set(split["val"])
        members = [inv.load_member(m, device="cpu") for m in e.member_dirs()]
        assert len(members) == 2
        data = inv.load_sites(eng).with_features(r.features)
        test = data.subset(inv.split_by_material(data.group, seed=e.split_seed) == "test")
        assert set(test.group) == set(split["test"])
        cfg = e.config
        for i, (member, before) in enumerate(zip(members, r.test_predictions)):
            if task == "mnnd":
                mean, var = inv._predict_mnnd(member, test, r.features, cfg["input_norm"])
                np.testing.assert_allclose(mean, before["mean"], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(var, before["var"], rtol=1e-4, atol=1e-8)
            else:
                p = inv._predict_classifier(member, test, r.features, cfg["classes"], cfg["input_norm"],
                                            inv.member_temperature(cfg, i))
                np.testing.assert_allclose(p, before["proba"], rtol=1e-5, atol=1e-6)
            # an element without a material in some split gets an empty table there: no crash
            empty = test.subset(np.zeros(len(test), bool))
            if task == "mnnd":
                assert [a.shape for a in inv._predict_mnnd(member, empty, r.features, cfg["input_norm"])] == [(0,), (0,)]
            else:
                out = inv._predict_classifier(member, empty, r.features, cfg["classes"], cfg["input_norm"])
                assert out.shape == (0, len(cfg["classes"]))


def _cli():
    from xastruct.cli import inverse as cli_inv

    @click.group()
    def train():
        pass

    @click.group()
    def predict():
        pass

    for c in cli_inv.TRAIN_COMMANDS:
        train.add_command(c)
    for c in cli_inv.PREDICT_COMMANDS:
        predict.add_command(c)
    return train, predict


def test_cli_train_inverse_registers_a_model(trained, tmp_path):
    url, eng, _, _ = trained
    train, _ = _cli()
    before = len(registry.list_models(eng, task="cn"))
    r = CliRunner().invoke(train, ["inverse", "--task", "cn", "--element", "Cu", "--features", "exafs",
                                   "--seeds", "1", "--device", "cpu", "--min-sites", "10", "--db", url,
                                   "--models-dir", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "registered cn/Cu/K/EXAFS/rf/v" in r.output
    assert len(registry.list_models(eng, task="cn")) == before + 1
    newest = max(registry.list_models(eng, task="cn"), key=lambda e: e.id)
    assert newest.config["input_norm"]["exafs_repr"] == "k+R"
    assert len(newest.config["input_norm"]["exafs_mean"]) == len(inv.EXAFS_GRID) + len(inv.R_GRID)
    # the k-only representation stays available (ablation, and how older models read their input)
    r = CliRunner().invoke(train, ["inverse", "--task", "cn", "--element", "Cu", "--features", "exafs",
                                   "--seeds", "1", "--device", "cpu", "--min-sites", "10", "--db", url,
                                   "--exafs-repr", "k", "--models-dir", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    newest = max(registry.list_models(eng, task="cn"), key=lambda e: e.id)
    assert newest.config["input_norm"]["exafs_repr"] == "k"
    assert len(newest.config["input_norm"]["exafs_mean"]) == len(inv.EXAFS_GRID)


# ------------------------------------------------------------------------------------- predict
def _write_two_column(path, e, mu):
    path.write_text("\n".join(f"{a:.3f} {b:.6f}" for a, b in zip(e, mu)) + "\n")
    return path


def test_predict_structure_two_column_file_gives_values_with_uncertainties(trained, tmp_path):
    url, eng, _, _ = trained
    rng = np.random.default_rng(5)
    e, mu = _xanes(6, 2.03, "O", rng)
    # a measured-like scan: sloped pre-edge, arbitrary step, 7 eV calibration offset
    f = _write_two_column(tmp_path / "cu.dat", e + 7.0, 0.3 + 1e-4 * (e - 8960) + 2.0 * mu)
    res = inv.predict_structure(eng, f, element="Cu", device="cpu")
    p = res["predictions"]
    assert p["cn"]["value"] in (4, 6) and 0 < p["cn"]["probability"] <= 1 and p["cn"]["sigma"] >= 0
    assert 1.5 < p["mnnd"]["value"] < 2.8 and p["mnnd"]["sigma"] > 0
    assert p["neighbor"]["label"] in ("O", "S", "other")
    assert sum(p["neighbor"]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # the neighbour's period: its elements' probabilities summed ('other' is no element)
    per = p["neighbor"]["period"]
    elem_p = {c: v for c, v in p["neighbor"]["probabilities"].items() if c != "other"}
    assert sum(per["probabilities"].values()) == pytest.approx(sum(elem_p.values()), abs=1e-9)
    assert per["label"] == next(iter(per["probabilities"])) and per["probability"] == max(per["probabilities"].values())
    assert res["xanes"] and not res["exafs"]


@needs_shared(XASLIB)
def test_predict_structure_on_measured_xdi_via_cli(trained):
    url, _, _, _ = trained
    _, predict = _cli()
    f = XASLIB / "Cu" / "Cu_Foil_rt_2016Foils.xdi"
    r = CliRunner().invoke(predict, ["structure", str(f), "--element", "Cu", "--device", "cpu", "--db", url])
    assert r.exit_code == 0, r.output
    assert "coordination number" in r.output and "mean NN distance" in r.output and "neighbour type" in r.output
    assert "neighbour period" in r.output
    assert "±" in r.output
    # the foil scan reaches k > 12: EXAFS is extracted from the same file
    assert "EXAFS extracted" in r.output
    r = CliRunner().invoke(predict, ["structure", str(f), "--element", "Cu", "--device", "cpu", "--db", url,
                                     "--json"])
    res = json.loads(r.stdout)
    assert res["exafs"] and math.isfinite(res["predictions"]["mnnd"]["sigma"])


def test_predict_structure_several_files_one_row_each(trained, tmp_path):
    """A folder of scans in one call: a row per file with the same numbers as one file at a time;
    a file that cannot be read gets its error in its row and the exit status says so."""
    url, eng, _, _ = trained
    _, predict = _cli()
    rng = np.random.default_rng(7)
    files = []
    for i, (cn, d) in enumerate(((6, 2.03), (4, 1.95))):
        e, mu = _xanes(cn, d, "O", rng)
        files.append(str(_write_two_column(tmp_path / f"scan{i}.dat", e, mu)))
    e, mu = _xanes(4, 1.95, "O", rng)
    short = str(_write_two_column(tmp_path / "short.dat", e[e < 9010], mu[e < 9010]))
    args = ["structure", *files, "--element", "Cu", "--device", "cpu", "--db", url]
    r = CliRunner().invoke(predict, [*args, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["file"] for row in rows] == files
    for f, row in zip(files, rows):
        one = inv.predict_structure(eng, f, element="Cu", device="cpu")["predictions"]
        assert row["predictions"]["mnnd"]["value"] == pytest.approx(one["mnnd"]["value"])
        assert row["predictions"]["cn"]["value"] == one["cn"]["value"]
    r = CliRunner().invoke(predict, [*args[:3], short, *args[3:], "--json"])
    assert r.exit_code == 1
    rows = json.loads(r.stdout)
    assert [row["file"] for row in rows] == [files[0], files[1], short]
    assert "too short" in rows[2]["error"] and "predictions" in rows[0]
    r = CliRunner().invoke(predict, [*args[:3], short, *args[3:]])  # the table: a row each, exit status 1
    assert r.exit_code == 1 and "3 files" in r.output and "MNND" in r.output and "period (p)" in r.output
    r = CliRunner().invoke(predict, [*args, "--exafs", files[0]])
    assert r.exit_code == 2 and "single SPECTRUM_FILE" in r.output


@needs_shared(CU_FEFF9)
def test_predict_structure_on_feff_xmu(trained):
    url, eng, _, _ = trained
    xmu = next((CU_FEFF9 / "materials").glob("*/FEFF-XANES/*/xmu.dat"))
    res = inv.predict_structure(eng, xmu, element="Cu", device="cpu")
    assert res["xanes"] and not res["exafs"]
    assert res["predictions"]["cn"]["value"] in (4, 6)
    assert res["predictions"]["mnnd"]["sigma"] > 0


def test_predict_structure_bad_input(trained, tmp_path):
    url, eng, _, _ = trained
    rng = np.random.default_rng(1)
    e, mu = _xanes(4, 1.95, "O", rng)
    short = _write_two_column(tmp_path / "short.dat", e[e < 9010], mu[e < 9010])
    with pytest.raises(InputError, match="too short"):
        inv.predict_structure(eng, short, element="Cu", device="cpu")
    lines = _write_two_column(tmp_path / "nan.dat", e, mu).read_text().splitlines()
    lines[40] = lines[40].split()[0] + " nan"
    nan = tmp_path / "nan.dat"
    nan.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="(?i)nan|non-finite"):
        inv.predict_structure(eng, nan, element="Cu", device="cpu")
    # a Cu K scan declared as Fe: the edge is not in the data range
    ok = _write_two_column(tmp_path / "ok.dat", e, mu)
    with pytest.raises(InputError, match="does not contain the Fe K edge"):
        inv.predict_structure(eng, ok, element="Fe", device="cpu")
    with pytest.raises(InputError, match="unknown element"):
        inv.predict_structure(eng, ok, element="Xx", device="cpu")


@needs_shared(XASLIB)
def test_predict_structure_wrong_element_and_no_model(trained):
    url, eng, _, _ = trained
    cu = XASLIB / "Cu" / "Cu_Foil_rt_2016Foils.xdi"
    with pytest.raises(InputError, match="XDI header says Cu"):
        inv.predict_structure(eng, cu, element="Fe", device="cpu")
    fe = XASLIB / "Fe" / "Fe_Foil_rt_2016Foils.xdi"
    with pytest.raises(InputError, match="no inverse model registered for Fe"):
        inv.predict_structure(eng, fe, element="Fe", device="cpu")
    # through the real CLI error handling: one clear line, exit code 1
    from xastruct.cli import _Group

    root = click.Group(name="xastruct", commands={"predict": _cli()[1]})
    root.__class__ = _Group
    r = CliRunner().invoke(root, ["predict", "structure", str(fe), "--element", "Fe", "--db", url])
    assert r.exit_code == 1 and "no inverse model registered for Fe" in r.output


def test_models_of_an_older_feature_grid_are_passed_over():
    """A registered model whose stored XANES grid differs from this version's (e.g. the older +65 eV
    end) would read vectors of the wrong length: find_model skips it."""
    from types import SimpleNamespace

    assert inv.grid_current(inv.grid_spec()) and inv.grid_current(None)
    assert inv.XANES_GRID[-1] == 55.0  # within the forward XANES models' reach (closed loop)
    old = json.loads(json.dumps(inv.grid_spec()))
    old["xanes"]["stop"] = 65.0
    assert not inv.grid_current(old)

    def entry(i, grid):
        return SimpleNamespace(id=i, task="mnnd", kind="XANES", arch="sgmlp_relu", element=None, edge=None,
                               config={"elements": ["Fe"], "edges": ["K"]}, grid=grid)

    pick = inv.find_model(None, "mnnd", "Fe", "K", have_xanes=True, have_exafs=False, measured=True,
                          entries=[entry(2, old), entry(1, inv.grid_spec())])
    assert pick.id == 1
    assert inv.find_model(None, "mnnd", "Fe", "K", have_xanes=True, have_exafs=False, measured=True,
                          entries=[entry(2, old)]) is None


# ---------------------------------------------------------------------------------- real sites
@needs_shared(CU_FEFF9)
def test_real_cu_feff9_sites_train_cn_and_mnnd(tmp_path):
    """~30 real Cu K FEFF9 sites with CrystalNN labels: the pipeline runs end to end on real data."""
    import torch

    from xastruct import ingest

    torch.set_num_threads(1)
    src = tmp_path / "cu" / "materials"
    src.mkdir(parents=True)
    for d in sorted((CU_FEFF9 / "materials").iterdir())[:18]:
        shutil.copytree(d, src / d.name)
    url = f"duckdb:///{tmp_path / 's.duckdb'}"
    eng = store.get_engine(url)
    ingest.ingest_feff(eng, tmp_path / "cu")
    data = inv.load_sites(eng)
    assert 20 <= len(data) <= 60 and data.has_xanes.all() and not data.has_exafs.any()
    assert np.all((data.mnnd > 1.5) & (data.mnnd < 3.5))
    res = inv.train_inverse(eng, task="cn", features="xanes", seeds=1, device="cpu", min_sites=10,
                            models_dir=tmp_path / "models", data=data)
    assert res[0].metrics["n"]["train"] > 0 and res[0].entry.kind == "XANES"
    res = inv.train_inverse(eng, task="mnnd", features="xanes", seeds=1, device="cpu", min_sites=10,
                            hp=FAST_HP, models_dir=tmp_path / "models", data=data)
    m = res[0].metrics["test"]["overall"]
    assert m["n"] > 0 and math.isfinite(m["mae"][0]) and m["mae"][0] < 0.5
    store.dispose_engines()


def test_store_backends_load_train_register_predict(db_url, tmp_path, monkeypatch):
    """The same path on DuckDB and PostgreSQL (array columns, JSON config, registry rows)."""
    monkeypatch.setattr(inv, "MIN_KIND_ROWS", 5)  # ~20 training rows here: let the XANES file through
    build_synthetic_store(db_url, n=30)
    eng = store.get_engine(db_url)
    data = inv.load_sites(eng)
    assert len(data) == 32 and data.has_exafs.all()
    assert len(inv.load_sites(eng, target="structure")) == 31
    res = inv.train_inverse(eng, task="cn", seeds=1, device="cpu", min_sites=10, models_dir=tmp_path / "m", data=data)
    entry = registry.list_models(eng, task="cn")[0]
    assert entry.name == res[0].entry.name and entry.config["classes"] == ["4", "6"]
    rng = np.random.default_rng(2)
    e, mu = _xanes(4, 1.95, "O", rng)
    f = _write_two_column(tmp_path / "cu.dat", e, mu)
    p = inv.predict_structure(eng, f, element="Cu", device="cpu")["predictions"]
    assert p["cn"]["value"] in (4, 6) and "error" in p["mnnd"]


def test_predict_structure_with_separate_feff_chi_file(trained, tmp_path):
    url, eng, _, _ = trained
    rng = np.random.default_rng(7)
    e, mu = _xanes(4, 1.95, "O", rng)
    xf = _write_two_column(tmp_path / "cu.dat", e, mu)
    k, chi = _exafs(4, 1.95, "O", rng)
    cf = tmp_path / "chi.dat"
    cf.write_text("# synthetic\n#       k          chi          mag           phase\n"
                  + "\n".join(f"{a:.4f} {b:.6e} {abs(b):.6e} 0.0" for a, b in zip(k, chi)) + "\n")
    res = inv.predict_structure(eng, xf, element="Cu", exafs_path=cf, device="cpu")
    assert res["xanes"] and res["exafs"]
    assert res["predictions"]["cn"]["features"] == "both"
    # EXAFS at 1.95 A (CN 4, O): the models trained on the synthetic set recover it
    assert res["predictions"]["cn"]["value"] == 4
    assert abs(res["predictions"]["mnnd"]["value"] - 1.95) < 0.15
    with pytest.raises(InputError, match="chi.dat holds chi"):
        inv.predict_structure(eng, cf, element="Cu", device="cpu")


def test_a_kind_the_model_did_not_see_for_this_absorber_is_not_read(trained, tmp_path, monkeypatch):
    """A 'both' model chosen for its EXAFS reads a XANES + EXAFS scan of an absorber whose XANES it
    did not train on (< MIN_KIND_ROWS) exactly as the EXAFS alone, and says so."""
    url, eng, _, _ = trained
    rng = np.random.default_rng(11)
    e, mu = _xanes(4, 1.95, "O", rng)
    k, chi = _exafs(4, 1.95, "O", rng)
    cf = tmp_path / "chi.dat"
    cf.write_text("# synthetic\n#       k          chi          mag           phase\n"
                  + "\n".join(f"{a:.4f} {b:.6e} {abs(b):.6e} 0.0" for a, b in zip(k, chi)) + "\n")
    inp = inv.spectrum_features(_write_two_column(tmp_path / "cu.dat", e, mu), element="Cu", exafs_path=cf)
    both = inv.predict_spectra(eng, inp, device="cpu")
    exafs_only = inv.predict_spectra(eng, replace(inp, xanes=None), device="cpu")
    assert "ignored" not in both["mnnd"] and both["mnnd"]["features"] == "both"
    cu_xanes = {t: r.config["train_kinds_by_element"]["Cu"]["XANES"] for t, r in
                ((t, registry.list_models(eng, task=t)[0]) for t in ("mnnd", "neighbor"))}
    monkeypatch.setattr(inv, "MIN_KIND_ROWS", max(cu_xanes.values()) + 1)  # Cu XANES now "too few"
    masked = inv.predict_spectra(eng, inp, device="cpu")
    for task in ("mnnd", "neighbor"):
        assert masked[task]["ignored"] and masked[task]["ignored"][0].startswith("Cu XANES")
    assert masked["mnnd"]["value"] == pytest.approx(exafs_only["mnnd"]["value"], abs=1e-6)
    assert masked["mnnd"]["value"] != pytest.approx(both["mnnd"]["value"], abs=1e-6)
    assert masked["neighbor"]["probabilities"] == pytest.approx(exafs_only["neighbor"]["probabilities"], abs=1e-6)
    table, dropped = inv.without_unseen_kinds(inp.table(), {"train_kinds_by_element": {"Cu": {"XANES": 10**6, "EXAFS": 10**6}}})
    assert not dropped and table.has_xanes.all()


def test_models_are_not_given_a_spectrum_kind_they_never_saw():
    """An EXAFS-trained 'both' model must not read a XANES-only scan (measured files often are)."""
    assert inv.saw_kind({"train_kinds": {"XANES": 0, "EXAFS": 40}}, "EXAFS")
    assert not inv.saw_kind({"train_kinds": {"XANES": 0, "EXAFS": 40}}, "XANES")
    # older registry rows: recognised from the untouched input normalisation
    untouched = {"input_norm": {"xanes_mean": [0.0] * 3, "xanes_std": [1.0] * 3,
                                "exafs_mean": [0.1, 0.2, 0.0], "exafs_std": [0.3, 0.3, 0.4]}}
    assert not inv.saw_kind(untouched, "XANES") and inv.saw_kind(untouched, "EXAFS")
    assert inv.saw_kind({}, "XANES")  # unknown (e.g. random forests before train_kinds): allowed
    # per absorber: a handful of XANES rows for Fe (next to plenty of EXAFS) is not enough to read Fe XANES
    cfg = {"train_kinds": {"XANES": 89, "EXAFS": 4000},
           "train_kinds_by_element": {"Fe": {"XANES": 4, "EXAFS": 60}, "Cu": {"XANES": 25, "EXAFS": 70}}}
    assert not inv.saw_kind(cfg, "XANES", "Fe") and inv.saw_kind(cfg, "EXAFS", "Fe")
    assert inv.saw_kind(cfg, "XANES", "Cu") and not inv.saw_kind(cfg, "EXAFS", "Zn")
    assert inv.saw_kind(cfg, "XANES") and inv.MIN_KIND_ROWS == 20  # no element given: the total counts


def test_augment_exafs_perturbs_copies_like_a_measurement():
    k = inv.EXAFS_GRID
    n = 6
    chi = np.stack([np.sin(2 * k * r) * np.exp(-0.008 * k**2) for r in np.linspace(1.9, 2.6, n)])
    t = inv.SiteTable(element=np.array(["Cu"] * n), edge=np.array(["K"] * n), structure_id=np.arange(n),
                      site_id=np.arange(n), group=np.array([f"F{i}" for i in range(n)]), cn=np.full(n, 4),
                      mnnd=np.linspace(1.9, 2.6, n), neighbor=np.array(["O"] * n),
                      xanes=np.full((n, len(inv.XANES_GRID)), np.nan), exafs=chi * k**2, keys=[[]] * n)
    t.exafs[0] = np.nan  # a row without EXAFS is not copied
    # fixed ranges (the defaults follow fits to measured scans and may move; the bounds below are theirs)
    ranges = {"amplitude": (0.6, 1.2), "sigma2": (0.0, 0.006), "sigma2_per_A": (0.0, 0.004), "e0_ev": (-15.0, 5.0),
              "noise_k12": (0.0, 0.3)}
    aug = inv.augment_exafs(t, 3, seed=1, ranges=ranges)
    assert len(aug) == n + 3 * (n - 1) and aug.has_exafs.sum() == 4 * (n - 1)
    np.testing.assert_array_equal(aug.mnnd[n:], np.tile(t.mnnd[1:], 3))  # labels unchanged
    np.testing.assert_array_equal(aug.exafs[:n][1:], t.exafs[1:])  # originals untouched
    copies = aug.exafs[n:].reshape(3, n - 1, -1)
    assert not np.allclose(copies[0], copies[1])
    # the shell distance survives: |chi(R)| peaks where the original does (within the grid step)
    peak = lambda x: inv.R_GRID[np.argmax(inv.chir_magnitude(x), axis=1)]  # noqa: E731
    # (an E0 offset of -15 eV moves an uncorrected |chi(R)| peak by up to ~0.1 A)
    assert np.abs(peak(copies.reshape(-1, len(k))) - np.tile(peak(t.exafs[1:]), 3)).max() <= 0.1 + 1e-9
    # the amplitude shrinks or grows within the S0^2 / sigma^2 ranges, never by more than 1.2x
    ratio = np.abs(copies).max(axis=2) / np.abs(t.exafs[1:]).max(axis=1)
    assert (ratio < 1.25).all() and (ratio > 0.3).all()
    assert inv.augment_exafs(t, 0, seed=1) is t
    # the default ranges may sharpen the first shell (10 K scans), but never below zero total disorder:
    # FEFF's one SIG2 plus the most negative extra stays >= 0
    assert inv.AUGMENT["sigma2"][0] + feff.DEFAULT_PARAMS[("feff8l", "EXAFS")]["sig2"] >= 0
    d = inv.augment_exafs(t, 3, seed=1)  # the defaults run and copy every EXAFS row
    assert len(d) == len(aug) and np.isfinite(d.exafs[n:]).all()


def test_xanes_broadening_copies_are_broader_realigned_and_leave_exafs_draws_alone():
    x, k = inv.XANES_GRID, inv.EXAFS_GRID
    n = 5
    # an edge (arctan, half-step at 0) with a sharp white line 6 eV above it
    edge = 0.5 + np.arctan(x / 1.0) / np.pi + 0.8 * np.exp(-0.5 * ((x - 6.0) / 1.0) ** 2)
    xanes = np.tile(edge, (n, 1))
    chi = np.stack([np.sin(2 * k * r) * np.exp(-0.008 * k**2) for r in np.linspace(1.9, 2.6, n)])
    t = inv.SiteTable(element=np.array(["Cu"] * n), edge=np.array(["K"] * n), structure_id=np.arange(n),
                      site_id=np.arange(n), group=np.array([f"F{i}" for i in range(n)]), cn=np.full(n, 4),
                      mnnd=np.linspace(1.9, 2.6, n), neighbor=np.array(["O"] * n), xanes=xanes, exafs=chi * k**2,
                      keys=[[]] * n)
    t.exafs[0] = np.nan  # XANES only: copied only when the XANES is perturbed too
    # zero width changes nothing; a wide one lowers the white line and keeps the half-step at E - E0 = 0
    np.testing.assert_allclose(inv.broaden_xanes(xanes[:1], np.array([0.0])), xanes[:1], atol=1e-9)
    wide = inv.broaden_xanes(xanes[:1], np.array([10.0]))[0]
    assert wide.max() < edge.max() - 0.2
    assert abs(inv.half_step_e0(x, wide)) < 0.3
    assert np.isnan(inv.broaden_xanes(np.full((1, len(x)), np.nan), np.array([5.0]))).all()  # NaN rows stay NaN
    plain = inv.augment_exafs(t, 2, seed=3)
    ranges = inv.augment_ranges({"xanes_fwhm": [4, 12]})
    aug = inv.augment_exafs(t, 2, seed=3, ranges=ranges)
    assert len(plain) == n + 2 * (n - 1) and len(aug) == n + 2 * n  # the XANES-only row is copied too
    np.testing.assert_array_equal(plain.xanes[n:], np.tile(xanes[1:], (2, 1)))  # without it: XANES duplicated
    copies = aug.xanes[n:]
    assert (copies.max(axis=1) < edge.max() - 0.1).all()  # every copy broadened (FWHM >= 4 eV)
    # the EXAFS rows' draws are those of the run without XANES broadening (own random stream)
    with_e = aug.has_exafs[n:]
    np.testing.assert_allclose(aug.exafs[n:][with_e], plain.exafs[n:], atol=1e-12)
    for bad in ({"xanes_fwhm": [-1, 4]}, {"xanes_width": [0, 4]}):
        with pytest.raises(InputError):
            inv.augment_ranges(bad)


def test_shell_damping_damps_far_shells_more_and_nothing_at_zero():
    k = inv.EXAFS_GRID
    near, far = np.sin(2 * k * 2.0), 0.5 * np.sin(2 * k * 3.6)
    chi = np.stack([near + far])
    zero = np.zeros((1, 1))
    np.testing.assert_allclose(inv.shell_damping(chi, zero, zero), chi, atol=1e-12)  # bands partition the signal
    damped = inv.shell_damping(chi, zero, np.full((1, 1), 0.004))
    mag0, mag1 = inv.chir_magnitude(chi * k**2)[0], inv.chir_magnitude(damped * k**2)[0]
    at = lambda r: int(np.argmin(np.abs(inv.R_GRID - r)))  # noqa: E731  (apparent R ~ r - 0.2: no phase shift here)
    near_kept, far_kept = mag1[at(2.0)] / mag0[at(2.0)], mag1[at(3.6)] / mag0[at(3.6)]
    assert 0.6 < near_kept <= 1.0 and far_kept < 0.6 * near_kept
    # a uniform extra sigma^2 is the plain Debye-Waller factor
    uni = inv.shell_damping(chi, np.full((1, 1), 0.003), zero)
    np.testing.assert_allclose(uni, chi * np.exp(-2 * k**2 * 0.003), atol=1e-9)


def test_training_defaults_per_task_and_cli_overrides(trained, tmp_path):
    # MNND trains longer and stops on its val MAE; the classifiers keep the shared defaults
    assert inv.task_hp("mnnd")["epochs"] > inv.task_hp("cn")["epochs"] == inv.DEFAULT_HP["epochs"]
    assert inv.task_hp("mnnd")["mnnd_stop"] == "mae"
    assert inv.task_hp("cn", {"epochs": 5, "patience": None})["patience"] == inv.DEFAULT_HP["patience"]
    url, eng, _, _ = trained
    train, _ = _cli()
    r = CliRunner().invoke(train, ["inverse", "--task", "mnnd", "--all", "--seeds", "1", "--device", "cpu",
                                   "--min-sites", "10", "--epochs", "7", "--patience", "3", "--db", url,
                                   "--likelihood", "laplace", "--models-dir", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    newest = max(registry.list_models(eng, task="mnnd"), key=lambda e: e.id)
    hp = newest.config["hyperparameters"]
    assert (hp["epochs"], hp["patience"], hp["mnnd_stop"], hp["mnnd_likelihood"]) == (7, 3, "mae", "laplace")
    # measurement-like EXAFS copies are on by default for models with EXAFS input (DEFAULT_HP)
    assert hp["augment"] == inv.DEFAULT_HP["augment"] == 2
    assert hp["augment_ranges"] == {k: list(v) for k, v in inv.AUGMENT.items()}  # recorded with the model
    assert inv.load_member(newest.member_dirs()[0], device="cpu").likelihood == "laplace"
    assert newest.metrics["fits"][0]["epochs_run"] <= 7
    # the variance head was recalibrated on the val materials and the factor went into the saved model
    scale = newest.metrics["fits"][0]["var_scale"]
    assert np.isfinite(scale) and scale > 0
    member = inv.load_member(newest.member_dirs()[0], device="cpu")
    assert member.var_scale == pytest.approx(scale, rel=1e-6)
    # a XANES-only model records (and trains with) no copies: they would only duplicate its rows;
    # --augment 0 turns them off for the EXAFS models
    for extra, want in ((["--features", "xanes"], 0), (["--augment", "0"], 0)):
        r = CliRunner().invoke(train, ["inverse", "--task", "cn", "--all", "--universal", "--seeds", "1", "--device", "cpu",
                                       "--min-sites", "10", "--db", url, "--models-dir", str(tmp_path / "m"), *extra])
        assert r.exit_code == 0, r.output
        newest = max(registry.list_models(eng, task="cn"), key=lambda e: e.id)
        assert newest.config["hyperparameters"]["augment"] == want
        assert newest.config["hyperparameters"]["augment_ranges"] is None
    # --augment-ranges overrides some ranges, keeps the rest, and is recorded; bad ones fail up front
    r = CliRunner().invoke(train, ["inverse", "--task", "cn", "--all", "--universal", "--seeds", "1", "--device", "cpu",
                                   "--min-sites", "10", "--db", url, "--models-dir", str(tmp_path / "m"),
                                   "--augment-ranges", '{"sigma2": [-0.003, 0.005]}',
                                   "--n-estimators", "25", "--rf-min-samples-leaf", "3"])
    assert r.exit_code == 0, r.output
    newest = max(registry.list_models(eng, task="cn"), key=lambda e: e.id)
    rec = newest.config["hyperparameters"]["augment_ranges"]
    assert rec["sigma2"] == [-0.003, 0.005] and rec["e0_ev"] == list(inv.AUGMENT["e0_ev"])
    assert "xanes_fwhm" not in rec  # off unless asked for
    # the forest's size options reach the estimator and are recorded with it
    est = inv.load_member(newest.member_dirs()[0], device="cpu").estimator
    # broadened-XANES copies: a XANES-only model then trains on copies too, and records the width range
    r = CliRunner().invoke(train, ["inverse", "--task", "cn", "--all", "--universal", "--features", "xanes", "--seeds", "1",
                                   "--device", "cpu", "--min-sites", "10", "--db", url, "--models-dir", str(tmp_path / "m"),
                                   "--augment-ranges", '{"xanes_fwhm": [0, 12]}', "--n-estimators", "25"])
    assert r.exit_code == 0, r.output
    newest_x = max(registry.list_models(eng, task="cn"), key=lambda e: e.id)
    hp_x = newest_x.config["hyperparameters"]
    assert hp_x["augment"] == 2 and hp_x["augment_ranges"]["xanes_fwhm"] == [0, 12]
    assert (len(est.estimators_), est.min_samples_leaf) == (25, 3)
    hp = newest.config["hyperparameters"]
    assert (hp["n_estimators"], hp["rf_min_samples_leaf"]) == (25, 3)
    # the neighbour forest's own default (TASK_HP: leaves of >= 3 rows), the CN forest's stays 1
    r = CliRunner().invoke(train, ["inverse", "--task", "neighbor", "--arch", "rf", "--all", "--universal", "--seeds", "1",
                                   "--device", "cpu", "--min-sites", "10", "--db", url, "--models-dir", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    nb = max(registry.list_models(eng, task="neighbor"), key=lambda e: e.id)
    assert nb.config["hyperparameters"]["rf_min_samples_leaf"] == 3
    assert inv.load_member(nb.member_dirs()[0], device="cpu").estimator.min_samples_leaf == 3
    assert inv.task_hp("cn")["rf_min_samples_leaf"] == 1
    n_models = len(registry.list_models(eng, task="cn"))
    for bad, msg in (('{"sigma": [0, 1]}', "unknown augmentation parameter 'sigma'"), ('{"e0_ev": [5, -5]}', "low 5.0 > high"),
                     ("sigma2=1", "not JSON")):
        r = CliRunner().invoke(train, ["inverse", "--task", "cn", "--all", "--universal", "--db", url,
                                       "--models-dir", str(tmp_path / "m"), "--augment-ranges", bad])
        # (the installed `xastruct` entry point prints InputError as a one-line message; here it is the exception)
        assert r.exit_code != 0 and msg in r.output + str(r.exception or ""), r.output
    assert len(registry.list_models(eng, task="cn")) == n_models


def _two_absorbers(eng) -> inv.SiteTable:
    """The synthetic Cu sites plus the same spectra as 'Ni' sites whose CN labels are swapped
    (4 <-> 6): only the absorber tells the two apart."""
    from dataclasses import replace

    cu = inv.load_sites(eng)
    ni = replace(cu, element=np.full(len(cu), "Ni"), cn=np.where(cu.cn == 4, 6, 4),
                 group=np.array([f"{g}-Ni" for g in cu.group]), keys=[f"{k}-Ni" for k in cu.keys], exafs_r=None)
    return cu.concat(ni)


def test_universal_classifiers_read_the_absorber(trained, tmp_path):
    import torch

    torch.set_num_threads(1)
    _, eng, _, _ = trained
    data = _two_absorbers(eng)
    kw = dict(task="cn", seeds=1, device="cpu", register=False, data=data, min_sites=10)
    per_el = inv.train_inverse(None, arch="rf", **kw)
    assert [(r.element, r.config["use_element"]) for r in per_el] == [("Cu", None), ("Ni", None)]
    # the forest for all absorbers reads Z, period, group and the edge from extra design columns
    (rf,) = inv.train_inverse(None, arch="rf", universal=True, **kw)
    assert rf.element is None and rf.config["use_element"] is True
    assert rf.config["input_norm"]["element_inputs"] is True
    X = inv._rf_design(data, "both", rf.config["input_norm"])
    np.testing.assert_array_equal(X[:, -7:-4], np.where((data.element == "Cu")[:, None], [[29, 4, 11]], [[28, 4, 10]]))
    assert rf.members[0].estimator.n_features_in_ == X.shape[1]
    # the network: an element embedding + edge one-hot separate identical spectra with opposite labels,
    # which the same network without them cannot
    (blind,) = inv.train_inverse(None, arch="sgmlp", universal=True, use_element=False, hp=FAST_HP, **kw)
    assert blind.config["use_element"] is False and not blind.members[0].use_element
    assert blind.metrics["test"]["overall"]["accuracy"][0] <= 0.7
    ueng = store.get_engine(f"duckdb:///{tmp_path / 'u.duckdb'}")
    (net,) = inv.train_inverse(ueng, **{**kw, "register": True}, arch="sgmlp", universal=True, hp=FAST_HP,
                               models_dir=tmp_path / "m")
    assert net.members[0].use_element and net.config["use_element"] is True
    acc = {g: m["accuracy"][0] for g, m in net.metrics["test"].items()}
    assert set(acc) == {"overall", "Cu", "Ni"} and min(acc.values()) >= 0.8, acc
    # registered, found for Ni and Cu but not for an absorber it never saw, identical after save/load
    for el, found in (("Ni", True), ("Cu", True), ("Fe", False)):
        e = inv.find_model(ueng, "cn", el, "K", have_xanes=True, have_exafs=True, measured=False)
        assert (e is not None and e.id == net.entry.id) == found, el
    member = inv.load_member(net.entry.member_dirs()[0], device="cpu")
    test = data.subset(inv.split_by_material(data.group, seed=0) == "test")
    p = inv._predict_classifier(member, test, net.features, net.config["classes"], net.config["input_norm"],
                                inv.member_temperature(net.entry.config, 0))
    np.testing.assert_allclose(p, net.test_predictions[0]["proba"], rtol=1e-5, atol=1e-6)
    store.dispose_engines()


def test_cli_train_inverse_universal_flag(trained, tmp_path):
    url, eng, _, _ = trained
    train, _ = _cli()
    u = f"duckdb:///{tmp_path / 'c.duckdb'}"
    shutil.copy(url.removeprefix("duckdb:///"), tmp_path / "c.duckdb")
    r = CliRunner().invoke(train, ["inverse", "--task", "neighbor", "--universal", "--seeds", "1", "--device", "cpu",
                                   "--min-sites", "10", "--epochs", "5", "--db", u, "--models-dir", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "registered neighbor/all/" in r.output
    newest = max(registry.list_models(store.get_engine(u), task="neighbor"), key=lambda e: e.id)
    assert newest.element is None and newest.config["use_element"] is True
    store.dispose_engines()


def test_neighbor_period_sums_probabilities_over_each_period():
    per = inv.neighbor_period({"Co": 0.18, "Cu": 0.17, "Ni": 0.15, "O": 0.3, "other": 0.1, "La": 0.1})
    assert per["label"] == "4 (K-Kr)" and per["period"] == 4 and per["probability"] == pytest.approx(0.5)
    assert per["probabilities"] == pytest.approx({"4 (K-Kr)": 0.5, "2 (Li-Ne)": 0.3, "6 (Cs-Rn)": 0.1})
    assert list(per["probabilities"]) == ["4 (K-Kr)", "2 (Li-Ne)", "6 (Cs-Rn)"]  # most probable first
    assert inv.neighbor_period({"other": 1.0}) is None
    assert [inv.period_label(k) for k in (1, 3, 5, 7)] == ["1 (H-He)", "3 (Na-Ar)", "5 (Rb-Xe)", "7 (Fr-Og)"]


def test_element_columns_match_pymatgen():
    from pymatgen.core import Element

    for z in range(1, 104):
        el = Element.from_Z(z)
        assert inv.SYMBOLS[z - 1] == el.symbol and inv.period_group(z) == (el.row, el.group), el
    cols = inv.element_columns(["Fe", "La", "Fe"], ["K", "l3", "K"])
    np.testing.assert_array_equal(cols, [[26, 4, 8, 1, 0, 0, 0], [57, 6, 3, 0, 0, 0, 1], [26, 4, 8, 1, 0, 0, 0]])
    with pytest.raises(InputError, match="Xx"):
        inv.element_columns(["Xx"], ["K"])


def test_uniform_row_interp_equals_np_interp_including_the_clamped_ends():
    k = inv.EXAFS_GRID
    rng = np.random.default_rng(3)
    y = rng.normal(size=(20, len(k)))
    # shifts that push points below k[0] and above k[-1], where np.interp holds the end values
    x_new = np.sqrt(np.clip(k[None, :] ** 2 + rng.uniform(-40, 40, size=(20, 1)) / 3.81, 0.0, None))
    want = np.stack([np.interp(x_new[i], k, y[i]) for i in range(20)])
    np.testing.assert_allclose(inv._interp_uniform(x_new, k, y), want, rtol=0, atol=1e-10)


def test_load_member_is_reused_until_the_artifact_changes(tmp_path):
    """predict_spectra loads its members on every call: an unchanged artifact comes from memory,
    one rewritten in place is read again."""
    from sklearn.ensemble import RandomForestClassifier

    X, y = np.arange(20.0).reshape(10, 2), np.array([0, 1] * 5)
    d = tmp_path / "seed0"
    inv.SklearnMember(estimator=RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)).save(d)
    a = inv.load_member(d, device="cpu")
    assert inv.load_member(d, device="cpu") is a
    inv.SklearnMember(estimator=RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y)).save(d)
    b = inv.load_member(d, device="cpu")
    assert b is not a and len(b.estimator.estimators_) == 5


def test_xanes_features_rows_equal_per_row_function():
    """The vectorized XANES featurization (screen's FEFF rows) gives xanes_features' E0 and features
    row for row, and refuses exactly the rows the per-row function refuses (or cannot vouch for)."""
    rng = np.random.default_rng(5)
    rows, want = [], []
    for j in range(40):
        e = np.sort(rng.uniform(8940.0, 9100.0, rng.integers(80, 300)))
        e = np.unique(e)
        edge = rng.uniform(8970.0, 9010.0)
        mu = 0.5 + np.arctan((e - edge) / rng.uniform(0.5, 3.0)) / np.pi + rng.normal(0, 0.02, e.size)
        if j % 5 == 1:  # a pre-edge peak above half the step
            mu += 0.6 * np.exp(-0.5 * ((e - edge + 12.0) / 0.8) ** 2)
        if j % 7 == 2:  # a dip below 0.5 right after the first crossing: E0 moves to the later one
            mu[(e > edge + 1.0) & (e < edge + 2.5)] = 0.3
        rows.append((e, mu))
    e = np.arange(8950.0, 9100.0, 0.25)
    mu = 0.5 + np.arctan((e - 8990.0) / 1.0) / np.pi
    rows += [(e[e < 9020], mu[e < 9020]),  # too short above the edge
             (e[e > 8990.5], mu[e > 8990.5]),  # starts above the edge
             (e, 0.1 * np.ones_like(e)),  # no edge
             (e[:2], mu[:2]),  # too few points
             (e[::-1].copy(), mu[::-1].copy())]  # decreasing energies: left to the per-row path
    bad = mu.copy()
    bad[100] = np.nan
    rows.append((e, bad))
    for e_, m_ in rows:
        try:
            want.append(inv.xanes_features(e_, m_))
        except InputError:
            want.append(None)
    offsets = np.concatenate([[0], np.cumsum([len(r[0]) for r in rows])])
    ok, feats = inv.xanes_features_rows(offsets, np.concatenate([r[0] for r in rows]),
                                        np.concatenate([r[1] for r in rows]))
    assert ok.tolist()[:40] == [w is not None for w in want[:40]] and not ok[40:].any()
    assert ok.sum() >= 30  # the synthetic rows mostly pass
    for f, w in zip(feats, [w for w, o in zip(want, ok) if o]):
        np.testing.assert_allclose(f, w[0], rtol=0, atol=1e-8)
    assert inv.xanes_features_rows(np.array([0]), np.zeros(0), np.zeros(0))[1].shape == (0, len(inv.XANES_GRID))
