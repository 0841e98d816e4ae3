"""The potential: E0 + scale/shift + backbone per-atom energies, with forces and stress.

E_i = E0[z_i] + scale * (b_i - b_iso[z_i]) + shift * n_i / n_avg,   E = sum_i E_i,

where b_i is the backbone's per-atom output, b_iso[z] the backbone's output for a lone atom
of element z (so an isolated atom has exactly E0), and n_i = sum_j u(r_ij) the smooth
coordination number (u the cutoff envelope), so the shift, too, vanishes continuously as
neighbours leave the cutoff.

Energies are accumulated in float64 whatever the model dtype: total energies of molecules
are thousands of eV, where float32 resolves only ~1 meV. The E0s are kept in float64 on
every ``.to(dtype)``; forces keep the model dtype.
F = -dE/dpos, stress = (1/V) dE/d(strain) with a symmetric strain applied to positions and
cell (ASE sign: positive = tension), all by autograd in one place (:meth:`Potential.forward`).
"""

from __future__ import annotations

import torch
from torch import nn

from mlip.data import keys
from mlip.graph.edges import edge_vectors
from mlip.ops.radial import PolynomialCutoff
from mlip.ops.scatter import scatter_sum

MAX_Z = 119


class Potential(nn.Module):
    """Energy model with the shared physics around any backbone.

    Args:
        backbone: maps a batch dict (SPECIES, EDGE_INDEX, EDGE_VECTORS) to NODE_ENERGIES
            (N,) and NODE_FEATURES.
        atomic_numbers: the elements the model knows, in species-index order.
        e0s: reference energy of each element [eV], same order.
        scale: per-atom energy scale [eV].
        shift: per-atom energy shift at average coordination [eV].
        cutoff: graph cutoff [Å] the model was trained with.
        avg_num_neighbors: average neighbour count of the training data.
    """

    def __init__(
        self,
        backbone: nn.Module,
        atomic_numbers: list[int],
        e0s: list[float],
        scale: float = 1.0,
        shift: float = 0.0,
        cutoff: float = 5.0,
        avg_num_neighbors: float = 1.0,
    ) -> None:
        super().__init__()
        if len(atomic_numbers) != len(e0s):
            raise ValueError("atomic_numbers and e0s must have the same length")
        self.backbone = backbone
        self.cutoff = float(cutoff)
        self.atomic_numbers = [int(z) for z in atomic_numbers]
        z_to_species = torch.full((MAX_Z + 1,), -1, dtype=torch.long)
        z_to_species[torch.tensor(self.atomic_numbers, dtype=torch.long)] = torch.arange(
            len(self.atomic_numbers)
        )
        self.register_buffer("z_to_species", z_to_species)
        self.register_buffer("e0s", torch.tensor(e0s, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("inv_avg_neighbors", torch.tensor(1.0 / float(avg_num_neighbors)))
        self.envelope = PolynomialCutoff(cutoff)

    def _apply(self, fn, recurse: bool = True):
        # Move the float64 E0s to the new device without ever casting them to float32.
        e0s = self._buffers.pop("e0s")
        try:
            super()._apply(fn, recurse)
        finally:
            device = self.scale.device
            self._buffers["e0s"] = e0s.to(device=device, dtype=torch.float64)
        return self

    def species_of(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """(N,) Z -> (N,) species index, -1 for elements the model does not know."""
        return self.z_to_species[atomic_numbers]

    def isolated_backbone_energies(self, like: torch.Tensor) -> torch.Tensor:
        """(S,) backbone output for a lone atom of each element (no edges)."""
        num = len(self.atomic_numbers)
        lone = {
            keys.SPECIES: torch.arange(num, device=like.device),
            keys.EDGE_INDEX: torch.zeros(2, 0, dtype=torch.long, device=like.device),
            keys.EDGE_VECTORS: like.new_zeros(0, 3),
            keys.BATCH: torch.arange(num, device=like.device),
        }
        return self.backbone(lone)[keys.NODE_ENERGIES]

    def forward(
        self,
        data: dict[str, torch.Tensor],
        compute_forces: bool = True,
        compute_stress: bool = False,
        training: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies, and forces/stress by autograd (forces from the backbone instead when it
        has a direct force head, which is then not energy-conserving).

        Args:
            data: batch dict with POSITIONS, ATOMIC_NUMBERS, EDGE_INDEX, CELL_SHIFTS, CELL,
                BATCH, NUM_ATOMS (see :mod:`mlip.data.keys`).
            compute_forces: return FORCES (N, 3) [eV/Å].
            compute_stress: return STRESS and VIRIAL (B, 3, 3); zero for non-periodic
                structures.
            training: keep the graph of the derivatives so a loss on forces can be
                back-propagated.

        Returns:
            dict with ENERGY (B,) and ATOMIC_ENERGIES (N,) in float64, NODE_FEATURES, and FORCES / STRESS /
            VIRIAL when asked.
        """
        pos = data[keys.POSITIONS]
        cell = data[keys.CELL]
        batch = data[keys.BATCH]
        num_graphs = cell.shape[0]
        if compute_forces and not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        strain = None
        if compute_stress:
            strain = torch.zeros_like(cell, requires_grad=True)
            sym = 0.5 * (strain + strain.transpose(-1, -2))
            pos = pos + torch.einsum("ni,nij->nj", pos, sym[batch])
            cell = cell + torch.bmm(cell, sym)
        species = self.species_of(data[keys.ATOMIC_NUMBERS])
        vectors = edge_vectors(pos, data[keys.EDGE_INDEX], data[keys.CELL_SHIFTS], cell, batch)
        inputs = dict(data)
        inputs.update({keys.SPECIES: species, keys.EDGE_VECTORS: vectors})
        out = self.backbone(inputs)
        receiver = data[keys.EDGE_INDEX][1]
        coordination = scatter_sum(self.envelope(vectors.norm(dim=-1)), receiver, pos.shape[0])
        interaction = out[keys.NODE_ENERGIES] - self.isolated_backbone_energies(pos)[species]
        atomic = (self.scale * interaction + self.shift * self.inv_avg_neighbors * coordination)
        atomic = atomic.double() + self.e0s[species]
        energy = scatter_sum(atomic, batch, num_graphs)  # float64
        result = {k: v for k, v in out.items() if k != keys.NODE_ENERGIES}  # extra outputs
        result.update({keys.ENERGY: energy, keys.ATOMIC_ENERGIES: atomic})
        # A direct force head (TransIP option) replaces -dE/dr: not energy-conserving.
        direct = result.pop(keys.DIRECT_FORCES, None)
        if compute_forces and direct is not None:
            result[keys.FORCES] = self.scale * direct
            compute_forces = False
        wrt = ([pos] if compute_forces else []) + ([strain] if compute_stress else [])
        if wrt:
            grads = torch.autograd.grad(
                energy.sum(), wrt, create_graph=training, retain_graph=training, allow_unused=True
            )
            grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]
            if compute_forces:
                result[keys.FORCES] = -grads[0]
            if compute_stress:
                de_dstrain = grads[-1]
                volume = torch.linalg.det(data[keys.CELL]).abs()
                periodic = data[keys.PBC].any(dim=-1)
                safe = torch.where(periodic, volume, torch.ones_like(volume))
                result[keys.VIRIAL] = -de_dstrain
                result[keys.STRESS] = torch.where(
                    periodic[:, None, None], de_dstrain / safe[:, None, None], torch.zeros_like(de_dstrain)
                )
        return result
