"""Forward training, registry and prediction: the real CLI on a tiny store of shared Cu K FEFF 9 data,
plus the grid, split and metric helpers on synthetic inputs."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from click.testing import CliRunner

from xastruct import registry, store, train
from xastruct.cli import main

from .conftest import CU_FEFF9

# Three pairs of Materials Project ids that StructureMatcher calls the same crystal (Nd2CuO4,
# NaCu3O4, V2CuO6): the split must keep each pair on one side.
TWIN_PAIRS = [("mp-33916", "mp-4158"), ("mp-1101684", "mp-756095"), ("mp-540757", "mp-690658")]
N_SMALL = 24  # plus the 6 twins: 30 materials


def run(args, ok=True):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def _n_atoms(poscar: Path) -> int:
    lines = poscar.read_text().splitlines()
    return sum(int(x) for x in lines[6].split())  # VASP 5: line 7 holds the atom counts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """30 materials of the shared tree (small cells + the twin pairs) ingested into a scratch store."""
    if not CU_FEFF9.exists():
        pytest.skip(f"shared data not found at {CU_FEFF9}")
    root = tmp_path_factory.mktemp("fwd")
    mats = CU_FEFF9 / "materials"
    twins = {m for pair in TWIN_PAIRS for m in pair}
    small = [
        p.name for p in sorted(mats.iterdir())
        if p.name not in twins and any((p / "FEFF-XANES").glob("*/xmu.dat")) and _n_atoms(p / "POSCAR") <= 8
    ][:N_SMALL]  # fmt: skip
    tree = root / "tree" / "materials"
    for name in [*small, *sorted(twins)]:
        shutil.copytree(mats / name, tree / name)
    url = f"duckdb:///{root / 'store.duckdb'}"
    run(["ingest", "feff", root / "tree", "--db", url, "--workers", 1])
    common = ["--db", url, "--models-dir", root / "models", "--cache-dir", root / "cache", "--device", "cpu", "--threads", 1]
    yield {"url": url, "root": root, "tree": tree, "common": common}
    store.dispose_engines()


def _train(tiny, *args):
    return run(["train", "forward", "--element", "Cu", *tiny["common"], *args])


@pytest.fixture(scope="module")
def trained(tiny):
    """xastruct (2 seeds, enough epochs to fit the training set) and the mean baseline."""
    # --keep-last: the val split of 30 materials is 4 spectra, too few for early stopping to mean much
    r = _train(tiny, "--seeds", 2, "--epochs", 100, "--lr", 3e-3, "--batch-size", 32, "--keep-last")
    m = _train(tiny, "--arch", "mean")
    eng = store.get_engine(tiny["url"])
    return {"out": r.output, "mean_out": m.output, "model": registry.load(eng, "forward/Cu/K/XANES/xastruct/v1", device="cpu"),
            "mean": registry.load(eng, "forward/Cu/K/XANES/mean/v1", device="cpu"), "eng": eng}  # fmt: skip


# ------------------------------------------------------------------------------------ CLI + registry


def test_train_forward_registers_model_with_grid_split_and_metrics(tiny, trained):
    assert "registered forward/Cu/K/XANES/xastruct/v1" in trained["out"]
    e = trained["model"]
    assert e.task == "forward" and (e.element, e.edge, e.kind, e.arch, e.version) == ("Cu", "K", "XANES", "xastruct", 1)
    assert e.grid["n"] == 141 and e.grid["start"] == -3.5 and e.grid["stop"] == 66.5 and e.grid["step"] == 0.5
    with trained["eng"].connect() as c:
        keys = [k for (k,) in c.execute(sa.text("SELECT key FROM spectra WHERE site_id IS NOT NULL"))]
    assert e.data_fingerprint == registry.fingerprint(keys)
    assert e.split_seed == 0 and len(e.members) == 2 and len(e.member_dirs()) == 2
    summ = e.metrics["summary"]
    for split in ("train", "val", "test"):
        assert summ[split]["n"] > 0
        assert 0 <= summ[split]["mae"]["mean"] < 0.5 and summ[split]["mae"]["std"] >= 0
        assert 0.9 < summ[split]["cosine"]["mean"] <= 1.0
    assert len(e.metrics["per_seed"]) == 2
    # the two seeds are different models
    p0, p1 = (m.head.mlp.net[0].proj.weight for m in e.members)
    assert not torch.equal(p0, p1)
    assert (e.config["lr"], e.config["mode"], e.config["features"]["encoder"]) == (3e-3, "pooled", "chgnet")
    assert e.config["fits"][0]["weights"] == "last epoch" and e.config["fits"][0]["epochs_run"] == 100
    listing = json.loads(run(["models", "--json", "--db", tiny["url"]]).output)
    assert {"forward/Cu/K/XANES/xastruct/v1", "forward/Cu/K/XANES/mean/v1"} <= {m["name"] for m in listing}
    assert "registered model(s)" in run(["models", "--db", tiny["url"]]).output


def test_split_keeps_materials_and_structurematcher_twins_on_one_side(tiny, trained):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    e = trained["model"]
    split = json.loads((Path(e.artifact) / "split.json").read_text())
    sides = {s: set(split[s]) for s in ("train", "val", "test")}
    assert all(sides[s] for s in sides)
    assert not (sides["train"] & sides["val"] or sides["train"] & sides["test"] or sides["val"] & sides["test"])
    data = train.load_forward_data(trained["eng"], element="Cu")
    assert set().union(*sides.values()) == set(data.hashes.values())
    side_of = {h: s for s, hs in sides.items() for h in hs}
    by_name = {data.names[i]: i for i in data.structures}
    matcher = StructureMatcher()
    for a, b in TWIN_PAIRS:
        ia, ib = by_name[a], by_name[b]
        assert matcher.fit(data.structures[ia], data.structures[ib]), f"{a}/{b} should be twins"
        assert side_of[data.hashes[ia]] == side_of[data.hashes[ib]]
    assert e.config["split"]["n_twin_groups"] == len(TWIN_PAIRS)


def test_model_reloads_from_registry_and_reproduces_its_test_metrics(tiny, trained):
    e = trained["model"]
    reloaded = registry.load(trained["eng"], e.id, device="cpu")
    data = train.load_forward_data(trained["eng"], element="Cu")
    test = set(json.loads((Path(e.artifact) / "split.json").read_text())["test"])
    rows = [i for i, s in enumerate(data.structure_ids.tolist()) if data.hashes[s] in test]
    preds = []
    for i in rows:
        sid, site = int(data.structure_ids[i]), int(data.site_indices[i])
        p = train.predict_sites(reloaded, data.structures[sid], [site], device="cpu")
        assert p.shape == (2, 1, 141)
        preds.append(p.mean(0)[0])
    got = train.spectrum_metrics(np.stack(preds), data.y[rows], data.x)
    want = e.metrics["ensemble"]["test"]
    assert got["n"] == want["n"]
    assert got["mae"] == pytest.approx(want["mae"], abs=1e-5)
    assert got["rmse"] == pytest.approx(want["rmse"], abs=1e-5)
    assert registry.latest(trained["eng"], "forward", "Cu", "K", "XANES", "xastruct", device="cpu").id == e.id


def test_mean_baseline_and_model_beats_it_on_training_data(tiny, trained):
    mean = trained["mean"]
    assert "registered forward/Cu/K/XANES/mean/v1" in trained["mean_out"]
    assert len(mean.members) == 1 and mean.metrics["n_seeds"] == 1
    data = train.load_forward_data(trained["eng"], element="Cu")
    train_h = set(json.loads((Path(mean.artifact) / "split.json").read_text())["train"])
    rows = [i for i, s in enumerate(data.structure_ids.tolist()) if data.hashes[s] in train_h]
    assert np.allclose(mean.members[0](1)[0].numpy(), data.y[rows].mean(0), atol=1e-6)
    # same split for both (same seed, same data)
    assert mean.config["split"]["counts"] == trained["model"].config["split"]["counts"]
    ours = trained["model"].metrics["summary"]["train"]["rmse"]["mean"]
    base = mean.metrics["summary"]["train"]["rmse"]["mean"]
    assert ours < 0.7 * base, (ours, base)


def test_versions_increment(tiny, trained):
    _train(tiny, "--arch", "mean")
    names = [e.name for e in registry.list_models(trained["eng"], task="forward")]
    assert "forward/Cu/K/XANES/mean/v2" in names


def test_predict_spectrum_prints_and_plots_with_seed_band(tiny, trained, tmp_path):
    poscar = tiny["tree"] / TWIN_PAIRS[0][0] / "POSCAR"
    png = tmp_path / "pred.png"
    name = trained["model"].name
    res = run(["predict", "spectrum", poscar, "--element", "Cu", "--model", name, "--plot", png, "--format", "csv",
               "--db", tiny["url"], "--device", "cpu"])  # fmt: skip
    lines = res.stdout.strip().splitlines()
    assert lines[0].startswith("E-E0 (eV),site") and len(lines) == 1 + 141
    vals = np.array([[float(v) for v in ln.split(",")] for ln in lines[1:]])
    assert np.allclose(vals[:, 0], np.arange(-3.5, 66.51, 0.5))
    mean_cols, std_cols = vals[:, 1::2], vals[:, 2::2]
    assert np.all(np.isfinite(mean_cols)) and mean_cols.max() > 0.8  # a normalized edge reaches ~1
    assert np.all(std_cols >= 0) and std_cols.max() > 0  # two seeds disagree somewhere
    # the band is the seed spread times the scale fitted on the validation materials at training
    e = registry.load(trained["eng"], name, device="cpu")
    scale = e.config["band_scale"]
    band = e.metrics["band"]
    assert scale > 0 and band["val"]["scale"] == pytest.approx(scale)
    assert band["val"]["within_1"] == pytest.approx(train.BAND_COVERAGE, abs=0.05)
    assert 0 <= band["test"]["within_1"] <= 1 and band["test"]["scale"] == pytest.approx(scale)
    from pymatgen.core import Structure

    site = int(lines[0].split(",")[1].split("_")[0][len("site"):])  # the first inequivalent Cu site
    raw = train.predict_sites(e, Structure.from_file(poscar), [site], device="cpu")[:, 0]
    np.testing.assert_allclose(std_cols[:, 0], raw.std(0, ddof=1) * scale, rtol=1e-4, atol=1e-6)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run(["predict", "spectrum", poscar, "--element", "Cu", "--db", tiny["url"], "--device", "cpu"]).output
    assert "xastruct/v1" in table and "±" in table
    bad = run(["predict", "spectrum", poscar, "--element", "Cu", "--site", 99, "--db", tiny["url"]], ok=False)
    assert bad.exit_code == 1 and "not Cu sites" in bad.output


def test_gnn_baseline_runs_one_epoch_and_predicts(tiny, trained):
    res = _train(tiny, "--arch", "gcn", "--epochs", 1)
    assert "registered forward/Cu/K/XANES/gcn/v1" in res.output
    e = registry.load(trained["eng"], "forward/Cu/K/XANES/gcn/v1", device="cpu")
    assert e.config["fits"][0]["epochs_run"] == 1 and e.config["mode"] == "graph"
    assert np.isfinite(e.metrics["summary"]["test"]["mae"]["mean"])
    data = train.load_forward_data(trained["eng"], element="Cu")
    sid = int(data.structure_ids[0])
    p = train.predict_sites(e, data.structures[sid], [int(data.site_indices[0])], device="cpu")
    assert p.shape == (1, 1, 141) and np.all(np.isfinite(p))


@pytest.mark.parametrize("pool,width", [("absorber", 64), ("concat", 128)])
def test_pool_option_trains_registers_and_predicts_the_same_after_reload(tiny, trained, pool, width):
    res = _train(tiny, "--pool", pool, "--epochs", 3, "--seeds", 1)
    name = re.search(r"registered (forward/Cu/K/XANES/xastruct/v\d+)", res.output).group(1)
    e = registry.load(trained["eng"], name, device="cpu")
    assert e.config["pool"] == pool and e.members[0].head.d_embed == width
    data = train.load_forward_data(trained["eng"], element="Cu")
    test = set(json.loads((Path(e.artifact) / "split.json").read_text())["test"])
    rows = [i for i, s in enumerate(data.structure_ids.tolist()) if data.hashes[s] in test]
    preds = np.stack([train.predict_sites(e, data.structures[int(data.structure_ids[i])], [int(data.site_indices[i])],
                                          device="cpu")[0, 0] for i in rows])
    got = train.spectrum_metrics(preds, data.y[rows], data.x)
    assert got["mae"] == pytest.approx(e.metrics["ensemble"]["test"]["mae"], abs=1e-5)
    bad = run(["train", "forward", "--element", "Cu", "--arch", "gcn", "--pool", "absorber", "--db", tiny["url"]], ok=False)
    assert bad.exit_code == 1 and "CHGNet archs only" in bad.output


@pytest.mark.parametrize("pool", ["mean", "absorber"])
def test_finetune_gets_gradients_into_chgnet(tiny, trained, pool):
    """Fine-tune mode on 6 structures: CHGNet weights move, and the reloaded model predicts the same."""
    eng = trained["eng"]
    full = train.load_forward_data(eng, element="Cu")
    data = train.load_forward_data(eng, element="Cu", structure_ids=sorted(full.structures)[:6])
    cfg = train.TrainConfig(arch="xastruct", finetune=True, epochs=1, batch_size=8, device="cpu", num_threads=1,
                            fractions=(0.5, 0.25, 0.25), pool=pool)  # fmt: skip
    res = train.train_forward(eng, element="Cu", config=cfg, data=data, models_dir=tiny["root"] / "models",
                              cache_dir=tiny["root"] / "cache")  # fmt: skip
    assert res.entry.arch == "xastruct_finetune" and res.config["mode"] == "finetune"
    tuned = res.members[0].model.encoder.chgnet.state_dict()
    fresh = train.make_encoder("chgnet", frozen=True).chgnet.state_dict()
    assert any(not torch.allclose(tuned[k], fresh[k]) for k in fresh)
    reloaded = registry.load(eng, res.entry.name, device="cpu")
    sid, site = int(data.structure_ids[0]), int(data.site_indices[0])
    a = train.predict_sites(res.entry, data.structures[sid], [site], device="cpu")
    b = train.predict_sites(reloaded, data.structures[sid], [site], device="cpu")
    assert np.allclose(a, b, atol=1e-5)
    assert reloaded.config["pool"] == pool and (pool == "mean") == ("shell" in reloaded.config["features"]["pool"])
    if pool == "absorber":  # the head reads the absorber's row only: the same as pooling one-atom masks
        from xastruct.embed import absorber_mask

        m = reloaded.members[0]
        g = m.featurize(data.structures[sid])
        one = m([g], [absorber_mask(len(data.structures[sid]), site, neighbors=[])]).detach().numpy()
        assert np.allclose(one, b[0], atol=1e-5)


def test_train_forward_without_element_or_data_is_a_clear_error(tiny):
    r = run(["train", "forward", "--db", tiny["url"]], ok=False)
    assert r.exit_code == 1 and "--element" in r.output
    r = run(["train", "forward", "--element", "Fe", *tiny["common"]], ok=False)
    assert r.exit_code == 1 and "no site spectra" in r.output
    r = run(["train", "forward", "--element", "Cu", "--arch", "gcn", "--finetune", *tiny["common"]], ok=False)
    assert r.exit_code == 1 and "--finetune" in r.output and "does not apply" in r.output


def test_all_trains_every_combination_above_the_minimum(tiny, trained):
    eng = trained["eng"]
    assert [d["element"] for d in train.available_datasets(eng, min_spectra=10, min_materials=5)] == ["Cu"]
    assert train.available_datasets(eng, min_spectra=10_000) == []
    r = run(["train", "forward", "--all", "--arch", "mean", "--min-spectra", 10_000, *tiny["common"]], ok=False)
    assert r.exit_code == 1 and "no element/edge/kind" in r.output
    r = run(["train", "forward", "--all", "--arch", "mean", "--min-spectra", 10, "--min-materials", 5, *tiny["common"]])
    assert "registered forward/Cu/K/XANES/mean/" in r.output
    # a typed --kind / --edge narrows --all (the defaults do not: plain --all above found the XANES)
    r = run(["train", "forward", "--all", "--kind", "EXAFS", "--arch", "mean", "--min-spectra", 10, "--min-materials", 5,
             *tiny["common"]], ok=False)  # fmt: skip
    assert r.exit_code == 1 and "kind EXAFS" in r.output
    r = run(["train", "forward", "--all", "--kind", "XANES", "--edge", "K", "--arch", "mean", "--min-spectra", 10,
             "--min-materials", 5, *tiny["common"]])  # fmt: skip
    assert "registered forward/Cu/K/XANES/mean/" in r.output


# --------------------------------------------------------------------------------- pure helpers


def test_grid_spec_and_resample():
    g = train.grid_spec("Cu", "K", "XANES")
    x = train.grid_points(g)
    assert g["n"] == 141 and x[0] == -3.5 and x[-1] == 66.5
    e0 = 8979.0
    e = e0 + np.linspace(-20, 100, 300)
    mu = 0.01 * (e - e0) + 0.5  # linear: interpolation must be exact
    assert np.allclose(train.resample(g, energies=e, mu=mu, e0=e0), 0.01 * x + 0.5, atol=1e-6)
    # starts 0.5 eV late (within the 1 eV allowance): the first value is held
    late = e0 + np.linspace(-3.0, 100, 300)
    y = train.resample(g, energies=late, mu=np.ones(300), e0=e0)
    assert y is not None and np.allclose(y, 1.0)
    assert train.resample(g, energies=e0 + np.linspace(0, 100, 300), mu=np.ones(300), e0=e0) is None
    assert train.resample(g, energies=e0 + np.linspace(-5, 60, 300), mu=np.ones(300), e0=e0) is None
    assert train.resample(g, energies=e, mu=mu, e0=None) is None
    ex = train.grid_spec("Fe", "K", "EXAFS")
    k = np.linspace(0, 15, 400)
    chi = np.sin(2 * k) / k.clip(0.1)
    y = train.resample(ex, k=k, chi=chi)
    kx = train.grid_points(ex)
    assert ex["quantity"] == "k2chi" and np.allclose(y, np.interp(kx, k, chi * k**2), atol=1e-5)
    with pytest.raises(Exception, match="no grid"):
        train.grid_spec("Cu", "K", "XES")


def test_split_materials_deterministic_grouped_and_proportional():
    rng = np.random.default_rng(0)
    ids = list(range(200))
    hashes = {i: f"{rng.integers(1 << 60):016x}" for i in ids}
    groups = [[i] for i in ids[:180]] + [ids[180 + 2 * j : 182 + 2 * j] for j in range(10)]
    weights = {i: 1 + (i % 3) for i in ids}
    a = train.split_materials(groups, weights, hashes, seed=7)
    assert a == train.split_materials(list(reversed(groups)), weights, hashes, seed=7)  # order-free
    assert a != train.split_materials(groups, weights, hashes, seed=8)
    for g in groups:
        assert len({a[i] for i in g}) == 1
    total = sum(weights.values())
    for side, frac in (("test", 0.1), ("val", 0.1), ("train", 0.8)):
        w = sum(weights[i] for i in ids if a[i] == side)
        assert abs(w / total - frac) < 0.03
    with pytest.raises(Exception, match="at least 3"):
        train.split_materials([[1], [2]], {1: 1, 2: 1}, {1: "a", 2: "b"}, seed=0)


def test_twin_groups_match_supercells_and_perturbations_not_polymorphs():
    from pymatgen.core import Lattice, Structure

    fcc = Structure(Lattice.cubic(3.61), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    super_ = fcc.copy()
    super_.make_supercell([2, 1, 1])
    shaken = fcc.copy()
    shaken.perturb(0.02, min_distance=0.01)
    bcc = Structure(Lattice.cubic(2.87), ["Cu"] * 2, [[0, 0, 0], [0.5, 0.5, 0.5]])
    cu2o = Structure(Lattice.cubic(4.27), ["Cu"] * 4 + ["O"] * 2,
                     [[0.25, 0.25, 0.25], [0.75, 0.75, 0.25], [0.75, 0.25, 0.75], [0.25, 0.75, 0.75],
                      [0, 0, 0], [0.5, 0.5, 0.5]])  # fmt: skip
    structs = {1: fcc, 2: super_, 3: shaken, 4: bcc, 5: cu2o}
    formulas = {i: s.composition.reduced_formula for i, s in structs.items()}
    groups = sorted(train.twin_groups(structs, formulas))
    assert groups == [[1, 2, 3], [4], [5]]


def test_spectrum_metrics_known_values():
    x = np.array([0.0, 1.0, 2.0, 3.0])
    true = np.array([[0.0, 1.0, 0.5, 0.5]])
    assert train.spectrum_metrics(true, true, x) == {"n": 1, "mae": 0.0, "rmse": 0.0, "cosine": pytest.approx(1.0), "peak_error": 0.0}
    pred = np.array([[0.0, 0.5, 1.0, 0.5]])  # peak moved by one grid step
    m = train.spectrum_metrics(pred, true, x)
    assert m["mae"] == pytest.approx(0.25) and m["rmse"] == pytest.approx(np.sqrt(0.125)) and m["peak_error"] == 1.0
    assert m["cosine"] == pytest.approx(1.25 / 1.5)
    s = train.summarize([{"test": {"n": 1, "mae": 0.1, "rmse": 0.2, "cosine": 0.9, "peak_error": 1.0}},
                         {"test": {"n": 1, "mae": 0.3, "rmse": 0.2, "cosine": 0.9, "peak_error": 3.0}}])  # fmt: skip
    assert s["test"]["mae"]["mean"] == pytest.approx(0.2) and s["test"]["mae"]["std"] == pytest.approx(np.sqrt(0.02))


def test_registry_round_trip_and_missing_model(db_url, tmp_path):
    eng = store.get_engine(db_url)
    m = train.MeanSpectrum(mean=[0.0, 0.5, 1.0])
    kw = dict(task="forward", element="Zn", edge="K", kind="XANES", arch="mean", grid={"n": 3}, split_seed=3,
              data_fingerprint="abc", metrics={"summary": {}}, config={"mode": "mean"}, models_dir=tmp_path)  # fmt: skip
    a = registry.register(eng, members=[m], **kw)
    b = registry.register(eng, members=[m, m], **kw)
    assert (a.name, b.name) == ("forward/Zn/K/XANES/mean/v1", "forward/Zn/K/XANES/mean/v2")
    assert Path(b.artifact) == (tmp_path / b.name).resolve() and json.loads((Path(b.artifact) / "meta.json").read_text())["version"] == 2
    got = registry.load(eng, "forward/Zn/K/XANES/mean/v2", device="cpu")
    assert len(got.members) == 2 and torch.equal(got.members[1](2), m(2))
    assert registry.latest(eng, "forward", "Zn", "K", "XANES").name == b.name
    assert registry.latest(eng, "forward", "Fe", "K", "XANES") is None
    with pytest.raises(Exception, match="not in the registry"):
        registry.load(eng, "forward/Zn/K/XANES/mean/v9")
    if db_url.startswith("duckdb"):
        assert registry.default_models_dir(db_url) == Path(db_url.split("///", 1)[1]).parent / "models"


# ------------------------------------------------------------------------------------ resumable training


def _toy_fit(tmp_path, **kw):
    """A small dropout network on a synthetic regression: every RNG the loop uses matters."""
    torch.manual_seed(0)
    g = np.random.default_rng(1)
    x = torch.from_numpy(g.normal(size=(64, 5)).astype(np.float32))
    y = x @ torch.ones(5, 3) + 0.1 * torch.from_numpy(g.normal(size=(64, 3)).astype(np.float32))
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    args = dict(seed=3, epochs=8, lr=1e-2, weight_decay=0.01, batch_size=16, patience=100, max_minutes=None)
    fit = train._fit(model, lambda m, b: m(x[b]), y, np.arange(48), np.arange(48, 64), **(args | kw))
    return model, fit


def test_killed_training_resumes_from_its_checkpoint_to_the_same_model(tmp_path):
    ref, ref_fit = _toy_fit(tmp_path)
    ck = tmp_path / "seed.pt"

    def kill(epoch, *_):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _toy_fit(tmp_path, checkpoint=ck, checkpoint_every=0.0, on_epoch=kill)
    assert ck.exists() and torch.load(ck, weights_only=False)["epoch"] == 3
    got, fit = _toy_fit(tmp_path, checkpoint=ck, checkpoint_every=0.0)
    assert fit["resumed_at_epoch"] == 4 and fit["epochs_run"] == ref_fit["epochs_run"] == 8
    assert fit["best_val_mse"] == pytest.approx(ref_fit["best_val_mse"], rel=1e-6)
    for a, b in zip(ref.state_dict().values(), got.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_checkpoint_that_does_not_fit_the_model_is_a_clear_error(tmp_path):
    from xastruct.errors import InputError

    ck = tmp_path / "seed.pt"
    _toy_fit(tmp_path, checkpoint=ck, max_minutes=1e-9)
    other = torch.nn.Linear(5, 3)  # a different model under the same key (e.g. the code changed)
    x, y = torch.zeros(8, 5), torch.zeros(8, 3)
    with pytest.raises(InputError, match="delete the file") as err:
        train._fit(other, lambda m, b: m(x[b]), y, np.arange(6), np.arange(6, 8), seed=0, epochs=2, lr=1e-3,
                   weight_decay=0.0, batch_size=4, patience=5, max_minutes=None, checkpoint=ck)
    assert str(ck) in str(err.value)


def test_time_capped_training_continues_with_a_larger_cap(tmp_path):
    ref, ref_fit = _toy_fit(tmp_path)
    ck = tmp_path / "seed.pt"
    _, first = _toy_fit(tmp_path, checkpoint=ck, max_minutes=1e-9)  # one epoch, then the cap
    assert first["stopped"] == "time" and first["epochs_run"] == 1 and ck.exists()
    got, fit = _toy_fit(tmp_path, checkpoint=ck)
    assert fit["resumed_at_epoch"] == 2 and fit["stopped"] == "epochs"
    for a, b in zip(ref.state_dict().values(), got.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_cli_rerun_of_a_time_capped_run_resumes_and_then_drops_the_checkpoint(tiny, trained):
    ckdir = tiny["root"] / "cache" / "checkpoints"
    args = ("--pool", "absorber", "--epochs", 4, "--seeds", 1, "--keep-last", "--dropout", 0.1)
    res = _train(tiny, *args, "--max-minutes", 1e-9)
    first = registry.load(trained["eng"], re.search(r"registered (\S+)", res.output).group(1), device="cpu")
    assert first.config["fits"][0]["stopped"] == "time" and len(list(ckdir.glob("*.pt"))) == 1
    res = _train(tiny, *args)
    second = registry.load(trained["eng"], re.search(r"registered (\S+)", res.output).group(1), device="cpu")
    fit = second.config["fits"][0]
    assert fit["resumed_at_epoch"] == 2 and fit["epochs_run"] == 4 and fit["stopped"] == "epochs"
    assert not list(ckdir.glob("*.pt"))  # finished: the training state is gone


def test_checkpoint_key_ignores_settings_the_arch_does_not_read(tmp_path):
    class Data:  # what _checkpoint_path reads of ForwardData
        def fingerprint(self):
            return "d"

    idx = {"train": np.arange(3), "val": np.arange(3, 4)}

    def path(**kw):
        return train._checkpoint_path(tmp_path, train.TrainConfig(**kw).resolved(), Data(), idx, 0)

    # a GNN run keeps resuming when a path-model default changes ...
    assert path(arch="mpnn", path_focus=True) == path(arch="mpnn", path_focus=False, r_max=5.0, chgnet_atoms=False)
    # ... caps, threads and device never matter, while what shapes the model does
    assert path(arch="mpnn", max_minutes=1.0, num_threads=1, epochs=3) == path(arch="mpnn", epochs=400)
    assert path(arch="mpnn") != path(arch="gat") != path(arch="mpnn", lr=1e-3)
    assert path(arch="paths", path_focus=True) != path(arch="paths", path_focus=False)


def test_band_calibration_scales_the_seed_spread_to_the_validation_errors():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(400, 30))
    # members whose spread is a third of their ensemble error: the raw band holds far too little
    center = truth + rng.normal(scale=0.3, size=truth.shape)
    members = center[None] + rng.normal(scale=0.1, size=(4, *truth.shape))
    val = train.band_calibration(members[:, :200], truth[:200])
    assert val["raw_within_1"] < 0.4 and val["within_1"] == pytest.approx(train.BAND_COVERAGE, abs=0.01)
    assert 2 < val["scale"] < 5
    test = train.band_calibration(members[:, 200:], truth[200:], scale=val["scale"])
    assert test["scale"] == val["scale"] and test["within_1"] == pytest.approx(0.68, abs=0.05)
    assert test["within_2"] > test["within_1"]
    assert train.band_calibration(members[:1], truth) is None  # one member: no spread
    # the band a model draws: its scale times the spread; models without one keep the raw spread
    np.testing.assert_allclose(train.band_sigma({"band_scale": 2.0}, members), 2 * members.std(0, ddof=1))
    np.testing.assert_allclose(train.band_sigma({}, members), members.std(0, ddof=1))
    assert not train.band_sigma(None, members[:1]).any()


def test_calibrate_refits_the_band_of_a_model_trained_without_one(tiny, trained):
    """`xastruct train calibrate` on a model whose band_scale is gone (as for models trained before
    it) fits the same scale training fitted, from the artifact's split, into the row and meta.json."""
    eng = trained["eng"]
    name = trained["model"].name
    e = registry.load(eng, name, device="cpu")
    fitted, band = e.config["band_scale"], e.metrics["band"]
    registry.update_documents(eng, e, config={k: v for k, v in e.config.items() if k != "band_scale"},
                              metrics={k: v for k, v in e.metrics.items() if k != "band"})
    bare = registry.load(eng, name, device="cpu")
    assert "band_scale" not in bare.config and "band" not in json.loads((Path(bare.artifact) / "meta.json").read_text())["metrics"]
    res = run(["train", "calibrate", name, "--device", "cpu", "--db", tiny["url"]])
    assert "band_scale" in res.output and "test materials" in res.output
    again = registry.load(eng, name, device="cpu")
    assert again.config["band_scale"] == pytest.approx(fitted, rel=1e-4)
    assert again.metrics["band"]["val"]["within_1"] == pytest.approx(band["val"]["within_1"], abs=1e-9)
    assert again.metrics["band"]["test"]["within_1"] == pytest.approx(band["test"]["within_1"], abs=0.01)
    meta = json.loads((Path(again.artifact) / "meta.json").read_text())
    assert meta["config"]["band_scale"] == pytest.approx(fitted, rel=1e-4) and meta["metrics"]["band"]["n_val"] > 0
    # a single-member model has no band to fit: a clear error
    bad = run(["train", "calibrate", trained["mean"].name, "--device", "cpu", "--db", tiny["url"]], ok=False)
    assert bad.exit_code == 1 and "member" in bad.output


