"""TransIP: a plain Transformer over atoms that learns equivariance through training.

After "Learning Inter-Atomic Potentials without Explicit Equivariance" (Elhag et al., 2025).
What is ours (the paper leaves it open or we chose differently) is marked "(ours)".

- Tokens are atoms: an element embedding. Geometry enters only through edges within the
  cutoff (graph from the data pipeline), so cost scales with edges, not N^2: every layer is
  neighbour-restricted multi-head attention whose keys and values are modulated by an edge
  embedding of the RAW Cartesian edge vector (Bessel radial basis, unit direction and its
  outer product, all times the cutoff envelope). Nothing is rotation-invariant by
  construction; translation and permutation invariance are exact (relative vectors, sums).
- Smooth locality (ours): attention weights are u_ij exp(s_ij) / (1 + sum_k u_ik exp(s_ik)),
  u the cutoff envelope, so an atom entering or leaving the cutoff changes energies
  continuously and a lone atom receives nothing.
- The last hidden state is projected (learned linear map) onto an equivariant-typed
  embedding Z of shape (N, C, (L+1)^2) in the SH layout of :mod:`mlip.ops.sh`. The energy is
  read from Z's l = 0 block. The learned-equivariance objective (in the training module)
  asks Z(R x) = Z(x) D(R)^T: the "learned transformation conditioned on R" of the paper is
  realised as the fixed Wigner-D action on a learned projection (ours).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from mlip.backbones.base import ActiveSets, Backbone, BackboneOutputs, pad_rows
from mlip.data import keys
from mlip.ops.mlp import MLP
from mlip.ops.radial import BesselBasis, PolynomialCutoff
from mlip.ops.scatter import scatter_sum
from mlip.ops.sh import num_components


def edge_geometry(vectors: torch.Tensor, basis: BesselBasis, envelope: PolynomialCutoff) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw (non-invariant) edge features and envelope.

    Returns:
        features (E, num_radial + 3 + 6) and envelope u (E,).
    """
    r = vectors.norm(dim=-1).clamp(min=1e-9)
    u = envelope(r)
    unit = vectors / r.unsqueeze(-1)
    outer = torch.stack([unit[:, a] * unit[:, b] for a, b in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))], dim=-1)
    feats = torch.cat([basis(r), unit, outer], dim=-1) * u.unsqueeze(-1)
    return feats, u


