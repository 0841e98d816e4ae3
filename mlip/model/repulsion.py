"""Screened nuclear repulsion (Ziegler-Biersack-Littmark), switched off well inside bonds.

E_ij(r) = k Z_i Z_j / r * phi(r / a_ij) * s(r),   a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23),

with k = e^2 / (4 pi eps0) = 14.399645 eV Å, phi the ZBL universal screening function
(four exponentials) and s a C2 switch that is 1 below r_on and 0 above r_off, both
fractions of the pair's covalent-radius sum (ASE's ``covalent_radii``). With the defaults
(0.35 and 0.6) a C-H pair (1.07 Å sum) is repelled only below 0.64 Å, far inside the 1.09 Å
bond, so near-equilibrium data is untouched while atoms pushed together meet a physical
wall. Per-atom energies are half of each pair's, so the sum is the pair energy. Off by
default (issue 16 decides whether it becomes the default); enable with
``model.repulsion: {inner: 0.35, outer: 0.6}``.
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
    """Per-atom ZBL repulsion energies from the model's edges.

    Args:
        atomic_numbers: the model's elements in species order.
        inner: r_on as a fraction of the pair's covalent-radius sum.
        outer: r_off as the same fraction (must be larger; keep it below 1).
    """

    def __init__(self, atomic_numbers: list[int], inner: float = 0.35, outer: float = 0.6) -> None:
        super().__init__()
        if not 0 <= inner < outer:
            raise ValueError(f"repulsion: need 0 <= inner < outer, got {inner}, {outer}")
        from ase.data import covalent_radii

        self.inner, self.outer = float(inner), float(outer)
        self.register_buffer("z", torch.tensor(atomic_numbers, dtype=torch.long), persistent=False)
        self.register_buffer("radius", torch.tensor([float(covalent_radii[z]) for z in atomic_numbers]),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"inner={self.inner}, outer={self.outer}"

    def forward(self, lengths: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor,
                num_atoms: int) -> torch.Tensor:
        """(N,) per-atom repulsion [eV] from edge lengths (E,) [Å] (directed edges: half each)."""
        si, sj = species[edge_index[1]], species[edge_index[0]]
        rcov = (self.radius[si] + self.radius[sj]).to(lengths.dtype)
        r_off = self.outer * rcov
        close = lengths < r_off
        r = torch.where(close, lengths, r_off)  # keeps the far branch finite
        pair = zbl_pair_energy(r, self.z[si], self.z[sj]) * smooth_switch(r, self.inner * rcov, r_off)
        pair = torch.where(close, pair, torch.zeros_like(pair))
        return 0.5 * scatter_sum(pair, edge_index[1], num_atoms)
