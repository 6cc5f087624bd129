"""Neural architectures of XAStruct: forward (structure -> spectrum) and inverse (spectrum -> structure).

Building blocks
    :class:`GatedLinear`  ``(x W_v + b_v) * sigmoid(x W_g + b_g)``.
    :class:`SwiGLU`       ``Swish_beta(x W + b) * (x V + c)`` with ``Swish_beta(z) = z * sigmoid(beta z)``,
                          ``W, V: d -> d`` and one learned scalar ``beta`` (initialised to 1).
    :class:`SGMLP`        ``n_layers - 1`` blocks of [GatedLinear -> LayerNorm -> SwiGLU -> Dropout] and a
                          final GatedLinear. Ablations: ``act="relu"`` swaps SwiGLU for ReLU,
                          ``linear="plain"`` swaps GatedLinear for ``nn.Linear``; :class:`PlainMLP`
                          (Linear + ReLU, no LayerNorm) is the third. :func:`make_mlp` picks one by
                          name (:data:`ARCHS`).

Forward model
    :class:`ForwardModel` = encoder -> site pooling -> :class:`SpectrumHead`. Encoders return per-atom
    embeddings of a batch of periodic structures: :class:`CHGNetEncoder` (pretrained CHGNet, frozen or
    fine-tuned) or the GNN baselines :class:`GCNEncoder`, :class:`GATEncoder`, :class:`MPNNEncoder`
    (torch-geometric on 6 A periodic graphs from :func:`xastruct.embed.structure_to_pyg`). Pooling is
    the mean over a binary node mask (absorber + first shell, see :func:`xastruct.embed.absorber_mask`).
    For the frozen-CHGNet mode it is much cheaper to precompute pooled embeddings once with
    :func:`xastruct.embed.chgnet_site_embeddings` and train a :class:`SpectrumHead` on them.

Inverse models
    :class:`NeighborClassifier` (spectra -> neighbour-class logits) and :class:`MNNDRegressor`
    (spectra -> mean nearest-neighbour distance, optionally with a Gaussian variance head).

Persistence: every model mixes in :class:`ModelIO`. Constructor keyword arguments are recorded
automatically, so ``todict()`` / ``save(dir)`` store them as a JSON config next to the weights and
``Cls.load(dict_or_dir)`` / :func:`load_model` rebuild any registered class. Sub-models passed as
arguments (e.g. the encoder of a ForwardModel) are stored as nested configs.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ARCHS",
    "EDGES",
    "ENCODERS",
    "REGISTRY",
    "CHGNetEncoder",
    "ForwardModel",
    "GATEncoder",
    "GCNEncoder",
    "GatedLinear",
    "MNNDRegressor",
    "MPNNEncoder",
    "ModelIO",
    "NeighborClassifier",
    "PathEXAFS",
    "PlainMLP",
    "Prediction",
    "SGMLP",
    "SpectrumHead",
    "SwiGLU",
    "edge_code",
    "load_model",
    "make_encoder",
    "make_mlp",
    "masked_mean",
    "pick_device",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
FORMAT_VERSION = 1


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> CUDA when available, else CPU; anything else is passed to torch."""
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------------------------
# Persistence
# ----------------------------------------------------------------------------------------------

REGISTRY: dict[str, type[nn.Module]] = {}


def _record_init(init):
    """Wrap ``__init__`` so the bound keyword arguments (defaults included) become the config.

    The outermost ``__init__`` of a subclass chain finishes last, so its arguments win.
    """
    sig = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self, *args, **kwargs):
        init(self, *args, **kwargs)
        bound = sig.bind(self, *args, **kwargs)
        bound.apply_defaults()
        cfg = dict(bound.arguments)
        cfg.pop("self")
        for name, p in sig.parameters.items():
            if p.kind is p.VAR_KEYWORD:
                cfg.update(cfg.pop(name))
        object.__setattr__(self, "_config", {k: _encode(v, k) for k, v in cfg.items()})

    return wrapper


