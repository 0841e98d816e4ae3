"""Equivariant message passing on a pluggable tensor product (MACE-like).

Per layer: linear up-projection of node features; edge message = TP(sender features,
edge SH) weighted per edge and channel by a radial MLP; sum over neighbours divided by the
average neighbour count; a body-order product of the aggregated features with itself
(correlation order 1..3, element-dependent weights, same TP protocol); linear update with
an element-dependent residual; per-layer readout of the invariant channels.

The same skeleton serves the CG, Gaunt and CP backbones: only ``tensor_product`` changes.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from mlip.backbones.base import (
    ActiveSets,
    Backbone,
    BackboneOutputs,
    EdgeWeight,
    SwitchRadii,
    pad_rows,
)
from mlip.data import keys
from mlip.ops.linear import DegreeLinear, ElementDegreeLinear
from mlip.ops.mlp import MLP
from mlip.ops.radial import RadialEmbedding
from mlip.ops.radial_table import RadialTable
from mlip.ops.scatter import scatter_sum
from mlip.ops.sh import num_components, per_component, spherical_harmonics
from mlip.ops.tp import TensorProduct, resolve_tensor_product
from mlip.ops.tp.base import shared_product


def _pad_or_truncate(x: torch.Tensor, lmax: int) -> torch.Tensor:
    d = num_components(lmax)
    if x.shape[-1] >= d:
        return x[..., :d]
    return torch.nn.functional.pad(x, (0, d - x.shape[-1]))


class ProductBlock(nn.Module):
    """Body-order product B = sum_nu B_nu, B_1 = w_1[z] * A, B_nu = TP(B_{nu-1}, A; W_nu[z]).

    Shapes: A (N, C, (lmax_in+1)^2), onehot (N, S) -> (N, C, (lmax_out+1)^2).
    """

    def __init__(
        self,
        lmax_in: int,
        lmax_out: int,
        channels: int,
        correlation: int,
        num_elements: int,
        tp_cls: type[TensorProduct],
        tp_args: dict,
    ) -> None:
        super().__init__()
        self.lmax_out = lmax_out
        self.w1 = nn.Parameter(torch.ones(num_elements, channels, lmax_in + 1))
        self.register_buffer(
            "degree", torch.repeat_interleave(torch.arange(lmax_in + 1), torch.arange(lmax_in + 1) * 2 + 1),
            persistent=False,
        )
        self.tps = nn.ModuleList()
        self.weights = nn.ParameterList()
        for nu in range(2, correlation + 1):
            out = lmax_in if nu < correlation else lmax_out
            tp = tp_cls(lmax_in, lmax_in, out, **tp_args)
            self.tps.append(tp)
            self.weights.append(
                nn.Parameter(torch.randn(num_elements, channels, tp.weight_numel) / nu)
            )

    def forward(self, a: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        b = a * per_component((onehot @ self.w1.flatten(1)).view(a.shape[0], a.shape[1], -1), self.degree)
        total = _pad_or_truncate(b, self.lmax_out)
        for tp, w in zip(self.tps, self.weights, strict=True):
            weight = (onehot @ w.flatten(1)).view(a.shape[0], a.shape[1], -1)
            b = tp(b, a, weight)
            total = total + _pad_or_truncate(b, self.lmax_out)
        return total


class InteractionLayer(nn.Module):
    """One message-passing layer: (N, C, D_in) node features -> (N, C, D_out)."""

    def __init__(
        self,
        lmax_in: int,
        lmax_sh: int,
        lmax_out: int,
        channels: int,
        num_elements: int,
        num_radial: int,
        radial_hidden: int,
        correlation: int,
        tp_cls: type[TensorProduct],
        tp_args: dict,
    ) -> None:
        super().__init__()
        self.lmax_in, self.lmax_sh, self.lmax_out = lmax_in, lmax_sh, lmax_out
        self.channels = channels
        self.linear_up = DegreeLinear(lmax_in, channels, channels)
        self.message_tp = tp_cls(lmax_in, lmax_sh, lmax_sh, **tp_args)
        self.radial = MLP(
            (num_radial, radial_hidden, radial_hidden, radial_hidden, channels * self.message_tp.weight_numel)
        )
        self.linear_message = DegreeLinear(lmax_sh, channels, channels)
        self.product = ProductBlock(lmax_sh, lmax_out, channels, correlation, num_elements, tp_cls, tp_args)
        self.linear_out = DegreeLinear(lmax_out, channels, channels)
        self.skip = ElementDegreeLinear(min(lmax_in, lmax_out), channels, channels, num_elements)

    def radial_output(self, edge_radial: torch.Tensor, channel_last: bool) -> torch.Tensor:
        """(E, C W) per-edge weights of the message product from the radial features
        (E, num_radial): W-major (channel-last) or C-major, as ``forward`` reads them."""
        if channel_last:
            return self.radial(edge_radial, output_shape=(self.channels, self.message_tp.weight_numel))
        return self.radial(edge_radial)

    def channel_last(self, like: torch.Tensor) -> bool:
        """Whether ``forward`` takes the channel-last message path (the product has the
        shared-operand form)."""
        sh = like.new_zeros(1, (self.lmax_sh + 1) ** 2)
        return self.message_tp.shared_operand_factors(sh) is not None

    def forward(
        self,
        h: torch.Tensor,
        onehot: torch.Tensor,
        edge_sh: torch.Tensor,
        edge_radial: torch.Tensor | None,
        sender: torch.Tensor,
        receiver: torch.Tensor,
        inv_avg_neighbors: torch.Tensor,
        radial_out: torch.Tensor | None = None,
        nodes: torch.Tensor | None = None,
        edges: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``edge_radial`` covers the first half of the edges (in mirrored order, edge
        H + k is edge k reversed, same length; see :mod:`mlip.data.keys`). ``radial_out``: the radial
        network's output (:meth:`radial_output`) for those edges when already computed (a
        tabulated network); ``edge_radial`` is then not used. ``nodes``, ``edges``: the
        layer's active sets (:mod:`mlip.backbones.base`): outputs for the first
        ``nodes.shape[0]`` nodes, from the edges ``edges`` only."""
        n = h.shape[0] if nodes is None else nodes.shape[0]
        c, w = h.shape[1], self.message_tp.weight_numel
        h_up = self.linear_up(h)
        if edges is not None:
            edge_sh, sender, receiver = edge_sh[edges], sender[edges], receiver[edges]
        factors = self.message_tp.shared_operand_factors(edge_sh)
        if radial_out is None:
            radial_out = self.radial_output(edge_radial, channel_last=factors is not None)
        if factors is not None:
            # Per-edge work channel-last, (E, D, C): the weights come out of the radial MLP
            # as (E, W, C), sender features are gathered as (E, D1, C) rows.
            weight = radial_out.view(-1, w, c)
            weight = torch.cat([weight, weight])
            if edges is not None:
                weight = weight[edges]
            x = h_up.transpose(1, 2).contiguous()[sender]
            message = shared_product(x, weight, factors)
            a = scatter_sum(message, receiver, n).transpose(1, 2)
        else:
            weight = radial_out.view(-1, c, w)
            weight = torch.cat([weight, weight])
            if edges is not None:
                weight = weight[edges]
            message = self.message_tp(h_up[sender], edge_sh.unsqueeze(1), weight)
            a = scatter_sum(message, receiver, n)
        if nodes is not None:
            h, onehot = h.index_select(0, nodes), onehot.index_select(0, nodes)
        a = self.linear_message(a * inv_avg_neighbors)
        b = self.product(a, onehot)
        residual = self.skip(_pad_or_truncate(h, self.skip.lmax), onehot)
        return self.linear_out(b) + _pad_or_truncate(residual, self.lmax_out)


