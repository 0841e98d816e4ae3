"""Screened nuclear repulsion (Ziegler-Biersack-Littmark), switched off well inside bonds.

E_ij(r) = k Z_i Z_j / r * phi(r / a_ij) * s(r),   a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23),

with k = e^2 / (4 pi eps0) = 14.399645 eV Å, phi the ZBL universal screening function
(four exponentials) and s a C2 switch that is 1 below r_on and 0 above r_off. The same
switch fades the pair out of the learned part (edge weight 1 - s, see
:meth:`ZBLRepulsion.learned_weights`): below r_on the energy of a pair is ZBL alone, above
r_off the learned part alone. Per-atom energies are half of each pair's.

r_on and r_off are fractions of a reference distance per element pair. Training configs
default to ``model.repulsion: {inner: 0.5, outer: 0.85, reference: data}``: d_ref is the
shortest distance of the pair in the training split (the cutoff for pairs never within
it), so no training edge is touched (training is unchanged bit for bit) and the learned
part is used only where it was trained. Why the learned part must go too: unconstrained,
the many-body products of a MACE-like body extrapolate radial features far outside the data
to 1e4-1e10 eV (either sign) below ~0.5 Å, which no wall outweighs. ``reference:
covalent`` (the class default, inner 0.35 / outer 0.6) uses covalent-radius sums instead;
``model.repulsion: null`` turns the core off.
"""

from __future__ import annotations

import torch
from torch import nn

from mlip.ops.scatter import scatter_sum

COULOMB_EV_A = 14.399645  # e^2 / (4 pi eps0) [eV Å]
_PHI = ((0.18175, 3.19980), (0.50986, 0.94229), (0.28022, 0.40290), (0.02817, 0.20162))


def zbl_pair_energy(r: torch.Tensor, zi: torch.Tensor, zj: torch.Tensor) -> torch.Tensor:
    """Unswitched ZBL energy [eV] of pairs at distance r [Å] with atomic numbers zi, zj."""
    zi, zj = zi.to(r.dtype), zj.to(r.dtype)
    a = 0.46850 / (zi.pow(0.23) + zj.pow(0.23))
    x = r / a
    phi = sum(c * torch.exp(-d * x) for c, d in _PHI)
    return COULOMB_EV_A * zi * zj / r * phi


def smooth_switch(r: torch.Tensor, r_on: torch.Tensor, r_off: torch.Tensor) -> torch.Tensor:
    """1 for r <= r_on, 0 for r >= r_off, 1 - (10 t^3 - 15 t^4 + 6 t^5) between (C2)."""
    t = ((r - r_on) / (r_off - r_on)).clamp(0.0, 1.0)
    return 1.0 - t * t * t * (10.0 - 15.0 * t + 6.0 * t * t)


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL repulsion energies from the model's edges, and the complementary weight
    that fades the learned part out of the same core.

    The switch radii of a pair are fractions of a reference distance d_ref: by default the
    pair's covalent-radius sum; training sets them from the data (``reference: data``, the
    default there): the shortest distance of that element pair in the training split, or
    the cutoff for pairs the data never brings within it. So the core is always where no
    training data lies, and the learned part is trusted only where it was trained.

    Args:
        atomic_numbers: the model's elements in species order.
        inner: r_on as a fraction of d_ref (pure ZBL, no learned pair below it).
        outer: r_off as the same fraction (must be larger; pure learned part above it).
        reference: ``"covalent"`` or ``"data"`` (recorded; the distances come from
            :meth:`set_reference`, and travel with the state dict).
    """

    def __init__(self, atomic_numbers: list[int], inner: float = 0.35, outer: float = 0.6,
                 reference: str = "covalent") -> None:
        super().__init__()
        if not 0 <= inner < outer:
            raise ValueError(f"repulsion: need 0 <= inner < outer, got {inner}, {outer}")
        if reference not in ("covalent", "data"):
            raise ValueError(f"repulsion.reference must be covalent or data, got {reference!r}")
        from ase.data import covalent_radii

        self.inner, self.outer, self.reference = float(inner), float(outer), reference
        self.register_buffer("z", torch.tensor(atomic_numbers, dtype=torch.long), persistent=False)
        radius = torch.tensor([float(covalent_radii[z]) for z in atomic_numbers], dtype=torch.float64)
        self.register_buffer("d_ref", radius[:, None] + radius[None, :])  # (S, S) [Å], persistent
        # "data": unusable until set_reference() or a state dict provides the distances
        self.reference_set = reference == "covalent"
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "reference_set", True))

    def set_reference(self, distances: dict[tuple[int, int], float], cutoff: float) -> None:
        """Reference distances from data: (Z_a, Z_b) -> shortest distance [Å]; pairs not
        listed get ``cutoff``."""
        zs = self.z.tolist()
        d = torch.full_like(self.d_ref, float(cutoff))
        for a, za in enumerate(zs):
            for b, zb in enumerate(zs):
                key = (min(za, zb), max(za, zb))
                if key in distances:
                    d[a, b] = float(distances[key])
        self.d_ref.copy_(d)
        self.reference_set = True

    def pair_radii(self, a: int, b: int) -> tuple[float, float]:
        """(r_on, r_off) [Å] of the pair of species indices a, b."""
        species = torch.tensor([a, b], device=self.d_ref.device)
        edge_index = torch.tensor([[0], [1]], device=self.d_ref.device)
        r_on, r_off = self._radii(species, edge_index, self.d_ref)
        return float(r_on[0]), float(r_off[0])

    def _radii(self, species: torch.Tensor, edge_index: torch.Tensor, like: torch.Tensor):
        if not self.reference_set:
            raise RuntimeError(
                "model.repulsion has reference 'data' but no reference distances: call "
                "potential.repulsion.set_reference(mlip.graph.stats closest pairs of the training "
                "data, cutoff) (training does this), or use reference 'covalent'"
            )
        d = self.d_ref[species[edge_index[1]], species[edge_index[0]]].to(like.dtype)
        return self.inner * d, self.outer * d

    def learned_weights(self, lengths: torch.Tensor, species: torch.Tensor,
                        edge_index: torch.Tensor) -> torch.Tensor:
        """(E,) weight of each edge in the learned part: 1 - s(r), the complement of the
        ZBL switch (0 below r_on, 1 above r_off). Inside the core the learned part does not
        see the pair at all, so its unconstrained extrapolation (many-body products of
        radial features far outside the data reach 1e10 eV at 0.2 Å) cannot overwhelm
        the wall."""
        r_on, r_off = self._radii(species, edge_index, lengths)
        return 1.0 - smooth_switch(lengths, r_on, r_off)

    def settings(self) -> dict:
        """The constructor arguments (what a model file's config records)."""
        return {"inner": self.inner, "outer": self.outer, "reference": self.reference}

    def extra_repr(self) -> str:
        return f"inner={self.inner}, outer={self.outer}, reference={self.reference}"

    def forward(self, lengths: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                num_atoms: int) -> torch.Tensor:
        """(N,) per-atom repulsion [eV] from edge lengths (E,) [Å] (directed edges: half each)."""
        si, sj = species[edge_index[1]], species[edge_index[0]]
        r_on, r_off = self._radii(species, edge_index, lengths)
        close = lengths < r_off
        r = torch.where(close, lengths, r_off)  # keeps the far branch finite
        pair = zbl_pair_energy(r, self.z[si], self.z[sj]) * smooth_switch(r, r_on, r_off)
        pair = torch.where(close, pair, torch.zeros_like(pair))
        return 0.5 * scatter_sum(pair, edge_index[1], num_atoms)