def test_shipped_forward_models_carry_a_fitted_band():
    for meta in sorted((registry.PRETRAINED_DIR / "forward").rglob("meta.json")):
        doc = json.loads(meta.read_text())
        if doc["config"].get("seeds", 1) > 1:
            band = doc["metrics"]["band"]
            assert doc["config"]["band_scale"] == band["val"]["scale"] > 1  # the raw spread is too narrow
            assert band["val"]["within_1"] == pytest.approx(train.BAND_COVERAGE, abs=0.02) and band["n_test"] > 0


def test_predict_spectrum_compares_with_a_spectrum_file(tiny, trained, tmp_path):
    """--compare scores the prediction against a file (here the site's own FEFF 9 xmu.dat) and draws it."""
    mat = tiny["tree"] / TWIN_PAIRS[0][0]
    xmu = sorted((mat / "FEFF-XANES").glob("*_Cu/xmu.dat"))[0]
    site = int(xmu.parent.name.split("_")[0])
    png = tmp_path / "cmp.png"
    res = run(["predict", "spectrum", mat / "POSCAR", "--element", "Cu", "--model", trained["model"].name, "--site", site,
               "--compare", xmu, "--plot", png, "--format", "json", "--db", tiny["url"], "--device", "cpu"])  # fmt: skip
    doc = json.loads(res.stdout)
    c = doc["compare"]["sites"][0]
    assert c["site"] == site and -1 <= c["cosine"] <= 1 and c["mae"] >= 0 and abs(c["shift"]) <= 10
    assert c["cosine"] > 0.9  # a trained model's XANES resembles the FEFF spectrum it learned from
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = run(["predict", "spectrum", mat / "POSCAR", "--element", "Cu", "--site", site, "--compare", xmu,
                 "--db", tiny["url"], "--device", "cpu"]).output
    assert "cosine" in table and "shift" in table
    missing = run(["predict", "spectrum", mat / "POSCAR", "--element", "Cu", "--compare", tmp_path / "nope.xdi",
                   "--db", tiny["url"], "--device", "cpu"], ok=False)
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_predict_spectrum_broaden_needs_compare_and_a_width(tiny, trained, tmp_path):
    mat = tiny["tree"] / TWIN_PAIRS[0][0]
    xmu = sorted((mat / "FEFF-XANES").glob("*_Cu/xmu.dat"))[0]
    base = ["predict", "spectrum", mat / "POSCAR", "--element", "Cu", "--db", tiny["url"], "--device", "cpu"]
    assert "only applies with --compare" in run([*base, "--broaden", "3"], ok=False).output
    assert "not a width" in run([*base, "--compare", xmu, "--broaden", "wide"], ok=False).output
    doc = json.loads(run([*base, "--compare", xmu, "--broaden", "auto", "--format", "json"]).stdout)
    c = doc["compare"]["sites"][0]
    assert c["fwhm"] in [float(f) for f in range(17)] and c["mae"] >= 0
    fixed = json.loads(run([*base, "--compare", xmu, "--broaden", "2.5", "--format", "json"]).stdout)
    assert fixed["compare"]["sites"][0]["fwhm"] == 2.5