class EquivariantBackbone(Backbone):
    """MACE-like equivariant backbone on a pluggable tensor product.

    Args:
        num_elements: number of element types the model knows (species indices 0..S-1).
        cutoff: radial cutoff r_c [Å].
        channels: channels per degree C.
        lmax_hidden: maximum degree of node features between layers.
        lmax_sh: maximum degree of edge spherical harmonics and messages.
        correlation: body-order of the product step (1..3 or more).
        num_layers: message-passing layers.
        num_radial: Bessel functions.
        radial_hidden: width of the radial MLP (3 hidden layers).
        readout_hidden: width of the last layer's nonlinear readout.
        polynomial_p: smoothness exponent of the cutoff envelope.
        avg_num_neighbors: neighbour-sum normaliser (a dataset statistic).
        tensor_product: class path of the TensorProduct implementation, or a short name
            (cg, gaunt-grid, gaunt-fourier, cp; see :func:`mlip.ops.tp.short_names`).
        tensor_product_args: extra keyword arguments for it.
        num_heads: readout heads (one per level of theory; the last weight of every
            readout has one column per head).

    Input batch keys: SPECIES, EDGE_INDEX, EDGE_VECTORS. Output: NODE_ENERGIES (N,), or
    (N, num_heads) with several heads, NODE_FEATURES (N, C) invariant last-layer features.
    """

    def __init__(
        self,
        num_elements: int,
        cutoff: float = 5.0,
        channels: int = 32,
        lmax_hidden: int = 1,
        lmax_sh: int = 2,
        correlation: int = 3,
        num_layers: int = 2,
        num_radial: int = 8,
        radial_hidden: int = 64,
        readout_hidden: int = 16,
        polynomial_p: int = 6,
        avg_num_neighbors: float = 1.0,
        tensor_product: str = "mlip.ops.tp.cg.CGTensorProduct",
        tensor_product_args: dict | None = None,
        num_heads: int = 1,
    ) -> None:
        super().__init__(num_elements, cutoff)
        if num_layers < 1 or correlation < 1:
            raise ValueError("num_layers and correlation must be >= 1")
        tp_cls = resolve_tensor_product(tensor_product)
        tp_args = dict(tensor_product_args or {})
        self.channels = channels
        self.lmax_sh = lmax_sh
        self.num_heads = int(num_heads)
        self.register_buffer("inv_avg_neighbors", torch.tensor(1.0 / avg_num_neighbors))
        self.embedding = nn.Parameter(torch.randn(num_elements, channels))
        self.radial_embedding = RadialEmbedding(cutoff, num_radial, polynomial_p)
        self.layers = nn.ModuleList()
        self.readouts = nn.ModuleList()
        lmax_in = 0
        for t in range(num_layers):
            last = t == num_layers - 1
            lmax_out = 0 if last else lmax_hidden
            self.layers.append(
                InteractionLayer(
                    lmax_in, lmax_sh, lmax_out, channels, num_elements, num_radial,
                    radial_hidden, correlation, tp_cls, tp_args,
                )
            )
            heads = self.num_heads
            self.readouts.append(MLP((channels, readout_hidden, heads)) if last else MLP((channels, heads)))
            lmax_in = lmax_out
        self.radial_table: RadialTable | None = None  # set by tabulate_radial (inference)
        # Ghost-atom exchange of a domain-decomposed MD engine (LAMMPS ML-IAP): maps the
        # (N, C, D) node features between layers to the same features with every ghost
        # atom's rows replaced by its owner's. None (the default): nothing happens.
        self.exchange: Callable[[torch.Tensor], torch.Tensor] | None = None

    def tabulate_radial(self, spacing: float, edge_weight: EdgeWeight | None = None,
                        switch: SwitchRadii | None = None) -> RadialTable:
        """Every layer's radial network (embedding, EDGE_WEIGHTS, MLP) per species pair as
        one :class:`RadialTable` (see :meth:`Backbone.tabulate_radial`). Assigned to
        ``radial_table``, ``forward`` reads it and ignores EDGE_WEIGHTS; for inference (the
        table has no trainable parameters)."""
        ref = copy.deepcopy(self).double().cpu()  # built in float64 on the CPU
        ref.radial_table = None
        like = torch.zeros((), dtype=torch.float64)
        layouts = [layer.channel_last(like) for layer in ref.layers]

        def radial(r: torch.Tensor, a: int, b: int) -> torch.Tensor:
            e = ref.radial_embedding(r)
            if edge_weight is not None:
                e = e * edge_weight(r, a, b).unsqueeze(-1)
            return torch.cat([layer.radial_output(e, cl) for layer, cl in zip(ref.layers, layouts, strict=True)], -1)

        param = next(self.parameters())
        return RadialTable.build(radial, self.embedding.shape[0], self.cutoff, spacing,
                                 switch or (lambda a, b: None), param.dtype, param.device)

    @property
    def outputs(self) -> BackboneOutputs:
        width = sum(r.weights[-1].shape[0] for r in self.readouts)
        return BackboneOutputs(node_features=self.channels, num_heads=self.num_heads,
                               readout_features=width)

    def head_parameters(self) -> list[str]:
        return [f"readouts.{t}.weights.{len(r.weights) - 1}" for t, r in enumerate(self.readouts)]

    @property
    def message_passing_hops(self) -> int:
        return len(self.layers)

    def forward(self, data: dict[str, torch.Tensor], active: ActiveSets | None = None
                ) -> dict[str, torch.Tensor]:
        species = data[keys.SPECIES]
        sender, receiver = data[keys.EDGE_INDEX][0], data[keys.EDGE_INDEX][1]
        vectors = data[keys.EDGE_VECTORS]
        lengths = vectors.norm(dim=-1)
        # one_hot's range check reads the species back to the host (two syncs per call on
        # the CPU); a comparison with arange is the same one-hot without it.
        elements = torch.arange(self.embedding.shape[0], device=species.device)
        onehot = (species.unsqueeze(-1) == elements).to(vectors.dtype)
        edge_sh = spherical_harmonics(vectors, self.lmax_sh)
        # Mirrored edges (an invariant of every batch, mlip.data.keys): the radial network,
        # the largest per-edge cost (an (E, 64) x (64, C W) product and its backward per
        # layer), runs on one direction of each pair; the layers copy it to the reverse edges.
        radial_edges = lengths.shape[0] // 2
        if self.radial_table is None:
            edge_radial = self.radial_embedding(lengths[:radial_edges])
            if keys.EDGE_WEIGHTS in data:  # the radial MLP is bias-free: weight 0, no message
                edge_radial = edge_radial * data[keys.EDGE_WEIGHTS][:radial_edges].unsqueeze(-1)
            radial_outs = [None] * len(self.layers)
        else:  # tabulated: every layer's radial output from one lookup
            edge_radial = None
            table = self.radial_table(lengths[:radial_edges], species[sender[:radial_edges]],
                                      species[receiver[:radial_edges]])
            sizes = [layer.channels * layer.message_tp.weight_numel for layer in self.layers]
            radial_outs = list(table.split(sizes, dim=-1))
        h = (onehot @ self.embedding).unsqueeze(-1)  # (N, C, 1)
        shape = (species.shape[0],) if self.num_heads == 1 else (species.shape[0], self.num_heads)
        energy = torch.zeros(shape, dtype=vectors.dtype, device=vectors.device)
        readout_features = []
        for t, (layer, readout, radial_out) in enumerate(zip(self.layers, self.readouts, radial_outs, strict=True)):
            if t > 0 and self.exchange is not None:  # the next layer reads the ghosts' features
                h = self.exchange(h)
            nodes, edges = active[t] if active is not None else (None, None)
            h = layer(h, onehot, edge_sh, edge_radial, sender, receiver, self.inv_avg_neighbors,
                      radial_out, nodes, edges)
            layer_energy, g = readout.forward_with_features(h[:, :, 0])
            readout_features.append(g if nodes is None else pad_rows(g, nodes, species.shape[0]))
            layer_energy = layer_energy.squeeze(-1) if self.num_heads == 1 else layer_energy
            energy = energy + layer_energy if nodes is None else energy.index_add(0, nodes, layer_energy)
        features = h[:, :, 0] if active is None else pad_rows(h[:, :, 0], nodes, species.shape[0])
        return {keys.NODE_ENERGIES: energy, keys.NODE_FEATURES: features,
                keys.READOUT_FEATURES: torch.cat(readout_features, dim=-1)}