def _encode(value: Any, name: str) -> Any:
    """JSON-safe form of a constructor argument; nested models become ``{"__model__": ...}``."""
    if isinstance(value, ModelIO):
        return {"__model__": type(value).__name__, "config": value.config}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_encode(v, name) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v, name) for k, v in value.items()}
    raise TypeError(f"constructor argument {name!r} of type {type(value).__name__} cannot be saved in a JSON config")


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__model__" in value:
            return _build(value["__model__"], value["config"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _build(class_name: str, config: dict) -> nn.Module:
    try:
        cls = REGISTRY[class_name]
    except KeyError:
        raise ValueError(f"unknown model class {class_name!r}; known: {sorted(REGISTRY)}") from None
    return cls(**{k: _decode(v) for k, v in config.items()})


class ModelIO:
    """Mixin: config capture, ``todict``/``save``/``load`` and registration by class name.

    Mix in before ``nn.Module`` (``class M(ModelIO, nn.Module)``); constructors must be keyword-only
    and their arguments JSON-serialisable (or other ModelIO models).
    """

    _config: dict

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _record_init(cls.__init__)
        if not cls.__name__.startswith("_"):
            REGISTRY[cls.__name__] = cls

    @property
    def config(self) -> dict:
        """The JSON-safe constructor arguments this model was built with."""
        return json.loads(json.dumps(self._config))

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def todict(self) -> dict:
        """``{"class", "config", "state_dict", "format"}``; state_dict tensors are CPU copies."""
        from xastruct import __version__

        return {
            "class": type(self).__name__,
            "config": self.config,
            "state_dict": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
            "format": FORMAT_VERSION,
            "xastruct_version": __version__,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``weights.pt`` into *directory* (created if needed)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        dct = self.todict()
        state = dct.pop("state_dict")
        torch.save(state, d / WEIGHTS_FILE)
        (d / CONFIG_FILE).write_text(json.dumps(dct, indent=2, sort_keys=True) + "\n")
        return d

    @classmethod
    def load(cls, source: dict | str | Path, *, device: str | torch.device | None = "auto"):
        """Rebuild from a ``todict()`` dict or a ``save()`` directory, in eval mode on *device*.

        Called on a concrete class, the stored class must be it or a subclass of it.
        """
        if isinstance(source, dict):
            dct = source
            state = dct["state_dict"]
        else:
            d = Path(source)
            if not (d / CONFIG_FILE).is_file():
                raise FileNotFoundError(f"{d}: no {CONFIG_FILE}; not a directory written by save()")
            dct = json.loads((d / CONFIG_FILE).read_text())
            # weights_only: a weights file should never be able to run code on load
            state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        if int(dct.get("format", FORMAT_VERSION)) > FORMAT_VERSION:
            raise ValueError(f"model saved in format {dct['format']}, newer than this xastruct reads ({FORMAT_VERSION})")
        model = _build(dct["class"], dct["config"])
        if not isinstance(model, cls):
            raise TypeError(f"stored model is a {dct['class']}, not a {cls.__name__}")
        model.load_state_dict(state)
        return model.to(pick_device(device)).eval()


def load_model(source: dict | str | Path, *, device: str | torch.device | None = "auto") -> nn.Module:
    """Rebuild any registered model from a ``todict()`` dict or a ``save()`` directory."""
    return ModelIO.load(source, device=device)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


class GatedLinear(ModelIO, nn.Module):
    """``(x W_v + b_v) * sigmoid(x W_g + b_g)``; value and gate share one fused matmul."""

    def __init__(self, *, d_in: int, d_out: int):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.proj = nn.Linear(d_in, 2 * d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * torch.sigmoid(gate)


class SwiGLU(ModelIO, nn.Module):
    """``Swish_beta(x W + b) * (x V + c)``, ``Swish_beta(z) = z * sigmoid(beta * z)``; W, V: d -> d.

    ``beta`` is one learned scalar (beta = 1 is SiLU).
    """

    def __init__(self, *, d: int, beta_init: float = 1.0):
        super().__init__()
        self.d = d
        self.proj = nn.Linear(d, 2 * d)
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.proj(x).chunk(2, dim=-1)
        return a * torch.sigmoid(self.beta * a) * b


class SGMLP(ModelIO, nn.Module):
    """Swish-gated MLP: ``n_layers - 1`` x [Linear -> LayerNorm -> Act -> Dropout] + final Linear.

    ``linear="gated"`` uses :class:`GatedLinear`, ``"plain"`` ``nn.Linear``; ``act="swiglu"`` uses
    :class:`SwiGLU`, ``"relu"`` ``nn.ReLU``. ``n_layers=1`` is a single (gated) linear map.
    """

    def __init__(
        self,
        *,
        d_in: int,
        d_hidden: int,
        d_out: int,
        n_layers: int = 3,
        act: str = "swiglu",
        linear: str = "gated",
        dropout: float = 0.0,
    ):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if act not in ("swiglu", "relu"):
            raise ValueError(f"act must be 'swiglu' or 'relu', got {act!r}")
        if linear not in ("gated", "plain"):
            raise ValueError(f"linear must be 'gated' or 'plain', got {linear!r}")
        self.d_in, self.d_out = d_in, d_out

        def lin(a: int, b: int) -> nn.Module:
            return GatedLinear(d_in=a, d_out=b) if linear == "gated" else nn.Linear(a, b)

        layers: list[nn.Module] = []
        d = d_in
        for _ in range(n_layers - 1):
            layers += [
                lin(d, d_hidden),
                nn.LayerNorm(d_hidden),
                SwiGLU(d=d_hidden) if act == "swiglu" else nn.ReLU(),
                nn.Dropout(dropout),
            ]
            d = d_hidden
        layers.append(lin(d, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PlainMLP(ModelIO, nn.Module):
    """Ablation baseline: ``n_layers - 1`` x [Linear -> ReLU -> Dropout] + final Linear."""

    def __init__(self, *, d_in: int, d_hidden: int, d_out: int, n_layers: int = 3, dropout: float = 0.0):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.d_in, self.d_out = d_in, d_out
        layers: list[nn.Module] = []
        d = d_in
        for _ in range(n_layers - 1):
            layers += [nn.Linear(d, d_hidden), nn.ReLU(), nn.Dropout(dropout)]
            d = d_hidden
        layers.append(nn.Linear(d, d_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


#: MLP variants by name: the full model and its three ablations.
ARCHS: dict[str, dict[str, str] | None] = {
    "sgmlp": {"act": "swiglu", "linear": "gated"},
    "sgmlp_relu": {"act": "relu", "linear": "gated"},  # no SwiGLU
    "sgmlp_linear": {"act": "swiglu", "linear": "plain"},  # no gated linear
    "mlp": None,  # PlainMLP
}


def make_mlp(
    *, arch: str = "sgmlp", d_in: int, d_hidden: int, d_out: int, n_layers: int = 3, dropout: float = 0.0
) -> nn.Module:
    """An :class:`SGMLP` (or ablation) / :class:`PlainMLP` chosen by *arch* (a key of :data:`ARCHS`)."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
    flags = ARCHS[arch]
    if flags is None:
        return PlainMLP(d_in=d_in, d_hidden=d_hidden, d_out=d_out, n_layers=n_layers, dropout=dropout)
    return SGMLP(d_in=d_in, d_hidden=d_hidden, d_out=d_out, n_layers=n_layers, dropout=dropout, **flags)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


def masked_mean(h: torch.Tensor, batch: torch.Tensor, mask: torch.Tensor, n_graphs: int) -> torch.Tensor:
    """Per-graph mean of node embeddings ``h`` (N, d) over nodes where ``mask`` (N,) is set.

    ``batch`` (N,) gives each node's graph index. A float mask acts as weights. Raises when a graph
    has no selected node (its absorber was not marked).
    """
    w = mask.to(h.dtype)
    num = h.new_zeros(n_graphs, h.shape[-1]).index_add_(0, batch, h * w[:, None])
    den = h.new_zeros(n_graphs).index_add_(0, batch, w)
    if bool((den <= 0).any()):
        empty = torch.nonzero(den <= 0).flatten().tolist()
        raise ValueError(f"site mask selects no node in structure(s) {empty} of the batch")
    return num / den[:, None]


def _flat_mask(mask: torch.Tensor | Sequence, sizes: Sequence[int], device: torch.device) -> torch.Tensor:
    """Per-structure masks (list of arrays) or one flat tensor -> a flat tensor on *device*."""
    if isinstance(mask, torch.Tensor):
        flat = mask
    else:
        parts = [torch.as_tensor(np.asarray(m)) for m in mask]
        if len(parts) != len(sizes):
            raise ValueError(f"{len(parts)} site masks for {len(sizes)} structures")
        for i, (p, n) in enumerate(zip(parts, sizes)):
            if p.shape != (n,):
                raise ValueError(f"site mask {i} has shape {tuple(p.shape)}, structure has {n} atoms")
        flat = torch.cat(parts)
    if flat.shape != (sum(sizes),):
        raise ValueError(f"flat site mask has shape {tuple(flat.shape)}, batch has {sum(sizes)} atoms")
    return flat.to(device)


# ----------------------------------------------------------------------------------------------
# Encoders: a list of per-structure graphs -> (node embeddings (N, d_out), node -> graph index (N,))
# ----------------------------------------------------------------------------------------------


class CHGNetEncoder(ModelIO, nn.Module):
    """The pretrained CHGNet; node embeddings are its ``atom_fea`` (atom features before the last
    convolution, what ``return_atom_feas=True`` returns), ``d_out = 64`` for v0.3.0.

    ``frozen=True``: no gradients, CHGNet kept in eval mode even when the parent trains.
    ``frozen=False``: fine-tuned end to end. Note only the layers up to ``atom_fea`` get
    gradients; CHGNet's last conv layer and energy readout are computed but unused.
    Graphs come from :meth:`featurize` (CHGNet's own converter: 6 A atom graph, 3 A bond graph).
    """

    def __init__(self, *, frozen: bool = True, model_name: str = "0.3.0"):
        super().__init__()
        from chgnet.model import CHGNet

        # CHGNet prints its parameter count on construction; keep library calls quiet
        with contextlib.redirect_stdout(io.StringIO()):
            self.chgnet = CHGNet.load(model_name=model_name, use_device="cpu", verbose=False)
        self.frozen = frozen
        self.d_out = int(self.chgnet.atom_fea_dim)
        if frozen:
            self.chgnet.requires_grad_(False)
            self.chgnet.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.chgnet.eval()
        return self

    def featurize(self, structure) -> Any:
        """A pymatgen Structure -> CHGNet CrystalGraph (CPU; embed.crystal_graph: the converter's graph,
        built with array operations)."""
        from xastruct.embed import crystal_graph

        return crystal_graph(self.chgnet.graph_converter, structure)

    @staticmethod
    def _to(graph, device: torch.device):
        # Positions and lattice are created with requires_grad=True for force/stress; we never need
        # those derivatives, and backprop into them would accumulate .grad on the caller's graphs.
        from chgnet.graph.crystalgraph import CrystalGraph

        return CrystalGraph(
            atomic_number=graph.atomic_number.to(device),
            atom_frac_coord=graph.atom_frac_coord.detach().to(device),
            atom_graph=graph.atom_graph.to(device),
            atom_graph_cutoff=graph.atom_graph_cutoff,
            neighbor_image=graph.neighbor_image.to(device),
            directed2undirected=graph.directed2undirected.to(device),
            undirected2directed=graph.undirected2directed.to(device),
            bond_graph=graph.bond_graph.to(device),
            bond_graph_cutoff=graph.bond_graph_cutoff,
            lattice=graph.lattice.detach().to(device),
            graph_id=graph.graph_id,
            mp_id=graph.mp_id,
            composition=graph.composition,
        )

    def forward(self, graphs: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
        dev = self.device
        from .embed import atom_features  # embed imports this module

        graphs = [self._to(g, dev) for g in graphs]
        ctx = torch.no_grad() if self.frozen else contextlib.nullcontext()
        with ctx:
            feas = atom_features(self.chgnet, graphs)  # skips the layers after atom_fea
        sizes = torch.tensor([f.shape[0] for f in feas], device=dev)
        batch = torch.repeat_interleave(torch.arange(len(feas), device=dev), sizes)
        return torch.cat(feas), batch


class GaussianExpansion(nn.Module):
    """Distances (E,) -> (E, n) Gaussians centred on an even grid over [0, cutoff], width = spacing."""

    def __init__(self, cutoff: float, n: int):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, cutoff, n))
        self.width = cutoff / (n - 1)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(-0.5 * ((d[:, None] - self.centers) / self.width) ** 2)


class _PeriodicGNN(ModelIO, nn.Module):
    """Shared body of the GNN baselines: learned element embeddings, ``n_layers`` residual
    message-passing layers ``h <- LayerNorm(h + SiLU(conv(h)))`` on periodic graphs.

    Self-loops are not added by the convolutions: the residual already carries each node's own
    state, and GCN/GAT's self-loop insertion would collapse genuine edges to periodic images of
    the same atom (every edge of a one-atom cell).
    """

    def __init__(self, *, d: int = 64, n_layers: int = 3, cutoff: float = 6.0, n_gaussians: int = 32, max_z: int = 103):
        super().__init__()
        self.d_out, self.cutoff = d, cutoff
        self.embed = nn.Embedding(max_z + 1, d)
        self.rbf = GaussianExpansion(cutoff, n_gaussians)
        self.convs = nn.ModuleList(self._conv(d, n_gaussians) for _ in range(n_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_layers))

    def _conv(self, d: int, n_gaussians: int) -> nn.Module:
        raise NotImplementedError

    def _message(self, conv: nn.Module, h, edge_index, dist, rbf) -> torch.Tensor:
        raise NotImplementedError

    def featurize(self, structure) -> Any:
        """A pymatgen Structure -> torch_geometric Data (edges within ``cutoff``)."""
        from xastruct.embed import structure_to_pyg

        return structure_to_pyg(structure, cutoff=self.cutoff)

    def forward(self, graphs) -> tuple[torch.Tensor, torch.Tensor]:
        from torch_geometric.data import Batch

        b = graphs if isinstance(graphs, Batch) else Batch.from_data_list(list(graphs))
        b = b.to(self.device)
        dist = b.edge_attr.reshape(-1)
        if dist.numel() and float(dist.max()) > self.cutoff + 1e-6:
            raise ValueError(f"graph has edges longer than the encoder cutoff {self.cutoff} A")
        rbf = self.rbf(dist)
        h = self.embed(b.x.reshape(-1).long())
        for conv, norm in zip(self.convs, self.norms):
            h = norm(h + F.silu(self._message(conv, h, b.edge_index, dist, rbf)))
        return h, b.batch


class GCNEncoder(_PeriodicGNN):
    """GCN baseline; GCNConv takes one scalar weight per edge: a cosine envelope of the distance
    (1 at r = 0, 0 at the cutoff), so edges fade out smoothly."""

    def __init__(self, *, d: int = 64, n_layers: int = 3, cutoff: float = 6.0, n_gaussians: int = 32, max_z: int = 103):
        super().__init__(d=d, n_layers=n_layers, cutoff=cutoff, n_gaussians=n_gaussians, max_z=max_z)

    def _conv(self, d, n_gaussians):
        from torch_geometric.nn import GCNConv

        return GCNConv(d, d, add_self_loops=False)

    def _message(self, conv, h, edge_index, dist, rbf):
        w = 0.5 * (torch.cos(math.pi * dist / self.cutoff) + 1.0)
        return conv(h, edge_index, w)


class GATEncoder(_PeriodicGNN):
    """GAT baseline: ``heads`` attention heads of width ``d // heads`` (concatenated), attention
    conditioned on the Gaussian-expanded distance (``edge_dim``)."""

    def __init__(
        self,
        *,
        d: int = 64,
        n_layers: int = 3,
        cutoff: float = 6.0,
        n_gaussians: int = 32,
        max_z: int = 103,
        heads: int = 4,
    ):
        if d % heads:
            raise ValueError(f"d={d} must be divisible by heads={heads}")
        self.heads = heads
        super().__init__(d=d, n_layers=n_layers, cutoff=cutoff, n_gaussians=n_gaussians, max_z=max_z)

    def _conv(self, d, n_gaussians):
        from torch_geometric.nn import GATConv

        return GATConv(d, d // self.heads, heads=self.heads, edge_dim=n_gaussians, add_self_loops=False)

    def _message(self, conv, h, edge_index, dist, rbf):
        return conv(h, edge_index, rbf)


class MPNNEncoder(_PeriodicGNN):
    """Edge-conditioned MPNN (NNConv, mean aggregation): an edge MLP maps the Gaussian-expanded
    distance to a d x d message matrix.

    The default ``d=32`` (not 64) because NNConv materialises one d x d matrix per edge: ~80 edges
    per atom at 6 A make d=64 cost ~50 MB per 45-atom structure per layer.
    """

    def __init__(
        self,
        *,
        d: int = 32,
        n_layers: int = 3,
        cutoff: float = 6.0,
        n_gaussians: int = 32,
        max_z: int = 103,
        d_edge: int = 64,
    ):
        self.d_edge = d_edge
        super().__init__(d=d, n_layers=n_layers, cutoff=cutoff, n_gaussians=n_gaussians, max_z=max_z)

    def _conv(self, d, n_gaussians):
        from torch_geometric.nn import NNConv

        edge_net = nn.Sequential(nn.Linear(n_gaussians, self.d_edge), nn.SiLU(), nn.Linear(self.d_edge, d * d))
        return NNConv(d, d, edge_net, aggr="mean")

    def _message(self, conv, h, edge_index, dist, rbf):
        return conv(h, edge_index, rbf)


ENCODERS: dict[str, type[nn.Module]] = {
    "chgnet": CHGNetEncoder,
    "gcn": GCNEncoder,
    "gat": GATEncoder,
    "mpnn": MPNNEncoder,
}


def make_encoder(name: str, **kwargs: Any) -> nn.Module:
    """Encoder by short name (a key of :data:`ENCODERS`), constructor keywords passed through."""
    try:
        cls = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODERS)}") from None
    return cls(**kwargs)


# ----------------------------------------------------------------------------------------------
# Forward model
# ----------------------------------------------------------------------------------------------


class SpectrumHead(ModelIO, nn.Module):
    """Pooled site embedding (B, d_embed) -> spectrum on a fixed grid (B, n_out)."""

    def __init__(
        self,
        *,
        d_embed: int,
        n_out: int,
        d_hidden: int = 256,
        n_layers: int = 3,
        arch: str = "sgmlp",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.d_embed, self.n_out = d_embed, n_out
        self.mlp = make_mlp(arch=arch, d_in=d_embed, d_hidden=d_hidden, d_out=n_out, n_layers=n_layers, dropout=dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.mlp(z.to(self.device))


class ForwardModel(ModelIO, nn.Module):
    """Structure -> spectrum at one absorbing site: encoder -> masked mean pooling -> head.

    ``forward(graphs, site_mask)``: *graphs* from :meth:`featurize`; *site_mask* either one array
    per structure (n_atoms,) or one flat tensor over the batch's nodes, selecting the absorber and
    its first shell (:func:`xastruct.embed.absorber_mask`).
    """

    def __init__(self, *, encoder: nn.Module, head: SpectrumHead):
        super().__init__()
        if head.d_embed != encoder.d_out:
            raise ValueError(f"head expects d_embed={head.d_embed}, encoder gives {encoder.d_out}")
        self.encoder = encoder
        self.head = head

    def featurize(self, structures) -> list:
        return [self.encoder.featurize(s) for s in structures]

    def embed_sites(self, graphs: Sequence, site_mask) -> torch.Tensor:
        """Pooled site embeddings (B, d) before the head."""
        h, batch = self.encoder(graphs)
        sizes = torch.bincount(batch, minlength=len(graphs)).tolist()
        mask = _flat_mask(site_mask, sizes, h.device)
        return masked_mean(h, batch, mask, len(graphs))

    def forward(self, graphs: Sequence, site_mask) -> torch.Tensor:
        return self.head(self.embed_sites(graphs, site_mask))


class PathEXAFS(ModelIO, nn.Module):
    """Structure -> k^2 chi(k) at one site as a sum over single-scattering paths, universal over absorbers.

    The EXAFS equation with learned ingredients: every neighbour j of the absorber within ``r_max``
    contributes ``k [a_j(k) sin(2 k R_j) + b_j(k) cos(2 k R_j)] exp(-2 s_j k^2 - 2 R_j / l_j) / R_j^2``
    (times k^2 chi's k weight), where the amplitude/phase pair (a_j, b_j) is smooth in k (``n_basis``
    Gaussians over the grid), and a_j, b_j, the disorder s_j and mean free path l_j come from a small
    network on [absorber, neighbour, edge, RBF(R_j)]. An atom is its element embedding plus, with
    ``d_atom`` > 0, a projection of its pretrained CHGNet atom features (its chemical environment:
    charge state, bonding), which the frozen CHGNet computes once per structure. The distances, and so
    the oscillation frequencies, are exact from the structure; the network only learns what FEFF's
    scattering amplitudes and phase shifts do, which depends on the atoms far more than on the
    crystal, so one model learns it from every absorber at once. Multiple-scattering paths are left
    out (weaker and, on k = 2-12 1/A, mostly at the single-scattering frequencies).

    ``forward(za, edge, zn, rn, mask[, ha, hn])``: absorber Z (B,), edge index (B,, :func:`edge_code`),
    neighbour Z (B, M), distance (B, M) in A, validity mask (B, M), and with ``d_atom`` the CHGNet
    features of the absorber (B, d_atom) and of the neighbours (B, M, d_atom), from :meth:`collate`.
    """

    def __init__(
        self, *, k_start: float, k_step: float, n_k: int, r_max: float = 6.0, n_basis: int = 16,
        d_hidden: int = 128, d_element: int = 32, max_z: int = 103, d_atom: int = 0, focus: bool = False,
    ):  # fmt: skip
        super().__init__()
        self.r_max, self.max_z, self.d_atom, self.focus = float(r_max), int(max_z), int(d_atom), bool(focus)
        k = k_start + k_step * torch.arange(n_k, dtype=torch.float32)
        self.register_buffer("k", k)
        centers = torch.linspace(float(k[0]), float(k[-1]), n_basis)
        width = (centers[1] - centers[0]) if n_basis > 1 else torch.tensor(1.0)
        self.register_buffer("basis", torch.exp(-((k[None, :] - centers[:, None]) ** 2) / (2 * width**2)))
        self.register_buffer("r_centers", torch.linspace(1.0, float(r_max), 8))
        self.element_embed = nn.Embedding(max_z + 1, d_element)
        self.atom_proj = nn.Linear(d_atom, d_element) if d_atom else None
        self.edge_embed = nn.Embedding(len(EDGES), 8)
        self.n_basis = n_basis
        d_focus = d_element + 2 if focus else 0
        self.net = nn.Sequential(
            nn.Linear(2 * d_element + 8 + 8 + d_focus, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_hidden), nn.SiLU(),
            nn.Linear(d_hidden, 2 * n_basis + 2),
        )  # fmt: skip

    @staticmethod
    def neighbours(structure: Any, site_index: int, r_max: float, *, focus: bool = False) -> np.ndarray:
        """(n, 3) [Z, distance in A, site index] of every atom (periodic images included) within
        *r_max* of the site, nearest first; disordered sites count by their dominant species. With
        *focus* three more columns [cos, blocker Z, blocker distance / distance] describe the closer
        atom most in line with it (largest cosine between the two bond vectors; Z 0 when none is
        within 45 degrees): multiple scattering through such an atom (forward focusing) adds to the
        single-scattering signal at that distance, strongly when collinear."""
        nbrs = sorted((n for n in structure.get_neighbors(structure[site_index], r_max) if n.nn_distance > 0.1),
                      key=lambda n: n.nn_distance)  # fmt: skip
        out = np.zeros((len(nbrs), 6 if focus else 3), np.float32)
        if not nbrs:
            return out
        z = np.array([max(n.species.items(), key=lambda kv: kv[1])[0].Z for n in nbrs], np.float32)
        d = np.array([n.nn_distance for n in nbrs])
        out[:, 0], out[:, 1], out[:, 2] = z, d, [n.index for n in nbrs]
        if not focus:
            return out
        u = (np.array([n.coords for n in nbrs]) - structure[site_index].coords) / d[:, None]
        closer = d[None, :] < d[:, None] - 0.3  # j (column) is nearer than l (row) by > 0.3 A
        cos = np.where(closer, u @ u.T, -1.0)
        j = cos.argmax(axis=1)
        best = cos[np.arange(len(nbrs)), j]
        inline = best > np.cos(np.pi / 4)
        out[:, 3] = np.where(inline, best, 0.0)
        out[:, 4] = np.where(inline, z[j], 0.0)
        out[:, 5] = np.where(inline, d[j] / d, 0.0)
        return out

    @staticmethod
    def collate(
        za: Sequence[int], edges: Sequence[str], nbrs: Sequence[np.ndarray], *, atom_feas: Sequence[np.ndarray] | None = None,
        sites: Sequence[int] | None = None, device=None,
    ) -> tuple:  # fmt: skip
        """Padded batch tensors for :meth:`forward` from per-site :meth:`neighbours` arrays:
        (za, edge, zn, rn, mask, ha, hn, geo). With *atom_feas* (each site's structure's CHGNet
        features, (n_atoms, d)) and the *sites*' indices, ha / hn are the absorber and neighbour
        features (else None); geo (B, M, 3) holds the in-line-atom columns."""
        m = max([len(n) for n in nbrs] + [1])
        zn = np.zeros((len(nbrs), m), np.int64)
        rn = np.ones((len(nbrs), m), np.float32)
        mask = np.zeros((len(nbrs), m), bool)
        geo = np.zeros((len(nbrs), m, 3), np.float32)
        for i, n in enumerate(nbrs):
            zn[i, : len(n)], rn[i, : len(n)], mask[i, : len(n)] = n[:, 0], n[:, 1], True
            if n.shape[1] >= 6:
                geo[i, : len(n)] = n[:, 3:6]
        t = functools.partial(torch.as_tensor, device=device)
        ha = hn = None
        if atom_feas is not None:
            d = atom_feas[0].shape[1]
            ha = t(np.stack([f[int(s)] for f, s in zip(atom_feas, sites)]).astype(np.float32))
            hn_np = np.zeros((len(nbrs), m, d), np.float32)
            for i, (n, f) in enumerate(zip(nbrs, atom_feas)):
                hn_np[i, : len(n)] = f[n[:, 2].astype(np.int64)]
            hn = t(hn_np)
        return (t(np.asarray(za, np.int64)), edge_code(list(edges)).to(device), t(zn), t(rn), t(mask), ha, hn, t(geo))

    def forward(self, za, edge, zn, rn, mask, ha=None, hn=None, geo=None) -> torch.Tensor:
        dev = self.k.device
        za, edge, zn, rn, mask = (x.to(dev) for x in (za, edge, zn, rn, mask))
        # only the real (site, neighbour) pairs: padding would be most of a batch of mixed cells
        bi, mi = mask.nonzero(as_tuple=True)
        r = rn[bi, mi]
        ea, en = self.element_embed(za[bi]), self.element_embed(zn[bi, mi].clamp(0, self.max_z))
        if self.atom_proj is not None:
            if ha is None or hn is None:
                raise ValueError("this model was built with d_atom > 0: pass the CHGNet features ha, hn (see collate)")
            ea = ea + self.atom_proj(ha.to(dev)[bi])
            en = en + self.atom_proj(hn.to(dev)[bi, mi])
        parts = [ea, en, self.edge_embed(edge[bi]), torch.exp(-((r[:, None] - self.r_centers) ** 2) / 0.5)]
        if self.focus:
            if geo is None:
                raise ValueError("this model was built with focus=True: pass geo (see collate)")
            g = geo.to(dev)[bi, mi]
            parts += [g[:, 0:1], g[:, 2:3], self.element_embed(g[:, 1].long().clamp(0, self.max_z)) * (g[:, 1:2] > 0)]
        h = torch.cat(parts, dim=-1)
        o = self.net(h)
        nb = self.n_basis
        amp, pha = o[:, :nb] @ self.basis, o[:, nb : 2 * nb] @ self.basis  # (pairs, n_k)
        s2 = F.softplus(o[:, 2 * nb : 2 * nb + 1]) * 0.01  # A^2: FEFF-scale Debye-Waller factors
        lam = F.softplus(o[:, 2 * nb + 1 : 2 * nb + 2]) * 5 + 1  # A: mean free path
        k, r = self.k, r[:, None]
        phase = 2 * k * r
        damp = torch.exp(-2 * s2 * k**2 - 2 * r / lam) / r.clamp(min=0.5) ** 2
        chi = k * (amp * torch.sin(phase) + pha * torch.cos(phase)) * damp
        return torch.zeros(len(za), len(k), dtype=chi.dtype, device=dev).index_add_(0, bi, chi)


# ----------------------------------------------------------------------------------------------
# Inverse models
# ----------------------------------------------------------------------------------------------


def _present_rows(
    x: torch.Tensor | None, present: torch.Tensor | None, n: int, device
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row mask of available spectra and NaN-free inputs.

    Missing rows are those with ``present`` False or, when not given, any non-finite value; their
    inputs are zero-filled (NaN would poison the gradients even where unused).
    """
    if x is None:
        if present is not None and bool(torch.as_tensor(present).any()):
            raise ValueError("a spectrum is flagged present but none was given")
        return torch.zeros(n, dtype=torch.bool, device=device), None
    x = x.to(device=device, dtype=torch.float32)
    finite = torch.isfinite(x).all(dim=-1)
    pres = finite if present is None else torch.as_tensor(present, device=device).bool()
    if pres.shape != (x.shape[0],):
        raise ValueError(f"presence mask has shape {tuple(pres.shape)} for {x.shape[0]} rows")
    if bool((pres & ~finite).any()):
        raise ValueError("a spectrum flagged present contains NaN/inf")
    return pres, torch.where(pres[:, None], x, torch.zeros((), device=device))


def _batch_size(*tensors) -> int:
    for t in tensors:
        if t is not None:
            return int(t.shape[0])
    raise ValueError("no input given")


def _fill_missing(fn, inputs: tuple, present: torch.Tensor, missing: torch.Tensor) -> torch.Tensor:
    """``fn`` on the present rows only (so BatchNorm statistics never see placeholder rows); the
    learned ``missing`` vector elsewhere."""
    n = present.shape[0]
    out = missing.expand(n, -1)
    if bool(present.any()):
        idx = torch.nonzero(present).flatten()
        out = out.index_put((idx,), fn(*(t[idx] for t in inputs)))
    return out


class NeighborClassifier(ModelIO, nn.Module):
    """XANES and/or EXAFS absorption vectors -> class logits (e.g. dominant neighbour element, CN).

    Each kind is embedded by its own MLP (``d_embed``); a missing kind (``None``, a row flagged False
    in ``has_xanes``/``has_exafs``, or an all-NaN row) is replaced by a learned "missing" embedding;
    the two embeddings are concatenated and classified by a further MLP. With ``use_element`` (one
    model for all absorbers) an absorber-element embedding and the edge one-hot join them, as in
    :class:`MNNDRegressor`.
    """

    def __init__(
        self,
        *,
        n_xanes: int,
        n_exafs: int,
        n_classes: int,
        d_embed: int = 64,
        d_hidden: int = 128,
        n_layers: int = 3,
        arch: str = "sgmlp",
        dropout: float = 0.0,
        use_element: bool = False,
        max_z: int = 103,
        d_element: int = 16,
    ):
        super().__init__()
        self.n_classes = n_classes
        self.use_element = use_element
        mk = functools.partial(make_mlp, arch=arch, d_hidden=d_hidden, n_layers=n_layers, dropout=dropout)
        self.xanes_embed = mk(d_in=n_xanes, d_out=d_embed)
        self.exafs_embed = mk(d_in=n_exafs, d_out=d_embed)
        self.xanes_missing = nn.Parameter(torch.zeros(d_embed))
        self.exafs_missing = nn.Parameter(torch.zeros(d_embed))
        d_in = 2 * d_embed
        if use_element:
            self.element_embed = nn.Embedding(max_z + 1, d_element)
            d_in += d_element + len(EDGES)
        self.classifier = mk(d_in=d_in, d_out=n_classes)

    def forward(
        self,
        *,
        xanes: torch.Tensor | None = None,
        exafs: torch.Tensor | None = None,
        has_xanes: torch.Tensor | None = None,
        has_exafs: torch.Tensor | None = None,
        element: torch.Tensor | None = None,
        edge: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n, dev = _batch_size(xanes, exafs), self.device
        px, xanes = _present_rows(xanes, has_xanes, n, dev)
        pe, exafs = _present_rows(exafs, has_exafs, n, dev)
        zx = _fill_missing(self.xanes_embed, (xanes,), px, self.xanes_missing)
        ze = _fill_missing(self.exafs_embed, (exafs,), pe, self.exafs_missing)
        return self.classifier(torch.cat([zx, ze, *_element_features(self, element, edge, n, dev)], dim=-1))

    def predict_proba(self, **inputs) -> torch.Tensor:
        return torch.softmax(self(**inputs), dim=-1)


#: Absorption edges known to the MNND model's edge one-hot.
EDGES: tuple[str, ...] = ("K", "L1", "L2", "L3")


def edge_code(edge: str | Sequence[str]) -> torch.Tensor:
    """Edge name(s) -> index tensor for :class:`MNNDRegressor` (``"K"`` -> 0, ...)."""
    names = [edge] if isinstance(edge, str) else list(edge)
    try:
        return torch.tensor([EDGES.index(e.upper()) for e in names], dtype=torch.long)
    except ValueError:
        raise ValueError(f"unknown edge in {names}; known: {EDGES}") from None


def _element_features(model, element, edge, n: int, dev) -> list[torch.Tensor]:
    """[absorber embedding, edge one-hot] for a model built with use_element, else []."""
    if not model.use_element:
        return []
    if element is None or edge is None:
        raise ValueError("this model was built with use_element=True: pass element (Z) and edge (edge_code)")
    element = torch.as_tensor(element, device=dev).long().reshape(n)
    edge = torch.as_tensor(edge, device=dev).long().reshape(n)
    return [model.element_embed(element), F.one_hot(edge, len(EDGES)).float()]


class Prediction(NamedTuple):
    """Regression output: mean (B,), and variance (B,) when the model has a variance head."""

    mean: torch.Tensor
    var: torch.Tensor | None


class _ConvBlock(nn.Module):
    """Conv1D -> BatchNorm -> ReLU -> AvgPool over the (energy, absorption) embedding pair."""

    def __init__(self, channels: int, kernel_size: int, pool: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(2, channels, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.AvgPool1d(pool),
            nn.Flatten(),
        )

    def forward(self, e: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return self.net(torch.stack([e, mu], dim=1))


class MNNDRegressor(ModelIO, nn.Module):
    """Spectra -> mean nearest-neighbour distance (MNND), one universal model for all absorbers.

    Per kind (XANES, EXAFS): an MLP embeds the energy vector (for EXAFS: whatever abscissa the
    dataset uses, e.g. k) and another the absorption vector, both to ``d_embed``; the two
    embeddings are stacked as 2 channels of a length-``d_embed`` sequence and pass a
    Conv1D -> BatchNorm -> ReLU -> AvgPool block. Both kinds' flattened features (plus, with
    ``use_element``, an absorber-element embedding and the edge one-hot) feed an MLP regressor.
    Energies should be given relative to the edge and scaled to O(1) by the caller.

    A missing kind (None / flagged False / NaN row) uses a learned placeholder feature vector.
    ``variance=True`` adds a second output, the log-variance, so each prediction carries an
    uncertainty (train with :meth:`loss`, the NLL of ``likelihood``: "gaussian", or "laplace" whose
    mean absolute error term weighs outliers less; the variance is reported either way; then
    :meth:`calibrate_variance` on held-out data, which sets ``var_scale``). Targets are modelled in
    standardised units ``(y - target_mean) / target_std``; outputs are in physical units.
    """

    def __init__(
        self,
        *,
        n_xanes: int,
        n_exafs: int,
        d_embed: int = 64,
        channels: int = 16,
        kernel_size: int = 5,
        pool: int = 4,
        d_hidden: int = 128,
        n_layers: int = 3,
        arch: str = "sgmlp",
        dropout: float = 0.0,
        use_element: bool = False,
        max_z: int = 103,
        d_element: int = 16,
        variance: bool = False,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        var_scale: float = 1.0,
        likelihood: str = "gaussian",
    ):
        super().__init__()
        if d_embed % pool:
            raise ValueError(f"d_embed={d_embed} must be divisible by pool={pool}")
        if likelihood not in ("gaussian", "laplace"):
            raise ValueError(f"likelihood must be 'gaussian' or 'laplace', got {likelihood!r}")
        self.likelihood = likelihood
        if target_std <= 0:
            raise ValueError(f"target_std must be > 0, got {target_std}")
        self.use_element, self.variance = use_element, variance
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.var_scale = float(var_scale)
        mk = functools.partial(make_mlp, arch=arch, d_hidden=d_hidden, n_layers=n_layers, dropout=dropout)
        self.xanes_e = mk(d_in=n_xanes, d_out=d_embed)
        self.xanes_mu = mk(d_in=n_xanes, d_out=d_embed)
        self.exafs_e = mk(d_in=n_exafs, d_out=d_embed)
        self.exafs_mu = mk(d_in=n_exafs, d_out=d_embed)
        self.xanes_conv = _ConvBlock(channels, kernel_size, pool)
        self.exafs_conv = _ConvBlock(channels, kernel_size, pool)
        n_feat = channels * (d_embed // pool)
        self.xanes_missing = nn.Parameter(torch.zeros(n_feat))
        self.exafs_missing = nn.Parameter(torch.zeros(n_feat))
        d_in = 2 * n_feat
        if use_element:
            self.element_embed = nn.Embedding(max_z + 1, d_element)
            d_in += d_element + len(EDGES)
        self.regressor = mk(d_in=d_in, d_out=2 if variance else 1)

    @staticmethod
    def _kind_features(e_mlp, mu_mlp, conv):
        def features(e, mu):
            # Spectra on one shared grid have identical energy rows: at inference embed that row once
            # (half the embedding work of the model). Training keeps per-row passes (dropout).
            if not e_mlp.training and e.shape[0] > 1 and bool((e == e[:1]).all()):
                return conv(e_mlp(e[:1]).expand(e.shape[0], -1), mu_mlp(mu))
            return conv(e_mlp(e), mu_mlp(mu))

        return features

    def forward(
        self,
        *,
        xanes_energy: torch.Tensor | None = None,
        xanes_mu: torch.Tensor | None = None,
        exafs_energy: torch.Tensor | None = None,
        exafs_mu: torch.Tensor | None = None,
        has_xanes: torch.Tensor | None = None,
        has_exafs: torch.Tensor | None = None,
        element: torch.Tensor | None = None,
        edge: torch.Tensor | None = None,
    ) -> Prediction:
        n, dev = _batch_size(xanes_mu, exafs_mu, xanes_energy, exafs_energy), self.device
        feats = []
        kinds = (
            ("xanes", xanes_energy, xanes_mu, has_xanes, self.xanes_e, self.xanes_mu, self.xanes_conv, self.xanes_missing),
            ("exafs", exafs_energy, exafs_mu, has_exafs, self.exafs_e, self.exafs_mu, self.exafs_conv, self.exafs_missing),
        )
        for kind, e, mu, has, e_mlp, mu_mlp, conv, missing in kinds:
            if (e is None) != (mu is None):
                raise ValueError(f"{kind}: give both the energy and the absorption vector, or neither")
            pe, e = _present_rows(e, has, n, dev)
            pm, mu = _present_rows(mu, has, n, dev)
            # a row whose energy or absorption vector is missing counts as missing
            feats.append(_fill_missing(self._kind_features(e_mlp, mu_mlp, conv), (e, mu), pe & pm, missing))
        feats += _element_features(self, element, edge, n, dev)
        out = self.regressor(torch.cat(feats, dim=-1))
        mean = self.target_mean + self.target_std * out[:, 0]
        if not self.variance:
            return Prediction(mean, None)
        # clamp keeps exp() finite and strictly positive early in training
        log_var = out[:, 1].clamp(-15.0, 15.0)
        return Prediction(mean, self.var_scale * self.target_std**2 * torch.exp(log_var))

    def calibrate_variance(self, *, residuals: torch.Tensor, variances: torch.Tensor) -> float:
        """Rescale the variance head by the factor that maximises the Gaussian likelihood of held-out
        *residuals* given the current *variances* (mean of r^2 / var; recorded in the config, so it
        survives save/load). A head trained to its best MAE is overconfident: see the coverage before
        and after in benchmarks/results/mnnd_errors_cu.md."""
        if not self.variance or len(residuals) == 0:
            return 1.0
        factor = float(torch.mean(residuals.double() ** 2 / variances.double().clamp_min(1e-12)))
        self.var_scale *= factor
        self._config["var_scale"] = self.var_scale
        return factor

    def loss(self, pred: Prediction, target: torch.Tensor) -> torch.Tensor:
        """Gaussian (or Laplace) NLL with a variance head, else MSE (or MAE for "laplace"); in
        standardised target units."""
        target = target.to(pred.mean.device, pred.mean.dtype).reshape(pred.mean.shape)
        s = self.target_std
        r = (pred.mean - target) / s
        if pred.var is None:
            return r.abs().mean() if self.likelihood == "laplace" else (r**2).mean()
        var = pred.var / s**2
        if self.likelihood == "laplace":  # scale b with variance 2 b^2
            b = torch.sqrt(var.clamp_min(1e-12) / 2.0)
            return (r.abs() / b + torch.log(2.0 * b)).mean()
        return F.gaussian_nll_loss(pred.mean / s, target / s, var, full=True)
