"""Structures -> the model's input dict: the one input path.

``structure_graph`` turns one :class:`~mlip.data.structure.Structure` into its tensors and
neighbour list; :func:`collate` concatenates any number of them into the batch dict the
model takes (edge indices offset, BATCH added). Training and evaluation batches (through
:class:`GraphDataset` and a DataLoader with ``collate_fn=collate``), the ASE calculator and
the batched MD replicas (through :class:`mlip.graph.skin.SkinNeighborList`) and the physics
test kit (:func:`atoms_to_batch`) all build their input with these two functions.

Per-structure tensors carry a leading axis of 1 (CELL (1, 3, 3), ENERGY (1,), ...), per-atom
ones (n, ...), per-edge ones (E, ...), so every key concatenates along its first axis;
EDGE_INDEX (2, E) is local to the structure until :func:`collate` offsets it.
"""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np
import torch

from mlip.data import keys
from mlip.data.readers import atoms_to_structure
from mlip.data.structure import Structure
from mlip.graph.neighbors import neighbor_list


def structure_graph(
    structure: Structure,
    cutoff: float,
    dtype: torch.dtype | None = None,
    labels: bool = True,
) -> dict[str, torch.Tensor]:
    """One structure's tensors with its neighbour list at ``cutoff`` [Å].

    Args:
        structure: the structure (a free molecule has pbc all False; its cell is zeroed).
        cutoff: neighbour radius [Å].
        dtype: float dtype of positions, cell, shifts and labels (default: torch's default).
        labels: include ENERGY/FORCES/STRESS/CHARGE/SPIN and their masks (zero-filled and
            flagged by the *_MASK fields when absent, so batches stay rectangular).
    """
    dtype = dtype or torch.get_default_dtype()
    n = structure.num_atoms
    cell = structure.cell if structure.periodic else np.zeros((3, 3))
    edge_index, shifts = neighbor_list(structure.positions, cell, structure.pbc, cutoff)

    def f(x: np.ndarray | float) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype)

    graph = {
        keys.POSITIONS: f(structure.positions),
        keys.ATOMIC_NUMBERS: torch.as_tensor(structure.numbers, dtype=torch.long),
        keys.CELL: f(cell).unsqueeze(0),
        keys.PBC: torch.as_tensor(structure.pbc, dtype=torch.bool).unsqueeze(0),
        keys.NUM_ATOMS: torch.tensor([n], dtype=torch.long),
        keys.EDGE_INDEX: torch.as_tensor(edge_index, dtype=torch.long),
        keys.CELL_SHIFTS: f(shifts),
        keys.EDGE_MIRRORED: torch.tensor([True]),  # neighbor_list's order
    }
    if labels:
        zeros_f, zeros_s = torch.zeros(n, 3, dtype=dtype), torch.zeros(3, 3, dtype=dtype)
        graph.update({
            # Total energies stay float64: float32 resolves only ~1 meV at 10^4 eV.
            keys.ENERGY: torch.tensor([structure.energy or 0.0], dtype=torch.float64),
            keys.FORCES: zeros_f if structure.forces is None else f(structure.forces),
            keys.STRESS: (zeros_s if structure.stress is None else f(structure.stress)).unsqueeze(0),
            keys.CHARGE: f([structure.charge]),
            keys.SPIN: f([structure.spin_multiplicity]),
            keys.ENERGY_MASK: f([float(structure.energy is not None)]),
            keys.FORCES_MASK: f([float(structure.forces is not None)]),
            keys.STRESS_MASK: f([float(structure.stress is not None)]),
        })
    return graph


def collate(graphs: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Batch per-structure graphs into the model's input dict.

    Node, edge and graph keys are concatenated along their first axis, EDGE_INDEX along its
    second with each structure's atom offset added, and BATCH (N,) is added. Mirrored
    lists (keys.EDGE_MIRRORED) stay mirrored: first halves, then second halves. All graphs must
    have the same keys; tensors may live on any (one) device.
    """
    if not graphs:
        raise ValueError("collate: no structures")
    first = graphs[0]
    out = {k: torch.cat([g[k] for g in graphs]) for k in first if k != keys.EDGE_INDEX}
    sizes = out[keys.NUM_ATOMS]
    device = first[keys.POSITIONS].device
    offsets = torch.cumsum(sizes, 0) - sizes
    edges = [g[keys.EDGE_INDEX] + offset for g, offset in zip(graphs, offsets.tolist(), strict=True)]
    out[keys.EDGE_INDEX] = torch.cat(edges, dim=1)
    if keys.EDGE_MIRRORED in first:
        # Every structure's list is mirrored; keep the whole batch mirrored: all first
        # halves, then all second halves in the same order.
        halves = [e.shape[1] // 2 for e in edges]
        shifts = [g[keys.CELL_SHIFTS] for g in graphs]
        out[keys.EDGE_INDEX] = torch.cat([e[:, :h] for e, h in zip(edges, halves, strict=True)]
                                         + [e[:, h:] for e, h in zip(edges, halves, strict=True)], dim=1)
        out[keys.CELL_SHIFTS] = torch.cat([s[:h] for s, h in zip(shifts, halves, strict=True)]
                                          + [s[h:] for s, h in zip(shifts, halves, strict=True)])
    out[keys.BATCH] = torch.arange(len(graphs), device=device).repeat_interleave(sizes)
    return out


def structures_to_batch(
    structures: Sequence[Structure],
    cutoff: float,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    labels: bool = True,
) -> dict[str, torch.Tensor]:
    """Structures -> the model's batch dict on ``device``."""
    batch = collate([structure_graph(s, cutoff, dtype, labels) for s in structures])
    return {k: v.to(device) for k, v in batch.items()}


def atoms_to_batch(
    atoms_list: Sequence[ase.Atoms],
    cutoff: float,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    labels: bool = True,
) -> dict[str, torch.Tensor]:
    """ASE Atoms -> the model's batch dict on ``device`` (labels included when present)."""
    structures = [atoms_to_structure(a, source="<atoms>", frame=k) for k, a in enumerate(atoms_list)]
    return structures_to_batch(structures, cutoff, dtype, device, labels)


class GraphDataset(torch.utils.data.Dataset):
    """Wrap any dataset of Structures into one of graphs at ``cutoff`` (for a DataLoader
    with ``collate_fn=collate``)."""

    def __init__(self, structures: torch.utils.data.Dataset, cutoff: float,
                 dtype: torch.dtype | None = None) -> None:
        self.structures = structures
        self.cutoff = float(cutoff)
        self.dtype = dtype or torch.get_default_dtype()

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return structure_graph(self.structures[index], self.cutoff, self.dtype)