def test_predict_spectrum_of_a_stored_structure(tiny, trained):
    """structure:<source_id> / structure:<id> read the structure from the store: same spectrum as its file."""
    mat = tiny["tree"] / TWIN_PAIRS[0][0]
    base = ["--element", "Cu", "--model", trained["model"].name, "--format", "csv", "--db", tiny["url"], "--device", "cpu"]
    from_file = run(["predict", "spectrum", mat / "POSCAR", *base]).stdout
    from_store = run(["predict", "spectrum", f"structure:{mat.name}", *base]).stdout
    assert from_store == from_file
    with trained["eng"].connect() as c:
        sid = c.execute(sa.text("SELECT id FROM structures WHERE source_id = :s"), {"s": mat.name}).scalar()
    assert run(["predict", "spectrum", f"structure:{sid}", *base]).stdout == from_file
    missing = run(["predict", "spectrum", "structure:mp-nope", *base], ok=False)
    assert missing.exit_code == 1 and "no stored structure" in missing.output
    nofile = run(["predict", "spectrum", "nope.cif", *base], ok=False)
    assert nofile.exit_code == 1 and "structure:<id>" in nofile.output


def test_predict_spectrum_average_weights_sites_by_multiplicity(tiny, trained):
    """--average: the multiplicity-weighted mean over every Cu site, as a measurement sees the cell."""
    from pymatgen.core import Structure

    from xastruct.labels import equivalent_sites

    # a material with several inequivalent Cu sites of different multiplicity
    for mat in sorted(tiny["tree"].iterdir()):
        s = Structure.from_file(mat / "POSCAR")
        reps = equivalent_sites(s)
        cu = [i for i, site in enumerate(s) if site.specie.symbol == "Cu"]
        mult = {r: sum(reps[i] == r for i in cu) for r in {reps[i] for i in cu}}
        if len(mult) > 1:
            break
    else:
        pytest.skip("no tiny material with two inequivalent Cu sites")
    base = ["predict", "spectrum", mat / "POSCAR", "--element", "Cu", "--model", trained["model"].name, "--db",
            tiny["url"], "--device", "cpu"]
    doc = json.loads(run([*base, "--average", "--format", "json"]).stdout)
    rows = {r["site"]: np.array(r["mean"]) for r in doc["sites"]}
    w = {r: m / sum(mult.values()) for r, m in mult.items()}
    np.testing.assert_allclose(rows["average"], sum(w[r] * rows[r] for r in mult), atol=1e-5)
    assert "drop --site" in run([*base, "--average", "--site", cu[0]], ok=False).output
