"""The backbone protocol: what a backbone receives and what it may return.

A backbone maps the batch dict to per-atom energies (and optionally features); everything
physical around it (E0s, scale/shift, forces and stress by autograd) is the Potential's
(STYLE habit 3). The Potential reads only :attr:`Backbone.outputs`, never a backbone's name.

Receives (``forward(data)``), see :mod:`mlip.data.keys`:
    SPECIES (N,) int64 element index, EDGE_INDEX (2, E), EDGE_VECTORS (E, 3) [Å] (recomputed
    by the Potential from positions, so forces and stress flow through them), BATCH (N,),
    and the rest of the batch. Edges are the cutoff graph; never build another one.
    Optional EDGE_WEIGHTS (E,) in [0, 1]: multiply them into the cutoff envelope, so an edge
    of weight 0 contributes nothing (the Potential fades edges out of the learned part
    inside the ZBL core, far inside bonds, where no training data lies).

Returns a dict with:
    NODE_ENERGIES (N,): required, per-atom energies before scale/shift (the model dtype).
    NODE_FEATURES (N, F): optional invariant features (``outputs.node_features = F``).
    EQUIVARIANT_EMBEDDING (N, C, (L+1)^2): optional, in the SH layout of :mod:`mlip.ops.sh`
        (``outputs.embedding_lmax = L``, ``outputs.embedding_channels = C``); what a
        learned-equivariance objective acts on.
    READOUT_FEATURES (N, P): optional, the inputs of the readouts' last linear maps, so that
        NODE_ENERGIES = READOUT_FEATURES @ W for the stacked last weights W (P, heads)
        (``outputs.readout_features = P``); what a last-layer uncertainty estimate reads
        (:mod:`mlip.model.uncertainty`).
    DIRECT_FORCES (N, 3): optional force head in units of the model's scale
        (``outputs.direct_forces = True``); the Potential then uses it instead of -dE/dr,
        which is NOT energy-conserving.

Optional ``active`` (``forward(data, active)``), for a domain-decomposed MD engine (the
LAMMPS plugin): one ``(nodes, edges)`` pair of int64 tensors per message-passing layer.
Layer t must compute outputs only for the nodes ``nodes`` (the first ``nodes.shape[0]``
nodes, ``nodes = arange(n_t)``; the graph orders its nodes so that those are the ones still
needed) and may use only the edges ``edges`` (all of whose receivers are among those nodes,
and whose senders are among the nodes layer t - 1 computed). Select with index operations
(``index_select``, ``index_copy``), not slices, so a traced graph assumes no order between
the sizes. NODE_ENERGIES keeps N rows; rows beyond the
last layer's nodes are then not meaningful. Without ``active`` every layer computes every
node.

A lone atom (no edges) must give a finite energy; the Potential subtracts it so that an
isolated atom has exactly E0. Constructor arguments the builder injects from data when
the signature accepts them: ``num_elements``, ``cutoff``, ``avg_num_neighbors``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from mlip.ops.radial_table import RadialTable

EdgeWeight = Callable[[torch.Tensor, int, int], torch.Tensor]
ActiveSets = list[tuple[torch.Tensor, torch.Tensor]]


def pad_rows(x: torch.Tensor, nodes: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, ...) zeros with ``x`` in the rows ``nodes`` (a layer with active sets computes
    fewer rows than the graph has nodes). Index operations, not slices, so that a traced
    graph assumes no order between the sizes."""
    return x.new_zeros((rows, *x.shape[1:])).index_copy(0, nodes, x)
SwitchRadii = Callable[[int, int], tuple[float, float]]


@dataclass(frozen=True)
class BackboneOutputs:
    """What a backbone returns besides NODE_ENERGIES.

    Attributes:
        node_features: width F of NODE_FEATURES, or None.
        embedding_lmax: degree L of EQUIVARIANT_EMBEDDING, or None when there is none.
        embedding_channels: channels C of EQUIVARIANT_EMBEDDING, or None when there is none.
        direct_forces: whether DIRECT_FORCES is returned (and used instead of -dE/dr).
        num_heads: readout heads: NODE_ENERGIES is (N,) for one, (N, num_heads) for more.
        readout_features: width P of READOUT_FEATURES, or None when there are none.
    """

    node_features: int | None = None
    embedding_lmax: int | None = None
    embedding_channels: int | None = None
    direct_forces: bool = False
    num_heads: int = 1
    readout_features: int | None = None


class Backbone(nn.Module):
    """Base class of every backbone (see the module docstring for the protocol).

    Args:
        num_elements: element types S (species indices 0..S-1).
        cutoff: radial cutoff [Å].
    """

    def __init__(self, num_elements: int, cutoff: float) -> None:
        super().__init__()
        self.num_elements = int(num_elements)
        self.cutoff = float(cutoff)

    @property
    def outputs(self) -> BackboneOutputs:
        """The declaration the Potential reads. Override when returning more."""
        return BackboneOutputs()

    def head_parameters(self) -> list[str]:
        """Parameters whose last dimension is the readout head (a backbone built with
        ``num_heads`` > 1 returns NODE_ENERGIES (N, H)): one column per head, so a single-head
        model is the column of one head (:func:`mlip.model.heads.select_head`). Empty for a
        backbone without heads (the default)."""
        return []

    @property
    def message_passing_hops(self) -> int:
        """How many cutoff spheres an atom's energy reaches: its energy depends on atoms up
        to ``hops * cutoff`` away (the ghost shell a domain-decomposed MD engine needs)."""
        raise NotImplementedError(f"{type(self).__name__} does not declare message_passing_hops")

    def tabulate_radial(self, spacing: float, edge_weight: EdgeWeight | None = None,
                        switch: SwitchRadii | None = None) -> RadialTable | None:
        """For inference: the per-edge radial networks as a
        :class:`~mlip.ops.radial_table.RadialTable` of the same function, or None where the
        backbone has no such form (the default). A backbone that returns one uses it once it
        is assigned to its ``radial_table`` attribute (see :meth:`Potential.tabulate_radial`).

        Args:
            spacing: longest node interval [Å].
            edge_weight: ``(r, a, b) -> (M,)`` the EDGE_WEIGHTS the Potential would pass for
                lengths r between species a and b (float64), or None (all one).
            switch: ``(a, b) -> (r_on, r_off)``: where edge_weight has its kinks (0 below
                r_on), or None.
        """
        return None

    def forward(self, data: dict[str, torch.Tensor], active: ActiveSets | None = None
                ) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
