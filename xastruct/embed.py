"""Structure-side inputs of the models: CHGNet site embeddings, absorber pooling masks, PyG graphs.

* :func:`crystal_graph` builds CHGNet's input graph with array operations (identical to chgnet's
  converter up to the order of the angle rows, ~8x faster).
* :func:`chgnet_site_embeddings` runs the pretrained CHGNet once per structure (frozen, no grad)
  and returns per-atom features (n_atoms x 64: CHGNet's ``atom_fea``, the atom features before
  its last convolution). With ``cache_dir`` each result is stored as ``<sha256>.npz`` keyed by the
  structure's content (lattice, species, fractional coordinates) plus the CHGNet version and
  checkpoint, so every structure is embedded once across runs.
* :func:`first_shell` / :func:`absorber_mask` / :func:`pooled_embedding`: the absorber and its
  immediate neighbours. Neighbours come from an explicit list (e.g. CrystalNN labels from
  :mod:`xastruct.labels`) or, by default, are all atoms within ``scale`` (1.2) times the absorber's
  nearest-neighbour distance. The mask is binary over the sites of the cell: a neighbour that is a
  periodic image counts once, under its site index (in a one-atom cell the pool is the absorber).
* :func:`structure_to_pyg`: periodic graph for the GNN baselines from pymatgen's
  ``get_neighbor_list`` (torch-cluster/pyg-lib ``radius_graph`` is not used: it is not periodic and
  pyg-lib is not installed).

Throughput (`benchmarks/bench_chgnet_speed.py`, idle 2-core CPU, 2 torch threads, Cu K materials of
23 atoms on average, batch 32): 10.5 ms per structure, of which graph building 1.1 ms with
:func:`crystal_graph` (chgnet's own converter: 9.4 ms for the same graph) and the forward pass the rest.
On a busy machine pass ``num_threads=1``: 2 threads under contention were 3-10x slower.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xastruct.errors import InputError
from xastruct.models import pick_device

__all__ = [
    "absorber_mask",
    "chgnet_site_embeddings",
    "crystal_graph",
    "first_shell",
    "pooled_embedding",
    "structure_key",
    "structure_to_pyg",
]

DEFAULT_MODEL = "0.3.0"
_DECIMALS = 6  # rounding of coordinates in the cache key: 1e-6 A / fractional is far below noise


def _chgnet_version() -> str:
    import chgnet

    return str(getattr(chgnet, "__version__", "unknown"))


def structure_key(structure: Any, *, model_name: str = DEFAULT_MODEL) -> str:
    """sha256 of what CHGNet sees (lattice, species, fractional coordinates) + CHGNet version.

    Site properties, labels and charge are left out on purpose: they do not change the
    embedding, and including them would recompute identical structures.
    """
    content = {
        "lattice": np.round(structure.lattice.matrix, _DECIMALS).tolist(),
        "species": [site.species_string for site in structure],
        "frac_coords": np.round(structure.frac_coords, _DECIMALS).tolist(),
        "chgnet": _chgnet_version(),
        "model": model_name,
        "features": "atom_fea",
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=2)
def _frozen_chgnet(model_name: str, device: str):
    from chgnet.model import CHGNet

    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        model = CHGNet.load(model_name=model_name, use_device=device, verbose=False)
    model.requires_grad_(False)
    return model.eval()


def _read_cached(path: Path, n_atoms: int) -> np.ndarray | None:
    try:
        with np.load(path) as z:
            feas = z["atom_fea"]
    except (OSError, KeyError, ValueError):
        return None  # unreadable or half-written by a crashed process: recompute
    return feas if feas.shape[0] == n_atoms else None


def _write_cached(path: Path, feas: np.ndarray) -> None:
    # write-then-rename so a concurrent reader never sees a partial file
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, atom_fea=feas)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atom_features(model, graphs) -> list[torch.Tensor]:
    """CHGNet's atom features before its last convolution, i.e. ``model(graphs,
    return_atom_feas=True)["atom_fea"]``, without the work that does not feed them: the last bond
    and angle updates, the last atom convolution, the readout and the composition model (about a
    third of the forward pass). Mirrors ``CHGNet._compute`` (chgnet 0.3-0.4); tests/test_embed.py
    checks equality with the full call, and any other model layout takes the full call.
    """
    needed = ("atom_embedding", "bond_embedding", "bond_weights_ag", "bond_weights_bg", "angle_embedding",
              "atom_conv_layers", "bond_conv_layers", "angle_layers", "bond_basis_expansion", "angle_basis_expansion")
    if not all(hasattr(model, a) for a in needed) or getattr(model, "n_conv", 0) < 2:
        return list(model(graphs, task="e", return_atom_feas=True)["atom_fea"])
    from chgnet.model.model import BatchedGraph

    g = BatchedGraph.from_graphs(graphs, bond_basis_expansion=model.bond_basis_expansion,
                                 angle_basis_expansion=model.angle_basis_expansion, compute_stress=False)
    atoms_per_graph = torch.bincount(g.atom_owners)
    atom_feas = model.atom_embedding(g.atomic_numbers - 1)
    bond_feas = model.bond_embedding(g.bond_bases_ag)
    bond_weights_ag = model.bond_weights_ag(g.bond_bases_ag)
    has_angles = len(g.angle_bases) != 0
    if has_angles:
        bond_weights_bg = model.bond_weights_bg(g.bond_bases_bg)
        angle_feas = model.angle_embedding(g.angle_bases)
    layers = list(zip(model.atom_conv_layers[:-1], model.bond_conv_layers, model.angle_layers))
    for idx, (atom_layer, bond_layer, angle_layer) in enumerate(layers):
        atom_feas = atom_layer(atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=bond_weights_ag,
                               atom_graph=g.batched_atom_graph, directed2undirected=g.directed2undirected)
        if idx == len(layers) - 1:
            break  # the features are taken here; bond/angle updates after this feed only later layers
        if has_angles and bond_layer is not None:
            bond_feas = bond_layer(atom_feas=atom_feas, bond_feas=bond_feas, bond_weights=bond_weights_bg,
                                   angle_feas=angle_feas, bond_graph=g.batched_bond_graph)
            if angle_layer is not None:
                angle_feas = angle_layer(atom_feas=atom_feas, bond_feas=bond_feas, angle_feas=angle_feas,
                                         bond_graph=g.batched_bond_graph)
    return list(torch.split(atom_feas, atoms_per_graph.tolist()))


def crystal_graph(converter, structure):
    """CHGNet's ``CrystalGraph`` of *structure*, as ``converter(structure)`` builds it, in numpy.

    chgnet's converter builds Python objects per edge and the angle list (``bond_graph``) in a
    Python triple loop: ~9 ms of a 23-atom cell, about as long as the network's forward pass. This
    builds the same arrays from pymatgen's neighbour list with array operations: directed edges in
    neighbour-list order, undirected edges numbered by first appearance of the pair (i, j, image) /
    (j, i, -image), and the angle rows [centre, bond u, its directed edge d, bond of e, e] for every
    bond u <= bond cutoff at each of its two ends and every other directed edge e < bond cutoff
    leaving the same atom. Only the order of the angle rows differs, which CHGNet sums over;
    tests/test_embed.py checks the atom features against the converter's graphs.
    """
    from chgnet.graph.crystalgraph import CrystalGraph

    n_atoms = len(structure)
    center, neighbor, image, distance = structure.get_neighbor_list(
        r=converter.atom_graph_cutoff, sites=structure.sites, numerical_tol=1e-8)
    if len(np.unique(center)) < n_atoms:
        return converter(structure)  # isolated atoms: let chgnet warn or raise as configured
    image = np.asarray(image, dtype=np.int64).reshape(-1, 3)
    n_dir = len(center)
    # canonical orientation of each directed edge's bond: the smaller of (i, j, img) and (j, i, -img)
    fwd = np.column_stack([center, neighbor, image])
    rev = np.column_stack([neighbor, center, -image])
    diff = fwd - rev
    first_diff = np.where(diff.any(axis=1), diff[np.arange(n_dir), np.argmax(diff != 0, axis=1)], 0)
    canon = np.where((first_diff <= 0)[:, None], fwd, rev)
    _, first, inverse = np.unique(canon, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))  # number bonds by first appearance
    d2u = rank[inverse]
    n_und = len(first)
    if n_dir != 2 * n_und or np.bincount(d2u, minlength=n_und).max(initial=2) != 2:
        return converter(structure)  # an unpaired edge (numerical tie at the cutoff): chgnet's own path
    u2d = np.full(n_und, n_dir, dtype=np.int64)
    np.minimum.at(u2d, d2u, np.arange(n_dir))
    # angles: d = a directed edge of a bond <= cutoff, e = another directed edge < cutoff from d's atom
    cut = converter.bond_graph_cutoff
    d_idx = np.flatnonzero(distance <= cut)
    e_idx = np.flatnonzero(distance < cut)
    e_sorted = e_idx[np.argsort(center[e_idx], kind="stable")]
    counts = np.bincount(center[e_sorted], minlength=n_atoms)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    per_d = counts[center[d_idx]]
    rows_d = np.repeat(d_idx, per_d)
    offs = np.arange(per_d.sum()) - np.repeat(np.cumsum(per_d) - per_d, per_d)
    rows_e = e_sorted[np.repeat(starts[center[d_idx]], per_d) + offs]
    keep = rows_d != rows_e
    rows_d, rows_e = rows_d[keep], rows_e[keep]
    bond_graph = np.column_stack([center[rows_d], d2u[rows_d], rows_d, d2u[rows_e], rows_e])
    f32 = torch.float32
    return CrystalGraph(
        atomic_number=torch.tensor([site.specie.Z for site in structure], dtype=torch.int32),
        atom_frac_coord=torch.tensor(structure.frac_coords, dtype=f32, requires_grad=True),
        atom_graph=torch.tensor(np.column_stack([center, neighbor]).reshape(-1, 2), dtype=torch.int32),
        neighbor_image=torch.tensor(image, dtype=f32),
        directed2undirected=torch.tensor(d2u, dtype=torch.int32),
        undirected2directed=torch.tensor(u2d, dtype=torch.int32),
        bond_graph=torch.tensor(bond_graph.reshape(-1, 5), dtype=torch.int32),
        lattice=torch.tensor(structure.lattice.matrix, dtype=f32, requires_grad=True),
        graph_id=None, mp_id=None, composition=structure.composition.formula,
        atom_graph_cutoff=converter.atom_graph_cutoff, bond_graph_cutoff=converter.bond_graph_cutoff,
    )


def chgnet_site_embeddings(
    structures: Iterable[Any],
    *,
    batch_size: int = 16,
    device: str | torch.device | None = "auto",
    progress: Callable[[int, int], Any] | None = None,
    cache_dir: str | Path | None = None,
    model_name: str = DEFAULT_MODEL,
    num_threads: int | None = None,
) -> list[np.ndarray]:
    """Per-structure CHGNet atom features, each ``(n_atoms, 64)`` float32, in input order.

    ``progress(done, total)`` is called after each batch (and once for cache hits).
    ``num_threads`` sets torch's intra-op threads for the duration of the call.
    Graphs come from :func:`crystal_graph` (the converter's graphs in numpy, ~8x faster).
    """
    structures = list(structures)
    for i, s in enumerate(structures):
        if not s.is_ordered:
            raise InputError(
                f"structure {i} ({s.composition.reduced_formula})",
                "is disordered; CHGNet needs one species per site",
                "order it first (e.g. pymatgen OrderDisorderedStructureTransformation)",
            )
    total = len(structures)
    out: list[np.ndarray | None] = [None] * total
    paths: list[Path | None] = [None] * total
    if cache_dir is not None:
        cdir = Path(cache_dir)
        cdir.mkdir(parents=True, exist_ok=True)
        for i, s in enumerate(structures):
            paths[i] = cdir / f"{structure_key(s, model_name=model_name)}.npz"
            out[i] = _read_cached(paths[i], len(s))
    todo = [i for i in range(total) if out[i] is None]
    done = total - len(todo)
    if progress is not None and done:
        progress(done, total)
    if not todo:
        return out  # type: ignore[return-value]

    dev = pick_device(device)
    model = _frozen_chgnet(model_name, str(dev))
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    batches = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    try:
        for idx in batches:
            graphs = [crystal_graph(model.graph_converter, structures[i]).to(str(dev)) for i in idx]
            with torch.no_grad():
                feas = atom_features(model, graphs)
            for i, f in zip(idx, feas):
                arr = f.detach().cpu().numpy().astype(np.float32)
                out[i] = arr
                if paths[i] is not None:
                    _write_cached(paths[i], arr)
            done += len(idx)
            if progress is not None:
                progress(done, total)
    finally:
        if num_threads:
            torch.set_num_threads(old_threads)
    return out  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------
# Absorber + first shell
# ----------------------------------------------------------------------------------------------


def first_shell(
    structure: Any, site_index: int, *, scale: float = 1.2, r_start: float = 4.0, r_max: float = 12.0
) -> list[int]:
    """Site indices of atoms within ``scale`` x the nearest-neighbour distance of *site_index*.

    Periodic images are reported under their site index, once each (sorted). The search radius
    grows from ``r_start`` until a neighbour is found (up to ``r_max``, else InputError).
    """
    n = len(structure)
    if not 0 <= site_index < n:
        raise IndexError(f"site_index {site_index} out of range for a {n}-atom structure")
    site = structure[site_index]
    r = r_start
    while True:
        nbrs = [nb for nb in structure.get_neighbors(site, r) if nb.nn_distance > 1e-8]
        if nbrs:
            break
        if r >= r_max:
            where = f"site {site_index} of {structure.composition.reduced_formula}"
            raise InputError(where, f"no neighbour within {r_max} A")
        r = min(r * 1.5, r_max)
    d_min = min(nb.nn_distance for nb in nbrs)
    shell = scale * d_min + 1e-6
    if shell > r:  # the shell reaches beyond the radius searched so far
        nbrs = [nb for nb in structure.get_neighbors(site, shell) if nb.nn_distance > 1e-8]
    return sorted({int(nb.index) for nb in nbrs if nb.nn_distance <= shell})


def _indices(neighbors: Iterable[Any]) -> list[int]:
    """Neighbour indices from ints or objects with ``site_index`` (labels.Neighbor) / ``index``."""
    out = []
    for nb in neighbors:
        for attr in ("site_index", "index"):
            if hasattr(nb, attr):
                nb = getattr(nb, attr)
                break
        out.append(int(nb))
    return out


def absorber_mask(
    structure_or_n_atoms: Any, site_index: int, *, neighbors: Sequence[Any] | None = None, scale: float = 1.2
) -> np.ndarray:
    """Boolean (n_atoms,) mask: the absorber and its first-shell neighbours.

    With *neighbors* given (site indices, or objects with ``site_index``), the first argument may
    be just the atom count; otherwise it must be the Structure and :func:`first_shell` is used.
    """
    if isinstance(structure_or_n_atoms, (int, np.integer)):
        n = int(structure_or_n_atoms)
        if neighbors is None:
            raise ValueError("give the Structure (not an atom count) when neighbors is None")
    else:
        n = len(structure_or_n_atoms)
    idx = first_shell(structure_or_n_atoms, site_index, scale=scale) if neighbors is None else _indices(neighbors)
    mask = np.zeros(n, dtype=bool)
    for i in [site_index, *idx]:
        if not 0 <= i < n:
            raise IndexError(f"site index {i} out of range for a {n}-atom structure")
        mask[i] = True
    return mask


#: Site pooling of the frozen-encoder models: "mean" = mean over the absorber and its first shell
#: (the paper's pooling); "absorber" = the absorber's own row; "concat" = [absorber, mean of the
#: first shell] (2 x d). On Cu K XANES (FEFF 9, validation materials) absorber-only beat the mean
#: by a wide margin (benchmarks/bench_eta.py): the absorber's row already carries its environment
#: after CHGNet's message passing, and averaging dilutes its identity (oxidation state, edge shift).
POOLS = ("mean", "absorber", "concat")


def pooled_embedding(
    atom_feas: np.ndarray,
    structure: Any,
    site_index: int,
    *,
    neighbors: Sequence[Any] | None = None,
    scale: float = 1.2,
    pool: str = "mean",
) -> np.ndarray:
    """The site's input vector from *atom_feas* rows (see :data:`POOLS`; first shell as in
    :func:`absorber_mask`). *structure* may be None when *neighbors* is given."""
    atom_feas = np.asarray(atom_feas)
    n = len(structure) if structure is not None else atom_feas.shape[0]
    if atom_feas.shape[0] != n:
        raise ValueError(f"atom_feas has {atom_feas.shape[0]} rows for a {n}-atom structure")
    if pool not in POOLS:
        raise InputError("--pool", f"unknown pooling {pool!r}", f"choose from {', '.join(POOLS)}")
    if pool == "absorber":
        return atom_feas[site_index].copy()
    mask = absorber_mask(structure if neighbors is None else n, site_index, neighbors=neighbors, scale=scale)
    if pool == "mean":
        return atom_feas[mask].mean(axis=0)
    shell = mask.copy()
    shell[site_index] = False
    rest = atom_feas[shell].mean(axis=0) if shell.any() else atom_feas[site_index]  # one-atom cell: itself
    return np.concatenate([atom_feas[site_index], rest])


# ----------------------------------------------------------------------------------------------
# Graphs for the GNN baselines
# ----------------------------------------------------------------------------------------------


def structure_to_pyg(structure: Any, *, cutoff: float = 6.0):
    """Periodic graph: ``x`` (n_atoms,) atomic numbers, ``edge_index`` (2, E), ``edge_attr`` (E, 1)
    distances in A, one directed edge per (neighbour image -> centre) pair within *cutoff*.

    ``edge_index[0]`` is the source (neighbour), ``edge_index[1]`` the target (centre), PyG's
    message direction. Edges to periodic images of the atom itself are kept.
    """
    from torch_geometric.data import Data

    if not structure.is_ordered:
        raise InputError(
            structure.composition.reduced_formula, "disordered structure: one species per site is needed", "order it first"
        )
    center, neighbor, _images, dist = structure.get_neighbor_list(r=cutoff, numerical_tol=1e-8)
    z = torch.tensor([site.specie.Z for site in structure], dtype=torch.long)
    edge_index = torch.from_numpy(np.stack([neighbor, center]).astype(np.int64))
    edge_attr = torch.from_numpy(np.asarray(dist, dtype=np.float32)).reshape(-1, 1)
    return Data(x=z, edge_index=edge_index, edge_attr=edge_attr, num_nodes=len(structure))
