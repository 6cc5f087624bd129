"""Neural architectures: building blocks, ablations, pooling, encoders, inverse models, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from xastruct import models as M

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cu():
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.cubic(3.615), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def nacl():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def masks(cu, nacl):
    from xastruct.embed import absorber_mask

    return [absorber_mask(cu, 0), absorber_mask(nacl, 0)]


def _seed(s: int = 0):
    torch.manual_seed(s)
    np.random.seed(s)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


def test_pick_device():
    assert M.pick_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert M.pick_device("auto").type == expected
    assert M.pick_device(None).type == expected


def test_constructors_are_keyword_only():
    with pytest.raises(TypeError):
        M.GatedLinear(3, 4)
    with pytest.raises(TypeError):
        M.SGMLP(3, 8, 2)
    with pytest.raises(TypeError):
        M.MNNDRegressor(10, 10)


def test_gated_linear_formula():
    _seed()
    gl = M.GatedLinear(d_in=5, d_out=3)
    x = torch.randn(7, 5)
    w, b = gl.proj.weight, gl.proj.bias
    value = x @ w[:3].T + b[:3]
    gate = x @ w[3:].T + b[3:]
    torch.testing.assert_close(gl(x), value * torch.sigmoid(gate))
    assert gl(x).shape == (7, 3)


def test_swiglu_formula_and_learned_beta():
    _seed()
    sw = M.SwiGLU(d=4)
    with torch.no_grad():
        sw.beta.fill_(1.7)
    x = torch.randn(6, 4)
    w, b = sw.proj.weight, sw.proj.bias
    a = x @ w[:4].T + b[:4]
    v = x @ w[4:].T + b[4:]
    torch.testing.assert_close(sw(x), a * torch.sigmoid(1.7 * a) * v)
    sw(x).pow(2).sum().backward()
    assert isinstance(sw.beta, nn.Parameter) and sw.beta.grad is not None and sw.beta.grad.abs() > 0


def _types(module: nn.Module) -> list[type]:
    return [type(m) for m in module.modules()]


def test_sgmlp_structure_and_shapes():
    m = M.SGMLP(d_in=10, d_hidden=16, d_out=3, n_layers=4)
    t = _types(m)
    # k-1 = 3 blocks of [GatedLinear, LayerNorm, SwiGLU] + a final GatedLinear
    assert t.count(M.GatedLinear) == 4 and t.count(nn.LayerNorm) == 3 and t.count(M.SwiGLU) == 3
    assert isinstance(m.net[-1], M.GatedLinear)
    assert m(torch.randn(5, 10)).shape == (5, 3)
    assert M.SGMLP(d_in=10, d_hidden=16, d_out=3, n_layers=1)(torch.randn(2, 10)).shape == (2, 3)
    with pytest.raises(ValueError):
        M.SGMLP(d_in=10, d_hidden=16, d_out=3, act="gelu")


def test_ablation_switches_change_module_types():
    full = _types(M.make_mlp(arch="sgmlp", d_in=8, d_hidden=8, d_out=2))
    relu = _types(M.make_mlp(arch="sgmlp_relu", d_in=8, d_hidden=8, d_out=2))
    lin = _types(M.make_mlp(arch="sgmlp_linear", d_in=8, d_hidden=8, d_out=2))
    plain_mlp = M.make_mlp(arch="mlp", d_in=8, d_hidden=8, d_out=2)
    plain = _types(plain_mlp)

    assert M.SwiGLU in full and nn.ReLU not in full and M.GatedLinear in full
    assert M.SwiGLU not in relu and nn.ReLU in relu and M.GatedLinear in relu
    assert M.GatedLinear not in lin and M.SwiGLU in lin
    # plain Linear layers that are not inside GatedLinear/SwiGLU
    assert sum(isinstance(layer, nn.Linear) for layer in M.SGMLP(d_in=8, d_hidden=8, d_out=2, linear="plain").net) == 3
    assert isinstance(plain_mlp, M.PlainMLP)
    assert M.GatedLinear not in plain and M.SwiGLU not in plain and nn.LayerNorm not in plain
    assert plain.count(nn.ReLU) == 2 and plain.count(nn.Linear) == 3
    with pytest.raises(ValueError):
        M.make_mlp(arch="transformer", d_in=8, d_hidden=8, d_out=2)


def test_spectrum_head_arch_switch():
    for arch in M.ARCHS:
        head = M.SpectrumHead(d_embed=12, n_out=30, d_hidden=16, arch=arch)
        assert head(torch.randn(4, 12)).shape == (4, 30)
    assert isinstance(M.SpectrumHead(d_embed=12, n_out=30, arch="mlp").mlp, M.PlainMLP)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


def test_masked_mean_hand_made_three_atoms():
    h = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 10.0]])
    batch = torch.zeros(3, dtype=torch.long)
    # absorber 0 with neighbour 2; atom 1 is outside the first shell
    out = M.masked_mean(h, batch, torch.tensor([True, False, True]), 1)
    torch.testing.assert_close(out, torch.tensor([[3.0, 5.0]]))
    # two graphs in one batch: atoms {0, 1} and {2}
    out = M.masked_mean(h, torch.tensor([0, 0, 1]), torch.tensor([False, True, True]), 2)
    torch.testing.assert_close(out, torch.tensor([[3.0, 2.0], [5.0, 10.0]]))
    with pytest.raises(ValueError, match="selects no node"):
        M.masked_mean(h, torch.tensor([0, 0, 1]), torch.tensor([True, True, False]), 2)


def test_forward_model_pools_over_mask(cu, nacl):
    _seed()
    enc = M.GCNEncoder(d=16, n_layers=2)
    fm = M.ForwardModel(encoder=enc, head=M.SpectrumHead(d_embed=16, n_out=20, d_hidden=32)).eval()
    graphs = fm.featurize([cu, nacl])
    mask_nacl = np.zeros(8, dtype=bool)
    mask_nacl[[0, 5, 6, 7]] = True
    masks = [np.array([False, True, False, False]), mask_nacl]
    with torch.no_grad():
        h, batch = enc(graphs)
        pooled = fm.embed_sites(graphs, masks)
        torch.testing.assert_close(pooled[0], h[1])
        torch.testing.assert_close(pooled[1], h[4 + torch.tensor([0, 5, 6, 7])].mean(0))
        # a flat mask over the batch's nodes is equivalent
        torch.testing.assert_close(fm(graphs, torch.from_numpy(np.concatenate(masks))), fm(graphs, masks))
    with pytest.raises(ValueError, match="atoms"):
        fm(graphs, [np.ones(3, dtype=bool), mask_nacl])
    with pytest.raises(ValueError):
        M.ForwardModel(encoder=enc, head=M.SpectrumHead(d_embed=32, n_out=20))


# ----------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [M.GCNEncoder, M.GATEncoder, M.MPNNEncoder])
def test_gnn_encoders_shapes_gradients_symmetry(cls, cu, nacl, masks):
    _seed()
    enc = cls(d=16, n_layers=2)
    fm = M.ForwardModel(encoder=enc, head=M.SpectrumHead(d_embed=16, n_out=25, d_hidden=32))
    graphs = fm.featurize([cu, nacl])
    h, batch = enc(graphs)
    assert h.shape == (12, 16) and batch.tolist() == [0] * 4 + [1] * 8
    # periodic graph: the 4 fcc sites and the 4 Na sites are equivalent
    torch.testing.assert_close(h[:4], h[:1].expand(4, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h[4:8], h[4:5].expand(4, -1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(h[4], h[8])  # Na != Cl
    y = fm(graphs, masks)
    assert y.shape == (2, 25)
    y.pow(2).sum().backward()
    g = enc.embed.weight.grad
    assert g[29].abs().sum() > 0 and g[11].abs().sum() > 0 and g[26].abs().sum() == 0  # Cu, Na used; Fe not


def test_gnn_encoder_translation_invariant(nacl):
    _seed()
    enc = M.MPNNEncoder(d=8, n_layers=2).eval()
    shifted = nacl.copy()
    shifted.translate_sites(list(range(len(nacl))), [0.13, -0.2, 0.31])
    with torch.no_grad():
        h1, _ = enc([enc.featurize(nacl)])
        h2, _ = enc([enc.featurize(shifted)])
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)


def test_gnn_encoder_rejects_graph_beyond_cutoff(cu):
    from xastruct.embed import structure_to_pyg

    enc = M.GCNEncoder(d=8, cutoff=4.0)
    with pytest.raises(ValueError, match="cutoff"):
        enc([structure_to_pyg(cu, cutoff=6.0)])


@pytest.fixture(scope="module")
def chgnet_graphs(cu, nacl):
    enc = M.CHGNetEncoder(frozen=True)
    return [enc.featurize(cu), enc.featurize(nacl)]


def test_chgnet_finetune_gradients_reach_chgnet(chgnet_graphs, masks):
    enc = M.CHGNetEncoder(frozen=False)
    fm = M.ForwardModel(encoder=enc, head=M.SpectrumHead(d_embed=enc.d_out, n_out=10, d_hidden=32)).train()
    y = fm(chgnet_graphs, masks)
    assert y.shape == (2, 10)
    y.pow(2).sum().backward()
    emb_grad = enc.chgnet.atom_embedding.embedding.weight.grad
    assert emb_grad is not None and emb_grad[28].abs().sum() > 0  # row Z-1 of Cu
    n_with_grad = sum(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in enc.chgnet.parameters())
    assert n_with_grad > 20
    # the user's graphs are not touched by backprop
    assert chgnet_graphs[0].atom_frac_coord.grad is None


def test_chgnet_frozen_no_gradients(chgnet_graphs, masks):
    enc = M.CHGNetEncoder(frozen=True)
    fm = M.ForwardModel(encoder=enc, head=M.SpectrumHead(d_embed=enc.d_out, n_out=10, d_hidden=32))
    fm.train()
    assert not enc.chgnet.training  # frozen CHGNet stays in eval mode
    fm(chgnet_graphs, masks).pow(2).sum().backward()
    assert all(p.grad is None for p in enc.chgnet.parameters())
    assert not any(p.requires_grad for p in enc.chgnet.parameters())
    assert all(p.grad is not None for p in fm.head.parameters())


# ----------------------------------------------------------------------------------------------
# Inverse models
# ----------------------------------------------------------------------------------------------


def test_classifier_probabilities_and_missing_kinds():
    _seed()
    clf = M.NeighborClassifier(n_xanes=30, n_exafs=20, n_classes=5, d_embed=16, d_hidden=32).eval()
    xa, ex = torch.randn(6, 30), torch.randn(6, 20)
    p = clf.predict_proba(xanes=xa, exafs=ex)
    assert p.shape == (6, 5) and bool((p >= 0).all())
    torch.testing.assert_close(p.sum(-1), torch.ones(6))

    # a kind flagged missing ignores its values; NaN rows are missing by default
    has = torch.tensor([True, False, True, False, True, True])
    garbage = torch.where(has[:, None], xa, torch.full_like(xa, 1e3))
    nan = torch.where(has[:, None], xa, torch.full_like(xa, float("nan")))
    a = clf(xanes=xa, exafs=ex, has_xanes=has)
    torch.testing.assert_close(clf(xanes=garbage, exafs=ex, has_xanes=has), a)
    torch.testing.assert_close(clf(xanes=nan, exafs=ex), a)
    assert not torch.allclose(a[1], clf(xanes=xa, exafs=ex)[1])
    # xanes=None == every row flagged missing; EXAFS-only works
    torch.testing.assert_close(clf(exafs=ex), clf(xanes=xa, exafs=ex, has_xanes=torch.zeros(6, dtype=torch.bool)))
    with pytest.raises(ValueError, match="NaN"):
        clf(xanes=nan, exafs=ex, has_xanes=torch.ones(6, dtype=torch.bool))

    # gradients stay finite with NaN placeholders and reach the learned "missing" embedding
    clf.train()
    loss = nn.functional.cross_entropy(clf(xanes=nan, exafs=ex), torch.arange(6) % 5)
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in clf.parameters() if q.grad is not None)
    assert clf.xanes_missing.grad.abs().sum() > 0


def test_classifier_learns_separable_classes():
    _seed(1)
    n = 240
    x = torch.linspace(0, 1, 40)
    cls = torch.randint(0, 3, (n,))
    # class c: a peak at 0.2 + 0.3 c in the "XANES", EXAFS is noise
    xanes = torch.exp(-(((x[None] - 0.2 - 0.3 * cls[:, None]) / 0.08) ** 2)) + 0.05 * torch.randn(n, 40)
    exafs = torch.randn(n, 25)
    clf = M.NeighborClassifier(n_xanes=40, n_exafs=25, n_classes=3, d_embed=16, d_hidden=32)
    opt = torch.optim.Adam(clf.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(clf(xanes=xanes[:160], exafs=exafs[:160]), cls[:160]).backward()
        opt.step()
    clf.eval()
    with torch.no_grad():
        acc = (clf(xanes=xanes[160:], exafs=exafs[160:]).argmax(-1) == cls[160:]).float().mean()
    assert acc > 0.9


def _synthetic_spectra(n: int, seed: int):
    """Spectra generated from a scalar s (a stand-in MNND, 1.8-3.0 A).

    XANES: an edge step plus a resonance at E = 60 / s^2 eV (Natoli's rule), sampled on a per-sample
    shifted energy grid; EXAFS: chi(k) = sin(2 k s) exp(-0.02 k^2).
    """
    g = torch.Generator().manual_seed(seed)
    s = 1.8 + 1.2 * torch.rand(n, generator=g)
    e = torch.linspace(-10, 40, 40)[None] + 4 * (torch.rand(n, 1, generator=g) - 0.5)
    peak = 60 / s[:, None] ** 2
    mu = torch.sigmoid(e / 1.5) + 0.6 * torch.exp(-(((e - peak) / 3) ** 2)) + 0.01 * torch.randn(n, 40, generator=g)
    k = torch.linspace(2, 12, 32)[None].expand(n, -1)
    chi = torch.sin(2 * k * s[:, None]) * torch.exp(-0.02 * k**2)
    return {"xanes_energy": e / 40, "xanes_mu": mu, "exafs_energy": k / 12, "exafs_mu": chi}, s


def test_mnnd_trains_and_beats_mean_predictor():
    _seed(2)
    x_tr, y_tr = _synthetic_spectra(256, seed=0)
    x_te, y_te = _synthetic_spectra(128, seed=1)
    model = M.MNNDRegressor(
        n_xanes=40, n_exafs=32, d_embed=32, channels=8, d_hidden=64,
        target_mean=float(y_tr.mean()), target_std=float(y_tr.std()),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(120):
        idx = torch.randperm(256)[:64]
        opt.zero_grad()
        loss = model.loss(model(**{k: v[idx] for k, v in x_tr.items()}), y_tr[idx])
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        pred = model(**x_te)
    assert pred.var is None and pred.mean.shape == (128,)
    mse = float(((pred.mean - y_te) ** 2).mean())
    baseline = float(((y_tr.mean() - y_te) ** 2).mean())
    # 4 seeds tried: mse / baseline = 0.001-0.006
    assert mse < 0.05 * baseline, (mse, baseline)


def test_mnnd_shared_energy_grid_shortcut_is_exact():
    # at inference identical energy rows are embedded once; the result must equal per-row passes
    _seed(5)
    x, _ = _synthetic_spectra(16, seed=4)
    model = M.MNNDRegressor(n_xanes=40, n_exafs=32, d_embed=32, channels=8, d_hidden=64).eval()
    with torch.no_grad():
        fast = model(**x).mean  # EXAFS energies are one shared grid: shortcut taken
        per_row = torch.stack([model(**{k: v[i:i + 1] for k, v in x.items()}).mean[0] for i in range(16)])
    torch.testing.assert_close(fast, per_row, atol=1e-5, rtol=1e-5)


def test_mnnd_variance_head_element_edge_and_missing_kinds():
    _seed(3)
    x, y = _synthetic_spectra(16, seed=3)
    model = M.MNNDRegressor(
        n_xanes=40, n_exafs=32, d_embed=16, channels=4, d_hidden=32,
        use_element=True, variance=True, target_mean=2.4, target_std=0.35,
    )
    z = torch.full((16,), 29)
    edge = M.edge_code(["K"] * 8 + ["L3"] * 8)
    assert edge.tolist() == [0] * 8 + [3] * 8
    pred = model(**x, element=z, edge=edge)
    assert pred.mean.shape == pred.var.shape == (16,)
    assert bool((pred.var > 0).all()) and bool(torch.isfinite(pred.var).all())
    nll = model.loss(pred, y)
    assert torch.isfinite(nll)
    nll.backward()
    assert model.element_embed.weight.grad[29].abs().sum() > 0

    with pytest.raises(ValueError, match="element"):
        model(**x)
    with pytest.raises(ValueError, match="both"):
        model(xanes_energy=x["xanes_energy"], element=z, edge=edge)

    # XANES-only rows use the learned placeholder; BatchNorm only sees present rows
    model.eval()
    has = torch.tensor([True] * 8 + [False] * 8)
    exafs_nan = torch.where(has[:, None], x["exafs_mu"], torch.full_like(x["exafs_mu"], float("nan")))
    a = model(**{**x, "exafs_mu": exafs_nan}, element=z, edge=edge)
    b = model(xanes_energy=x["xanes_energy"], xanes_mu=x["xanes_mu"], element=z, edge=edge)
    full = model(**x, element=z, edge=edge)
    torch.testing.assert_close(a.mean[8:], b.mean[8:])
    torch.testing.assert_close(a.mean[:8], full.mean[:8])
    assert bool(torch.isfinite(a.var).all())


def test_mnnd_nll_learns_uncertainty():
    """Absorbers of one element have 15x noisier targets: NLL training gives them larger variance."""
    _seed(4)
    x, s = _synthetic_spectra(256, seed=4)
    noisy = torch.arange(256) % 2 == 1
    z = torch.where(noisy, 26, 29)
    edge = torch.zeros(256, dtype=torch.long)
    y = s + torch.where(noisy, 0.3, 0.02) * torch.randn(256)
    model = M.MNNDRegressor(
        n_xanes=40, n_exafs=32, d_embed=16, channels=4, d_hidden=32, variance=True, use_element=True,
        target_mean=float(y.mean()), target_std=float(y.std()),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(100):
        idx = torch.randperm(256)[:64]
        opt.zero_grad()
        model.loss(model(**{k: v[idx] for k, v in x.items()}, element=z[idx], edge=edge[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        var = model(**x, element=z, edge=edge).var
    # 8 seeds tried: ratio 12-91 (true ratio of noise variances: 225)
    assert float(var[noisy].median()) > 4 * float(var[~noisy].median())


def test_mnnd_laplace_likelihood_is_the_laplace_nll_and_survives_save_load(tmp_path):
    _seed(6)
    x, s = _synthetic_spectra(16, seed=6)
    kw = dict(n_xanes=40, n_exafs=32, d_embed=16, channels=4, d_hidden=32, target_mean=2.4, target_std=0.35)
    model = M.MNNDRegressor(**kw, variance=True, likelihood="laplace").eval()
    with torch.no_grad():
        p = model(**x)
        got = float(model.loss(p, s))
    r, b = (p.mean - s) / 0.35, torch.sqrt(p.var / 0.35**2 / 2)  # variance of a Laplace = 2 b^2
    assert got == pytest.approx(float((r.abs() / b + torch.log(2 * b)).mean()), rel=1e-5)
    # one far outlier moves the Laplace loss linearly, the Gaussian quadratically
    gauss = M.MNNDRegressor(**kw, variance=True).eval()
    gauss.load_state_dict(model.state_dict())
    far = s.clone()
    far[0] += 5.0
    with torch.no_grad():
        d_lap = float(model.loss(p, far)) - got
        d_gau = float(gauss.loss(p, far)) - float(gauss.loss(p, s))
    assert d_gau > 3 * d_lap > 0
    model.save(tmp_path / "m")
    again = M.load_model(tmp_path / "m", device="cpu").eval()
    assert again.likelihood == "laplace" and again.config["likelihood"] == "laplace"
    with pytest.raises(ValueError, match="likelihood"):
        M.MNNDRegressor(**kw, likelihood="cauchy")


def test_mnnd_variance_calibration_scales_the_head_and_survives_save_load(tmp_path):
    _seed(5)
    x, _ = _synthetic_spectra(32, seed=5)
    model = M.MNNDRegressor(n_xanes=40, n_exafs=32, d_embed=16, channels=4, d_hidden=32, variance=True,
                            target_mean=2.4, target_std=0.35).eval()
    with torch.no_grad():
        before = model(**x)
    # held-out errors twice the predicted sigma -> variances 4x larger afterwards
    factor = model.calibrate_variance(residuals=2.0 * before.var.sqrt(), variances=before.var)
    assert factor == pytest.approx(4.0, rel=1e-6) and model.var_scale == pytest.approx(4.0, rel=1e-6)
    with torch.no_grad():
        after = model(**x)
    torch.testing.assert_close(after.var, 4.0 * before.var)
    torch.testing.assert_close(after.mean, before.mean)
    model.save(tmp_path / "m")
    again = M.load_model(tmp_path / "m", device="cpu").eval()
    assert again.config["var_scale"] == pytest.approx(4.0, rel=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(again(**x).var, after.var)
    # without a variance head there is nothing to scale
    plain = M.MNNDRegressor(n_xanes=40, n_exafs=32, d_embed=16, channels=4, d_hidden=32)
    assert plain.calibrate_variance(residuals=torch.ones(3), variances=torch.ones(3)) == 1.0


# ----------------------------------------------------------------------------------------------
# Persistence: every registered class round-trips
# ----------------------------------------------------------------------------------------------


def _perturb(model: nn.Module) -> None:
    """Move parameters and buffers off their initial values so a load that silently re-initialised
    (or re-read pretrained weights) would be caught."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if b.is_floating_point() and "running" in name:
                b.add_(0.1 * torch.rand(b.shape, generator=g))


def _cases(cu, nacl, masks, chgnet_graphs):
    spec = _synthetic_spectra(4, seed=9)[0]
    vec = torch.randn(4, 12)
    pyg = [M.GCNEncoder().featurize(s) for s in (cu, nacl)]
    mask_t = torch.from_numpy(np.concatenate(masks))
    return {
        "GatedLinear": (lambda: M.GatedLinear(d_in=12, d_out=5), lambda m: m(vec)),
        "SwiGLU": (lambda: M.SwiGLU(d=12, beta_init=0.5), lambda m: m(vec)),
        "SGMLP": (lambda: M.SGMLP(d_in=12, d_hidden=8, d_out=3, act="relu", linear="plain"), lambda m: m(vec)),
        "PlainMLP": (lambda: M.PlainMLP(d_in=12, d_hidden=8, d_out=3), lambda m: m(vec)),
        "SpectrumHead": (lambda: M.SpectrumHead(d_embed=12, n_out=7, d_hidden=8), lambda m: m(vec)),
        "GCNEncoder": (lambda: M.GCNEncoder(d=8), lambda m: m(pyg)[0]),
        "GATEncoder": (lambda: M.GATEncoder(d=8, heads=2), lambda m: m(pyg)[0]),
        "MPNNEncoder": (lambda: M.MPNNEncoder(d=8, d_edge=16), lambda m: m(pyg)[0]),
        "CHGNetEncoder": (lambda: M.CHGNetEncoder(frozen=False), lambda m: m(chgnet_graphs)[0]),
        "ForwardModel": (
            lambda: M.ForwardModel(
                encoder=M.GATEncoder(d=8, heads=2),
                head=M.SpectrumHead(d_embed=8, n_out=6, d_hidden=8, arch="sgmlp_linear"),
            ),
            lambda m: m(pyg, mask_t),
        ),
        "NeighborClassifier": (
            lambda: M.NeighborClassifier(n_xanes=40, n_exafs=32, n_classes=4, d_embed=8, d_hidden=8),
            lambda m: m(xanes=spec["xanes_mu"], exafs=spec["exafs_mu"]),
        ),
        "PathEXAFS": (
            lambda: M.PathEXAFS(k_start=2.0, k_step=0.5, n_k=21, n_basis=6, d_hidden=8, d_element=4, d_atom=5, focus=True),
            lambda m: m(*M.PathEXAFS.collate(
                [29, 11], ["K", "L3"], [M.PathEXAFS.neighbours(cu, 0, 4.0, focus=True), M.PathEXAFS.neighbours(nacl, 0, 4.0, focus=True)],
                atom_feas=[np.linspace(0, 1, 5 * len(cu)).reshape(-1, 5), np.linspace(1, 0, 5 * len(nacl)).reshape(-1, 5)],
                sites=[0, 0])),
        ),
        "MNNDRegressor": (
            lambda: M.MNNDRegressor(
                n_xanes=40, n_exafs=32, d_embed=8, channels=4, pool=2, d_hidden=8,
                use_element=True, variance=True, target_mean=2.0,
            ),
            lambda m: torch.stack(m(**spec, element=torch.tensor([26, 29, 29, 8]), edge=torch.tensor([0, 0, 3, 0]))),
        ),
    }


def test_round_trip_covers_registry(cu, nacl, masks, chgnet_graphs):
    # other modules (train, inverse) register their own ModelIO classes and test them themselves
    own = {n for n, c in M.REGISTRY.items() if c.__module__ == M.__name__}
    assert set(_cases(cu, nacl, masks, chgnet_graphs)) == own


@pytest.mark.parametrize(
    "name",
    ["GatedLinear", "SwiGLU", "SGMLP", "PlainMLP", "SpectrumHead", "GCNEncoder", "GATEncoder",
     "MPNNEncoder", "CHGNetEncoder", "ForwardModel", "NeighborClassifier", "MNNDRegressor", "PathEXAFS"],
)
def test_save_load_round_trip_identical_outputs(name, tmp_path, cu, nacl, masks, chgnet_graphs):
    build, run = _cases(cu, nacl, masks, chgnet_graphs)[name]
    _seed(5)
    model = build()
    _perturb(model)
    model.eval()
    with torch.no_grad():
        ref = run(model)
    d = model.save(tmp_path / name)
    assert (d / M.CONFIG_FILE).is_file() and (d / M.WEIGHTS_FILE).is_file()
    for loaded in (type(model).load(model.todict(), device="cpu"), M.load_model(d, device="cpu")):
        assert type(loaded) is type(model) and not loaded.training
        assert loaded.config == model.config
        with torch.no_grad():
            torch.testing.assert_close(run(loaded), ref, rtol=0, atol=0)


def test_load_errors(tmp_path):
    gl = M.GatedLinear(d_in=3, d_out=2)
    with pytest.raises(TypeError, match="not a SwiGLU"):
        M.SwiGLU.load(gl.todict())
    bad = gl.todict()
    bad["class"] = "NoSuchModel"
    with pytest.raises(ValueError, match="unknown model class"):
        M.load_model(bad)
    with pytest.raises(FileNotFoundError):
        M.load_model(tmp_path)
    future = gl.todict()
    future["format"] = M.FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        M.load_model(future)


def test_config_is_json_and_nested(cu):
    fm = M.ForwardModel(encoder=M.GCNEncoder(d=8), head=M.SpectrumHead(d_embed=8, n_out=4))
    cfg = fm.config
    enc_cfg = {"d": 8, "n_layers": 3, "cutoff": 6.0, "n_gaussians": 32, "max_z": 103}
    assert cfg["encoder"] == {"__model__": "GCNEncoder", "config": enc_cfg}
    assert cfg["head"]["config"]["n_out"] == 4 and cfg["head"]["config"]["arch"] == "sgmlp"
    assert math.isclose(M.make_encoder("gcn", d=8).cutoff, 6.0)
    with pytest.raises(ValueError):
        M.make_encoder("schnet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_forward_and_load(tmp_path):
    model = M.MNNDRegressor(n_xanes=40, n_exafs=32, variance=True).to("cuda").eval()
    x, _ = _synthetic_spectra(4, seed=0)
    pred = model(**x)
    assert pred.mean.device.type == "cuda"
    assert M.load_model(model.save(tmp_path / "m"), device="auto").device.type == "cuda"
