"""Structure-side inputs: PyG graphs, first-shell masks, CHGNet site embeddings and their cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from xastruct import embed as E
from xastruct.errors import InputError

torch.set_num_threads(1)

A_CU = 3.615
D_NN_CU = A_CU / np.sqrt(2)  # 2.556 A


@pytest.fixture(scope="module")
def cu_conv():
    return Structure(Lattice.cubic(A_CU), ["Cu"] * 4, [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


@pytest.fixture(scope="module")
def cu_prim():
    h = A_CU / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["Cu"], [[0, 0, 0]])


@pytest.fixture(scope="module")
def nacl():
    # conventional cell: Na at sites 0-3, Cl at 4-7; Cl 4 sits at (1/2, 1/2, 1/2)
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture(scope="module")
def cu2o():
    # cuprite: linear O-Cu-O, Cu 2-fold, O 4-fold; 6 atoms
    return Structure.from_spacegroup("Pn-3m", Lattice.cubic(4.27), ["Cu", "O"], [[0, 0, 0], [0.25, 0.25, 0.25]])


# ----------------------------------------------------------------------------------------------
# PyG graphs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["cu_conv", "cu_prim"])
def test_structure_to_pyg_fcc_cu(which, request):
    s = request.getfixturevalue(which)
    g = E.structure_to_pyg(s, cutoff=3.0)
    n = len(s)
    assert g.num_nodes == n and g.x.tolist() == [29] * n and g.x.dtype == torch.long
    assert g.edge_index.shape == (2, 12 * n) and g.edge_attr.shape == (12 * n, 1)
    # every atom receives 12 edges, all at a / sqrt(2)
    assert torch.bincount(g.edge_index[1], minlength=n).tolist() == [12] * n
    np.testing.assert_allclose(g.edge_attr.numpy(), D_NN_CU, atol=1e-4)
    assert abs(float(g.edge_attr[0]) - 2.556) < 1e-3


def test_structure_to_pyg_default_cutoff_shells(cu_prim):
    g = E.structure_to_pyg(cu_prim)  # 6 A: fcc shells of 12, 6, 24, 12, 24 atoms
    assert g.edge_index.shape[1] == 78
    d = np.sort(g.edge_attr.numpy().ravel())
    np.testing.assert_allclose(d[[0, 12, 18, 42, 54]], A_CU * np.sqrt([0.5, 1, 1.5, 2, 2.5]), atol=1e-4)


def test_structure_to_pyg_edge_direction(nacl):
    g = E.structure_to_pyg(nacl, cutoff=3.0)
    src, dst = g.edge_index
    # rock salt: every first-shell edge joins Na (0-3) and Cl (4-7); 6 per atom
    assert bool(((src < 4) != (dst < 4)).all())
    assert torch.bincount(dst, minlength=8).tolist() == [6] * 8


def test_disordered_structure_rejected():
    s = Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]])
    with pytest.raises(InputError, match="disordered"):
        E.structure_to_pyg(s)
    with pytest.raises(InputError, match="disordered"):
        E.chgnet_site_embeddings([s], device="cpu")


# ----------------------------------------------------------------------------------------------
# First shell and pooling
# ----------------------------------------------------------------------------------------------


def test_first_shell(nacl, cu_conv, cu_prim, cu2o):
    assert E.first_shell(nacl, 0) == [5, 6, 7]  # the 6 Cl around Na 0 are images of sites 5-7
    assert E.first_shell(nacl, 4) == [1, 2, 3]
    assert E.first_shell(cu_conv, 0) == [1, 2, 3]
    assert E.first_shell(cu_prim, 0) == [0]  # all 12 neighbours are images of the absorber
    cu_sites = [i for i, s in enumerate(cu2o) if s.specie.symbol == "Cu"]
    o_sites = [i for i, s in enumerate(cu2o) if s.specie.symbol == "O"]
    assert set(E.first_shell(cu2o, cu_sites[0])) <= set(o_sites)
    assert set(E.first_shell(cu2o, o_sites[0])) == set(cu_sites)
    # a larger scale reaches the second shell (Na-Na at 3.99 A = 1.41 x 2.82 A)
    assert E.first_shell(nacl, 0, scale=1.5) == [1, 2, 3, 5, 6, 7]
    with pytest.raises(IndexError):
        E.first_shell(nacl, 8)


def test_absorber_mask_and_pooled_embedding_three_atoms():
    # hand-made 3-atom chain along x: A(0) - B(2 A) - C(5 A) in a 12 A box
    s = Structure(Lattice.cubic(12.0), ["Fe", "O", "O"], [[0, 0, 0], [2 / 12, 0, 0], [5 / 12, 0, 0]])
    feas = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 10.0]])
    # default first shell of atom 0: only B (C is at 5 A > 1.2 x 2 A)
    assert E.absorber_mask(s, 0).tolist() == [True, True, False]
    np.testing.assert_allclose(E.pooled_embedding(feas, s, 0), [2.0, 1.0])
    # atom 1: nearest is A at 2 A; C at 3 A > 2.4 A is outside
    assert E.absorber_mask(s, 1).tolist() == [True, True, False]
    # explicit neighbour list (e.g. CrystalNN labels) overrides the distance rule
    np.testing.assert_allclose(E.pooled_embedding(feas, s, 0, neighbors=[2]), [3.0, 5.0])
    np.testing.assert_allclose(E.pooled_embedding(feas, s, 0, neighbors=[]), [1.0, 0.0])
    # neighbour objects carrying site_index work, and an atom count suffices with explicit neighbours
    from xastruct.labels import Neighbor

    nbrs = [Neighbor(1, (0, 0, 0), 2.0, "O"), Neighbor(2, (0, 0, 0), 5.0, "O")]
    assert E.absorber_mask(3, 0, neighbors=nbrs).tolist() == [True, True, True]
    with pytest.raises(ValueError):
        E.absorber_mask(3, 0)
    with pytest.raises(IndexError):
        E.absorber_mask(3, 0, neighbors=[3])
    with pytest.raises(ValueError, match="rows"):
        E.pooled_embedding(feas[:2], s, 0)


# ----------------------------------------------------------------------------------------------
# CHGNet embeddings
# ----------------------------------------------------------------------------------------------


def test_structure_key_is_content_based(nacl):
    k = E.structure_key(nacl)
    moved = nacl.copy()
    moved.add_site_property("magmom", [0.0] * len(nacl))
    assert E.structure_key(moved) == k  # site properties do not change what CHGNet sees
    moved.translate_sites([0], [0.01, 0, 0])
    assert E.structure_key(moved) != k
    assert E.structure_key(nacl, model_name="r2scan") != k
    assert len(k) == 64


@pytest.fixture(scope="module")
def embeddings(cu_conv, nacl, cu2o):
    return E.chgnet_site_embeddings([cu_conv, nacl, cu2o], device="cpu", batch_size=2)


def test_chgnet_embeddings_shapes_symmetry_determinism(embeddings, cu_conv, nacl, cu2o):
    cu, na_cl, cuprite = embeddings
    assert cu.shape == (4, 64) and na_cl.shape == (8, 64) and cuprite.shape == (6, 64)
    assert all(e.dtype == np.float32 and np.isfinite(e).all() for e in embeddings)
    # symmetry-equivalent sites get the same embedding (to float32 round-off)
    np.testing.assert_allclose(cu, np.broadcast_to(cu[0], cu.shape), atol=1e-5)
    np.testing.assert_allclose(na_cl[:4], np.broadcast_to(na_cl[0], (4, 64)), atol=1e-5)
    np.testing.assert_allclose(na_cl[4:], np.broadcast_to(na_cl[4], (4, 64)), atol=1e-5)
    assert np.abs(na_cl[0] - na_cl[4]).max() > 0.1
    cu_sites = [i for i, s in enumerate(cu2o) if s.specie.symbol == "Cu"]
    np.testing.assert_allclose(cuprite[cu_sites], np.broadcast_to(cuprite[cu_sites[0]], (len(cu_sites), 64)), atol=1e-5)
    # deterministic across calls and independent of batching / order
    again = E.chgnet_site_embeddings([cu2o, cu_conv], device="cpu", batch_size=1)
    np.testing.assert_allclose(again[0], cuprite, atol=1e-5)
    np.testing.assert_allclose(again[1], cu, atol=1e-5)


def test_numpy_crystal_graph_is_chgnets_graph(cu_conv, nacl, cu2o):
    # embed.crystal_graph replaces chgnet's converter (7x faster): same edges, same bond numbering,
    # the same set of angle rows, and the same atom features
    from chgnet.model import CHGNet

    model = CHGNet.load(verbose=False).eval()
    conv = model.graph_converter
    tilted = cu2o.copy()
    tilted.perturb(0.15, min_distance=0.05)  # low symmetry: many distinct bond lengths near 3 A
    li = Structure(Lattice.cubic(2.9), ["Li"], [[0, 0, 0]])  # one atom bonded only to its own images
    structs = [cu_conv, nacl, cu2o, tilted, li, nacl * (2, 1, 1)]
    ref = [conv(s) for s in structs]
    new = [E.crystal_graph(conv, s) for s in structs]
    for a, b in zip(ref, new):
        for name in ("atom_graph", "directed2undirected", "undirected2directed", "neighbor_image", "atomic_number"):
            torch.testing.assert_close(getattr(b, name), getattr(a, name), msg=name)
        assert sorted(map(tuple, b.bond_graph.tolist())) == sorted(map(tuple, a.bond_graph.tolist()))
        assert len(a.bond_graph) > 0 or len(b.bond_graph) == 0
    with torch.no_grad():
        for fa, fb in zip(E.atom_features(model, ref), E.atom_features(model, new)):
            torch.testing.assert_close(fb, fa, atol=1e-5, rtol=1e-5)
    # an isolated atom is left to chgnet's converter, which refuses it as configured
    far = Structure(Lattice.cubic(9.0), ["Li"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="isolated atom"):
        E.crystal_graph(conv, far)


def test_chgnet_embeddings_match_frozen_encoder(embeddings, nacl):
    from xastruct.models import CHGNetEncoder

    enc = CHGNetEncoder(frozen=True)
    with torch.no_grad():
        h, batch = enc([enc.featurize(nacl)])
    np.testing.assert_allclose(h.numpy(), embeddings[1], atol=1e-5)
    # pooled embedding of Na 0 = mean of Na 0 and the Cl sites of its first shell
    pooled = E.pooled_embedding(embeddings[1], nacl, 0)
    np.testing.assert_allclose(pooled, embeddings[1][[0, 5, 6, 7]].mean(0), rtol=1e-6)


def test_truncated_forward_equals_full_chgnet_call(cu_conv, nacl, cu2o):
    # atom_features skips CHGNet's layers after atom_fea; it must give exactly what the full call gives
    from chgnet.model import CHGNet

    model = CHGNet.load(verbose=False).eval()
    li = Structure(Lattice.cubic(6.0), ["Li"], [[0, 0, 0]])  # one atom, 6 A apart: no angles at all
    graphs = [model.graph_converter(s) for s in (cu_conv, nacl, cu2o, li)]
    with torch.no_grad():
        full = model(graphs, task="e", return_atom_feas=True)["atom_fea"]
        fast = E.atom_features(model, graphs)
    assert len(fast) == len(full) == 4
    for a, b in zip(fast, full):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_chgnet_embedding_cache(tmp_path, monkeypatch, cu_conv, nacl, embeddings):
    calls = []
    def progress(done, total):
        calls.append((done, total))

    first = E.chgnet_site_embeddings([cu_conv, nacl], device="cpu", cache_dir=tmp_path, progress=progress)
    assert calls[-1] == (2, 2)
    files = sorted(tmp_path.glob("*.npz"))
    assert [f.stem for f in files] == sorted([E.structure_key(cu_conv), E.structure_key(nacl)])
    np.testing.assert_allclose(first[1], embeddings[1], atol=1e-5)

    # second call: served from disk, CHGNet is never loaded
    def boom(*args, **kwargs):
        raise AssertionError("CHGNet should not run on a cache hit")

    monkeypatch.setattr(E, "_frozen_chgnet", boom)
    calls.clear()
    cached = E.chgnet_site_embeddings([nacl, cu_conv], device="cpu", cache_dir=tmp_path, progress=progress)
    assert calls == [(2, 2)]
    np.testing.assert_array_equal(cached[0], first[1])
    np.testing.assert_array_equal(cached[1], first[0])

    # a corrupt cache file is recomputed, not trusted
    monkeypatch.undo()
    files[0].write_bytes(b"not an npz")
    fixed = E.chgnet_site_embeddings([cu_conv, nacl], device="cpu", cache_dir=tmp_path)
    np.testing.assert_allclose(fixed[0], first[0], atol=1e-6)
    np.testing.assert_allclose(fixed[1], first[1], atol=1e-6)
    assert not list(tmp_path.glob("*.tmp"))