class EdgeAttention(nn.Module):
    """Neighbour-restricted multi-head attention with edge-modulated keys and values."""

    def __init__(self, width: int, heads: int, edge_width: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.head_dim = heads, width // heads
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.edge_k = nn.Linear(edge_width, width, bias=False)
        self.edge_v = nn.Linear(edge_width, width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def forward(self, h: torch.Tensor, edge: torch.Tensor, u: torch.Tensor,
                sender: torch.Tensor, receiver: torch.Tensor,
                nodes: torch.Tensor | None = None) -> torch.Tensor:
        """Attention outputs of the nodes ``nodes`` (default all; the first nodes of the
        graph) from the edges given (their receivers are among those nodes)."""
        n = h.shape[0] if nodes is None else nodes.shape[0]
        e = sender.shape[0]
        shape = (e, self.heads, self.head_dim)
        q = self.q(h if nodes is None else h.index_select(0, nodes))[receiver].view(shape)
        k = (self.k(h)[sender] + self.edge_k(edge)).view(shape)
        v = (self.v(h)[sender] * self.edge_v(edge)).view(shape)
        logits = (q * k).sum(-1) / math.sqrt(self.head_dim)  # (E, heads)
        shift = torch.zeros(n, self.heads, dtype=h.dtype, device=h.device)
        shift = shift.scatter_reduce(0, receiver.unsqueeze(-1).expand(-1, self.heads),
                                     logits.detach(), reduce="amax", include_self=True)
        weight = u.unsqueeze(-1) * torch.exp(logits - shift[receiver])
        denom = torch.exp(-shift) + scatter_sum(weight, receiver, n)
        alpha = weight / denom[receiver]
        message = scatter_sum(alpha.unsqueeze(-1) * v, receiver, n).reshape(n, -1)
        return self.out(message)


class TransformerBlock(nn.Module):
    def __init__(self, width: int, heads: int, edge_width: int, ffn_factor: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = EdgeAttention(width, heads, edge_width)
        self.norm2 = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, ffn_factor * width), nn.SiLU(),
                                 nn.Linear(ffn_factor * width, width))

    def forward(self, h, edge, u, sender, receiver, nodes=None, edges=None):
        """``nodes``, ``edges``: the block's active sets (:mod:`mlip.backbones.base`)."""
        if nodes is None:
            h = h + self.attention(self.norm1(h), edge, u, sender, receiver)
            return h + self.ffn(self.norm2(h))
        update = self.attention(self.norm1(h), edge[edges], u[edges], sender[edges],
                                receiver[edges], nodes)
        h = h.index_select(0, nodes) + update
        return h + self.ffn(self.norm2(h))


class TransIPBackbone(Backbone):
    """Plain Transformer backbone with a learned-equivariance embedding head.

    Args:
        num_elements: element types S.
        cutoff: radial cutoff [Å].
        width: token width.
        depth: Transformer blocks.
        heads: attention heads.
        num_radial: Bessel functions in the edge features.
        edge_width: width of the edge embedding.
        embedding_channels: channels C of the equivariant-typed embedding Z.
        embedding_lmax: max degree L of Z.
        readout_hidden: hidden width of the energy readout on Z's scalars.
        direct_forces: also predict forces from Z's l = 1 block (one weight per channel),
            used instead of -dE/dr. NOT energy-conserving: MD drifts; stress still comes
            from the energy. Off by default.

    Outputs NODE_ENERGIES (N,), NODE_FEATURES (N, width), EQUIVARIANT_EMBEDDING, and
    DIRECT_FORCES with ``direct_forces``.
    """

    def __init__(
        self,
        num_elements: int,
        cutoff: float = 5.0,
        width: int = 128,
        depth: int = 4,
        heads: int = 4,
        num_radial: int = 8,
        edge_width: int = 64,
        embedding_channels: int = 16,
        embedding_lmax: int = 2,
        readout_hidden: int = 32,
        direct_forces: bool = False,
    ) -> None:
        super().__init__(num_elements, cutoff)
        if direct_forces and embedding_lmax < 1:
            raise ValueError("direct_forces needs embedding_lmax >= 1 (forces are read from l = 1)")
        self.width = width
        self.embedding_channels, self.embedding_lmax = embedding_channels, embedding_lmax
        self.element_embedding = nn.Embedding(num_elements, width)
        self.basis = BesselBasis(cutoff, num_radial)
        self.envelope = PolynomialCutoff(cutoff)
        self.edge_mlp = MLP((num_radial + 9, edge_width, edge_width))
        self.blocks = nn.ModuleList(
            [TransformerBlock(width, heads, edge_width) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(width)
        self.project = nn.Linear(width, embedding_channels * num_components(embedding_lmax))
        self.readout = MLP((embedding_channels, readout_hidden, 1))
        self.force_head = nn.Linear(embedding_channels, 1, bias=False) if direct_forces else None
        # Ghost-atom exchange of a domain-decomposed MD engine (LAMMPS ML-IAP): maps the
        # (N, width) hidden states between blocks to the same states with every ghost
        # atom's rows replaced by its owner's. None (the default): nothing happens.
        self.exchange: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def outputs(self) -> BackboneOutputs:
        return BackboneOutputs(node_features=self.width, embedding_lmax=self.embedding_lmax,
                               embedding_channels=self.embedding_channels,
                               direct_forces=self.force_head is not None,
                               readout_features=self.readout.weights[-1].shape[0])

    @property
    def message_passing_hops(self) -> int:
        return len(self.blocks)

    def forward(self, data: dict[str, torch.Tensor], active: ActiveSets | None = None
                ) -> dict[str, torch.Tensor]:
        species = data[keys.SPECIES]
        sender, receiver = data[keys.EDGE_INDEX][0], data[keys.EDGE_INDEX][1]
        vectors = data[keys.EDGE_VECTORS]
        edge_raw, u = edge_geometry(vectors, self.basis, self.envelope)
        if keys.EDGE_WEIGHTS in data:
            w = data[keys.EDGE_WEIGHTS]
            edge_raw, u = edge_raw * w.unsqueeze(-1), u * w
        edge = self.edge_mlp(edge_raw)
        h = self.element_embedding(species).to(vectors.dtype)
        for t, block in enumerate(self.blocks):
            if t > 0 and self.exchange is not None:  # the next block reads the ghosts' states
                h = self.exchange(h)
            nodes, edges = active[t] if active is not None else (None, None)
            h = block(h, edge, u, sender, receiver, nodes, edges)
        if active is not None:
            h = pad_rows(h, active[-1][0], species.shape[0])
        h = self.norm(h)
        z = self.project(h).view(-1, self.embedding_channels, num_components(self.embedding_lmax))
        energy, g = self.readout.forward_with_features(z[:, :, 0])
        out = {keys.NODE_ENERGIES: energy.squeeze(-1), keys.NODE_FEATURES: h,
               keys.EQUIVARIANT_EMBEDDING: z, keys.READOUT_FEATURES: g}
        if self.force_head is not None:
            # l = 1 components are (x, y, z) in this SH layout.
            out[keys.DIRECT_FORCES] = self.force_head(z[:, :, 1:4].transpose(1, 2)).squeeze(-1)
        return out
