"""Molecule encoders: an MLP over fingerprints (and descriptors) and a message-passing graph network.

Both map a batch of molecules to embeddings, ``[B, ...] -> [B, embedding_dim]``, or to logits
``[B, out_features]`` with a linear ``head`` (named so for ANIL), like :class:`~fewshot.nets.Conv4`;
so every learner of the library can use them. Neither holds batch statistics: a molecule's
embedding does not depend on the rest of its batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fewshot.datasets.featurize import ATOM_FIELDS, BOND_FIELDS
from fewshot.registry import register_net


class FingerprintMLP(nn.Module):
    """``x [B, in_features]`` (e.g. ECFP counts and descriptors) -> ``[B, embedding_dim]`` (or ``[B, out_features]``).

    ``Linear(in, hidden) - ReLU - Linear(hidden, embedding_dim)``, with ``Dropout(dropout)`` before the second
    linear layer when ``dropout > 0``; with a head, ``ReLU - Linear(embedding_dim, out_features)`` follows.
    """

    def __init__(self, in_features: int, hidden: int = 1024, embedding_dim: int = 512, out_features: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        for name, value in (("in_features", in_features), ("hidden", hidden), ("embedding_dim", embedding_dim)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        hidden_layers = [nn.Linear(in_features, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        self.body = nn.Sequential(*hidden_layers, nn.Linear(hidden, embedding_dim))
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embedding_dim, out_features)) if out_features else None
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        return self.head(z) if self.head is not None else z


def unpack_graphs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed graphs ``x [B, L]`` (:meth:`fewshot.datasets.featurize.GraphFeatures.rows`) as one disjoint graph.

    Returns ``atoms [n, Fa]`` (categorical atom features), ``source [e]`` and ``target [e]`` (global atom
    indices of the directed bonds), ``bonds [e, Fb]`` (categorical bond features) and ``graph [n]`` (the
    row each atom belongs to).
    """
    x = x.long()
    b = x.shape[0]
    n_atoms, n_bonds = x[:, 0], x[:, 1]
    a_max, e_max = int(x[0, 2]), int(x[0, 3])
    fa, fb = len(ATOM_FIELDS), 2 + len(BOND_FIELDS)
    if x.shape[1] != 4 + a_max * fa + e_max * fb:
        raise ValueError(f"packed graphs of {a_max} atoms and {e_max} bonds need rows of {4 + a_max * fa + e_max * fb} "
                         f"entries, got {x.shape[1]}: pass GraphFeatures.rows() output")
    atom_slots = x[:, 4:4 + a_max * fa].reshape(b, a_max, fa)
    bond_slots = x[:, 4 + a_max * fa:].reshape(b, e_max, fb)
    atoms = atom_slots[torch.arange(a_max).unsqueeze(0) < n_atoms.unsqueeze(1)]
    bond_mask = torch.arange(e_max).unsqueeze(0) < n_bonds.unsqueeze(1)
    bonds = bond_slots[bond_mask]
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    bond_offsets = offsets.unsqueeze(1).expand(-1, e_max)[bond_mask]
    graph = torch.repeat_interleave(torch.arange(b), n_atoms)
    return atoms, bonds[:, 0] + bond_offsets, bonds[:, 1] + bond_offsets, bonds[:, 2:], graph


class GraphNet(nn.Module):
    """A message-passing network over packed molecular graphs: ``x [B, L]`` -> ``[B, embedding_dim]``.

    Atoms start as the sum of one embedding per categorical feature. Each of ``layers`` rounds
    (GINE-style, Hu et al. 2020) sends ``ReLU(h_source + e_bond)`` along every directed bond, sums
    the messages at the target with ``index_add`` and updates ``h <- h + MLP(h + messages)``.
    The readout concatenates the mean and the sum (scaled by 1/10) of the atom states of each
    molecule and maps them linearly to ``embedding_dim``. Plain torch: no graph library.
    """

    def __init__(self, hidden: int = 128, layers: int = 3, embedding_dim: int = 128, out_features: int | None = None):
        super().__init__()
        if not (isinstance(layers, int) and layers >= 1):
            raise ValueError(f"layers must be an integer >= 1, got {layers!r}")
        self.atom_embeddings = nn.ModuleList(nn.Embedding(n, hidden) for _, n in ATOM_FIELDS)
        self.bond_embeddings = nn.ModuleList(
            nn.ModuleList(nn.Embedding(n, hidden) for _, n in BOND_FIELDS) for _ in range(layers))
        self.updates = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)) for _ in range(layers))
        self.readout = nn.Linear(2 * hidden, embedding_dim)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(embedding_dim, out_features)) if out_features else None
        self.embedding_dim = embedding_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        atoms, source, target, bonds, graph = unpack_graphs(x)
        h = sum(emb(atoms[:, i]) for i, emb in enumerate(self.atom_embeddings))
        for bond_embeddings, update in zip(self.bond_embeddings, self.updates):
            e = sum(emb(bonds[:, i]) for i, emb in enumerate(bond_embeddings))
            messages = torch.zeros_like(h).index_add(0, target, torch.relu(h[source] + e))
            h = h + update(h + messages)
        count = torch.bincount(graph, minlength=x.shape[0]).clamp(min=1).unsqueeze(1).to(h.dtype)
        total = torch.zeros(x.shape[0], h.shape[1], dtype=h.dtype).index_add(0, graph, h)
        z = self.readout(torch.cat([total / count, total / 10], dim=1))
        return self.head(z) if self.head is not None else z


@dataclass
class FingerprintOptions:
    """The ``model`` section of an ``fp-mlp`` run; ``input_dim`` (the feature width) is filled in from the data."""

    hidden: int = 1024
    embedding_dim: int = 512
    dropout: float = 0.0
    input_dim: int | None = None

    def validate(self) -> None:
        for name in ("hidden", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1) and applies to net fp-mlp only, got {self.dropout} "
                             "with net fp-mlp")


@dataclass
class GraphOptions:
    """The ``model`` section of a ``graph`` run."""

    hidden: int = 1024
    embedding_dim: int = 512
    graph_layers: int = 3

    def validate(self) -> None:
        for name in ("hidden", "embedding_dim", "graph_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@register_net("fp-mlp", options=FingerprintOptions)
def _build_fingerprint_mlp(options: FingerprintOptions, input_shape: tuple[int, ...],
                           out_features: int | None) -> FingerprintMLP:
    return FingerprintMLP(input_shape[0], options.hidden, options.embedding_dim, out_features, options.dropout)


@register_net("graph", options=GraphOptions)
def _build_graph_net(options: GraphOptions, input_shape: tuple[int, ...], out_features: int | None) -> GraphNet:
    return GraphNet(options.hidden, options.graph_layers, options.embedding_dim, out_features)
